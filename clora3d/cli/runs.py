"""Commands that train or evaluate: ``train``, ``evaluate``, ``fewshot``.

Each prints its result to stdout (train: a JSON summary; evaluate: the accuracy table; fewshot: the
mean +- std table); the trainer's own messages go through logging. Nothing heavy is imported until
a command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from clora3d.cli import Command

log = logging.getLogger(__name__)


def _flatten(groups: list) -> list[str]:
    return [o for group in groups for o in (group if isinstance(group, list) else [group])]


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------
TRAIN_DOC = """\
Train a config: classification, part segmentation or Point-MAE pre-training, with any PEFT method.

    clora3d train --cfg cfgs/cpu/modelnet_clora.yaml
    clora3d train --task scan_hardest --peft clora [--protocol rotate] --ckpt pretrain.pth
    clora3d train --cfg cfgs/modelnet40/clora.yaml --ckpt pretrain.pth --set train.epochs=10
    clora3d train --cfg cfgs/modelnet40/clora.yaml --run-dir experiments/x --resume
    clora3d train --cfg cfgs/modelnet40/clora.yaml --ckpt pretrain.pth --vote-passes 299
                  (reference voting protocol: best of 299 vote@10 passes, labelled as such)
    torchrun --nproc_per_node=2 tools/train.py --cfg ...        (DDP; gloo on CPU, nccl on GPU)

Prints the run's summary (run_dir, last and best metrics) as JSON on stdout (rank 0).
User errors (bad config, missing data, bad checkpoint) print one line ``error: ...`` and exit 2.
"""


def _train_arguments(p: argparse.ArgumentParser) -> None:
    # --cfg FILE, or composition by task and method (clora3d.engine.config.compose_config)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cfg", help="YAML config (see cfgs/README.md)")
    src.add_argument("--task", help="compose the config of a task (cfgs/_base_/tasks/<task>.yaml) with --peft")
    p.add_argument("--peft", help="with --task: PEFT method (cfgs/_base_/peft/<peft>.yaml)")
    p.add_argument("--protocol", help="with --task: augmentation protocol (cfgs/_base_/protocols/, e.g. rotate)")
    p.add_argument("--model", help="with --task: backbone (cfgs/_base_/models/<model>.yaml, default vit_s)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        nargs="+",
        help="override a config key, e.g. --set optimizer.lr=1e-3 train.epochs=5",
    )
    p.add_argument("--ckpt", default=None, help="pre-trained checkpoint (Point-MAE / Point-BERT / clora3d)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/ckpt-last.pth")
    p.add_argument("--run-dir", default=None, help="run directory (default: <log.root>/<name>)")
    p.add_argument(
        "--vote-passes",
        type=int,
        default=None,
        metavar="N",
        help="after training, evaluate the last and best weights with N passes of "
        "10-view voting (sets eval.vote=10 eval.vote_passes=N). Reported: "
        "acc_vote@10 (first pass), acc_vote@10_max_of_N (best pass: the reference "
        "protocol with N=299, optimistic) and acc_vote@10_mean_of_N",
    )


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    overrides = _flatten(args.overrides)
    if args.task is not None and args.peft is None:
        parser.error("--task needs --peft (e.g. --task modelnet40 --peft clora)")
    if args.cfg is not None and (args.peft, args.protocol, args.model) != (None, None, None):
        parser.error("--peft/--protocol/--model go with --task, not with --cfg")
    if args.vote_passes is not None:
        if args.vote_passes < 1:
            parser.error(f"--vote-passes must be >= 1, got {args.vote_passes}")
        overrides += ["eval.vote=10", f"eval.vote_passes={args.vote_passes}"]
    from clora3d.engine.config import compose_config, load_config
    from clora3d.engine.trainer import train

    if args.cfg is not None:
        cfg = load_config(args.cfg, overrides)
    else:
        cfg = compose_config(args.task, args.peft, model=args.model, protocol=args.protocol, overrides=overrides)
    result = train(cfg, ckpt=args.ckpt, resume=args.resume, run_dir=args.run_dir)
    if os.environ.get("RANK", "0") == "0":
        summary = {k: result[k] for k in ("run_dir", "selected_on", "protocol", "last", "best") if k in result}
        print(json.dumps(summary, indent=2, default=str))
    return 0


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------
EVALUATE_DOC = """\
Evaluate a trained classification run on its test split: plain accuracy and voting.

    clora3d evaluate --ckpt RUN/ckpt-best.pth                     plain accuracy
    clora3d evaluate --ckpt RUN/ckpt-best.pth --vote-passes 1     + one vote@10 pass
    clora3d evaluate --ckpt RUN/ckpt-best.pth --vote-passes 299   the reference protocol
    clora3d evaluate --ckpt RUN --set dataset.test.root=/data/modelnet40_normal_resampled

