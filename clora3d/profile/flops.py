"""Parameter, FLOP and MAC accounting with explicit units.

Three counts, all for one forward pass of the given input (report them per sample with batch 1):

* :func:`count_flops` -- PyTorch's own ``torch.utils.flop_counter.FlopCounterMode``. Unit: FLOPs, one
  multiply-add = 2 FLOPs. It counts matrix products and convolutions (``mm``/``addmm``/``bmm``/
  ``convolution``/attention kernels); bias adds, norms, activations, softmax and pooling count 0.
  In torch 2.x the CPU attention kernel ``aten._scaled_dot_product_flash_attention_for_cpu`` has no
  formula in the registry (measured: it counts 0), so it is passed as a ``custom_mapping`` with the
  same formula torch uses for the GPU kernels (4 * B * H * Lq * Lk * head_dim: QK^T and AV). The
  grouping (FPS + kNN, module ``group_divider``) is excluded and reported analytically instead.
  ``macs = flops / 2`` (exact: every counted op is a multiply-add product). These are the operations
  actually executed: clora3d's patch encoder applies the first ``second_conv`` layer to the group
  feature once per group instead of to k copies, so its count is below the nominal (thop) one.
* :func:`thop_macs` -- the literature's "GFLOPs": multiply-accumulates of ``nn.Linear``, ``nn.Conv1d``
  and ``nn.Conv2d`` (IDPT's EdgeConvs) modules only (thop semantics; bias, BN, norms ignored; the
  patch encoder counted at its nominal reference cost), and separately the attention matmuls (2 * B * L^2 * D MACs per
  attention layer), counted analytically. Like thop, it does not see
  computation done outside Linear/Conv1d modules (e.g. unmerged LoRA/CLoRA branches, which are
  plain matmuls): use :func:`count_flops` for those.
* :func:`grouping_cost` -- analytic cost of FPS and kNN (see its docstring for the formula).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from clora3d.models.utils import head_parameter_ids

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """FLOPs of the CPU flash-attention kernel (same formula as torch's GPU SDPA kernels)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _op_name(op: Any) -> str:
    return str(op).replace("aten.", "")


def parameter_report(model: nn.Module, method: Any = None) -> dict[str, int]:
    """Total / trainable parameter counts, with and without the task head.

    ``trainable`` comes from ``method.trainable_parameters()`` when a PEFT method is given (also
    correct after ``merge``), else from ``requires_grad``. Totals include PEFT parameters attached to
    the model. Buffers (BN statistics) are never counted, as in the references.
    """
    head = head_parameter_ids(model)
    params = list(model.parameters())
    if method is not None:
        trainable = list(method.trainable_parameters().values())
    else:
        trainable = [p for p in params if p.requires_grad]
    return {
        "total": sum(p.numel() for p in params),
        "total_without_head": sum(p.numel() for p in params if id(p) not in head),
        "trainable": sum(p.numel() for p in trainable),
        "trainable_without_head": sum(p.numel() for p in trainable if id(p) not in head),
        "head": sum(p.numel() for p in params if id(p) in head),
    }


def _run_eval(model: nn.Module, pts: torch.Tensor) -> None:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(pts)
    finally:
        model.train(was)


def count_flops(model: nn.Module, pts: torch.Tensor, exclude: tuple[str, ...] = ("group_divider",)) -> dict[str, Any]:
    """FLOPs of one eval-mode forward of ``pts`` with ``FlopCounterMode`` (see module docstring).

    Returns ``flops`` (without the ``exclude`` submodules), ``macs`` (= flops / 2), ``attention_flops``,
    ``by_op`` (FLOPs per aten op), ``excluded`` (FLOPs counted inside each excluded submodule) and ``unit``.
    """
    with FlopCounterMode(display=False, custom_mapping={_CPU_SDPA: _cpu_sdpa_flop}) as fc:
        _run_eval(model, pts)
    counts = fc.get_flop_counts()
    root = type(model).__name__
    glob = dict(counts.get("Global", {}))
    excluded: dict[str, int] = {}
    for name in exclude:
        sub = counts.get(f"{root}.{name}", {})
        excluded[name] = int(sum(sub.values()))
        for op, v in sub.items():
            glob[op] = glob.get(op, 0) - v
    by_op = {_op_name(op): int(v) for op, v in glob.items() if v}
    total = int(sum(by_op.values()))
    attn = int(sum(v for k, v in by_op.items() if "attention" in k))
    return {
        "flops": total,
        "macs": total // 2,
        "attention_flops": attn,
        "by_op": by_op,
        "excluded": excluded,
        "unit": "FLOPs (1 MAC = 2 FLOPs; matmul/conv/attention only; torch.utils.flop_counter)",
    }


def thop_macs(model: nn.Module, pts: torch.Tensor) -> dict[str, int]:
    """thop-style MACs: ``nn.Linear`` + ``nn.Conv1d``/``nn.Conv2d`` modules, plus the attention matmuls
    counted analytically.

    Linear modules are counted by forward hooks (``out.numel() * in_features``). The patch encoder
    runs its 1x1 ``Conv1d`` weights as matmuls (and evaluates the global feature once per group), so
    hooks on its convs would not fire; it is counted nominally, as thop counts the reference's
    concat-then-conv encoder: ``B * G * k * sum(in * out)`` over its Conv1d modules, from the shape of
    the encoder's input. Returns ``linear_conv`` (the thop number), ``attention`` (2 * B * L^2 * D per
    attention layer: QK^T and AV) and ``with_attention`` (their sum).
    """
    from clora3d.models.encoder import Encoder
    from clora3d.models.transformer import Attention

    tot = {"linear_conv": 0, "attention": 0}

    def lin_hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        tot["linear_conv"] += out.numel() * m.in_features

    def conv_hook(m: nn.Conv1d | nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        tot["linear_conv"] += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def encoder_hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        n_points = args[0].shape[:-1].numel()  # B * G * k
        tot["linear_conv"] += n_points * sum(
            c.out_channels * (c.in_channels // c.groups) * c.kernel_size[0]
            for c in m.modules()
            if isinstance(c, nn.Conv1d)
        )

    def attn_hook(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        B, L, C = args[0].shape
        tot["attention"] += 2 * B * L * L * C

    in_encoder = {id(c) for m in model.modules() if isinstance(m, Encoder) for c in m.modules()}
    handles = []
    for m in model.modules():
        if isinstance(m, Encoder):
            handles.append(m.register_forward_hook(encoder_hook))
        elif id(m) in in_encoder:
            continue
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(lin_hook))
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, Attention):
            handles.append(m.register_forward_hook(attn_hook))
    try:
        _run_eval(model, pts)
    finally:
        for h in handles:
            h.remove()
    return {**tot, "with_attention": tot["linear_conv"] + tot["attention"]}


def grouping_cost(n_points: int, num_group: int, group_size: int, batch: int = 1) -> dict[str, int]:
    """Analytic cost of the grouping step (not seen by any counter; custom ops in the references).

    * FPS of S = ``num_group`` centres from N points: after the first centre, each of the S - 1
      iterations computes the squared distance of all N points to the newest centre (3 sub + 3 mul +
      2 add = 8 FLOPs per point), updates the running minimum (N comparisons) and takes the argmax
      (N comparisons): ``fps_flops = 8 N (S - 1)``, ``fps_comparisons = 2 N (S - 1)``.
    * brute-force kNN of k = ``group_size`` among N for the S centres: ``knn_flops = 8 S N`` for the
      distances, and a heap top-k selection ``knn_comparisons = S N ceil(log2 k)``.
    * relative coordinates: ``3 S k`` subtractions (``relative_flops``).
    All values are per batch of ``batch`` clouds.
    """
    N, S, k = int(n_points), int(num_group), int(group_size)
    fps = 8 * N * (S - 1)
    knn = 8 * S * N
    rel = 3 * S * k
    out = {
        "fps_flops": fps,
        "fps_comparisons": 2 * N * (S - 1),
        "knn_flops": knn,
        "knn_comparisons": S * N * max(1, math.ceil(math.log2(k))) if k > 1 else S * N,
        "relative_flops": rel,
    }
    out = {key: v * batch for key, v in out.items()}
    out["total_flops"] = out["fps_flops"] + out["knn_flops"] + out["relative_flops"]
    return out
