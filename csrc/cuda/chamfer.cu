// Chamfer-L2 on the GPU: host side. Forward: nearest neighbour both ways (squared distances +
// int64 indices, ties to the lower index), one launch; backward of the two distance vectors, one
// launch. The kernels are in nearest_kernels.cuh.
#include <climits>

#include "common.cuh"
#include "cuda_ops.h"
#include "nearest_kernels.cuh"

namespace clora3d {
namespace {

using nearest_detail::chamfer_backward_kernel;
using nearest_detail::chamfer_forward_kernel;
using nearest_detail::kNearestThreads;

void check_pair(const at::Tensor& a, const at::Tensor& b) {
  CLORA3D_CHECK_XYZ(a, "a");
  CLORA3D_CHECK_XYZ(b, "b");
  CLORA3D_CHECK_SAME_DEVICE(a, b, "a", "b");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "a and b must have the same dtype, got ", a.scalar_type(), " and ",
              b.scalar_type());
  TORCH_CHECK(a.size(0) == b.size(0), "a and b must have the same batch size, got ", a.size(0), " and ", b.size(0));
  TORCH_CHECK(a.size(1) > 0 && b.size(1) > 0, "a and b must both contain points, got shapes ", a.sizes(), " and ",
              b.sizes());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chamfer_forward_cuda(const at::Tensor& a_in,
                                                                                const at::Tensor& b_in) {
  check_pair(a_in, b_in);
  const c10::cuda::CUDAGuard device_guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.contiguous();
  const int64_t B = a.size(0), N = a.size(1), M = b.size(1);
  at::Tensor dist_a = at::empty({B, N}, a.options());
  at::Tensor idx_a = at::empty({B, N}, a.options().dtype(at::kLong));
  at::Tensor dist_b = at::empty({B, M}, a.options());
  at::Tensor idx_b = at::empty({B, M}, a.options().dtype(at::kLong));
  if (B == 0) return {dist_a, idx_a, dist_b, idx_b};
  const int64_t bpb_a = cuda_detail::ceil_div(N, kNearestThreads);
  const int64_t bpb_b = cuda_detail::ceil_div(M, kNearestThreads);
  TORCH_CHECK(B * (bpb_a + bpb_b) <= INT_MAX, "chamfer_forward_cuda: B * (ceil(N / ", kNearestThreads, ") + ceil(M / ",
              kNearestThreads, ")) = ", B * (bpb_a + bpb_b), " exceeds the CUDA grid limit; split the batch");
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "chamfer_forward_cuda", [&] {
    chamfer_forward_kernel<scalar_t><<<static_cast<unsigned int>(B * (bpb_a + bpb_b)), kNearestThreads, 0, stream>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), N, M, bpb_a, bpb_b, dist_a.data_ptr<scalar_t>(),
        idx_a.data_ptr<int64_t>(), dist_b.data_ptr<scalar_t>(), idx_b.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dist_a, idx_a, dist_b, idx_b};
}

std::tuple<at::Tensor, at::Tensor> chamfer_backward_cuda(const at::Tensor& a_in, const at::Tensor& b_in,
                                                         const at::Tensor& idx_a_in, const at::Tensor& idx_b_in,
                                                         const at::Tensor& grad_dist_a_in,
                                                         const at::Tensor& grad_dist_b_in) {
  check_pair(a_in, b_in);
  const int64_t B = a_in.size(0), N = a_in.size(1), M = b_in.size(1);
  CLORA3D_CHECK_INDEX(idx_a_in, "idx_a");
  CLORA3D_CHECK_INDEX(idx_b_in, "idx_b");
  CLORA3D_CHECK_CUDA(grad_dist_a_in, "grad_dist_a");
  CLORA3D_CHECK_CUDA(grad_dist_b_in, "grad_dist_b");
  CLORA3D_CHECK_SAME_DEVICE(a_in, idx_a_in, "a", "idx_a");
  CLORA3D_CHECK_SAME_DEVICE(a_in, idx_b_in, "a", "idx_b");
  CLORA3D_CHECK_SAME_DEVICE(a_in, grad_dist_a_in, "a", "grad_dist_a");
  CLORA3D_CHECK_SAME_DEVICE(a_in, grad_dist_b_in, "a", "grad_dist_b");
  TORCH_CHECK(idx_a_in.dim() == 2 && idx_a_in.size(0) == B && idx_a_in.size(1) == N, "idx_a must have shape (B, N) = (",
              B, ", ", N, "), got ", idx_a_in.sizes());
  TORCH_CHECK(idx_b_in.dim() == 2 && idx_b_in.size(0) == B && idx_b_in.size(1) == M, "idx_b must have shape (B, M) = (",
              B, ", ", M, "), got ", idx_b_in.sizes());
  TORCH_CHECK(grad_dist_a_in.sizes() == idx_a_in.sizes(), "grad_dist_a must have shape ", idx_a_in.sizes(), ", got ",
              grad_dist_a_in.sizes());
  TORCH_CHECK(grad_dist_b_in.sizes() == idx_b_in.sizes(), "grad_dist_b must have shape ", idx_b_in.sizes(), ", got ",
              grad_dist_b_in.sizes());
  TORCH_CHECK(grad_dist_a_in.scalar_type() == a_in.scalar_type() && grad_dist_b_in.scalar_type() == a_in.scalar_type(),
              "grad_dist_a and grad_dist_b must have the dtype of a (", a_in.scalar_type(), ")");

  const c10::cuda::CUDAGuard device_guard(a_in.device());
  const at::Tensor a = a_in.contiguous();
  const at::Tensor b = b_in.contiguous();
  const at::Tensor idx_a = idx_a_in.contiguous();
  const at::Tensor idx_b = idx_b_in.contiguous();
  // The incoming gradients are read through their strides (those of .mean() are expanded).
  const at::Tensor& ga = grad_dist_a_in;
  const at::Tensor& gb = grad_dist_b_in;
  at::Tensor grad_a = at::zeros({B, N, 3}, a.options());
  at::Tensor grad_b = at::zeros({B, M, 3}, a.options());
  if (B == 0) return {grad_a, grad_b};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "chamfer_backward_cuda", [&] {
    chamfer_backward_kernel<scalar_t><<<cuda_detail::grid_for(B * (N + M)), cuda_detail::kThreads, 0, stream>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), idx_a.data_ptr<int64_t>(), idx_b.data_ptr<int64_t>(),
        ga.data_ptr<scalar_t>(), ga.stride(0), ga.stride(1), gb.data_ptr<scalar_t>(), gb.stride(0), gb.stride(1), B, N,
        M, grad_a.data_ptr<scalar_t>(), grad_b.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_a, grad_b};
}

}  // namespace clora3d
