"""GPU benchmarks of clora3d: the kernels against the GPU peers, and the model's training step.

``python benchmarks/gpu_bench.py kernels|model|all|peers [--device cuda] [--quick] [--json FILE]``

kernels: the GPU issue's table in one run (:data:`KERNEL_SIZES`): FPS, kNN (queries: the FPS
centres), gather, three_nn, three_interpolate, Chamfer-L2 forward + backward, and FPS + kNN at
scene scale, clora3d against every peer that imports: pointnet2_ops (FPS, gather, three_nn,
three_interpolate), torch (cdist + topk for kNN and three_nn, torch.gather and Point-MAE's
indexing, cdist + min for Chamfer), Point-MAE's chamfer extension (as its ChamferDistanceL2 loss
uses it), Point-MAE's kNN (knn_cuda), torch_cluster and pytorch3d; plus clora3d's own PyTorch
reference (kind "reference", not a peer; not at scene scale). The peers that
``benchmarks/gpu_peers.py build`` compiled into ``build/peers/site`` are found there. A peer that
fails to import or to run is an error row, never fatal. ``vs best peer`` = the fastest peer's
median / the row's median (> 1: faster); a summary gives clora3d's ratio per case against the
1.5x bar. ``peers`` lists each peer's status.

model: the ViT-S classifier (B32, 1024 points, 40 classes), full fine-tuning, CLoRA (defaults) and
LoRA r8; fp32, fp32 with TF32 matmuls and bf16 autocast: one training step (forward, backward, fused AdamW over the
trainable parameters) and inference (eval, no_grad); samples/s and peak allocated memory.

Times are medians of CUDA-event-timed calls after warm-up: 30 after 5 (scene scale: 10 after 2;
the reference: 6 after 1), fewer for an implementation whose calls would take over 5 s in all
(at least 3). ``--quick``: tiny sizes and 3 calls, for tests on the CPU. Ratios are only
meaningful within one run. Tests never time anything.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_ops import Row  # noqa: E402  (one timed implementation of one op at one size)
from clora3d import ops  # noqa: E402
from clora3d.models.transformer import reuse_frozen_casts, trainable_casts  # noqa: E402
from clora3d.ops import _backend  # noqa: E402
from clora3d.ops import reference as ref  # noqa: E402


def timer(
    device: torch.device, fn: Callable[[], object], repeats: int, warmup: int, budget_s: float | None = None
) -> list[float]:
    """Milliseconds per call: CUDA events on a GPU, perf_counter on the CPU. With ``budget_s``, a
    slow function gets fewer warm-up calls (they stop after ``budget_s / 2`` s) and fewer timed calls
    (at least 3; about ``budget_s`` s in all, judged by its fastest warm-up call)."""
    fastest, spent = float("inf"), 0.0
    for _ in range(warmup):
        t = time.perf_counter()
        fn()
        if budget_s is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = time.perf_counter() - t
            fastest, spent = min(fastest, dt), spent + dt
            if spent > budget_s / 2:
                break
    if budget_s is not None and warmup > 0:
        repeats = max(3, min(repeats, int(budget_s / max(fastest, 1e-9))))
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


# ----------------------------------------------------------------------------- peers
# Peers built on the GPU machine by benchmarks/gpu_peers.py from sources carried in build/peers/.
PEERS_DIR = ROOT / "build" / "peers"
CUDA_ONLY_PEERS = ("pointnet2_ops", "chamfer", "knn_cuda", "torch_cluster")  # as gpu_peers builds them


def use_peer_builds(peers_dir: Path = PEERS_DIR) -> None:
    """``peers_dir/site`` (the peers gpu_peers.py built) right after the checkout on ``sys.path``;
    the Point-MAE checkout (for ``extensions.chamfer_dist``) at its end, where its top-level
    ``models``, ``utils`` and ``tools`` shadow nothing."""
    site, point_mae = peers_dir / "site", peers_dir / "Point-MAE"
    if site.is_dir() and str(site) not in sys.path:
        sys.path.insert(1, str(site))
    if point_mae.is_dir() and str(point_mae) not in sys.path:
        sys.path.append(str(point_mae))


use_peer_builds()


@dataclass
class Peer:
    """One peer library: ``status`` "ok" (``api`` holds what the cases call), "not installed"
    (no rows), "CUDA only" (no rows on the CPU) or "error: ..." (rows that report it)."""

    name: str
    status: str
    api: object = None

    @property
    def listed(self) -> bool:
        return self.status == "ok" or self.status.startswith("error")


def _missing(exc: ModuleNotFoundError, *names: str) -> bool:
    return exc.name in names


def _load_pointnet2():
    from benchmarks.point_mae_original import pointnet2_ext_built

    # looked up, not imported: the package's __init__ imports pointnet2_utils, which JIT-compiles the
    # extension for pre-CUDA-12 architectures when _ext is missing
    built = pointnet2_ext_built()
    if built is None:
        return None
    if not built:
        raise RuntimeError("pointnet2_ops._ext is not built (run benchmarks/gpu_peers.py build)")
    return importlib.import_module("pointnet2_ops.pointnet2_utils")


def _load_chamfer():
    """Point-MAE's ChamferDistanceL2 from the carried checkout; else the compiled module ``chamfer``
    behind an autograd.Function of ours that calls it as Point-MAE's wrapper does."""
    try:
        mod = importlib.import_module("extensions.chamfer_dist")
        return SimpleNamespace(loss=mod.ChamferDistanceL2(), label="Point-MAE ChamferDistanceL2")
    except ModuleNotFoundError as exc:
        if not _missing(exc, "extensions", "extensions.chamfer_dist", "chamfer"):
            raise
    try:
        chamfer = importlib.import_module("chamfer")
    except ModuleNotFoundError as exc:
        if _missing(exc, "chamfer"):
            return None
        raise

    class ChamferL2(torch.autograd.Function):
        @staticmethod
        def forward(ctx, xyz1, xyz2):
            dist1, dist2, idx1, idx2 = chamfer.forward(xyz1, xyz2)
            ctx.save_for_backward(xyz1, xyz2, idx1, idx2)
            return dist1, dist2

        @staticmethod
        def backward(ctx, grad1, grad2):
            return tuple(chamfer.backward(*ctx.saved_tensors, grad1, grad2))

    def loss(a, b):
        d1, d2 = ChamferL2.apply(a, b)
        return d1.mean() + d2.mean()

    return SimpleNamespace(loss=loss, label="Point-MAE chamfer module (own autograd.Function)")


