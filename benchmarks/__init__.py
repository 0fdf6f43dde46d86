"""Benchmarks and the GPU check: scripts run from a checkout (``python benchmarks/<name>.py``, the
Makefile's ``bench`` and ``gpu-check``), not part of the installed clora3d package; nothing in
clora3d imports them.

    bench_ops.py    CPU kernels against the reference and the installed peers (tools/bench_ops.py)
    bench_model.py  CPU throughput of ViT-S classification steps (tools/bench_model.py)
    gpu_bench.py    kernels and the model's training step on a GPU
    gpu_check.py    ``make gpu-check``: build for the local GPU, CUDA tests, gpu_bench, one report
    gpu_peers.py    the GPU peers' sources (prepare, here) and their offline build (on the GPU machine)
    step_ops.py     CPU proxies of GPU step cost (aten ops and host syncs per training step)
"""

import logging


def run_script(main, argv=None, prog=None) -> int:
    """Run a benchmark's ``main(argv, prog=...)`` as a script: its messages (the ``benchmarks`` loggers)
    at INFO on stderr, other libraries' warnings only (faiss, for one, is chatty at INFO)."""
    logging.basicConfig(format="%(message)s")
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    main(argv, prog=prog)
    return 0
