"""Point cloud ops of clora3d: FPS, kNN, gather, three_nn / interpolation, Chamfer-L2.

Channel-last everywhere; coordinates float32/float64 (float16/bfloat16 are computed in float32).
Each op runs the compiled kernel (``clora3d._C``, imported lazily on first use) when it is built,
otherwise the pure-PyTorch reference in :mod:`clora3d.ops.reference` with one warning;
``CLORA3D_OPS=reference|native`` forces a backend. ``backend_info()`` reports the choice.
"""

from clora3d.ops._backend import NativeOpsUnavailableError, backend_info, kernels_summary
from clora3d.ops.api import (
    chamfer_l2,
    chamfer_l2_loss,
    fps_sample,
    furthest_point_sample,
    gather_points,
    interpolation_weights,
    knn,
    three_interpolate,
    three_nn,
)

__all__ = [
    "furthest_point_sample",
    "knn",
    "gather_points",
    "three_nn",
    "interpolation_weights",
    "three_interpolate",
    "chamfer_l2",
    "chamfer_l2_loss",
    "fps_sample",
    "backend_info",
    "kernels_summary",
    "NativeOpsUnavailableError",
]

from clora3d.ops import _backend as _be

_be.native_module()  # load the kernels now (registers torch.ops.clora3d.*); errors surface on first use
