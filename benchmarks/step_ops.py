"""CPU proxies of GPU step cost: aten ops dispatched, Python calls and host syncs per training step, per method.

``python benchmarks/step_ops.py [--preset tiny|vit_s] [--precision fp32,bf16] [--batch 2] [--methods full,clora,...] [--json F]``

On a GPU the training step of a small model is bound by the host: every aten op is one or more
kernel launches plus Python and dispatcher overhead, and every read of a device value on the host
(``.item()``, ``bool(t)``, data-dependent shapes) stalls the stream. Both can be counted on the CPU
with a ``TorchDispatchMode``, so work on a machine without a GPU can make progress and not regress.
"kernel-launching ops" leaves out the ops that launch nothing on a GPU (views, metadata; see
``LAUNCH_FREE_OPS``): the closer proxy of a launch-bound step. The CPU AdamW (foreach) stands in for
the fused CUDA one.

One step = forward, cross-entropy, the method's regularisation loss, backward, AdamW step over the
trainable parameters, ``zero_grad``. ``bf16``: forward and losses under ``torch.autocast("cpu",
torch.bfloat16)``, the CPU stand-in for the trainer's CUDA autocast (the same rule: matmuls cast
their float32 inputs, so every cast is a ``_to_copy`` launch here and a kernel there; the two
autocast op lists differ in details), inside ``reuse_frozen_casts`` as the trainer's epochs.
Counted after one warm-up step (lazy initialisations excluded).
"Python calls" counts the Python functions a step runs (``sys.setprofile`` "call" events, in a step
of its own without the op counter, whose ``__torch_dispatch__`` is Python too): module calls, hooks,
autograd functions' forward and backward, the optimizer's Python. It is the host cost that op
counts miss; on a GPU each is host time the stream may wait for, as each op is. It depends on what
the process did before (after any ``torch.compile``, torch's dynamo-disabled wrappers, the
optimizer's among them, take more calls), so compare counts made as the record is: by this script.
"host syncs" (forward + backward only: the CPU AdamW reads its step counters with ``.item()``, which
the fused CUDA AdamW does not) counts the ops that return a device value to the host or whose output shape depends on
the data: ``_local_scalar_dense`` (``.item()``, ``bool()``, ``int()``), ``is_nonzero``, ``equal``,
``nonzero``, ``masked_select``, ``unique*``, ``_assert_async`` excluded (asynchronous).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SYNC_OPS = (
    "_local_scalar_dense",
    "is_nonzero",
    "equal",
    "nonzero",
    "masked_select",
    "unique",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
)

#: ops that launch no kernel on a GPU (views, metadata, allocation only); the rest is a proxy of the
#: kernel launches of a step (a composite op may launch more than one, a fused one fewer)
LAUNCH_FREE_OPS = frozenset(
    "view _unsafe_view _reshape_alias reshape t transpose permute expand expand_as unsqueeze squeeze "
    "detach alias slice select as_strided unbind split split_with_sizes chunk narrow view_as diagonal "
    "lift_fresh empty empty_like new_empty new_empty_strided _local_scalar_dense".split()
)

METHODS = {
    "full": {"NAME": "full"},
    "linear": {"NAME": "linear"},
    "bitfit": {"NAME": "bitfit"},
    "lora": {"NAME": "lora"},
    "clora": {"NAME": "clora"},
    "clora parallel": {"NAME": "clora", "placement": "parallel"},
    "clora dense": {"NAME": "clora", "train_path": "dense"},
    "clora parallel dense": {"NAME": "clora", "placement": "parallel", "train_path": "dense"},
    "adapter": {"NAME": "adapter"},
    "prompt": {"NAME": "prompt"},
    "pointlora": {"NAME": "pointlora"},
    "dapt": {"NAME": "dapt"},
    "pointgst": {"NAME": "pointgst"},
    "idpt": {"NAME": "idpt"},
}


def count_python_calls(fn) -> int:
    """How many Python functions ``fn()`` runs (``sys.setprofile`` "call" events: function calls and
    generator resumptions, on this thread; a CPU backward runs on the calling thread)."""
    n = 0

    def profile(frame, event, arg):  # noqa: ANN001
        nonlocal n
        if event == "call":
            n += 1

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(previous)
    return n - 1  # fn itself


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_step(
    method: str, preset: str = "tiny", batch: int = 2, points: int | None = None, precision: str = "fp32"
) -> dict:
    from clora3d.engine import build
    from clora3d.models.transformer import reuse_frozen_casts, trainable_casts

    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    torch.manual_seed(0)
    C = 40
    cfg = {"model": {"NAME": "PointTransformer", "preset": preset, "cls_dim": C}, "peft": dict(METHODS[method])}
    model = build.build_model(cfg)
    m = build.build_method(model, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, foreach=True)
    n = points or (1024 if preset == "vit_s" else 256)
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(batch, n, 3, generator=g)
    labels = torch.randint(0, C, (batch,), generator=g)
    model.train()

    def fwd_bwd():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"), trainable_casts(model):
            loss = F.cross_entropy(model(pts), labels)
            reg = m.regularization_loss()
            if reg is not None:
                loss = loss + reg
        loss.backward()

    def opt_step():
        opt.step()
        opt.zero_grad(set_to_none=True)

    with reuse_frozen_casts(model):  # as the trainer runs an epoch (it matters under autocast only)
        fwd_bwd()  # warm-up
        opt_step()
        with CountOps() as c:
            fwd_bwd()
        with CountOps() as o:
            opt_step()
        py_fwd_bwd = count_python_calls(fwd_bwd)
        py_opt = count_python_calls(opt_step)
    syncs = {k: v for k, v in c.ops.items() if k in SYNC_OPS}
    launching = sum(v for k, v in (c.ops + o.ops).items() if k not in LAUNCH_FREE_OPS)
    return {
        "method": method,
        "preset": preset,
        "precision": precision,
        "batch": batch,
        "aten_ops": sum(c.ops.values()) + sum(o.ops.values()),
        "fwd_bwd_ops": sum(c.ops.values()),
        "optimizer_ops": sum(o.ops.values()),
        "launch_ops": launching,
        "python_calls": py_fwd_bwd + py_opt,
        "python_calls_fwd_bwd": py_fwd_bwd,
        "host_syncs": sum(syncs.values()),
        "sync_ops": syncs,
        "trainable": sum(p.numel() for p in params),
        "top_ops": c.ops.most_common(12),
    }


def table(rows: list[dict]) -> str:
    """Markdown table; ratios against full fine-tuning of the same preset and precision."""
    full = {(r["preset"], r["precision"]): r for r in rows if r["method"] == "full"}
    lines = [
        "| method | preset | precision | aten ops / step (fwd+bwd, optimizer) | vs full FT | kernel-launching ops "
        "| vs full FT | Python calls / step (fwd+bwd) | vs full FT | host syncs fwd+bwd | trainable |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f = full.get((r["preset"], r["precision"]))
        ratio = f"{r['aten_ops'] / f['aten_ops']:.2f}" if f else "-"
        lratio = f"{r['launch_ops'] / f['launch_ops']:.2f}" if f else "-"
        pratio = f"{r['python_calls'] / f['python_calls']:.2f}" if f else "-"
        lines.append(
            f"| {r['method']} | {r['preset']} B{r['batch']} | {r['precision']} | {r['aten_ops']} ({r['fwd_bwd_ops']}, "
            f"{r['optimizer_ops']}) | {ratio} | {r['launch_ops']} | {lratio} | {r['python_calls']} "
            f"({r['python_calls_fwd_bwd']}) | {pratio} | {r['host_syncs']} | {r['trainable']:,} |"
        )
    return "\n".join(lines)


#: the record rendered into README.md (tools/render_bench_tables.py) and checked by tests/test_step_ops.py
RECORD_JSON = "docs/bench/step_ops.json"
RECORD_COMMAND = f"python benchmarks/step_ops.py --preset tiny,vit_s --precision fp32,bf16 --json {RECORD_JSON}"


def readme_block(record: dict, json_path: str = RECORD_JSON) -> str:
    """The README's table of the recorded counts (``record``: what ``--json`` writes)."""
    return (
        f"From `{json_path}`, written by `{record['command']}` with torch {record['torch']} (rendered by "
        f"`tools/render_bench_tables.py`; `tests/test_step_ops.py` fails when a step dispatches more than "
        f"recorded there).\n\n" + table(record["rows"])
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", help="tiny, vit_s, or both (comma list)")
    ap.add_argument("--precision", default="fp32", help="fp32, bf16 (CPU autocast), or both (comma list)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--json", default=None, help=f"write the record ({RECORD_COMMAND} is the README's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for precision in args.precision.split(","):
        for preset in args.preset.split(","):
            for name in args.methods.split(","):
                rows.append(count_step(name.strip(), preset.strip(), args.batch, precision=precision.strip()))
    print(table(rows))
    if args.json:
        command = "python benchmarks/step_ops.py " + " ".join(argv if argv is not None else sys.argv[1:])
        record = {"torch": torch.__version__, "command": command, "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
