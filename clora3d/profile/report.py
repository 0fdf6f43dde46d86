"""The efficiency table of every PEFT method (used by ``tools/flops.py``).

For each method and input: total / trainable parameters with and without the head, adapter file
size, FLOPs (``torch.utils.flop_counter``, executed ops) and thop-style MACs (Linear/Conv1d/Conv2d nominal,
with and without attention matmuls), unmerged and merged (CLoRA/LoRA), and the analytic FPS/kNN cost.
Batch 1; weights are random (counts do not depend on them).
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterable
from typing import Any

import torch

from clora3d.profile.flops import count_flops, grouping_cost, parameter_report, thop_macs

#: The two standard inputs: (points, groups, group size, classes).
INPUTS: dict[str, dict[str, int]] = {
    "ModelNet40": {"n_points": 1024, "num_group": 64, "group_size": 32, "cls_dim": 40},
    "ScanObjectNN": {"n_points": 2048, "num_group": 128, "group_size": 32, "cls_dim": 15},
}

#: Rows of the table: (label, peft config or None for the plain backbone).
METHOD_ROWS: list[tuple[str, dict[str, Any] | None]] = [
    ("backbone (no PEFT)", None),
    ("full", {"NAME": "full"}),
    ("linear", {"NAME": "linear"}),
    ("bitfit", {"NAME": "bitfit"}),
    ("lora r8 (qkv,proj)", {"NAME": "lora"}),
    ("adapter b64", {"NAME": "adapter"}),
    ("prompt n10 deep", {"NAME": "prompt"}),
    ("clora pre_proj r8 p4", {"NAME": "clora"}),
    ("clora parallel r8 p4", {"NAME": "clora", "placement": "parallel"}),
    ("clora# shared_q", {"NAME": "clora", "shared_q": True}),
    ("clora p=1", {"NAME": "clora", "num_spaces": 1}),
    ("pointlora r8 +40 tok", {"NAME": "pointlora"}),
    ("dapt b64 +12 prompts", {"NAME": "dapt"}),
    ("pointgst r36 local 32", {"NAME": "pointgst"}),
    ("idpt dgcnn @11 +1 tok", {"NAME": "idpt"}),
]


def _adapter_bytes(method: Any) -> int:
    fd, path = tempfile.mkstemp(suffix=".pt")
    os.close(fd)
    try:
        method.save_adapter(path)
        return os.path.getsize(path)
    finally:
        os.unlink(path)


def profile_row(model: torch.nn.Module, cfg: dict[str, Any] | None, pts: torch.Tensor) -> dict[str, Any]:
    """Profile one method (``cfg``; None = plain backbone) applied to a copy of ``model``."""
    from clora3d.peft import apply_peft

    m = copy.deepcopy(model)
    method = apply_peft(m, cfg) if cfg is not None else None
    row: dict[str, Any] = {"method": cfg["NAME"] if cfg else None, "config": method.config if method else None}
    row.update({f"params_{k}": v for k, v in parameter_report(m, method).items()})
    if method is None:
        row["params_trainable"] = row["params_trainable_without_head"] = 0
    row["adapter_bytes"] = _adapter_bytes(method) if method is not None else None
    f = count_flops(m, pts)
    t = thop_macs(m, pts)
    row.update(
        flops=f["flops"],
        macs=f["macs"],
        attention_flops=f["attention_flops"],
        flops_by_op=f["by_op"],
        thop_macs=t["linear_conv"],
        thop_macs_with_attention=t["with_attention"],
    )
    merged = method is not None and method.mergeable and method.peft_params
    if merged:
        method.merge()
        fm, tm = count_flops(m, pts), thop_macs(m, pts)
        method.unmerge()
        row.update(
            merged_flops=fm["flops"],
            merged_macs=fm["macs"],
            merged_thop_macs=tm["linear_conv"],
            merged_thop_macs_with_attention=tm["with_attention"],
        )
    else:
        row.update(merged_flops=None, merged_macs=None, merged_thop_macs=None, merged_thop_macs_with_attention=None)
    row["mergeable"] = bool(method.mergeable) if method is not None else None
    return row


def method_table(
    preset: str = "vit_s",
    inputs: dict[str, dict[str, int]] | None = None,
    rows: Iterable[tuple[str, dict[str, Any] | None]] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Profile every method row on every input; returns one dict per (input, method)."""
    from tqdm import tqdm

    from clora3d.models import PointTransformer

    inputs = inputs or INPUTS
    rows = list(rows or METHOD_ROWS)
    out = []
    jobs = [(iname, spec, label, cfg) for iname, spec in inputs.items() for label, cfg in rows]
    bar = tqdm(jobs, disable=not progress, desc="profiling", unit="row")
    base_models: dict[str, torch.nn.Module] = {}
    for iname, spec, label, cfg in bar:
        bar.set_postfix_str(f"{iname} {label}")
        if iname not in base_models:
            torch.manual_seed(seed)
            base_models[iname] = PointTransformer.from_preset(
                preset, num_group=spec["num_group"], group_size=spec["group_size"], cls_dim=spec["cls_dim"]
            ).eval()
        g = torch.Generator().manual_seed(seed)
        pts = torch.rand(1, spec["n_points"], 3, generator=g)
        row = {"label": label, "input": iname, "preset": preset, **spec}
        torch.manual_seed(seed)
        row.update(profile_row(base_models[iname], cfg, pts))
        row["grouping"] = grouping_cost(spec["n_points"], spec["num_group"], spec["group_size"])
        out.append(row)
    return out


