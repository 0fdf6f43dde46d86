#!/usr/bin/env python
"""SADE ablation on the demo benchmark's scan task: CLoRA with each init x lambda x normalisation
variant, several seeds; prints accuracy (mean +- std), the ratio of the SADE gradient norm to the
task gradient norm on the CLoRA parameters, and how similar each LRM's components end up.

    python tools/sade_ablation.py                      # pre-trains the demo backbone first (~2-4 min)
    python tools/sade_ablation.py --ckpt demo_out/pretrain.pth   # reuse the demo's pre-training

See benchmarks/ranking.py (sade_ablation, SADE_VARIANTS)."""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="sade_ablation_out", help="output folder (pre-training, table, JSON)")
    ap.add_argument(
        "--ckpt",
        default=None,
        help="pre-trained tiny Point-MAE checkpoint (default: pre-train one exactly as `make demo` does)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    ap.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the demo's)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 1 epoch: a smoke test")
    ap.add_argument(
        "--record",
        default=None,
        help="also write header, rows and runs to this JSON file (the "
        "docs' copy: docs/bench/sade_ablation.json, rendered into "
        "docs/peft.md by tools/render_bench_tables.py)",
    )
    args = ap.parse_args()

    import torch

    # one intra-op thread, as the demo's benchmark: float sums (and so every run) depend on the thread
    # count; with one thread the "xavier, 0.01 norm" row repeats the demo's clora row seed by seed
    torch.set_num_threads(1)

    from benchmarks import demo
    from benchmarks import ranking as B
    from clora3d.errors import Clora3dError
    from clora3d.models.checkpoint import read_checkpoint

    try:
        t0 = time.perf_counter()
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        dsize = demo.QUICK if args.quick else demo.FULL
        bsize = demo.QUICK_BENCH if args.quick else demo.FULL_BENCH
        bsize = B.BenchSize(
            **{
                **bsize.__dict__,
                "seeds": tuple(args.seeds),
                "tasks": ("scan",),
                **({"epochs": args.epochs} if args.epochs else {}),
            }
        )
        if args.ckpt:
            ckpt = Path(args.ckpt)
        else:
            print("=== pre-training the demo backbone ===", flush=True)
            data = demo.write_data(out, dsize)
            ckpt = demo.pretrain(out, data, dsize)
        state = read_checkpoint(ckpt)
        print("=== SADE ablation (CLoRA on the scan task) ===", flush=True)
        res = B.sade_ablation(state, bsize)
        table = B.format_ablation(res["rows"])
        header = (
            f"SADE ablation, {demo._machine()}; CLoRA p=4 r=8 pre_proj on the demo's scan task "
            f"({bsize.num_classes} classes x {bsize.n_train} train / {bsize.n_test} test scans, "
            f"{bsize.epochs} epochs, seeds {list(bsize.seeds)}); accuracy mean ± std over seeds; "
            f"similarity = mean over LRMs and pairs of ||M_a^T M_b||^2 / (||M_a||^2 ||M_b||^2); "
            f"gradient ratios on the CLoRA parameters (step 1 is the first with Q != 0)"
        )
        print("\n" + header + "\n\n" + table)
        (out / "sade_ablation.md").write_text(header + "\n\n" + table + "\n")
        (out / "sade_ablation.json").write_text(
            json.dumps(
                {
                    "header": header,
                    "rows": res["rows"],
                    "runs": res["runs"],
                    "ckpt": str(ckpt),
                    "total_s": time.perf_counter() - t0,
                },
                indent=2,
                default=str,
            )
        )
        if args.record:
            Path(args.record).parent.mkdir(parents=True, exist_ok=True)
            Path(args.record).write_text(
                json.dumps(
                    {"header": header, "rows": res["rows"], "runs": res["runs"], "total_s": time.perf_counter() - t0},
                    indent=2,
                    default=str,
                )
                + "\n"
            )
        print(f"\ntotal {time.perf_counter() - t0:.0f} s; results: {out / 'sade_ablation.md'}")
    except Clora3dError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
