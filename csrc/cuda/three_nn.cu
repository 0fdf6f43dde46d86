// Three nearest neighbours (for feature propagation / inverse-distance interpolation): host side.
// The kernel is in nearest_kernels.cuh.
#include <climits>

#include "common.cuh"
#include "cuda_ops.h"
#include "nearest_kernels.cuh"

namespace clora3d {
using nearest_detail::kNearestThreads;
using nearest_detail::three_nn_kernel;

std::tuple<at::Tensor, at::Tensor> three_nn_cuda(const at::Tensor& unknown_in, const at::Tensor& known_in) {
  CLORA3D_CHECK_XYZ(unknown_in, "unknown");
  CLORA3D_CHECK_XYZ(known_in, "known");
  CLORA3D_CHECK_SAME_DEVICE(unknown_in, known_in, "unknown", "known");
  TORCH_CHECK(unknown_in.scalar_type() == known_in.scalar_type(), "unknown and known must have the same dtype, got ",
              unknown_in.scalar_type(), " and ", known_in.scalar_type());
  TORCH_CHECK(unknown_in.size(0) == known_in.size(0), "unknown and known must have the same batch size, got ",
              unknown_in.size(0), " and ", known_in.size(0));
  const int64_t B = unknown_in.size(0), n = unknown_in.size(1), m = known_in.size(1);
  TORCH_CHECK(m >= 3, "three_nn needs at least 3 known points, got ", m);

  const c10::cuda::CUDAGuard device_guard(unknown_in.device());
  const at::Tensor unknown = unknown_in.contiguous();
  const at::Tensor known = known_in.contiguous();
  at::Tensor out_d = at::empty({B, n, 3}, unknown.options());
  at::Tensor out_i = at::empty({B, n, 3}, unknown.options().dtype(at::kLong));
  if (B == 0 || n == 0) return {out_d, out_i};

  const int64_t bpb = cuda_detail::ceil_div(n, kNearestThreads);
  TORCH_CHECK(B * bpb <= INT_MAX, "three_nn_cuda: grid too large; split the batch");
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(unknown.scalar_type(), "three_nn_cuda", [&] {
    three_nn_kernel<scalar_t><<<static_cast<unsigned int>(B * bpb), kNearestThreads, 0, stream>>>(
        unknown.data_ptr<scalar_t>(), known.data_ptr<scalar_t>(), n, m, bpb, out_d.data_ptr<scalar_t>(),
        out_i.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out_d, out_i};
}

}  // namespace clora3d
