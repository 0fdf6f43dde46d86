"""``python -m clora3d``: the ``clora3d`` command line (:mod:`clora3d.cli`); without a command, the
version and which kernels are active."""

from __future__ import annotations

from clora3d.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