def _load_knn_cuda():
    spec = importlib.util.find_spec("knn_cuda")
    if spec is None:
        return None
    if not list((Path(spec.origin).parent / "csrc" / "_ext" / "knn").glob("knn*.so")):
        raise RuntimeError("knn_cuda is not built; its import would JIT-compile it (run benchmarks/gpu_peers.py build)")
    # torch's JIT loader rebuilds when its compile commands change: give it what gpu_peers built
    # with, TORCH_CUDA_ARCH_LIST unset (the visible GPU's) and clora3d's CUDA_HOME (which sees
    # through an nvcc wrapper script, where torch alone would guess another toolkit path)
    arch = os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        from clora3d._build_env import find_cuda_home

        home = find_cuda_home(os.environ)
        if home:
            os.environ["CUDA_HOME"] = home
            if "torch.utils.cpp_extension" in sys.modules:  # read once, at its import
                sys.modules["torch.utils.cpp_extension"].CUDA_HOME = home
    try:
        return importlib.import_module("knn_cuda")
    finally:
        if arch is not None:
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch


def _load_torch_cluster():
    try:
        return importlib.import_module("torch_cluster")
    except ModuleNotFoundError as exc:
        if _missing(exc, "torch_cluster"):
            return None
        if not (exc.name or "").startswith("scipy"):
            raise
    # torch_cluster.nearest imports scipy.cluster at import time (unused here; the GPU machine has
    # no scipy): import the package against an empty placeholder, then take the placeholder away
    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == "scipy" or k.startswith("scipy.")}
    sys.modules["scipy"] = types.ModuleType("scipy")
    sys.modules["scipy.cluster"] = sys.modules["scipy"].cluster = types.ModuleType("scipy.cluster")
    try:
        return importlib.import_module("torch_cluster")
    finally:
        sys.modules.pop("scipy", None)
        sys.modules.pop("scipy.cluster", None)
        sys.modules.update(saved)


def _load_pytorch3d():
    try:
        return SimpleNamespace(
            ops=importlib.import_module("pytorch3d.ops"), loss=importlib.import_module("pytorch3d.loss")
        )
    except ModuleNotFoundError as exc:
        if _missing(exc, "pytorch3d"):
            return None
        raise


PEER_LOADERS = {
    "pointnet2_ops": _load_pointnet2,
    "chamfer": _load_chamfer,
    "knn_cuda": _load_knn_cuda,
    "torch_cluster": _load_torch_cluster,
    "pytorch3d": _load_pytorch3d,
}
_peer_cache: dict[tuple[str, str], Peer] = {}


def load_peers(device: torch.device) -> dict[str, Peer]:
    """Every optional peer library, imported once; import failures become the peer's status."""
    out = {}
    for name, loader in PEER_LOADERS.items():
        key = (name, device.type)
        if key not in _peer_cache:
            if device.type != "cuda" and name in CUDA_ONLY_PEERS:
                _peer_cache[key] = Peer(name, "CUDA only")
            else:
                try:
                    api = loader()
                    _peer_cache[key] = Peer(name, "ok", api) if api is not None else Peer(name, "not installed")
                except Exception as exc:  # built for another torch or GPU, half built, ...
                    _peer_cache[key] = Peer(name, f"error: {type(exc).__name__}: {_first_line(exc)}")
        out[name] = _peer_cache[key]
    return out


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:160]


def _error_row(method: str, exc: BaseException, precision: str | None = None) -> dict:
    """A model / profile row that failed: its method (and precision) and the error's first line."""
    row = {"method": method} if precision is None else {"method": method, "precision": precision}
    return {**row, "error": f"{type(exc).__name__}: {_first_line(exc)}"}


# ----------------------------------------------------------------------------- kernels
# The kernel table of the GPU issue: (op, dims). FPS: S samples of N points; kNN: K neighbours in N
# reference points of M query centres (the FPS centres); gather: C-channel rows of (B,N,C) at S
# indices; three_nn: N unknown points, M known; three_interpolate: C channels from M known points to
# N; Chamfer: two clouds of N points, forward + backward. Scene-scale rows are op "... (scene)".
KERNEL_SIZES: list[tuple[str, dict[str, int]]] = [
    ("fps", dict(B=32, N=1024, S=64)),
    ("fps", dict(B=32, N=2048, S=128)),
    ("fps", dict(B=8, N=8192, S=1024)),
    ("knn", dict(B=32, N=1024, M=64, K=32)),
    ("knn", dict(B=32, N=2048, M=128, K=32)),
    ("knn", dict(B=8, N=8192, M=1024, K=32)),
    ("gather", dict(B=32, N=2048, S=128, C=384)),
    ("three_nn", dict(B=32, N=2048, M=128)),
    ("three_interpolate", dict(B=16, N=2048, M=128, C=1152)),  # part segmentation's propagation
    ("chamfer fwd+bwd", dict(B=32, N=1024)),
    ("chamfer fwd+bwd", dict(B=32, N=2048)),
    ("chamfer fwd+bwd", dict(B=8, N=8192)),
    ("fps (scene)", dict(B=16, N=65536, S=4096)),
    ("knn (scene)", dict(B=16, N=65536, M=4096, K=32)),
]
QUICK_SIZES: list[tuple[str, dict[str, int]]] = [
    ("fps", dict(B=2, N=256, S=16)),
    ("knn", dict(B=2, N=256, M=16, K=8)),
    ("gather", dict(B=2, N=256, S=16, C=16)),
    ("three_nn", dict(B=2, N=128, M=16)),
    ("three_interpolate", dict(B=2, N=128, M=16, C=8)),
    ("chamfer fwd+bwd", dict(B=2, N=64)),
    ("fps (scene)", dict(B=2, N=512, S=32)),
    ("knn (scene)", dict(B=2, N=512, M=32, K=8)),
]
REPEATS, WARMUP = 30, 5  # timed calls after warm-up calls
SCENE_REPEATS, SCENE_WARMUP = 10, 2
QUICK_REPEATS, QUICK_WARMUP = 3, 1
BUDGET_S = 5.0  # per implementation: fewer timed calls (at least 3) when the first call is slow
SPEEDUP_BAR = 1.5  # clora3d's required lead over its best peer


