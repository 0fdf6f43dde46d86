"""GPU benchmarks of clora3d: the kernels against the GPU peers, and the model's training step.

``python benchmarks/gpu_bench.py kernels|model [--device cuda] [--quick] [--json FILE]``

kernels: FPS, kNN, gather, three_nn + interpolation and Chamfer-L2 (forward + backward) at the
recipe sizes, each against every peer installed: pointnet2_ops (FPS, three_nn, interpolation,
gather), torch (cdist + topk for kNN, cdist + min for Chamfer, torch.gather), and clora3d's own
PyTorch reference. ``vs best peer`` = the fastest peer's median / the row's median (> 1: faster).

model: the ViT-S classifier (B32, 1024 points, 40 classes), full fine-tuning, CLoRA (defaults) and
LoRA r8; fp32, fp32 with TF32 matmuls and bf16 autocast: one training step (forward, backward, fused AdamW over the
trainable parameters) and inference (eval, no_grad); samples/s and peak allocated memory.

Times are medians of CUDA-event-timed calls after warm-up (``--quick``: fewer calls and tiny
sizes, for tests on the CPU). Ratios are only meaningful within one run. Tests never time anything.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_ops import Row  # noqa: E402  (one timed implementation of one op at one size)
from clora3d import ops  # noqa: E402
from clora3d.ops import _backend  # noqa: E402
from clora3d.ops import reference as ref  # noqa: E402


def timer(device: torch.device, fn: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Milliseconds per call: CUDA events on a GPU, perf_counter on the CPU."""
    for _ in range(warmup):
        fn()
    out = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            out.append(s.elapsed_time(e))
    else:
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            out.append(1e3 * (time.perf_counter() - t))
    return out


