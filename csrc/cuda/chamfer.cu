// Chamfer-L2 on the GPU: nearest neighbour both ways (squared distances + int64 indices, ties to
// the lower index) and the backward pass of the two distance vectors.
//
// Forward: nearest_kernel (nearest_kernels.cuh), once each way.
// Backward, with da_i = |a_i - b_{idx_a[i]}|^2 and db_j = |b_j - a_{idx_b[j]}|^2:
//   grad_a[i] += 2 (a_i - b_{idx_a[i]}) g_a[i]   grad_b[idx_a[i]] -= same   (kernel over i)
//   grad_b[j] += 2 (b_j - a_{idx_b[j]}) g_b[j]   grad_a[idx_b[j]] -= same   (kernel over j)
// The scattered terms use atomics; each kernel writes its own points' term without atomics only
// where no other thread of the same kernel can touch that element.
#include <ATen/cuda/Atomic.cuh>

#include <climits>

#include "common.cuh"
#include "cuda_ops.h"
#include "nearest_kernels.cuh"

namespace clora3d {
namespace {

using cuda_detail::kThreads;
using nearest_detail::kNearestThreads;
using nearest_detail::nearest_kernel;

// For each src point i with partner p = idx[b, i]: g = 2 (src_i - dst_p) grad[b, i];
// grad_src[i] += g (exclusive to this thread), grad_dst[p] -= g (atomic).
template <typename T>
__global__ void chamfer_backward_kernel(const T* __restrict__ src, const T* __restrict__ dst,
                                        const int64_t* __restrict__ idx, const T* __restrict__ grad, int64_t B,
                                        int64_t n_src, int64_t n_dst, T* __restrict__ grad_src,
                                        T* __restrict__ grad_dst) {
  const int64_t total = B * n_src;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = e / n_src;
    const int64_t p = idx[e];
    CUDA_KERNEL_ASSERT(p >= 0 && p < n_dst);
    const T g2 = T(2) * grad[e];
    const T* s = src + e * 3;
    const T* d = dst + (b * n_dst + p) * 3;
    T* gd = grad_dst + (b * n_dst + p) * 3;
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      const T g = g2 * (s[c] - d[c]);
      grad_src[e * 3 + c] += g;
      gpuAtomicAddNoReturn(gd + c, -g);
    }
  }
}

template <typename T>
void launch_nearest(const at::Tensor& src, const at::Tensor& dst, at::Tensor& d, at::Tensor& i, cudaStream_t stream) {
  const int64_t B = src.size(0), n_src = src.size(1), n_dst = dst.size(1);
  if (B == 0 || n_src == 0) return;
  const int64_t bpb = cuda_detail::ceil_div(n_src, kNearestThreads);
  TORCH_CHECK(B * bpb <= INT_MAX, "chamfer_forward_cuda: grid too large; split the batch");
  nearest_kernel<T><<<static_cast<unsigned int>(B * bpb), kNearestThreads, 0, stream>>>(
      src.data_ptr<T>(), dst.data_ptr<T>(), n_src, n_dst, bpb, d.data_ptr<T>(), i.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

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
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "chamfer_forward_cuda", [&] {
    launch_nearest<scalar_t>(a, b, dist_a, idx_a, stream);
    launch_nearest<scalar_t>(b, a, dist_b, idx_b, stream);
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
  // Gradients coming from .mean() / .sum() are often expanded (stride 0): make them dense.
  const at::Tensor ga = grad_dist_a_in.contiguous();
  const at::Tensor gb = grad_dist_b_in.contiguous();
  at::Tensor grad_a = at::zeros({B, N, 3}, a.options());
  at::Tensor grad_b = at::zeros({B, M, 3}, a.options());
  if (B == 0) return {grad_a, grad_b};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "chamfer_backward_cuda", [&] {
    // Sequential on one stream: the second kernel sees the first one's writes.
    chamfer_backward_kernel<scalar_t><<<cuda_detail::grid_for(B * N), kThreads, 0, stream>>>(
        a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), idx_a.data_ptr<int64_t>(), ga.data_ptr<scalar_t>(), B, N, M,
        grad_a.data_ptr<scalar_t>(), grad_b.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    chamfer_backward_kernel<scalar_t><<<cuda_detail::grid_for(B * M), kThreads, 0, stream>>>(
        b.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), idx_b.data_ptr<int64_t>(), gb.data_ptr<scalar_t>(), B, M, N,
        grad_b.data_ptr<scalar_t>(), grad_a.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_a, grad_b};
}

}  // namespace clora3d