Voting is Point-MAE's test-time protocol: per batch, FPS to point_all points, 10 random subsets of
npoints with scale-and-translate, logits averaged. The references repeat it 299 times and publish
the MAXIMUM; that number is printed as acc_vote@10_max_of_N (best of N passes: optimistic, it picks
the luckiest pass on the test set), beside the first pass, the mean of the passes and the plain
accuracy. User errors print one line ``error: ...`` and exit 2.
"""


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="run checkpoint (ckpt-best.pth / ckpt-last.pth) or run folder")
    p.add_argument("--cfg", default=None, help="config (default: the one stored in the checkpoint)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        nargs="+",
        help="override a key of the run's config, e.g. dataset.test.root=...",
    )
    p.add_argument(
        "--vote-passes",
        type=int,
        default=0,
        metavar="N",
        help="N passes of 10-view voting (0 = plain accuracy only; 299 = the reference)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the vote subsets and augmentation")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--json", default=None, help="also write the metrics as JSON here")


def _collate(samples):
    import torch

    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}


def _evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.vote_passes < 0:
        parser.error(f"--vote-passes must be >= 0, got {args.vote_passes}")
    import torch
    from torch.utils.data import DataLoader

    from clora3d.data import build_dataset
    from clora3d.engine.config import apply_overrides, default_point_all
    from clora3d.engine.evaluate import evaluate_classification
    from clora3d.engine.infer import check_device, load_run
    from clora3d.errors import ConfigError
    from clora3d.storage import atomic_write_bytes

    device = check_device(args.device)
    model, cfg, _, _ = load_run(args.ckpt, args.cfg, device=device)
    apply_overrides(cfg, _flatten(args.overrides))
    if cfg.get("task", "classification") != "classification":
        raise ConfigError(f"evaluate takes classification runs; {args.ckpt} is a {cfg.get('task')} run")
    sec = dict((cfg.get("dataset") or {}).get("test") or {})
    if not sec.get("NAME"):
        raise ConfigError(
            f"the config of {args.ckpt} has no dataset.test; pass --cfg or --set dataset.test={{NAME: ..., root: ...}}"
        )
    split = sec.pop("split", "test")
    ds = build_dataset(sec, split)
    data, tcfg = cfg.get("data", {}), cfg.get("train", {})
    bs = (cfg.get("eval") or {}).get("batch_size") or 2 * int(tcfg.get("batch_size", 32))
    loader = DataLoader(ds, batch_size=bs, shuffle=False, num_workers=0, collate_fn=_collate)
    npoints = int(data.get("npoints", 1024))
    gen = torch.Generator().manual_seed(args.seed)
    n = args.vote_passes
    m = evaluate_classification(
        model,
        loader,
        device=device,
        npoints=npoints,
        vote=10 if n else 0,
        vote_repeats=max(n, 1),
        generator=gen,
        point_all=data.get("point_all") or default_point_all(npoints),
    )
    rows = [("acc", f"plain (deterministic FPS to {npoints} points)")]
    if n:
        rows.append(("acc_vote@10", "vote@10, first pass"))
    if n > 1:
        rows += [
            (
                f"acc_vote@10_max_of_{n}",
                f"vote@10, best of {n} passes (reference protocol{'' if n == 299 else ' uses 299'}; optimistic)",
            ),
            (f"acc_vote@10_mean_of_{n}", f"vote@10, mean of {n} passes"),
        ]
    print(f"{args.ckpt}: {m['count']} test samples")
    for key, label in rows:
        print(f"  {m[key]:7.2f}  {key:<28} {label}")
    if args.json:
        blob = json.dumps({k: m[k] for k, _ in rows} | {"count": m["count"]}, indent=2)
        atomic_write_bytes(args.json, blob.encode(), what="JSON file")
        log.info("wrote %s", args.json)
    return 0


# ------------------------------------------------------------------------------------------------
# fewshot
# ------------------------------------------------------------------------------------------------
FEWSHOT_DOC = """\
Run the ModelNet40 few-shot grid (way x shot x fold), resumable, and print mean +- std.

    clora3d fewshot (--cfg cfgs/fewshot/clora.yaml | --peft pointgst) --ckpt pretrain.pth \\
        [--ways 5,10] [--shots 10,20] [--folds 0-9] [--seeds 0-2] [--out DIR] [--ci95] [--set key=value ...]