def size_label(dims: dict[str, int]) -> str:
    """ "B32 N1024 M64 K32": every dimension, in the order given."""
    return " ".join(f"{k}{v}" for k, v in dims.items())


@dataclass
class Impl:
    """One implementation of a case: ``make(inputs)`` prepares (untimed) and returns the timed call."""

    name: str
    kind: str  # "clora3d" | "peer" | "reference"
    make: Callable[[dict], Callable[[], object]]


@dataclass
class Case:
    """One row group of the table. Nothing is allocated until ``setup(device)`` runs."""

    op: str
    dims: dict[str, int]
    setup: Callable[[torch.device], dict]
    impls: list[Impl]
    repeats: int = REPEATS
    warmup: int = WARMUP

    @property
    def size(self) -> str:
        return size_label(self.dims)


def _centres(xyz: torch.Tensor, M: int) -> torch.Tensor:
    return ops.fps_sample(xyz, M)


def _peer_impls(peers: dict[str, Peer], key: str, name: str, make) -> list[Impl]:
    """The peer's Impl when it is listed; ``make(api, inputs)``. A broken peer's call raises its error."""
    peer = peers.get(key)
    if peer is None or not peer.listed:
        return []
    if peer.status != "ok":

        def broken(_inputs, status=peer.status):
            raise RuntimeError(f"{key} unavailable: {status.removeprefix('error: ')}")

        return [Impl(name, "peer", broken)]
    return [Impl(name, "peer", lambda x: make(peer.api, x))]


def _torch_impl(name: str, make) -> Impl:
    """A peer made of torch calls (always available); ``make(inputs)``."""
    return Impl(name, "peer", make)


def _batch_vector(B: int, N: int, device) -> torch.Tensor:
    return torch.arange(B, device=device).repeat_interleave(N)


def _fps_case(op, d, peers, reference) -> Case:
    B, N, S = d["B"], d["N"], d["S"]

    def setup(device):
        return {"xyz": _cloud(B, N, 0, device)}

    impls = [Impl("clora3d", "clora3d", lambda x: lambda: ops.furthest_point_sample(x["xyz"], S))]
    if reference:
        impls.append(Impl("reference (torch)", "reference", lambda x: lambda: ref.furthest_point_sample(x["xyz"], S)))
    impls += _peer_impls(
        peers, "pointnet2_ops", "pointnet2_ops", lambda m, x: lambda: m.furthest_point_sample(x["xyz"], S)
    )

    def tc(m, x):
        flat, batch = x["xyz"].reshape(-1, 3), _batch_vector(B, N, x["xyz"].device)
        return lambda: m.fps(flat, batch, ratio=S / N, random_start=False, batch_size=B)

    impls += _peer_impls(peers, "torch_cluster", "torch_cluster fps", tc)
    impls += _peer_impls(
        peers,
        "pytorch3d",
        "pytorch3d sample_farthest_points",
        lambda m, x: lambda: m.ops.sample_farthest_points(x["xyz"], K=S, random_start_point=False),
    )
    return Case(op, d, setup, impls)


def _knn_impls(peers, K, q_key, r_key, reference) -> list[Impl]:
    """kNN of the ``q_key`` points among the ``r_key`` points (kNN and three_nn)."""

    def cdist_topk(x):
        return lambda: torch.cdist(x[q_key], x[r_key]).topk(K, dim=-1, largest=False)

    def knn_cuda(m, x):
        knn = m.KNN(k=K, transpose_mode=True)  # how Point-MAE calls it: knn(xyz, center)
        return lambda: knn(x[r_key], x[q_key])

    def tc(m, x):
        (B, M, _), N = x[q_key].shape, x[r_key].shape[1]
        rf, qf = x[r_key].reshape(-1, 3), x[q_key].reshape(-1, 3)
        br, bq = _batch_vector(B, N, rf.device), _batch_vector(B, M, qf.device)
        return lambda: m.knn(rf, qf, K, br, bq, batch_size=B)

    def p3d(m, x):
        return lambda: m.ops.knn_points(x[q_key], x[r_key], K=K, return_sorted=True)

    impls = []
    if reference:
        impls.append(Impl("reference (torch)", "reference", lambda x: lambda: ref.knn(x[q_key], x[r_key], K)))
    impls.append(_torch_impl("torch cdist+topk", cdist_topk))
    if K != 3:  # Point-MAE's kNN; three_nn's peers are the interpolation libraries
        impls += _peer_impls(peers, "knn_cuda", "knn_cuda KNN (Point-MAE's kNN)", knn_cuda)
    impls += _peer_impls(peers, "torch_cluster", "torch_cluster knn", tc)
    impls += _peer_impls(peers, "pytorch3d", "pytorch3d knn_points", p3d)
    return impls


def _knn_case(op, d, peers, reference) -> Case:
    B, N, M, K = d["B"], d["N"], d["M"], d["K"]

    def setup(device):
        xyz = _cloud(B, N, 0, device)
        return {"xyz": xyz, "center": _centres(xyz, M)}

    clora = Impl("clora3d", "clora3d", lambda x: lambda: ops.knn(x["center"], x["xyz"], K))
    return Case(op, d, setup, [clora, *_knn_impls(peers, K, "center", "xyz", reference)])


