"""``python -m clora3d``: the version and which kernels are active (``tools/doctor.py`` for details)."""
from __future__ import annotations


def main() -> int:
    import clora3d
    from clora3d.ops._backend import kernels_summary

    print(f"clora3d {clora3d.__version__}")
    print(kernels_summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
