#!/usr/bin/env python
"""The main job on the embedded default data: pre-train, benchmark every PEFT method on shifted
synthetic scans, real-data check, fine-tune CLoRA on files, evaluate, profile, export, infer, render.
`make demo` runs it; the demo itself is benchmarks/demo.py (an application of the checkout, not part
of the installed package). `python tools/demo.py --help` lists its options."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's clora3d and benchmarks/

from benchmarks.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="tools/demo.py"))