def _gather_case(op, d, peers, reference) -> Case:
    B, N, S, C = d["B"], d["N"], d["S"], d["C"]

    def setup(device):
        g = torch.Generator().manual_seed(5)
        idx = torch.stack([torch.randperm(N, generator=g)[:S] for _ in range(B)])
        return {"feats": torch.randn(B, N, C, generator=g).to(device), "idx": idx.to(device)}

    def torch_gather(x):
        f, i = x["feats"], x["idx"].unsqueeze(-1).expand(-1, -1, C)
        return lambda: torch.gather(f, 1, i)

    def index_points(x):  # Point-MAE's segmentation code: points[batch_indices, idx, :]
        f, i = x["feats"], x["idx"]
        rows = torch.arange(B, device=f.device).view(B, 1)
        return lambda: f[rows, i, :]

    def p2(m, x):  # channel-first features, int32 indices: its own layout, prepared untimed
        ft, i32 = x["feats"].transpose(1, 2).contiguous(), x["idx"].int().contiguous()
        return lambda: m.gather_operation(ft, i32)

    impls = [Impl("clora3d", "clora3d", lambda x: lambda: ops.gather_points(x["feats"], x["idx"]))]
    impls.append(_torch_impl("torch.gather", torch_gather))
    impls.append(_torch_impl("torch indexing (Point-MAE index_points)", index_points))
    impls += _peer_impls(peers, "pointnet2_ops", "pointnet2_ops gather_operation (B,C,S)", p2)
    return Case(op, d, setup, impls)


def _three_nn_case(op, d, peers, reference) -> Case:
    B, N, M = d["B"], d["N"], d["M"]

    def setup(device):
        dense = _cloud(B, N, 1, device)
        return {"unknown": dense, "known": _centres(dense, M)}

    impls = [Impl("clora3d", "clora3d", lambda x: lambda: ops.three_nn(x["unknown"], x["known"]))]
    impls += _peer_impls(
        peers,
        "pointnet2_ops",
        "pointnet2_ops three_nn (sqrt dists)",
        lambda m, x: lambda: m.three_nn(x["unknown"], x["known"]),
    )
    return Case(op, d, setup, impls + _knn_impls(peers, 3, "unknown", "known", reference))


def _interpolate_case(op, d, peers, reference) -> Case:
    B, N, M, C = d["B"], d["N"], d["M"], d["C"]

    def setup(device):
        dense = _cloud(B, N, 1, device)
        known = _centres(dense, M)
        dist, idx = ops.three_nn(dense, known)
        feats = torch.randn(B, M, C, generator=torch.Generator().manual_seed(6)).to(device)
        return {"feats": feats, "idx": idx, "w": ops.interpolation_weights(dist)}

    def point_mae(x):  # Point-MAE's segmentation: sum(index_points(points2, idx) * weight, dim=2)
        f, i, w = x["feats"], x["idx"], x["w"].unsqueeze(-1)
        rows = torch.arange(B, device=f.device).view(B, 1, 1)
        return lambda: torch.sum(f[rows, i] * w, dim=2)

    def p2(m, x):  # channel-first features, int32 indices: its own layout, prepared untimed
        ft, i32, w = x["feats"].transpose(1, 2).contiguous(), x["idx"].int().contiguous(), x["w"].contiguous()
        return lambda: m.three_interpolate(ft, i32, w)

    impls = [Impl("clora3d", "clora3d", lambda x: lambda: ops.three_interpolate(x["feats"], x["idx"], x["w"]))]
    if reference:
        impls.append(
            Impl(
                "reference (torch)", "reference", lambda x: lambda: ref.three_interpolate(x["feats"], x["idx"], x["w"])
            )
        )
    impls.append(_torch_impl("torch indexing+sum (Point-MAE seg)", point_mae))
    impls += _peer_impls(peers, "pointnet2_ops", "pointnet2_ops three_interpolate (B,C,N)", p2)
    return Case(op, d, setup, impls)


def _chamfer_case(op, d, peers, reference) -> Case:
    B, N = d["B"], d["N"]

    def setup(device):
        return {"a": _cloud(B, N, 3, device).requires_grad_(True), "b": _cloud(B, N, 4, device)}

    def fwd_bwd(loss_fn):  # the loss and the gradient w.r.t. the prediction a (b is the target)
        def make(x):
            a, b = x["a"], x["b"]
            return lambda: torch.autograd.grad(loss_fn(a, b), a)

        return make

    def cdist_min(a, b):
        dist = torch.cdist(a, b).pow(2)
        return dist.min(2).values.mean() + dist.min(1).values.mean()

    impls = [Impl("clora3d", "clora3d", fwd_bwd(ops.chamfer_l2_loss))]
    if reference:
        impls.append(Impl("reference (torch)", "reference", fwd_bwd(ref.chamfer_l2_loss)))
    impls.append(_torch_impl("torch cdist+min", fwd_bwd(cdist_min)))
    chamfer = peers.get("chamfer")
    label = chamfer.api.label if chamfer is not None and chamfer.status == "ok" else "Point-MAE chamfer"
    impls += _peer_impls(peers, "chamfer", label, lambda m, x: fwd_bwd(m.loss)(x))
    impls += _peer_impls(
        peers,
        "pytorch3d",
        "pytorch3d chamfer_distance",
        lambda m, x: fwd_bwd(lambda a, b: m.loss.chamfer_distance(a, b)[0])(x),
    )
    return Case(op, d, setup, impls)


CASE_BUILDERS = {
    "fps": _fps_case,
    "knn": _knn_case,
    "gather": _gather_case,
    "three_nn": _three_nn_case,
    "three_interpolate": _interpolate_case,
    "chamfer fwd+bwd": _chamfer_case,
}


