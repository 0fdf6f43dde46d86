// Three nearest neighbours (for feature propagation / inverse-distance interpolation).
// One thread per unknown point; known points stream through shared memory in tiles; the best
// three are kept in registers ordered by (squared distance, index), i.e. ties to the lower index.
#include <climits>

#include "common.cuh"
#include "cuda_ops.h"

namespace clora3d {
namespace {

using cuda_detail::kThreads;
using cuda_detail::pos_inf;
using cuda_detail::sqdist3;

template <typename T>
__device__ __forceinline__ bool lex_less(T d, int64_t i, T bd, int64_t bi) {
  return d < bd || (d == bd && i < bi);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    three_nn_kernel(const T* __restrict__ unknown, const T* __restrict__ known, int64_t n, int64_t m,
                    int64_t blocks_per_batch, T* __restrict__ out_d, int64_t* __restrict__ out_i) {
  __shared__ T tile[3 * kThreads];
  const int64_t b = blockIdx.x / blocks_per_batch;
  const int64_t u = (blockIdx.x % blocks_per_batch) * blockDim.x + threadIdx.x;
  const bool valid = u < n;
  const T* up = unknown + (b * n + (valid ? u : 0)) * 3;
  const T ux = valid ? up[0] : T(0), uy = valid ? up[1] : T(0), uz = valid ? up[2] : T(0);
  const T* kb = known + b * m * 3;

  T d0 = pos_inf<T>(), d1 = pos_inf<T>(), d2 = pos_inf<T>();
  int64_t i0 = INT64_MAX, i1 = INT64_MAX, i2 = INT64_MAX;
  for (int64_t t0 = 0; t0 < m; t0 += blockDim.x) {
    const int n_tile = static_cast<int>(min(static_cast<int64_t>(blockDim.x), m - t0));
    __syncthreads();
    if (threadIdx.x < n_tile) {
      const T* kp = kb + (t0 + threadIdx.x) * 3;
      tile[3 * threadIdx.x + 0] = kp[0];
      tile[3 * threadIdx.x + 1] = kp[1];
      tile[3 * threadIdx.x + 2] = kp[2];
    }
    __syncthreads();
    if (!valid) continue;
    for (int t = 0; t < n_tile; ++t) {
      const T d = sqdist3(tile[3 * t + 0], tile[3 * t + 1], tile[3 * t + 2], ux, uy, uz);
      const int64_t id = t0 + t;
      if (lex_less(d, id, d2, i2)) {
        if (lex_less(d, id, d1, i1)) {
          d2 = d1;
          i2 = i1;
          if (lex_less(d, id, d0, i0)) {
            d1 = d0;
            i1 = i0;
            d0 = d;
            i0 = id;
          } else {
            d1 = d;
            i1 = id;
          }
        } else {
          d2 = d;
          i2 = id;
        }
      }
    }
  }
  if (!valid) return;
  T* od = out_d + (b * n + u) * 3;
  int64_t* oi = out_i + (b * n + u) * 3;
  od[0] = d0;
  od[1] = d1;
  od[2] = d2;
  oi[0] = i0;
  oi[1] = i1;
  oi[2] = i2;
}

}  // namespace

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

  const int64_t bpb = cuda_detail::ceil_div(n, kThreads);
  TORCH_CHECK(B * bpb <= INT_MAX, "three_nn_cuda: grid too large; split the batch");
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(unknown.scalar_type(), "three_nn_cuda", [&] {
    three_nn_kernel<scalar_t><<<static_cast<unsigned int>(B * bpb), kThreads, 0, stream>>>(
        unknown.data_ptr<scalar_t>(), known.data_ptr<scalar_t>(), n, m, bpb, out_d.data_ptr<scalar_t>(),
        out_i.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out_d, out_i};
}

}  // namespace clora3d
