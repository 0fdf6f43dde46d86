"""Inference on users' own point cloud files: top-k classes, or per-point part labels.

A :class:`Predictor` is built from either

* a clora3d run checkpoint (``ckpt-best.pth`` / ``ckpt-last.pth`` or the run folder itself): the
  model and PEFT method are rebuilt from the config the run saved (in the checkpoint or the run
  folder's ``config.yaml``) and the full state dict is loaded strictly; or
* a config plus merged weights in the official Point-MAE layout (``tools/export.py --merged``),
  loaded through :func:`clora3d.models.checkpoint.load_pretrained`.

Every file is read with :func:`clora3d.data.io.read_point_cloud` (``.ply .pcd .xyz .npy .txt``
...), centred and scaled into the unit sphere (as the data sets do), then brought to the model's
``npoints``: farthest point sampling from index 0 when it has more points, a seeded resample with
replacement when it has fewer. Part labels predicted on the sampled points are carried back to
every input point by its nearest sampled point.

Size: about 390 lines as written, 440 after ``ruff format``; loading a run and predicting on files
are one job (the run's config decides the input pipeline).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clora3d.data.common import normalize_unit_sphere
from clora3d.engine.build import model_spec  # noqa: F401  (re-exported: its historical home)
from clora3d.errors import CheckpointError, ConfigError, DataError

__all__ = [
    "Predictor",
    "load_run",
    "check_device",
    "model_spec",
    "find_point_files",
    "normalize_unit_sphere",
    "resample",
    "POINT_EXTENSIONS",
    "RUN_CKPT_NAMES",
]

POINT_EXTENSIONS = (".ply", ".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts", ".npy", ".npz", ".txt", ".csv", ".off", ".obj")
#: run-folder checkpoint names, in order of preference
RUN_CKPT_NAMES = ("ckpt-best.pth", "ckpt-last.pth")


def check_device(spec: str | torch.device) -> torch.device:
    """``torch.device(spec)`` for a device this torch can run on, else one ConfigError saying why."""
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {str(spec)[:80]!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ConfigError(f"--device {str(spec)[:80]!r}: only cpu and cuda[:N] are supported")
    if not torch.cuda.is_available():
        why = (
            "this torch is a CPU-only build"
            if torch.version.cuda is None
            else "no CUDA GPU is visible (driver / CUDA_VISIBLE_DEVICES)"
        )
        raise ConfigError(f"--device {spec}: CUDA is not available ({why}); use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are "
            f"visible (cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
        )
    return dev


def resample(xyz: np.ndarray, npoints: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``(npoints, 3)`` points: FPS (start 0) when there are more, seeded resample when fewer."""
    n = xyz.shape[0]
    if n == npoints:
        return xyz, "none"
    if n > npoints:
        from clora3d import ops

        t = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32))[None]
        idx = ops.furthest_point_sample(t, npoints)[0].numpy()
        return xyz[idx], "fps"
    rng = np.random.default_rng(seed)
    extra = rng.choice(n, npoints - n, replace=True)
    return np.concatenate([xyz, xyz[extra]], axis=0), "upsampled"