def kernel_cases(device: torch.device, quick: bool, peers: dict[str, Peer] | None = None) -> list[Case]:
    """The table's cases, clora3d against every listed peer (default: :func:`load_peers`). Only
    builds the list: no tensor is allocated and nothing runs until a case's ``setup``."""
    peers = load_peers(device) if peers is None else peers
    cases = []
    for op, dims in QUICK_SIZES if quick else KERNEL_SIZES:
        scene = op.endswith("(scene)")
        # the PyTorch reference is slow; at scene scale it would take minutes (FPS) or tens of GB (kNN)
        case = CASE_BUILDERS[op.removesuffix(" (scene)")](op, dict(dims), peers, not scene)
        if quick:
            case.repeats, case.warmup = QUICK_REPEATS, QUICK_WARMUP
        elif scene:
            case.repeats, case.warmup = SCENE_REPEATS, SCENE_WARMUP
        cases.append(case)
    return cases


def add_speedups(rows: list[Row]) -> list[Row]:
    """``speedup`` of every timed row = the fastest peer's median / the row's median, per (op, size);
    rows without a median, and all rows of a case without a timed peer, get none."""
    best: dict[tuple[str, str], float] = {}
    for r in rows:
        if r.kind == "peer" and r.median_ms is not None and not r.error:
            key = (r.op, r.size)
            best[key] = min(best.get(key, r.median_ms), r.median_ms)
    for r in rows:
        peer = best.get((r.op, r.size))
        r.speedup = peer / r.median_ms if peer is not None and r.median_ms else None
    return rows


def run_kernels(
    device: torch.device,
    quick: bool = False,
    cases: list[Case] | None = None,
    timer_fn: Callable | None = None,
    budget_s: float = BUDGET_S,
) -> list[Row]:
    """Time every implementation of every case; a case's inputs live only while it runs. A peer
    (or anything else) that fails becomes a row with ``error``; nothing here is fatal."""
    timer_fn = timer_fn or timer
    rows = []
    for case in kernel_cases(device, quick) if cases is None else cases:
        case_rows = [Row(case.op, case.size, i.name, i.kind) for i in case.impls]
        try:
            inputs = case.setup(device)
        except Exception as exc:
            for r in case_rows:
                r.error = f"inputs: {type(exc).__name__}: {_first_line(exc)}"
            rows += case_rows
            continue
        for impl, row in zip(case.impls, case_rows):
            repeats, warmup = case.repeats, case.warmup
            if impl.kind == "reference":
                repeats, warmup = max(3, repeats // 5), 1
            try:
                row.times_ms = list(timer_fn(device, impl.make(inputs), repeats, warmup, budget_s=budget_s))
                row.runs = len(row.times_ms)
                row.median_ms = statistics.median(row.times_ms)
            except Exception as exc:  # a peer that fails is reported, not fatal
                row.error = f"{type(exc).__name__}: {_first_line(exc)}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # e.g. after an out-of-memory error
        rows += case_rows
        del inputs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return add_speedups(rows)


# ----------------------------------------------------------------------------- model
#: "clora" is the default configuration (train_path auto: dense when training on CUDA); "clora factored" times the
#: other training path in the same run (the same numbers, fewer FLOPs, more kernel launches)
MODEL_METHODS = {
    "full": {"NAME": "full"},
    "clora": {"NAME": "clora"},
    "clora factored": {"NAME": "clora", "train_path": "factored"},
    "lora r8": {"NAME": "lora", "rank": 8},
}


def training_step(
    model: torch.nn.Module, pts: torch.Tensor, labels: torch.Tensor, precision: str, forward: Callable | None = None
) -> tuple[Callable[[], None], Callable[[], None], list[torch.nn.Parameter]]:
    """``(step, infer, trainable parameters)`` of one model row (see :func:`time_training`): a training
    step (train mode, forward, cross-entropy, backward, fused AdamW on CUDA, lr 1e-4, wd 0.05) and an
    inference call (eval, no_grad), both in ``precision`` (bf16: autocast; tf32 is set by the caller)."""
    from torch.nn import functional as F

    if precision not in ("fp32", "tf32", "bf16"):
        raise ValueError(f"precision must be fp32, tf32 or bf16, got {precision!r}")
    forward = forward or model
    device = pts.device
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=device.type == "cuda")
    ac = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else torch.autocast(device.type, enabled=False)
    )

    # as the trainer's eager steps (a no-op outside a scope; a compiled forward does its own casts)
    casts = (lambda: trainable_casts(model)) if forward is model else contextlib.nullcontext

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        with ac, casts():
            loss = F.cross_entropy(forward(pts), labels)
        loss.backward()
        opt.step()

    def infer():
        model.eval()
        with torch.no_grad(), ac:
            forward(pts)

    return step, infer, params


def time_training(
    model: torch.nn.Module,
    pts: torch.Tensor,
    labels: torch.Tensor,
    precision: str,
    repeats: int,
    warmup: int,
    forward: Callable | None = None,
    timer_fn: Callable = None,
) -> dict:
    """One model row's timings: a training step (train mode, forward, cross-entropy, backward, fused
    AdamW over the trainable parameters, lr 1e-4, wd 0.05) and inference (eval, no_grad), in
    ``precision`` (fp32, tf32: fp32 with TF32 matmuls, bf16: autocast); peak allocated memory over the
    timed steps. ``forward`` defaults to the model (a compiled one may be given); ``timer_fn`` to
    :func:`timer`. Used for clora3d's rows and the original Point-MAE code's alike."""
    timer_fn = timer_fn or timer
    device = pts.device
    B, N = pts.shape[:2]
    step, infer, params = training_step(model, pts, labels, precision, forward)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    # TF32 for both matmuls and cuDNN convolutions (Point-MAE's Conv1d layers; cuDNN's default is
    # TF32 on): "fp32" rows are full float32 for every model
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        with reuse_frozen_casts(model):  # as the trainer does for an epoch under train.amp
            t_step = timer_fn(device, step, repeats, warmup)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            t_inf = timer_fn(device, infer, repeats, warmup)
    finally:
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    for p in params:  # free the gradients and (with opt) the optimizer state before the next row
        p.grad = None
    ms = statistics.median(t_step)
    return dict(
        trainable=sum(p.numel() for p in params),
        step_ms=ms,
        samples_per_s=1e3 * B / ms,
        peak_mib=peak,
        inference_ms=statistics.median(t_inf),
        batch=B,
        points=N,
    )


