#!/usr/bin/env python
"""Train a config: classification, part segmentation or Point-MAE pre-training, with any PEFT method.

    python tools/train.py --cfg cfgs/cpu/modelnet_clora.yaml
    python tools/train.py --task scan_hardest --peft clora [--protocol rotate] --ckpt pretrain.pth
    python tools/train.py --cfg cfgs/modelnet40/clora.yaml --ckpt pretrain.pth --set train.epochs=10
    python tools/train.py --cfg cfgs/modelnet40/clora.yaml --run-dir experiments/x --resume
    python tools/train.py --cfg cfgs/modelnet40/clora.yaml --ckpt pretrain.pth --vote-passes 299
                          (reference voting protocol: best of 299 vote@10 passes, labelled as such)
    torchrun --nproc_per_node=2 tools/train.py --cfg ...        (DDP; gloo on CPU, nccl on GPU)

User errors (bad config, missing data, bad checkpoint) print one line ``error: ...`` and exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # --task/--peft/--protocol/--model (issue 15, C): composition by task and method through
    # clora3d.engine.config.compose_config; if this parser moves into a clora3d CLI module, move them along.
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cfg", help="YAML config (see cfgs/README.md)")
    src.add_argument("--task", help="compose the config of a task (cfgs/_base_/tasks/<task>.yaml) with --peft")
    p.add_argument("--peft", help="with --task: PEFT method (cfgs/_base_/peft/<peft>.yaml)")
    p.add_argument("--protocol", help="with --task: augmentation protocol (cfgs/_base_/protocols/, e.g. rotate)")
    p.add_argument("--model", help="with --task: backbone (cfgs/_base_/models/<model>.yaml, default vit_s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   nargs="+", help="override a config key, e.g. --set optimizer.lr=1e-3 train.epochs=5")
    p.add_argument("--ckpt", default=None, help="pre-trained checkpoint (Point-MAE / Point-BERT / clora3d)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/ckpt-last.pth")
    p.add_argument("--run-dir", default=None, help="run directory (default: <log.root>/<name>)")
    p.add_argument("--vote-passes", type=int, default=None, metavar="N",
                   help="after training, evaluate the last and best weights with N passes of "
                        "10-view voting (sets eval.vote=10 eval.vote_passes=N). Reported: "
                        "acc_vote@10 (first pass), acc_vote@10_max_of_N (best pass: the reference "
                        "protocol with N=299, optimistic) and acc_vote@10_mean_of_N")
    args = p.parse_args(argv)
    overrides = [o for group in args.overrides for o in group]
    if args.task is not None and args.peft is None:
        p.error("--task needs --peft (e.g. --task modelnet40 --peft clora)")
    if args.cfg is not None and (args.peft, args.protocol, args.model) != (None, None, None):
        p.error("--peft/--protocol/--model go with --task, not with --cfg")
    if args.vote_passes is not None:
        if args.vote_passes < 1:
            p.error(f"--vote-passes must be >= 1, got {args.vote_passes}")
        overrides += ["eval.vote=10", f"eval.vote_passes={args.vote_passes}"]

    from clora3d.errors import USER_ERRORS, format_user_error

    try:
        from clora3d.engine.config import compose_config, load_config
        from clora3d.engine.trainer import train

        if args.cfg is not None:
            cfg = load_config(args.cfg, overrides)
        else:
            cfg = compose_config(args.task, args.peft, model=args.model, protocol=args.protocol, overrides=overrides)
        result = train(cfg, ckpt=args.ckpt, resume=args.resume, run_dir=args.run_dir)
    except USER_ERRORS as e:
        print(format_user_error(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    import os

    if os.environ.get("RANK", "0") == "0":
        summary = {k: result[k] for k in ("run_dir", "selected_on", "protocol", "last", "best")
                   if k in result}
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
