#!/usr/bin/env python
"""Evaluate a trained classification run on its test split: plain accuracy and voting.

    python tools/evaluate.py --ckpt RUN/ckpt-best.pth                     plain accuracy
    python tools/evaluate.py --ckpt RUN/ckpt-best.pth --vote-passes 1     + one vote@10 pass
    python tools/evaluate.py --ckpt RUN/ckpt-best.pth --vote-passes 299   the reference protocol
    python tools/evaluate.py --ckpt RUN --set dataset.test.root=/data/modelnet40_normal_resampled

Voting is Point-MAE's test-time protocol: per batch, FPS to point_all points, 10 random subsets of
npoints with scale-and-translate, logits averaged. The references repeat it 299 times and publish
the MAXIMUM; that number is printed as acc_vote@10_max_of_N (best of N passes: optimistic, it picks
the luckiest pass on the test set), beside the first pass, the mean of the passes and the plain
accuracy. User errors print one line ``error: ...`` and exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", required=True, help="run checkpoint (ckpt-best.pth / ckpt-last.pth) or run folder")
    p.add_argument("--cfg", default=None, help="config (default: the one stored in the checkpoint)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   nargs="+", help="override a key of the run's config, e.g. dataset.test.root=...")
    p.add_argument("--vote-passes", type=int, default=0, metavar="N",
                   help="N passes of 10-view voting (0 = plain accuracy only; 299 = the reference)")
    p.add_argument("--seed", type=int, default=0, help="seed of the vote subsets and augmentation")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--json", default=None, help="also write the metrics as JSON here")
    args = p.parse_args(argv)
    if args.vote_passes < 0:
        p.error(f"--vote-passes must be >= 0, got {args.vote_passes}")
    overrides = [o for group in args.overrides for o in group]

    from clora3d.errors import USER_ERRORS, ConfigError, format_user_error

    try:
        import torch
        from torch.utils.data import DataLoader

        from clora3d.data import build_dataset
        from clora3d.engine.config import apply_overrides, default_point_all
        from clora3d.engine.evaluate import evaluate_classification
        from clora3d.engine.infer import check_device, load_run

        device = check_device(args.device)
        model, cfg, _, _ = load_run(args.ckpt, args.cfg, device=device)
        apply_overrides(cfg, overrides)
        if cfg.get("task", "classification") != "classification":
            raise ConfigError(f"tools/evaluate.py evaluates classification runs; {args.ckpt} is a "
                              f"{cfg.get('task')} run")
        sec = dict((cfg.get("dataset") or {}).get("test") or {})
        if not sec.get("NAME"):
            raise ConfigError(f"the config of {args.ckpt} has no dataset.test; pass --cfg or "
                              "--set dataset.test={NAME: ..., root: ...}")
        split = sec.pop("split", "test")
        ds = build_dataset(sec, split)
        data, tcfg = cfg.get("data", {}), cfg.get("train", {})
        bs = (cfg.get("eval") or {}).get("batch_size") or 2 * int(tcfg.get("batch_size", 32))
        loader = DataLoader(ds, batch_size=bs, shuffle=False, num_workers=0, collate_fn=_collate)
        npoints = int(data.get("npoints", 1024))
        gen = torch.Generator().manual_seed(args.seed)
        m = evaluate_classification(model, loader, device=device, npoints=npoints,
                                    vote=10 if args.vote_passes else 0,
                                    vote_repeats=max(args.vote_passes, 1), generator=gen,
                                    point_all=data.get("point_all") or default_point_all(npoints))
    except USER_ERRORS as e:
        print(format_user_error(e), file=sys.stderr)
        return 2
    n = args.vote_passes
    rows = [("acc", f"plain (deterministic FPS to {npoints} points)")]
    if n:
        rows.append(("acc_vote@10", "vote@10, first pass"))
    if n > 1:
        rows += [(f"acc_vote@10_max_of_{n}", f"vote@10, best of {n} passes (reference protocol"
                  f"{'' if n == 299 else ' uses 299'}; optimistic)"),
                 (f"acc_vote@10_mean_of_{n}", f"vote@10, mean of {n} passes")]
    print(f"{args.ckpt}: {m['count']} test samples")
    for key, label in rows:
        print(f"  {m[key]:7.2f}  {key:<28} {label}")
    if args.json:
        Path(args.json).write_text(json.dumps({k: m[k] for k, _ in rows} | {"count": m["count"]},
                                              indent=2))
    return 0


def _collate(samples):
    import torch

    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}


if __name__ == "__main__":
    sys.exit(main())