def model_inputs(device: torch.device, quick: bool) -> tuple[str, torch.Tensor, torch.Tensor, int, int, int]:
    """(preset, points (B,N,3), labels (B,), classes, repeats, warmup): the same inputs for every model row."""
    preset, B, N, C = ("tiny", 4, 256, 10) if quick else ("vit_s", 32, 1024, 40)
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(B, N, 3, generator=g).to(device)
    labels = torch.randint(0, C, (B,), generator=g).to(device)
    repeats, warmup = (2, 1) if quick else (20, 5)
    return preset, pts, labels, C, repeats, warmup


def row_model(name: str, preset: str, classes: int, device: torch.device) -> torch.nn.Module:
    """The model of one row: the ``preset`` classifier with ``MODEL_METHODS[name]`` applied, seed 0."""
    from clora3d.engine import build

    torch.manual_seed(0)
    cfg = {
        "model": {"NAME": "PointTransformer", "preset": preset, "cls_dim": classes},
        "peft": dict(MODEL_METHODS[name]),
    }
    model = build.build_model(cfg)
    build.build_method(model, cfg)
    return model.to(device)


def run_model(
    device: torch.device,
    quick: bool = False,
    methods=tuple(MODEL_METHODS),
    precisions=("fp32", "tf32", "bf16"),
    compile_mode: str | None = None,
) -> list[dict]:
    """clora3d's model rows. ``compile_mode``: time the model compiled as ``train.compile`` does
    (``build.compile_forward``: fullgraph, in that mode: ``default``, ``reduce-overhead`` = Inductor +
    CUDA graphs, ...) instead; the precision is then labelled ``<precision> + compile`` (``+
    compile(<mode>)`` for a mode other than reduce-overhead). A row that fails (a compile error, say)
    is an error row, not the end of the run."""
    from clora3d.engine import build

    preset, pts, labels, C, repeats, warmup = model_inputs(device, quick)
    suffix = (
        "" if compile_mode is None else " + compile" + ("" if compile_mode == COMPILE_MODE else f"({compile_mode})")
    )
    rows = []
    for name in methods:
        for prec in precisions:
            try:
                model = row_model(name, preset, C, device)
                if compile_mode is None:
                    fwd = model
                else:
                    torch._dynamo.reset()  # each row compiles its own model from scratch
                    fwd = build.compile_forward(model, True if compile_mode == "default" else compile_mode)
                row = time_training(model, pts, labels, prec, repeats, warmup, forward=fwd)
                rows.append(dict(method=name, precision=prec + suffix, **row, preset=preset))
            except Exception as exc:  # reported in the table, never fatal
                rows.append(_error_row(name, exc, prec + suffix))
            if device.type == "cuda":  # the next configuration rebinds model / opt; free the cache
                torch.cuda.empty_cache()
    return rows


def run_original(
    device: torch.device, quick: bool = False, precisions=("fp32", "tf32", "bf16"), checkout=None
) -> list[dict]:
    """Full fine-tuning of the ORIGINAL Point-MAE code (benchmarks/point_mae_original.py, imported from the
    carried checkout ``build/peers/Point-MAE``) on the inputs of :func:`run_model`, timed by the same
    timer. Without the checkout, or when it fails to build, one error row says why (never fatal)."""
    from benchmarks import point_mae_original as pmo

    checkout = Path(checkout) if checkout else pmo.DEFAULT_CHECKOUT
    _, pts, labels, C, repeats, warmup = model_inputs(device, quick)
    if not (checkout / "models" / "Point_MAE.py").exists():
        return [{"method": pmo.METHOD, "error": f"not carried: no {checkout}/models/Point_MAE.py (docs/gpu.md)"}]
    try:
        model, info = pmo.build_original(
            checkout,
            cls_dim=C,
            device=device,
            pointnet2="require" if device.type == "cuda" else "standin",
        )
        # the original is always Point-MAE's ViT-S (its own config), also in --quick (tiny inputs)
        rows = pmo.time_original(model, pts, labels, precisions, repeats, warmup, timer=timer, preset="vit_s")
    except Exception as exc:  # reported, not fatal
        return [_error_row(pmo.METHOD, exc)]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for r in rows:
        r["knn"] = info.get("knn")
    return rows


#: what the step profile covers: full fine-tuning against the PEFT methods that freeze the backbone
PROFILE_METHODS = ("full", "clora", "clora factored", "lora r8")
#: CUDA runtime calls that wait for the device (or copy, which may wait): the host stalls of a step
SYNC_CALLS = frozenset(
    ["cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpyAsync"]
)


def profile_summary(averages, steps: int, top: int = 8) -> dict:
    """Per-step figures from ``torch.profiler``'s ``key_averages()`` of ``steps`` training steps: GPU
    busy time (the kernels' own device time, summed), kernels launched, CUDA runtime calls that wait
    or copy (``SYNC_CALLS``), aten ops dispatched (nested calls included) and the ``top`` kernels by
    device time. On the CPU the GPU fields are None."""
    from torch.autograd import DeviceType

    gpu = [a for a in averages if a.device_type == DeviceType.CUDA]
    cpu = [a for a in averages if a.device_type == DeviceType.CPU]
    busy_us = sum(a.self_device_time_total for a in gpu)
    return {
        "gpu_busy_ms": busy_us / 1e3 / steps if gpu else None,
        "kernels": sum(a.count for a in gpu) / steps if gpu else None,
        "sync_calls": sum(a.count for a in cpu if a.key in SYNC_CALLS) / steps,
        "aten_ops": sum(a.count for a in cpu if a.key.startswith("aten::")) / steps,
        "top_kernels": [
            {"name": a.key[:100], "ms": a.self_device_time_total / 1e3 / steps, "calls": a.count / steps}
            for a in sorted(gpu, key=lambda a: -a.self_device_time_total)[:top]
        ],
    }


