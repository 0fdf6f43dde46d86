// Device-side value checks of the CUDA entry points (csrc/bindings.cpp).
//
// Checking coordinates for NaN/inf on the host would copy a flag back from the GPU and so
// synchronise every training step. Instead one tiny kernel reads the coordinates on the stream
// and raises a device-side assertion when one is not finite: the launch stays asynchronous, and
// the error surfaces as "CUDA error: device-side assert triggered" at the next synchronisation,
// with the message below printed on stderr. Index ranges are asserted the same way inside the
// gather / interpolation / Chamfer-backward kernels.
#include <cmath>

#include "common.cuh"
#include "cuda_ops.h"

namespace clora3d {
namespace {

using cuda_detail::kThreads;

template <typename T>
__global__ void assert_finite_kernel(const T* __restrict__ p, int64_t n) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool finite = isfinite(p[e]);
    CUDA_KERNEL_ASSERT(finite &&
                       "clora3d: point coordinates given to fps / knn / three_nn / chamfer "
                       "on CUDA hold NaN or inf (checked on the device, without a sync)");
  }
}

}  // namespace

void device_assert_finite(const at::Tensor& t) {
  CLORA3D_CHECK_CUDA(t, "coordinates");
  TORCH_CHECK(t.is_contiguous(), "device_assert_finite needs a contiguous tensor");
  if (t.numel() == 0) return;
  const c10::cuda::CUDAGuard device_guard(t.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "device_assert_finite", [&] {
    assert_finite_kernel<scalar_t>
        <<<cuda_detail::grid_for(t.numel()), kThreads, 0, stream>>>(t.data_ptr<scalar_t>(), t.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace clora3d
