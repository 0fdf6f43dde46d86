"""clora3d: parameter-efficient fine-tuning of point cloud transformers with CLoRA.

Importing the package has no side effects: nothing is compiled, downloaded or read, and torch is
not imported. It only checks torch's installed version (from its package metadata) and stops with an
ImportError that names the fix when it is older than clora3d supports.
"""

__version__ = "0.1.0"


def _check_torch_release() -> None:
    import sys
    from importlib import metadata

    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return  # no torch (its first import says so), or a build of it without package metadata
    from clora3d._build_env import torch_floor_problem

    problem = torch_floor_problem(version, sys.executable)
    if problem is not None:
        raise ImportError(problem)


_check_torch_release()