def profile_training(
    device: torch.device, quick: bool = False, methods=PROFILE_METHODS, precisions=("fp32", "bf16"), steps: int = 0
) -> list[dict]:
    """torch.profiler over ``steps`` training steps (after warm-up) of each model row of
    :func:`run_model`'s inputs: where a step's time goes (GPU busy against wall, kernels, host stalls),
    the diagnosis behind the model table. Wall times here include the profiler's own cost. A row that
    fails is an error row."""
    from torch.profiler import ProfilerActivity, profile

    preset, pts, labels, C, _, warmup = model_inputs(device, quick)
    steps = steps or (2 if quick else 5)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    rows = []
    for name in methods:
        for prec in precisions:
            torch.set_float32_matmul_precision("high" if prec == "tf32" else "highest")
            try:
                model = row_model(name, preset, C, device)
                step, _, _ = training_step(model, pts, labels, prec)
                with reuse_frozen_casts(model):  # as the trainer does for an epoch under train.amp
                    for _ in range(warmup):
                        step()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    t0 = time.perf_counter()
                    with profile(activities=acts) as prof:
                        for _ in range(steps):
                            step()
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                    wall = 1e3 * (time.perf_counter() - t0) / steps
                summary = profile_summary(prof.key_averages(), steps)
                if device.type == "cuda":  # the synchronize that ends the profiled region is not the steps'
                    summary["sync_calls"] = max(0.0, summary["sync_calls"] - 1 / steps)
                rows.append(dict(method=name, precision=prec, preset=preset, steps=steps, wall_ms=wall, **summary))
            except Exception as exc:  # reported, never fatal
                rows.append(_error_row(name, exc, prec))
            finally:
                torch.set_float32_matmul_precision("highest")
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def profile_table(rows: list[dict]) -> str:
    lines = [
        "| method | precision | wall ms / step (profiled) | GPU busy ms / step | kernels / step "
        "| sync + memcpy calls / step | aten ops / step | top kernels (ms / step) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['precision']} | error: {_cell(r['error'])} | - | - | - | - | - |")
            continue
        top = "; ".join(f"{_cell(k['name'][:48])} {k['ms']:.2f}" for k in r["top_kernels"][:3]) or "-"
        lines.append(
            f"| {r['method']} | {r['precision']} | {r['wall_ms']:.2f} | {_f(r['gpu_busy_ms'], '{:.2f}')} | "
            f"{_f(r['kernels'], '{:.0f}')} | {r['sync_calls']:.1f} | {r['aten_ops']:.0f} | {top} |"
        )
    return "\n".join(lines)


#: torch.compile mode of the compiled model rows (``--compile``): Inductor with CUDA graphs, the
#: mode meant for a small model whose eager step is bound by kernel launches
COMPILE_MODE = "reduce-overhead"

#: the GPU issue's bars for the model table (all from one run)
MODEL_BARS = (
    ("CLoRA step / full FT step", "clora", "full", "<=", 1.0),
    ("original full FT step / CLoRA step", "original", "clora", ">=", 2.0),
    ("CLoRA peak / original peak", "clora", "original", "<=", 0.25, "peak_mib"),
)


def model_summary(rows: list[dict]) -> list[dict]:
    """The GPU issue's model criteria, computed from the rows of one run: per precision, CLoRA's step
    against clora3d's full fine-tuning and against the original Point-MAE code, CLoRA's peak memory
    against the original's; bf16 against fp32 for full fine-tuning and CLoRA (bar 1.3x). Compiled rows
    (``<precision> + compile``) are compared with compiled full fine-tuning and with the original code
    run eagerly in the same precision (it has no compiled rows)."""
    by = {}
    presets = {r["preset"] for r in rows if "error" not in r and not r["method"].startswith("original")}
    for r in rows:
        if "error" in r or r["preset"] not in presets:  # only rows of the same model size are compared
            continue
        key = "original" if r["method"].startswith("original") else r["method"]
        by[(key, r["precision"])] = r
    out = []
    for prec in sorted({p for _, p in by}):
        eager = prec.split(" + compile")[0]
        for bar in MODEL_BARS:
            label, a, b, op, limit = bar[:5]
            field = bar[5] if len(bar) > 5 else "step_ms"
            ra, rb = by.get((a, prec)), by.get((b, prec))
            if prec != eager and "original" in (a, b) and (ra is None or rb is None):
                # compiled rows against the original code as it runs (eager, the same precision)
                ra, rb = (
                    by.get((a, eager if a == "original" else prec)),
                    by.get((b, eager if b == "original" else prec)),
                )
                label = label.replace("original full FT", "original full FT (eager)")
            if ra is None or rb is None or ra.get(field) is None or rb.get(field) is None:
                continue
            value = ra[field] / rb[field]
            met = value <= limit if op == "<=" else value >= limit
            out.append({"criterion": label, "precision": prec, "value": value, "bar": f"{op} {limit:g}", "met": met})
    suffixes = sorted({p[len("fp32") :] for _, p in by if p.startswith("fp32")})
    for m in ("full", "clora"):
        for suffix in suffixes:
            fp32, bf16 = by.get((m, "fp32" + suffix)), by.get((m, "bf16" + suffix))
            if fp32 and bf16:
                value = fp32["step_ms"] / bf16["step_ms"]
                out.append(
                    {
                        "criterion": f"{m}: fp32 step / bf16 step",
                        "precision": "bf16" + suffix,
                        "value": value,
                        "bar": ">= 1.3",
                        "met": value >= 1.3,
                    }
                )
    return out


