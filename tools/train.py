#!/usr/bin/env python
"""Train a config: classification, part segmentation or Point-MAE pre-training, with any PEFT method.

    python tools/train.py --cfg cfgs/cpu/modelnet_clora.yaml
    python tools/train.py --task scan_hardest --peft clora [--protocol rotate] --ckpt pretrain.pth
    python tools/train.py --cfg cfgs/modelnet40/clora.yaml --ckpt pretrain.pth --set train.epochs=10
    python tools/train.py --cfg cfgs/modelnet40/clora.yaml --run-dir experiments/x --resume
    torchrun --nproc_per_node=2 tools/train.py --cfg ...        (DDP; gloo on CPU, nccl on GPU)

The `clora3d train` command (clora3d/cli/); `python tools/train.py --help` lists its options.
User errors (bad config, missing data, bad checkpoint) print one line ``error: ...`` and exit 2.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clora3d, installed or not

from clora3d import cli  # noqa: E402


def main(argv=None) -> int:
    return cli.tool_main("train", argv, prog="tools/train.py")


if __name__ == "__main__":
    sys.exit(main())