def find_point_files(path: str | Path) -> list[Path]:
    """The file itself, or every point cloud file (by extension) in a folder, sorted."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in POINT_EXTENSIONS)
        if not files:
            raise DataError(f"no point cloud files ({', '.join(POINT_EXTENSIONS)}) in folder {p}")
        return files
    raise DataError(f"input not found: {p}; give a point cloud file or a folder of them")


def _read(path: Path) -> np.ndarray:
    from clora3d.data.io import read_point_cloud

    try:
        xyz, _ = read_point_cloud(path)
    except (DataError, ValueError, FileNotFoundError):
        raise
    except Exception as e:  # unreadable file: one line naming it
        raise DataError(f"cannot read point cloud {path}: {type(e).__name__}: {e}") from None
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or xyz.shape[0] == 0:
        raise DataError(f"point cloud {path} has no points (got array of shape {xyz.shape})")
    if not np.isfinite(xyz).all():
        raise DataError(f"point cloud {path} contains NaN or infinite coordinates; clean the file")
    return xyz


# --------------------------------------------------------------------------------------------------
# loading a model
# --------------------------------------------------------------------------------------------------


def _ckpt_config(obj: Mapping[str, Any]) -> dict | None:
    for holder in (obj, obj.get("extra") or {}, obj.get("meta") or {}):
        if isinstance(holder, Mapping):
            for k in ("config", "cfg"):
                if isinstance(holder.get(k), Mapping):
                    return dict(holder[k])
    return None


def _ckpt_meta(obj: Mapping[str, Any], key: str) -> Any:
    for holder in (obj, obj.get("extra") or {}, obj.get("meta") or {}):
        if isinstance(holder, Mapping) and holder.get(key) is not None:
            return holder[key]
    return None


def _resolve_ckpt_path(ckpt: str | Path) -> Path:
    p = Path(ckpt)
    if p.is_dir():
        for name in RUN_CKPT_NAMES:
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"run folder {p} has no {' or '.join(RUN_CKPT_NAMES)}; pass a checkpoint file")
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def _load_cfg(cfg: str | Path | Mapping[str, Any] | None, obj: Mapping[str, Any], ckpt_path: Path) -> dict:
    from clora3d.engine.config import load_config

    if isinstance(cfg, Mapping):
        return dict(cfg)
    if cfg is not None:
        return load_config(cfg)
    inner = _ckpt_config(obj)
    if inner is not None:
        return inner
    side = ckpt_path.parent / "config.yaml"
    if side.is_file():
        return load_config(side)
    raise ConfigError(
        f"checkpoint {ckpt_path} carries no config and there is no config.yaml "
        "beside it; pass --cfg with the config it was trained with"
    )


def _class_names(cfg: Mapping[str, Any], obj: Mapping[str, Any], num: int) -> list[str]:
    names = _ckpt_meta(obj, "class_names")
    if isinstance(names, (list, tuple)) and len(names) == num:
        return [str(n) for n in names]
    ds = cfg.get("dataset") or {}
    sec = ds.get("test") or ds.get("val") or ds.get("train") or {}
    name = sec.get("NAME") if isinstance(sec, Mapping) else None
    try:
        import clora3d.data as data

        if name == "ModelNet40":
            root = Path(sec.get("root", ""))
            k = int(sec.get("num_category", 40))
            f = root / f"modelnet{k}_shape_names.txt"
            if f.is_file():
                cand = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
            else:
                from clora3d.data import modelnet

                cand = list(modelnet.MODELNET40_CLASSES if k == 40 else modelnet.MODELNET10_CLASSES)
        elif name == "ModelNetFewShot":
            # episode label e is ModelNet40 class original_labels[e] of this fold (head may be wider)
            fold = data.fewshot_fold_path(sec.get("root", ""), sec.get("way"), sec.get("shot"), sec.get("fold"))
            cand = None
            if fold.is_file():
                ds_fold = data.ModelNetFewShot(sec["root"], sec["way"], sec["shot"], sec["fold"], "test")
                cand = [
                    data.MODELNET40_CLASSES[o] if 0 <= o < 40 else f"class_{e}"
                    for e, o in enumerate(ds_fold.original_labels)
                ]
                cand += [f"class_{i}_not_in_fold" for i in range(len(cand), num)]
        else:
            cand = getattr(getattr(data, str(name), None), "class_names", None)
        if isinstance(cand, (list, tuple)) and len(cand) == num:
            return [str(c) for c in cand]
    except (ImportError, OSError, ValueError, TypeError):  # names are a convenience; never fail
        pass
    return [f"class_{i}" for i in range(num)]


def load_run(
    ckpt: str | Path,
    cfg: str | Path | Mapping[str, Any] | None = None,
    *,
    device: str | torch.device = "cpu",
    need_method: bool = False,
) -> tuple[nn.Module, dict, dict, Any]:
    """Rebuild the trained model: ``(model (eval, on device), cfg, checkpoint dict, peft method)``.

    ``ckpt`` is a run checkpoint / run folder, or (with ``cfg``) merged Point-MAE-layout weights.
    For a run checkpoint whose state fits the plain model exactly (methods that add no tensors:
    full, linear, bitfit) no PEFT method is applied unless ``need_method`` (export needs it to
    write the adapter); otherwise the config's method is applied first, as the trainer did.
    Raises :class:`CheckpointError` naming the file when it does not fit the config's model.
    """
    from clora3d.engine import build
    from clora3d.engine.checkpoint import load_checkpoint

    path = _resolve_ckpt_path(ckpt)
    obj = load_checkpoint(path)
    meta = obj.get("metadata")
    if isinstance(meta, Mapping) and meta.get("format") == "clora3d-adapter":
        raise CheckpointError(
            f"{path} is an adapter-only file ({meta.get('method')}); pass the run "
            "checkpoint (ckpt-best.pth) or merged weights from tools/export.py --merged"
        )
    cfg_d = _load_cfg(cfg, obj, path)
    if "model" not in cfg_d or not isinstance(cfg_d["model"], Mapping):
        raise ConfigError(f"config for {path} has no 'model' section")
    model = build.build_model(cfg_d)
    method = None
    state = obj.get("model")
    if isinstance(state, Mapping) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        peft_cfg = cfg_d.get("peft") or {"NAME": "full"}
        plain_fits = set(state) == set(model.state_dict())
        # the trainer applies the PEFT method for every fine-tuning task
        if cfg_d.get("task") != "pretrain" and (need_method or not plain_fits):
            method = build.apply_method(model, {**cfg_d, "peft": peft_cfg})
        try:
            res = model.load_state_dict(dict(state), strict=False)
        except RuntimeError as e:  # shape mismatch
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
            if all("cls_head" in ln for ln in lines[1:]) and len(lines) > 1:
                raise CheckpointError(
                    f"checkpoint {path}: the task head does not match the config's model "
                    f"({detail}); set model.cls_dim (num_classes) to the checkpoint's number of "
                    "classes, or pass the --cfg the run was trained with"
                ) from None
            raise CheckpointError(
                f"checkpoint {path} does not fit model {cfg_d['model'].get('NAME')} "
                f"of its config ({detail}); pass the --cfg the run was trained "
                "with"
            ) from None
        if res.missing_keys or res.unexpected_keys:
            raise CheckpointError(
                f"checkpoint {path} does not match model {cfg_d['model'].get('NAME')} with peft "
                f"{peft_cfg.get('NAME')}: {len(res.missing_keys)} missing keys (e.g. "
                f"{res.missing_keys[:3]}), {len(res.unexpected_keys)} unexpected (e.g. "
                f"{res.unexpected_keys[:3]}); pass the --cfg the run was trained with"
            )
        if method is not None:
            # the method was applied to a freshly initialised model: its base hash must describe
            # the pre-trained weights just loaded, or exported adapters refuse their own base
            method.refresh_base_hash()
    else:
        from clora3d.models.checkpoint import load_pretrained

        try:
            rep = load_pretrained(model, str(path), strict_backbone=True, ignore_head=False, log=None)
        except CheckpointError as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            raise CheckpointError(
                f"{msg} (config model: {cfg_d['model'].get('NAME')} {cfg_d['model'].get('preset', '')})"
            ) from None
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint {path} does not fit model {cfg_d['model'].get('NAME')}: {str(e).splitlines()[0]}"
            ) from None
        missing = list(rep.missing) + [k for k, _ in rep.skipped]
        if missing:
            raise CheckpointError(
                f"checkpoint {path} lacks {len(missing)} weights of the model "
                f"(e.g. {missing[:3]}); inference needs a fine-tuned model with "
                "its head (a run checkpoint or tools/export.py --merged output)"
            )
    model.to(device).eval()
    return model, cfg_d, obj, method


@dataclass
class Predictor:
    """A trained model ready for files: classification (top-k) or part segmentation."""

    model: nn.Module
    cfg: dict
    task: str
    npoints: int
    class_names: list[str]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seg_classes: dict[str, list[int]] | None = None
    part_names: dict[int, str] | None = None

    @classmethod
    def from_checkpoint(
        cls,
        ckpt: str | Path,
        cfg: str | Path | Mapping[str, Any] | None = None,
        *,
        device: str | torch.device = "cpu",
        npoints: int | None = None,
    ) -> Predictor:
        device = check_device(device)
        model, cfg_d, obj, _ = load_run(ckpt, cfg, device=device)
        task = str(
            cfg_d.get("task") or ("partseg" if cfg_d["model"].get("NAME") == "PartSegModel" else "classification")
        )
        if task not in ("classification", "partseg"):
            raise ConfigError(
                f"checkpoint {ckpt} is a {task!r} model; inference needs a classification or part-segmentation model"
            )
        n = int(npoints or (cfg_d.get("data") or {}).get("npoints") or (2048 if task == "partseg" else 1024))
        return cls._make(model, cfg_d, obj, task, n, device)

    @classmethod
    def _make(
        cls, model: nn.Module, cfg_d: dict, obj: Mapping[str, Any], task: str, n: int, device: str | torch.device
    ) -> Predictor:
        if task == "partseg":
            from clora3d.engine.evaluate import SHAPENETPART_SEG_CLASSES

            seg = _ckpt_meta(obj, "seg_classes") or SHAPENETPART_SEG_CLASSES
            names = list(seg)
            return cls(model, cfg_d, task, n, names, torch.device(device), dict(seg))
        num = _num_outputs(model, n, device)
        return cls(model, cfg_d, task, n, _class_names(cfg_d, obj, num), torch.device(device))

    # -- prediction --------------------------------------------------------------------------
    def _prepare(self, xyz: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
        norm = normalize_unit_sphere(xyz)
        sampled, how = resample(norm, self.npoints, seed)
        return norm, sampled, how

    @torch.no_grad()
    def classify(self, xyz: np.ndarray, *, topk: int = 5, seed: int = 0) -> dict[str, Any]:
        """Top-k ``[{"class", "index", "prob"}]`` for one cloud ``(N, 3)``."""
        _, pts, how = self._prepare(xyz, seed)
        t = torch.from_numpy(pts.astype(np.float32))[None].to(self.device)
        prob = torch.softmax(self.model(t).float(), -1)[0].cpu()
        k = max(1, min(int(topk), prob.numel()))
        vals, idx = prob.topk(k)
        return {
            "points": int(xyz.shape[0]),
            "sampling": how,
            "top": [{"class": self.class_names[int(i)], "index": int(i), "prob": float(v)} for v, i in zip(vals, idx)],
        }

    @torch.no_grad()
    def segment(self, xyz: np.ndarray, category: str, *, seed: int = 0) -> dict[str, Any]:
        """Per-point global part ids for every input point of a cloud of ``category``."""
        assert self.seg_classes is not None
        cats = list(self.seg_classes)
        lookup = {c.lower(): i for i, c in enumerate(cats)}
        if category is None or str(category).lower() not in lookup:
            raise ConfigError(
                f"part segmentation needs the object category: --category one of {', '.join(cats)} (got {category!r})"
            )
        ci = lookup[str(category).lower()]
        norm, pts, how = self._prepare(xyz, seed)
        t = torch.from_numpy(pts.astype(np.float32))[None].to(self.device)
        width = int(getattr(self.model, "num_classes", len(cats)))
        onehot = torch.nn.functional.one_hot(torch.tensor([ci]), width).float().to(self.device)
        logits = self.model(t, onehot).float()[0].cpu().numpy()
        parts = np.asarray(self.seg_classes[cats[ci]])
        lab_s = parts[np.argmax(logits[:, parts], axis=-1)]
        from clora3d import ops

        _, nn_idx = ops.knn(
            torch.from_numpy(norm.astype(np.float32))[None], torch.from_numpy(pts.astype(np.float32))[None], 1
        )
        labels = lab_s[nn_idx[0, :, 0].numpy()]
        counts = {int(p): int((labels == p).sum()) for p in parts}
        return {
            "points": int(xyz.shape[0]),
            "sampling": how,
            "category": cats[ci],
            "labels": labels,
            "part_counts": counts,
        }

    def predict_file(
        self, path: str | Path, *, topk: int = 5, category: str | None = None, seed: int = 0
    ) -> dict[str, Any]:
        xyz = _read(Path(path))
        out = (
            self.segment(xyz, category, seed=seed)
            if self.task == "partseg"
            else self.classify(xyz, topk=topk, seed=seed)
        )
        out["file"] = str(path)
        return out

    def predict(self, paths: Iterable[str | Path], *, on_error: str = "raise", **kw: Any) -> list[dict[str, Any]]:
        """Predict every file. ``on_error="raise"`` stops at the first unreadable file;
        ``"record"`` returns ``{"file", "error"}`` for it and goes on with the others."""
        from clora3d.errors import format_user_error

        out = []
        for p in paths:
            if on_error == "record":
                try:
                    out.append(self.predict_file(p, **kw))
                except (DataError, ValueError, OSError, UnicodeError) as e:
                    if isinstance(e, ConfigError):  # a wrong option, not a bad file: stop
                        raise
                    msg = format_user_error(e)[len("error: ") :]
                    out.append({"file": str(p), "error": msg if str(p) in msg else f"{p}: {msg}"})
            else:
                out.append(self.predict_file(p, **kw))
        return out


def _num_outputs(model: nn.Module, npoints: int, device: str | torch.device) -> int:
    cfg = getattr(model, "config", None)
    if isinstance(cfg, Mapping) and isinstance(cfg.get("cls_dim"), int):
        return int(cfg["cls_dim"])
    with torch.no_grad():
        return int(model(torch.randn(1, npoints, 3, device=device)).shape[-1])