def _m(v: int | None, div: float = 1e6, nd: int = 3) -> str:
    return "-" if v is None else f"{v / div:.{nd}f}"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """Markdown tables (one per input) plus the units and what is counted."""
    lines: list[str] = []
    for iname in dict.fromkeys(r["input"] for r in rows):
        sub = [r for r in rows if r["input"] == iname]
        r0 = sub[0]
        g = r0["grouping"]
        lines.append(
            f"### {iname}: {r0['n_points']} points, {r0['num_group']} groups x {r0['group_size']}, "
            f"{r0['cls_dim']} classes, batch 1, preset {r0['preset']}"
        )
        lines.append("")
        lines.append(
            "| method | total M | total w/o head M | trainable M | trainable w/o head M | adapter MB | "
            "GFLOPs | GMACs | thop GMACs (Lin/Conv) | thop GMACs + attn | merged GFLOPs | "
            "merged thop GMACs + attn |"
        )
        lines.append("|---|" + "---:|" * 11)
        for r in sub:
            lines.append(
                f"| {r['label']} | {_m(r['params_total'])} | {_m(r['params_total_without_head'])} | "
                f"{_m(r['params_trainable'])} | {_m(r['params_trainable_without_head'])} | "
                f"{_m(r['adapter_bytes'], 2**20, 2)} | {_m(r['flops'], 1e9)} | {_m(r['macs'], 1e9)} | "
                f"{_m(r['thop_macs'], 1e9)} | {_m(r['thop_macs_with_attention'], 1e9)} | "
                f"{_m(r['merged_flops'], 1e9)} | {_m(r['merged_thop_macs_with_attention'], 1e9)} |"
            )
        lines.append("")
        lines.append(
            f"FPS + kNN (analytic, not in the columns above): FPS {g['fps_flops'] / 1e6:.3f} MFLOPs + "
            f"{g['fps_comparisons'] / 1e6:.3f} M comparisons; kNN {g['knn_flops'] / 1e6:.3f} MFLOPs + "
            f"{g['knn_comparisons'] / 1e6:.3f} M comparisons; relative coords "
            f"{g['relative_flops'] / 1e6:.3f} MFLOPs."
        )
        lines.append("")
    lines.append(
        "Units: GFLOPs = torch.utils.flop_counter FLOPs of the executed ops (1 MAC = 2 FLOPs; matmuls, convs and "
        "attention incl. the CPU SDPA kernel; no bias/norm/activation), GMACs = GFLOPs / 2. thop GMACs = "
        "multiply-accumulates of Linear/Conv1d/Conv2d at the reference's nominal cost (the literature's 'GFLOPs'; "
        "unmerged LoRA/CLoRA branches are matmuls outside Linear modules and are invisible to it, as to thop); "
        "'+ attn' adds the attention matmuls (2*L^2*D per block). Merged = after merge() (CLoRA/LoRA). "
        "MB = 2^20 bytes of the adapter file. Parameters exclude buffers; M = 10^6."
    )
    return "\n".join(lines)
