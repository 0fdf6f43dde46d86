// k nearest neighbours on the GPU: host side. The kernels and their design are in knn_kernels.cuh.
#include <climits>

#include "common.cuh"
#include "cuda_ops.h"
#include "knn_kernels.cuh"

namespace clora3d {

using namespace knn_detail;

static_assert(kKnnLocalMaxK == kKnnCudaMaxInsertionK, "cuda_ops.h documents the list kernels' largest k");

std::tuple<at::Tensor, at::Tensor> knn_cuda(const at::Tensor& query_in, const at::Tensor& ref_in, int64_t k) {
  CLORA3D_CHECK_XYZ(query_in, "query");
  CLORA3D_CHECK_XYZ(ref_in, "ref");
  CLORA3D_CHECK_SAME_DEVICE(query_in, ref_in, "query", "ref");
  TORCH_CHECK(query_in.scalar_type() == ref_in.scalar_type(), "query and ref must have the same dtype, got ",
              query_in.scalar_type(), " and ", ref_in.scalar_type());
  TORCH_CHECK(query_in.size(0) == ref_in.size(0), "query and ref must have the same batch size, got ", query_in.size(0),
              " and ", ref_in.size(0));
  const int64_t B = query_in.size(0), M = query_in.size(1), N = ref_in.size(1);
  TORCH_CHECK(N > 0, "ref must contain at least one point, got shape ", ref_in.sizes());
  TORCH_CHECK(k >= 1 && k <= N, "k must be in [1, N=", N, "], got ", k);
  TORCH_CHECK(N < INT_MAX, "knn_cuda supports at most 2^31-1 reference points, got ", N);

  const c10::cuda::CUDAGuard device_guard(query_in.device());
  const at::Tensor query = query_in.contiguous();
  const at::Tensor ref = ref_in.contiguous();
  at::Tensor out_d = at::empty({B, M, k}, query.options());
  at::Tensor out_i = at::empty({B, M, k}, query.options().dtype(at::kLong));
  if (B == 0 || M == 0) return {out_d, out_i};
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  if (k > kKnnLocalMaxK) {
    at::Tensor dist = at::empty({B, M, N}, query.options());
    AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "knn_cuda_full", [&] {
      pairwise_sqdist_kernel<scalar_t><<<cuda_detail::grid_for(B * M * N), cuda_detail::kThreads, 0, stream>>>(
          query.data_ptr<scalar_t>(), ref.data_ptr<scalar_t>(), B, M, N, dist.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    auto sorted = at::sort(dist, /*stable=*/true, /*dim=*/-1, /*descending=*/false);
    out_d.copy_(std::get<0>(sorted).narrow(2, 0, k));
    out_i.copy_(std::get<1>(sorted).narrow(2, 0, k));
    return {out_d, out_i};
  }

  if (k <= kKnnWarpMaxK) {
    const int64_t bpb = knn_warp_blocks_per_batch(M);
    TORCH_CHECK(B * bpb <= INT_MAX, "knn_cuda: B * ceil(M / ", kKnnWarpsPerBlock, ") = ", B * bpb,
                " exceeds the CUDA grid limit; split the batch");
    AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "knn_cuda_warp", [&] {
      knn_warp_kernel<scalar_t><<<static_cast<unsigned int>(B * bpb), kKnnWarpsPerBlock * 32, 0, stream>>>(
          query.data_ptr<scalar_t>(), ref.data_ptr<scalar_t>(), M, N, static_cast<int>(k), bpb,
          out_d.data_ptr<scalar_t>(), out_i.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return {out_d, out_i};
  }

  const int64_t bpb = cuda_detail::ceil_div(M, kKnnLocalThreads);
  TORCH_CHECK(B * bpb <= INT_MAX, "knn_cuda: B * ceil(M / ", kKnnLocalThreads, ") = ", B * bpb,
              " exceeds the CUDA grid limit; split the batch");
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "knn_cuda_local", [&] {
    knn_local_kernel<scalar_t, kKnnLocalMaxK><<<static_cast<unsigned int>(B * bpb), kKnnLocalThreads, 0, stream>>>(
        query.data_ptr<scalar_t>(), ref.data_ptr<scalar_t>(), M, N, static_cast<int>(k), bpb,
        out_d.data_ptr<scalar_t>(), out_i.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out_d, out_i};
}

}  // namespace clora3d
