// Gather of point features by index, and its backward (scatter-add with atomics).
// float32 / float64 / float16 / bfloat16; host code (the kernels are in gather_kernels.cuh).
#include <algorithm>

#include "common.cuh"
#include "cuda_ops.h"
#include "gather_kernels.cuh"

namespace clora3d {

using cuda_detail::kThreads;
using gather_detail::gather_backward_kernel;
using gather_detail::gather_forward_kernel;

at::Tensor gather_forward_cuda(const at::Tensor& points_in, const at::Tensor& idx_in) {
  CLORA3D_CHECK_CUDA(points_in, "points");
  CLORA3D_CHECK_DIM(points_in, 3, "points");
  CLORA3D_CHECK_INDEX(idx_in, "idx");
  CLORA3D_CHECK_DIM(idx_in, 2, "idx");
  CLORA3D_CHECK_SAME_DEVICE(points_in, idx_in, "points", "idx");
  TORCH_CHECK(points_in.size(0) == idx_in.size(0), "points and idx must have the same batch size, got ",
              points_in.size(0), " and ", idx_in.size(0));
  const int64_t B = points_in.size(0), N = points_in.size(1), C = points_in.size(2);
  const int64_t S = idx_in.size(1);
  TORCH_CHECK(N > 0 || S == 0, "points has no points (N = 0) but idx selects ", S);

  const c10::cuda::CUDAGuard device_guard(points_in.device());
  const at::Tensor points = points_in.contiguous();
  const at::Tensor idx = idx_in.contiguous();
  at::Tensor out = at::empty({B, S, C}, points.options());
  if (out.numel() == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, points.scalar_type(), "gather_forward_cuda", [&] {
    CLORA3D_DISPATCH_INDEX(std::max(out.numel(), points.numel()), [&] {
      gather_forward_kernel<scalar_t, index_t><<<cuda_detail::grid_for(out.numel()), kThreads, 0, stream>>>(
          points.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), static_cast<index_t>(B), static_cast<index_t>(N),
          static_cast<index_t>(S), static_cast<index_t>(C), out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor gather_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& idx_in, int64_t N) {
  CLORA3D_CHECK_CUDA(grad_out_in, "grad_out");
  CLORA3D_CHECK_DIM(grad_out_in, 3, "grad_out");
  CLORA3D_CHECK_INDEX(idx_in, "idx");
  CLORA3D_CHECK_DIM(idx_in, 2, "idx");
  CLORA3D_CHECK_SAME_DEVICE(grad_out_in, idx_in, "grad_out", "idx");
  TORCH_CHECK(grad_out_in.size(0) == idx_in.size(0) && grad_out_in.size(1) == idx_in.size(1),
              "grad_out (B,S,C) and idx (B,S) disagree: ", grad_out_in.sizes(), " vs ", idx_in.sizes());
  TORCH_CHECK(N >= 0, "N must be non-negative, got ", N);
  const int64_t B = grad_out_in.size(0), S = grad_out_in.size(1), C = grad_out_in.size(2);
  TORCH_CHECK(N > 0 || S == 0, "N = 0 but idx selects ", S, " points");

  const c10::cuda::CUDAGuard device_guard(grad_out_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor idx = idx_in.contiguous();
  if (grad_out.numel() == 0) return at::zeros({B, N, C}, grad_out.options());
  at::Tensor grad_points;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "gather_backward_cuda", [&] {
    // half / bfloat16 accumulate in float32 (one rounding per element at the end, as on the CPU)
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor acc = at::zeros({B, N, C}, grad_out.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    CLORA3D_DISPATCH_INDEX(std::max(grad_out.numel(), acc.numel()), [&] {
      gather_backward_kernel<scalar_t, acc_t, index_t>
          <<<cuda_detail::grid_for(grad_out.numel()), kThreads, 0, stream>>>(
              grad_out.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), static_cast<index_t>(B), static_cast<index_t>(N),
              static_cast<index_t>(S), static_cast<index_t>(C), acc.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    grad_points = acc.scalar_type() == grad_out.scalar_type() ? acc : acc.to(grad_out.scalar_type());
  });
  return grad_points;
}

}  // namespace clora3d
