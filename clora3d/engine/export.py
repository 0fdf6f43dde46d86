"""Export a fine-tuned run: adapter-only file and/or a merged model in the official Point-MAE layout.

* Adapter (``adapter_out``): the PEFT method's :meth:`save_adapter` (trainable parameters incl.
  the head and cls tokens, needed BatchNorm buffers, metadata with the base-weights hash).
* Merged (``merged_out``): the method's update is folded into the frozen weights
  (:meth:`PeftMethod.merge`), then :func:`clora3d.models.checkpoint.save_point_mae_checkpoint`
  writes the plain backbone + head in Point-MAE's fine-tuned key layout, loadable by Point-MAE's
  code and by ``load_pretrained``. Self-check: logits of a fixed random cloud before merging, after
  merging, and after re-loading the written file into a fresh model must agree (fp32, ``atol``);
  the largest differences are returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from clora3d.errors import CheckpointError, ConfigError

__all__ = ["export_run"]


def _probe(npoints: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, npoints, 3, generator=g)
    x = x / x.norm(dim=-1).max()
    return x.to(device)


def _forward(model: torch.nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    with torch.no_grad():
        if task == "partseg":
            onehot = torch.zeros(x.shape[0], 16, device=x.device)
            onehot[:, 0] = 1
            return model(x, onehot).float()
        return model(x).float()


def export_run(
    ckpt: str | Path,
    *,
    cfg: str | Path | Mapping[str, Any] | None = None,
    adapter_out: str | Path | None = None,
    merged_out: str | Path | None = None,
    device: str | torch.device = "cpu",
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Write the adapter and/or merged model of run checkpoint ``ckpt``; returns a report dict.

    ``cfg`` overrides the config stored with the run. Raises :class:`ConfigError` when nothing is
    requested or the method cannot be merged, :class:`CheckpointError` when the merged model does
    not reproduce the adapted model within ``atol``.
    """
    from clora3d.engine.build import build_model
    from clora3d.engine.infer import check_device, load_run

    if adapter_out is None and merged_out is None:
        raise ConfigError("export: nothing to do; give --adapter OUT and/or --merged OUT")
    device = check_device(device)
    model, cfg_d, _, method = load_run(ckpt, cfg, device=device, need_method=True)
    if method is None:
        raise CheckpointError(
            f"export: {ckpt} is not a clora3d run checkpoint (no training state); "
            "pass ckpt-best.pth / ckpt-last.pth of a tools/train.py run"
        )
    task = str(cfg_d.get("task", "classification"))
    report: dict[str, Any] = {"method": method.name, "ckpt": str(ckpt)}
    if adapter_out is not None:
        path = method.save_adapter(adapter_out)
        report["adapter"] = str(path)
        report["adapter_bytes"] = Path(path).stat().st_size
        report["adapter_tensors"] = len(method.adapter_state_dict())
    if merged_out is not None:
        from clora3d.models.checkpoint import load_pretrained, save_point_mae_checkpoint

        npoints = int((cfg_d.get("data") or {}).get("npoints") or 1024)
        x = _probe(npoints, device)
        model.eval()
        before = _forward(model, x, task)
        if method.peft_params:
            if not method.mergeable:
                raise ConfigError(
                    f"export: peft method {method.name!r} cannot be merged into the "
                    "backbone (its update is not a linear map of the frozen weights); "
                    "export the adapter with --adapter instead"
                )
            method.merge()
        after = _forward(model, x, task)
        # after merging, leftover PEFT tensors (if a method keeps any registered) are not part of
        # the architecture; the reload check below proves nothing needed was dropped
        save_point_mae_checkpoint(model, merged_out, drop_extra=method.merged)
        fresh = build_model(cfg_d).to(device).eval()
        load_pretrained(fresh, str(merged_out), strict_backbone=True, ignore_head=False, log=None)
        reloaded = _forward(fresh, x, task)
        d_merge = float((after - before).abs().max())
        d_reload = float((reloaded - after).abs().max())
        report.update(
            merged=str(merged_out),
            merged_bytes=Path(merged_out).stat().st_size,
            max_abs_diff_merge=d_merge,
            max_abs_diff_reload=d_reload,
        )
        if d_merge > atol or d_reload > atol:
            raise CheckpointError(
                f"export: merged model {merged_out} differs from the adapted model "
                f"(max |diff| {d_merge:.3g} after merge, {d_reload:.3g} after "
                f"reload, tolerance {atol}); do not use it"
            )
    return report