Each (way, shot, fold) is one training run; finished folds (their result JSON in --out) are skipped
on re-run, an interrupted fold resumes from its last checkpoint. The reported number per fold is
the best-epoch query accuracy (reference protocol); the last-epoch accuracy is shown beside it.
With --seeds every fold is trained once per seed, and the table gives mean +- std over folds (the
reference statistic, each fold averaged over its seeds) and mean +- std over seeds.
"""


def int_list(text: str) -> list[int]:
    """'5,10' or '0-9' or '0,2-4' -> list of ints."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like '5,10' or '0-9', got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("empty list")
    return out


def _fewshot_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--cfg", help="few-shot config (dataset NAME: ModelNetFewShot)")
    src.add_argument(
        "--peft",
        help="compose the config of task fewshot with this PEFT method instead of --cfg "
        "(as `train --task fewshot --peft NAME`)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. train.epochs=150 (repeatable)",
    )
    p.add_argument("--ckpt", default=None, help="pre-trained checkpoint passed to every run")
    p.add_argument("--ways", type=int_list, default=[5, 10], help="default 5,10")
    p.add_argument("--shots", type=int_list, default=[10, 20], help="default 10,20")
    p.add_argument("--folds", type=int_list, default=list(range(10)), help="default 0-9")
    p.add_argument(
        "--seeds",
        type=int_list,
        default=None,
        help="train every fold once per seed, e.g. 0-2 (default: one run per fold with "
        "the config's seed, as the references)",
    )
    p.add_argument("--out", default=None, help="output folder (default <log.root>/<name>_fewshot)")
    p.add_argument("--metric", default="acc", help="key of the trainer's metrics to report (acc)")
    p.add_argument("--ci95", action="store_true", help="show 1.96*std/sqrt(n) instead of std")
    p.add_argument(
        "--generate-from",
        default=None,
        metavar="MODELNET40_ROOT",
        help="generate missing fold pickles from this ModelNet40 root (seeded; not the released folds)",
    )
    p.add_argument("--generate-seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the final result JSON here")


def _fewshot(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from clora3d.engine.config import compose_config, load_config
    from clora3d.engine.fewshot import run_fewshot
    from clora3d.storage import atomic_write_bytes

    if args.cfg is not None:
        cfg = load_config(args.cfg, args.overrides)
    else:
        cfg = compose_config("fewshot", args.peft, overrides=args.overrides)
    out = args.out or str(Path(cfg["log"]["root"]) / f"{cfg['name']}_fewshot")
    res = run_fewshot(
        cfg,
        out,
        ways=args.ways,
        shots=args.shots,
        folds=args.folds,
        ckpt=args.ckpt,
        metric=args.metric,
        ci95=args.ci95,
        seeds=args.seeds,
        generate_from=args.generate_from,
        generate_seed=args.generate_seed,
    )
    print(res["table"])
    print(f"results: {Path(out) / 'summary.json'}")
    if args.json:
        blob = json.dumps({"summary": res["summary"], "folds": res["folds"]}, indent=2)
        atomic_write_bytes(args.json, blob.encode(), what="JSON file")
        log.info("wrote %s", args.json)
    return 0


COMMANDS = [
    Command(
        "train",
        "train a config (classification, part segmentation, pre-training)",
        TRAIN_DOC,
        _train_arguments,
        _train,
        on_interrupt="continue with --resume",
    ),
    Command(
        "evaluate",
        "evaluate a classification run: plain accuracy and voting",
        EVALUATE_DOC,
        _evaluate_arguments,
        _evaluate,
    ),
    Command(
        "fewshot",
        "the few-shot grid (way x shot x fold), resumable",
        FEWSHOT_DOC,
        _fewshot_arguments,
        _fewshot,
        on_interrupt="run it again: finished folds are kept",
    ),
]
