// k nearest neighbours on the GPU.
//
// k <= kKnnCudaMaxInsertionK: one thread per query. Reference points stream through shared memory
// in tiles of blockDim points (all queries of a block belong to the same batch element); each
// thread keeps its best k candidates sorted by (squared distance, index). References arrive in
// increasing index order, so this is exactly "ascending distance, ties to the lower index".
// k <= 16 keeps the list in registers (fully unrolled compare-and-swap, ~73 registers for float);
// larger k keep it in thread-local memory, where insertion only shifts the entries it passes
// (register-resident lists of 32-64 entries need 140-255 registers and spill; -Xptxas -v).
//
// k > kKnnCudaMaxInsertionK: the full (B,M,N) squared-distance matrix is computed with the same
// arithmetic and sorted with a stable sort (ties keep the lower index), then cut to k. This costs
// B*M*N elements of memory but gives identical results.
#include <climits>

#include "common.cuh"
#include "cuda_ops.h"

namespace clora3d {
namespace {

using cuda_detail::kThreads;
using cuda_detail::pos_inf;
using cuda_detail::sqdist3;

// Reference points of batch element b stream through shared memory in tiles of blockDim points;
// `consume(d, id)` is called for each of them in increasing index order (for valid queries).
template <typename T, typename F>
__device__ __forceinline__ void for_each_ref(const T* __restrict__ rb, int64_t N, bool valid, T qx, T qy, T qz, T* tile,
                                             F&& consume) {
  for (int64_t t0 = 0; t0 < N; t0 += blockDim.x) {
    const int n_tile = static_cast<int>(min(static_cast<int64_t>(blockDim.x), N - t0));
    __syncthreads();  // previous tile fully consumed
    if (threadIdx.x < n_tile) {
      const T* rp = rb + (t0 + threadIdx.x) * 3;
      tile[3 * threadIdx.x + 0] = rp[0];
      tile[3 * threadIdx.x + 1] = rp[1];
      tile[3 * threadIdx.x + 2] = rp[2];
    }
    __syncthreads();
    if (!valid) continue;
    for (int t = 0; t < n_tile; ++t) {
      consume(sqdist3(tile[3 * t + 0], tile[3 * t + 1], tile[3 * t + 2], qx, qy, qz), static_cast<int>(t0 + t));
    }
  }
}

// Small k (<= KMAX, KMAX small): the list lives in registers; every loop over it is unrolled and
// a candidate is bubbled into place by lexicographic (distance, index) compare-and-swap. The k live
// entries occupy the LAST k slots; the first KMAX-k slots hold (-inf, -1) padding that no candidate
// can displace, so the k-th best is always bd[KMAX-1]. (Reading bd[k-1] with a runtime k would
// force the list into local memory; checked with -Xptxas -v.)
template <typename T, int KMAX>
__global__ void __launch_bounds__(kThreads)
    knn_register_kernel(const T* __restrict__ query, const T* __restrict__ ref, int64_t M, int64_t N, int k,
                        int64_t blocks_per_batch, T* __restrict__ out_d, int64_t* __restrict__ out_i) {
  __shared__ T tile[3 * kThreads];
  const int64_t b = blockIdx.x / blocks_per_batch;
  const int64_t q = (blockIdx.x % blocks_per_batch) * blockDim.x + threadIdx.x;
  const bool valid = q < M;
  const T* qp = query + (b * M + (valid ? q : 0)) * 3;
  const T qx = valid ? qp[0] : T(0), qy = valid ? qp[1] : T(0), qz = valid ? qp[2] : T(0);

  T bd[KMAX];
  int bi[KMAX];
  const int pad = KMAX - k;
#pragma unroll
  for (int j = 0; j < KMAX; ++j) {
    bd[j] = j < pad ? -pos_inf<T>() : pos_inf<T>();
    bi[j] = j < pad ? -1 : INT_MAX;
  }
  T worst = pos_inf<T>();
  int worst_i = INT_MAX;
  const T* rb = ref + b * N * 3;
  // Tile loop written out (no lambda): capturing the list by reference would put it on the stack.
  for (int64_t t0 = 0; t0 < N; t0 += blockDim.x) {
    const int n_tile = static_cast<int>(min(static_cast<int64_t>(blockDim.x), N - t0));
    __syncthreads();
    if (threadIdx.x < n_tile) {
      const T* rp = rb + (t0 + threadIdx.x) * 3;
      tile[3 * threadIdx.x + 0] = rp[0];
      tile[3 * threadIdx.x + 1] = rp[1];
      tile[3 * threadIdx.x + 2] = rp[2];
    }
    __syncthreads();
    if (!valid) continue;
    for (int t = 0; t < n_tile; ++t) {
      T d = sqdist3(tile[3 * t + 0], tile[3 * t + 1], tile[3 * t + 2], qx, qy, qz);
      int id = static_cast<int>(t0 + t);
      if (d < worst || (d == worst && id < worst_i)) {
#pragma unroll
        for (int j = 0; j < KMAX; ++j) {
          if (d < bd[j] || (d == bd[j] && id < bi[j])) {
            const T td = bd[j];
            const int ti = bi[j];
            bd[j] = d;
            bi[j] = id;
            d = td;
            id = ti;
          }
        }
        worst = bd[KMAX - 1];
        worst_i = bi[KMAX - 1];
      }
    }
  }
  if (!valid) return;
  T* od = out_d + (b * M + q) * k;
  int64_t* oi = out_i + (b * M + q) * k;
#pragma unroll
  for (int j = 0; j < KMAX; ++j) {
    if (j >= pad) {
      od[j - pad] = bd[j];
      oi[j - pad] = static_cast<int64_t>(bi[j]);
    }
  }
}

// Larger k (<= KMAX): a sorted insertion list in thread-local memory (L1-cached). A register copy
// of the current k-th distance rejects most candidates with one comparison; an accepted one is
// shifted in after every entry with an equal distance (those have lower indices).
template <typename T, int KMAX>
__global__ void __launch_bounds__(kThreads)
    knn_local_kernel(const T* __restrict__ query, const T* __restrict__ ref, int64_t M, int64_t N, int k,
                     int64_t blocks_per_batch, T* __restrict__ out_d, int64_t* __restrict__ out_i) {
  __shared__ T tile[3 * kThreads];
  const int64_t b = blockIdx.x / blocks_per_batch;
  const int64_t q = (blockIdx.x % blocks_per_batch) * blockDim.x + threadIdx.x;
  const bool valid = q < M;
  const T* qp = query + (b * M + (valid ? q : 0)) * 3;
  const T qx = valid ? qp[0] : T(0), qy = valid ? qp[1] : T(0), qz = valid ? qp[2] : T(0);

  T bd[KMAX];
  int bi[KMAX];
  int filled = 0;
  T worst = pos_inf<T>();
  for_each_ref(ref + b * N * 3, N, valid, qx, qy, qz, tile, [&](T d, int id) {
    int j;
    if (filled < k) {
      j = filled++;
    } else if (d < worst) {
      j = k - 1;
    } else {
      return;
    }
    while (j > 0 && bd[j - 1] > d) {
      bd[j] = bd[j - 1];
      bi[j] = bi[j - 1];
      --j;
    }
    bd[j] = d;
    bi[j] = id;
    if (filled == k) worst = bd[k - 1];
  });
  if (!valid) return;
  T* od = out_d + (b * M + q) * k;
  int64_t* oi = out_i + (b * M + q) * k;
  for (int j = 0; j < k; ++j) {
    od[j] = bd[j];
    oi[j] = static_cast<int64_t>(bi[j]);
  }
}

// dist[b, m, n] = |query[b,m] - ref[b,n]|^2 (same arithmetic as the insertion kernel).
template <typename T>
__global__ void pairwise_sqdist_kernel(const T* __restrict__ query, const T* __restrict__ ref, int64_t B, int64_t M,
                                       int64_t N, T* __restrict__ dist) {
  const int64_t total = B * M * N;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = e % N;
    const int64_t bm = e / N;
    const int64_t b = bm / M;
    const T* qp = query + bm * 3;
    const T* rp = ref + (b * N + n) * 3;
    dist[e] = sqdist3(rp[0], rp[1], rp[2], qp[0], qp[1], qp[2]);
  }
}

template <typename T, int KMAX, bool REGISTERS>
void launch_insertion(const at::Tensor& query, const at::Tensor& ref, int64_t k, at::Tensor& d, at::Tensor& i,
                      cudaStream_t stream) {
  const int64_t B = query.size(0), M = query.size(1), N = ref.size(1);
  const int64_t bpb = cuda_detail::ceil_div(M, kThreads);
  const int64_t blocks = B * bpb;
  TORCH_CHECK(blocks <= INT_MAX, "knn_cuda: B * ceil(M / ", kThreads, ") = ", blocks,
              " exceeds the CUDA grid limit; split the batch");
  if constexpr (REGISTERS) {
    knn_register_kernel<T, KMAX><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        query.data_ptr<T>(), ref.data_ptr<T>(), M, N, static_cast<int>(k), bpb, d.data_ptr<T>(), i.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    knn_local_kernel<T, KMAX><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        query.data_ptr<T>(), ref.data_ptr<T>(), M, N, static_cast<int>(k), bpb, d.data_ptr<T>(), i.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

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

  if (k > kKnnCudaMaxInsertionK) {
    at::Tensor dist = at::empty({B, M, N}, query.options());
    AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "knn_cuda_full", [&] {
      pairwise_sqdist_kernel<scalar_t><<<cuda_detail::grid_for(B * M * N), kThreads, 0, stream>>>(
          query.data_ptr<scalar_t>(), ref.data_ptr<scalar_t>(), B, M, N, dist.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    auto sorted = at::sort(dist, /*stable=*/true, /*dim=*/-1, /*descending=*/false);
    out_d.copy_(std::get<0>(sorted).narrow(2, 0, k));
    out_i.copy_(std::get<1>(sorted).narrow(2, 0, k));
    return {out_d, out_i};
  }

  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "knn_cuda", [&] {
    if (k <= 16) {
      launch_insertion<scalar_t, 16, true>(query, ref, k, out_d, out_i, stream);
    } else {
      launch_insertion<scalar_t, kKnnCudaMaxInsertionK, false>(query, ref, k, out_d, out_i, stream);
    }
  });
  return {out_d, out_i};
}

}  // namespace clora3d
