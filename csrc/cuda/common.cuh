// Host-side helpers for the clora3d CUDA kernels (included by the .cu files only); the device
// helpers are in device_common.cuh.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/cuda/Atomic.cuh>

#include <cstdint>

#include "device_common.cuh"

// The atomic add of the gather / interpolation kernels (gather_kernels.cuh): every dtype, half types included.
#define CLORA3D_ATOMIC_ADD(ptr, value) gpuAtomicAddNoReturn((ptr), (value))

namespace clora3d {
namespace cuda_detail {

// Cheap re-checks of what bindings.cpp already validated (a direct call must not crash).
#define CLORA3D_CHECK_CUDA(x, name) TORCH_CHECK((x).is_cuda(), name " must be a CUDA tensor, got device ", (x).device())
#define CLORA3D_CHECK_CONTIG(x, name) TORCH_CHECK((x).is_contiguous(), name " must be contiguous")
#define CLORA3D_CHECK_DIM(x, d, name) \
  TORCH_CHECK((x).dim() == (d), name " must have ", d, " dimensions, got shape ", (x).sizes())
#define CLORA3D_CHECK_XYZ(x, name)                                                       \
  do {                                                                                   \
    CLORA3D_CHECK_CUDA(x, name);                                                         \
    CLORA3D_CHECK_DIM(x, 3, name);                                                       \
    TORCH_CHECK((x).size(2) == 3, name " must have shape (B, N, 3), got ", (x).sizes()); \
    TORCH_CHECK((x).scalar_type() == at::kFloat || (x).scalar_type() == at::kDouble,     \
                name " must be float32 or float64, got ", (x).scalar_type());            \
  } while (0)
#define CLORA3D_CHECK_INDEX(x, name)                                                             \
  do {                                                                                           \
    CLORA3D_CHECK_CUDA(x, name);                                                                 \
    TORCH_CHECK((x).scalar_type() == at::kLong, name " must be int64, got ", (x).scalar_type()); \
  } while (0)
#define CLORA3D_CHECK_SAME_DEVICE(x, y, xn, yn)                                                                       \
  TORCH_CHECK((x).device() == (y).device(), xn " and " yn " must be on the same device, got ", (x).device(), " and ", \
              (y).device())

// Number of blocks for a grid-stride loop over n elements (capped; the loop covers the rest).
inline unsigned int grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = ceil_div(n, threads);
  const int64_t cap = 65535LL * 8;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > cap ? cap : blocks));
}

// Whether element offsets up to max_elems can use 32-bit arithmetic in a grid-stride loop (with room
// for the stride of the largest grid_for grid): 64-bit division is several times slower on the GPU.
inline bool fits_int32(int64_t max_elems) { return max_elems < (int64_t{1} << 30); }

// Runs `f` with `index_t` = int32_t when fits_int32(max_elems), else int64_t.
#define CLORA3D_DISPATCH_INDEX(max_elems, ...)           \
  [&] {                                                  \
    if (::clora3d::cuda_detail::fits_int32(max_elems)) { \
      using index_t = int32_t;                           \
      return __VA_ARGS__();                              \
    }                                                    \
    using index_t = int64_t;                             \
    return __VA_ARGS__();                                \
  }()

}  // namespace cuda_detail
}  // namespace clora3d