def model_summary_table(summary: list[dict]) -> str:
    lines = ["| criterion | precision | measured | bar | met |", "|---|---|---:|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['criterion']} | {s['precision']} | {s['value']:.2f} | {s['bar']} | {'yes' if s['met'] else 'no'} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tables
def _f(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def _cell(text: str) -> str:
    return text.replace("|", "/")


def kernel_table(rows: list[Row]) -> str:
    """Every row: ``vs best peer`` = the fastest peer's median / the row's median (> 1: faster)."""
    lines = ["| op | size | implementation | median ms | vs best peer |", "|---|---|---|---:|---:|"]
    for r in rows:
        tail = f"error: {_cell(r.error)}" if r.error else _f(r.speedup, "{:.2f}x")
        lines.append(f"| {r.op} | {r.size} | {_cell(r.impl)} | {_f(r.median_ms)} | {tail} |")
    return "\n".join(lines)


def kernel_summary(rows: list[Row], bar: float = SPEEDUP_BAR) -> list[dict]:
    """One entry per case: clora3d's median, the fastest peer and its median, the ratio, the verdict."""
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        e = out.setdefault((r.op, r.size), {"op": r.op, "size": r.size, "clora3d_ms": None, "best_peer": None})
        e.setdefault("peer_ms", None)
        if r.kind == "clora3d":
            e["clora3d_ms"], e["clora3d_error"] = r.median_ms, r.error
        elif r.kind == "peer" and r.median_ms is not None and not r.error:
            if e["peer_ms"] is None or r.median_ms < e["peer_ms"]:
                e["best_peer"], e["peer_ms"] = r.impl, r.median_ms
    for e in out.values():
        ok = e["clora3d_ms"] and e["peer_ms"] is not None
        e["vs_best_peer"] = e["peer_ms"] / e["clora3d_ms"] if ok else None
        e["meets_bar"] = None if e["vs_best_peer"] is None else e["vs_best_peer"] >= bar
    return list(out.values())


def summary_table(summary: list[dict], bar: float = SPEEDUP_BAR) -> str:
    lines = [
        f"| op | size | clora3d ms | best peer | peer ms | vs best peer | >= {bar:g}x |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for e in summary:
        verdict = {True: "yes", False: "NO", None: "-"}[e["meets_bar"]]
        if e.get("clora3d_error"):
            verdict = "clora3d failed"
        elif e["peer_ms"] is None:
            verdict = "no peer timed"
        lines.append(
            f"| {e['op']} | {e['size']} | {_f(e['clora3d_ms'])} | {_cell(e['best_peer'] or '-')} | "
            f"{_f(e['peer_ms'])} | {_f(e['vs_best_peer'], '{:.2f}x')} | {verdict} |"
        )
    return "\n".join(lines)


def peer_lines(peers: dict[str, Peer]) -> list[str]:
    return [f"peer {p.name}: {p.status}" for p in peers.values()]


def model_table(rows: list[dict]) -> str:
    lines = [
        "| method | precision | trainable | train step ms | samples/s | peak MiB | inference ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r.get('precision', '-')} | - | error: {_cell(r['error'])} | - | - | - |")
            continue
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
    env["peers"] = {name: p.status for name, p in load_peers(device).items()}
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["kernels", "model", "profile", "all", "peers"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few calls (tests, CPU)")
    ap.add_argument(
        "--compile",
        nargs="?",
        const=COMPILE_MODE,
        default=None,
        metavar="MODE",
        help=f"model: also time torch.compile(fullgraph=True), full and CLoRA, fp32 and bf16, after the eager "
        f"table (MODE: {COMPILE_MODE} when omitted, or default, max-autotune, ...)",
    )
    ap.add_argument(
        "--point-mae", default=None, help="model: the original Point-MAE checkout (default build/peers/Point-MAE)"
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU (torch.cuda.is_available() is False); use --device cpu")
    if args.what == "peers":  # which peers this run would time, and why not the others
        print("\n".join(peer_lines(load_peers(device))))
        return 0
    out = {"environment": environment(device)}
    if args.what in ("kernels", "all"):
        rows = run_kernels(device, args.quick)
        out["kernels"] = [asdict(r) for r in rows]
        out["kernel_summary"] = kernel_summary(rows)
        print(kernel_table(rows), flush=True)
        print(f"\nclora3d against its fastest peer (bar: {SPEEDUP_BAR:g}x, same run, medians):\n")
        print(summary_table(out["kernel_summary"]))
        print("\n" + "; ".join(peer_lines(load_peers(device))) + "\n", flush=True)
    if args.what in ("model", "all"):
        mrows = run_original(device, args.quick, checkout=args.point_mae) + run_model(device, args.quick)
        out["model"] = mrows
        out["model_summary"] = model_summary(mrows)
        print(model_table(mrows), flush=True)
        print("\nThe GPU issue's model criteria (same run, medians):\n")
        print(model_summary_table(out["model_summary"]), flush=True)
    if args.what in ("profile", "all"):  # after the eager tables, before the compiled rows
        prows = profile_training(device, args.quick)
        out["profile"] = prows
        print("\nWhere a training step's time goes (torch.profiler, after warm-up; wall includes the profiler):\n")
        print(profile_table(prows), flush=True)
    if args.what in ("model", "all") and args.compile:  # last: the longest and the least certain part
        crows = run_model(
            device, args.quick, methods=("full", "clora"), precisions=("fp32", "bf16"), compile_mode=args.compile
        )
        mrows += crows
        out["model_summary"] = model_summary(mrows)
        print(f"\nCompiled (torch.compile fullgraph, mode {args.compile}), same inputs:\n")
        print(model_table(crows), flush=True)
        print("\nThe model criteria with the compiled rows (same run, medians):\n")
        print(model_summary_table(out["model_summary"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