def _cloud(B: int, N: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(B, N, 3, generator=g)
    p = p / p.norm(dim=-1, keepdim=True) + 0.02 * torch.randn(B, N, 3, generator=g)
    return p.contiguous().to(device)


def pointnet2():
    """pointnet2_ops.pointnet2_utils when installed (and loadable), else None."""
    try:
        return importlib.import_module("pointnet2_ops.pointnet2_utils")
    except Exception:  # not installed, or built for another torch / GPU
        return None


# ----------------------------------------------------------------------------- kernels
def kernel_cases(device: torch.device, quick: bool) -> list[tuple[str, str, list[tuple[str, str, Callable]]]]:
    """(op, size label, [(impl, kind, fn)]) for every case."""
    p2 = pointnet2() if device.type == "cuda" else None
    sizes = {"modelnet B32 N1024 S64 K32": (32, 1024, 64, 32), "scanobjectnn B32 N2048 S128 K32": (32, 2048, 128, 32)}
    if quick:
        sizes = {"quick B2 N256 S16 K8": (2, 256, 16, 8)}
    cases = []
    for label, (B, N, S, K) in sizes.items():
        xyz = _cloud(B, N, 0, device)
        center = ops.fps_sample(xyz, S)
        impls = [
            ("clora3d", "clora3d", lambda: ops.furthest_point_sample(xyz, S)),
            ("reference (torch)", "reference", lambda: ref.furthest_point_sample(xyz, S, 0)),
        ]
        if p2 is not None:
            impls.append(("pointnet2_ops", "peer", lambda: p2.furthest_point_sample(xyz, S)))
        cases.append(("fps", label, impls))

        def cdist_topk():
            d = torch.cdist(center, xyz)
            return d.topk(K, dim=-1, largest=False)

        impls = [("clora3d", "clora3d", lambda: ops.knn(center, xyz, K)), ("torch cdist+topk", "peer", cdist_topk)]
        cases.append(("knn", label, impls))

        _, idx = ops.knn(center, xyz, K)
        feats = torch.randn(B, N, 384 if not quick else 16, device=device)
        flat = idx.reshape(B, -1)
        impls = [
            ("clora3d", "clora3d", lambda: ops.gather_points(feats, idx)),
            (
                "torch.gather",
                "peer",
                lambda: torch.gather(feats, 1, flat.unsqueeze(-1).expand(-1, -1, feats.shape[-1])).reshape(B, S, K, -1),
            ),
        ]
        if p2 is not None:
            ft = feats.transpose(1, 2).contiguous()
            idx32 = idx.int().contiguous()
            impls.append(("pointnet2_ops grouping", "peer", lambda: p2.grouping_operation(ft, idx32)))
        cases.append(("gather (B,S,K,C)", label, impls))

    # part segmentation propagation: 2048 points from 128 centres, 1152 + 3 channels (reference sizes)
    B, N, S, C = (16, 2048, 128, 1152) if not quick else (2, 128, 16, 8)
    lbl = f"partseg B{B} N{N} S{S} C{C}" if not quick else "quick partseg"
    dense, coarse = _cloud(B, N, 1, device), _cloud(B, S, 2, device)
    feat = torch.randn(B, S, C, device=device)

    def ours():
        d, i = ops.three_nn(dense, coarse)
        return ops.three_interpolate(feat, i, ops.interpolation_weights(d))

    def reference_interp():
        d, i = ref.three_nn(dense, coarse)
        return ref.three_interpolate(feat, i, ref.interpolation_weights(d))

    impls = [("clora3d", "clora3d", ours), ("reference (torch)", "reference", reference_interp)]
    if p2 is not None:
        ft = feat.transpose(1, 2).contiguous()

        def p2_interp():
            dist, i = p2.three_nn(dense, coarse)
            w = 1.0 / (dist + 1e-8)
            w = w / w.sum(dim=2, keepdim=True)
            return p2.three_interpolate(ft, i, w)

        impls.append(("pointnet2_ops", "peer", p2_interp))
    cases.append(("three_nn + interpolate", lbl, impls))

    # Chamfer-L2 forward + backward: Point-MAE's loss on B*M masked patches of 32 points
    for lbl, (B, N, M) in (
        {"mae patches 4864 x 32 x 32": (4864, 32, 32), "B32 N1024 M1024": (32, 1024, 1024)}
        if not quick
        else {"quick 8 x 32 x 32": (8, 32, 32)}
    ).items():
        a = _cloud(B, N, 3, device).requires_grad_(True)
        b = _cloud(B, M, 4, device)

        def ours_cd(a=a, b=b):
            ops.chamfer_l2_loss(a, b).backward()

        def cdist_cd(a=a, b=b):
            d = torch.cdist(a, b).pow(2)
            (d.min(2).values.mean() + d.min(1).values.mean()).backward()

        cases.append(("chamfer fwd+bwd", lbl, [("clora3d", "clora3d", ours_cd), ("torch cdist+min", "peer", cdist_cd)]))
    return cases


def run_kernels(device: torch.device, quick: bool = False) -> list[Row]:
    repeats, warmup = (3, 1) if quick else (30, 5)
    rows = []
    for op, size, impls in kernel_cases(device, quick):
        case = []
        for impl, kind, fn in impls:
            row = Row(op, size, impl, kind)
            try:
                row.times_ms = timer(device, fn, repeats if kind != "reference" else max(3, repeats // 5), warmup)
                row.median_ms = statistics.median(row.times_ms)
            except Exception as exc:  # a peer that fails is reported, not fatal
                row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            case.append(row)
        peers = [r.median_ms for r in case if r.kind == "peer" and r.median_ms]
        for r in case:
            if peers and r.median_ms:
                r.speedup = min(peers) / r.median_ms
        rows += case
    return rows


# ----------------------------------------------------------------------------- model
MODEL_METHODS = {"full": {"NAME": "full"}, "clora": {"NAME": "clora"}, "lora r8": {"NAME": "lora", "rank": 8}}


def run_model(
    device: torch.device,
    quick: bool = False,
    methods=tuple(MODEL_METHODS),
    precisions=("fp32", "tf32", "bf16"),
    compile_model: bool = False,
) -> list[dict]:
    from torch.nn import functional as F

    from clora3d.engine import build

    preset, B, N, C = ("tiny", 4, 256, 10) if quick else ("vit_s", 32, 1024, 40)
    repeats, warmup = (2, 1) if quick else (20, 5)
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(B, N, 3, generator=g).to(device)
    labels = torch.randint(0, C, (B,), generator=g).to(device)
    rows = []
    for name in methods:
        for prec in precisions:
            torch.manual_seed(0)
            cfg = {
                "model": {"NAME": "PointTransformer", "preset": preset, "cls_dim": C},
                "peft": dict(MODEL_METHODS[name]),
            }
            model = build.build_model(cfg)
            _method = build.build_method(model, cfg)
            model.to(device)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=device.type == "cuda")
            fwd = torch.compile(model, fullgraph=True) if compile_model else model
            ac = (
                torch.autocast(device.type, dtype=torch.bfloat16)
                if prec == "bf16"
                else torch.autocast(device.type, enabled=False)
            )

            def step():
                model.train()
                opt.zero_grad(set_to_none=True)
                with ac:
                    loss = F.cross_entropy(fwd(pts), labels)
                loss.backward()
                opt.step()

            def infer():
                model.eval()
                with torch.no_grad(), ac:
                    fwd(pts)

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            torch.set_float32_matmul_precision("high" if prec == "tf32" else "highest")
            try:
                t_step = timer(device, step, repeats, warmup)
                peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
                t_inf = timer(device, infer, repeats, warmup)
            finally:
                torch.set_float32_matmul_precision("highest")
            ms = statistics.median(t_step)
            rows.append(
                dict(
                    method=name,
                    precision=prec + (" + compile" if compile_model else ""),
                    trainable=sum(p.numel() for p in params),
                    step_ms=ms,
                    samples_per_s=1e3 * B / ms,
                    peak_mib=peak,
                    inference_ms=statistics.median(t_inf),
                    preset=preset,
                    batch=B,
                    points=N,
                )
            )
            if device.type == "cuda":  # the next configuration rebinds model / opt; free the cache
                torch.cuda.empty_cache()
    return rows


# ----------------------------------------------------------------------------- tables
def _f(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def kernel_table(rows: list[Row]) -> str:
    lines = ["| op | size | implementation | median ms | vs best peer |", "|---|---|---|---:|---:|"]
    for r in rows:
        tail = f"error: {r.error}" if r.error else _f(r.speedup, "{:.2f}x")
        lines.append(f"| {r.op} | {r.size} | {r.impl} | {_f(r.median_ms)} | {tail} |")
    return "\n".join(lines)


def model_table(rows: list[dict]) -> str:
    lines = [
        "| method | precision | trainable | train step ms | samples/s | peak MiB | inference ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['precision']} | {r['trainable']:,} | {r['step_ms']:.2f} | "
            f"{r['samples_per_s']:.0f} | {_f(r['peak_mib'], '{:.0f}')} | {r['inference_ms']:.2f} |"
        )
    return "\n".join(lines)


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "device": str(device), "kernels": _backend.kernels_summary()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    p2 = pointnet2()
    env["pointnet2_ops"] = "installed" if p2 is not None else "not installed"
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["kernels", "model", "all"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few calls (tests, CPU)")
    ap.add_argument("--compile", action="store_true", help="model: also time torch.compile(fullgraph=True)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU (torch.cuda.is_available() is False); use --device cpu")
    out = {"environment": environment(device)}
    if args.what in ("kernels", "all"):
        rows = run_kernels(device, args.quick)
        out["kernels"] = [asdict(r) for r in rows]
        print(kernel_table(rows), flush=True)
    if args.what in ("model", "all"):
        mrows = run_model(device, args.quick)
        if args.compile:
            mrows += run_model(device, args.quick, precisions=("fp32",), compile_model=True)
        out["model"] = mrows
        print(model_table(mrows), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
