// k-nearest-neighbour kernels (device code only; launched by knn.cu, emulated by tests/cuda_emu).
//
// Result order everywhere: ascending (squared distance, index), i.e. ties go to the lower index.
//
// k <= kKnnWarpMaxK (the recipes' k = 32 and below): one WARP per query. The warp keeps the best
// candidates as one sorted list spread over its lanes (lane j holds the j-th best). References
// stream through shared memory in tiles; each lane computes the distance of one reference per
// round, and one ballot tells which of the 32 beat the current k-th best. Those few are inserted
// one at a time: a ballot counts the list entries before the candidate (its position), and lanes
// at or after it shift up by one with a shuffle. The k-th best only falls, so a reference that does
// not beat it can never enter the final list. Work per query is N/32 rounds of a distance and a
// ballot plus about k*ln(N/k) insertions, and a block of kKnnWarpsPerBlock queries keeps the GPU
// busy even for the few queries per cloud of the point-group recipes (M = 64-128).
//
// kKnnWarpMaxK < k <= kKnnLocalMaxK: one thread per query with a sorted insertion list in
// thread-local memory. Larger k: the full distance matrix, sorted by knn.cu with a stable sort.
//
// All kernels assert on the device that the coordinates they read are finite.
#pragma once

#include <climits>

#include "device_common.cuh"

namespace clora3d {
namespace knn_detail {

using cuda_detail::kFullMask;
using cuda_detail::lex_less;
using cuda_detail::load_point;
using cuda_detail::load_tile;
using cuda_detail::pos_inf;
using cuda_detail::sqdist3;

constexpr int kKnnWarpMaxK = 32;
constexpr int kKnnWarpsPerBlock = 8;
constexpr int kKnnTile = 256;  // reference points per shared-memory tile
constexpr int kKnnLocalMaxK = 128;
constexpr int kKnnLocalThreads = 256;

// Blocks per batch element of the warp kernel.
inline int64_t knn_warp_blocks_per_batch(int64_t M) { return cuda_detail::ceil_div(M, kKnnWarpsPerBlock); }

template <typename T>
__global__ void __launch_bounds__(kKnnWarpsPerBlock * 32)
    knn_warp_kernel(const T* __restrict__ query, const T* __restrict__ ref, int64_t M, int64_t N, int k,
                    int64_t blocks_per_batch, T* __restrict__ out_d, int64_t* __restrict__ out_i) {
  __shared__ T tile[3 * kKnnTile];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t b = blockIdx.x / blocks_per_batch;
  const int64_t q = (blockIdx.x % blocks_per_batch) * kKnnWarpsPerBlock + warp;
  const bool valid = q < M;  // the same for the whole warp
  T qx, qy, qz;
  load_point(query, b * M + q, valid, qx, qy, qz);
  // This lane's entry of the warp's sorted list, and the k-th best (the same in every lane).
  T ld = pos_inf<T>();
  int li = INT_MAX;
  T kd = pos_inf<T>();
  int ki = INT_MAX;
  const T* cloud = ref + b * N * 3;
  for (int64_t t0 = 0; t0 < N; t0 += kKnnTile) {
    const int n_tile = static_cast<int>(min(static_cast<int64_t>(kKnnTile), N - t0));
    __syncthreads();  // the previous tile is consumed
    load_tile(cloud, t0, n_tile, tile);
    __syncthreads();
    if (!valid) continue;
    for (int r0 = 0; r0 < n_tile; r0 += 32) {
      const int t = r0 + lane;
      T d = pos_inf<T>();
      int id = INT_MAX;
      if (t < n_tile) {
        d = sqdist3(tile[3 * t + 0], tile[3 * t + 1], tile[3 * t + 2], qx, qy, qz);
        id = static_cast<int>(t0 + t);
      }
      unsigned pending = __ballot_sync(kFullMask, t < n_tile && lex_less(d, id, kd, ki));
      while (pending != 0u) {  // warp-uniform loop
        const int src = __ffs(pending) - 1;
        pending &= pending - 1u;
        const T cd = __shfl_sync(kFullMask, d, src);
        const int ci = __shfl_sync(kFullMask, id, src);
        if (!lex_less(cd, ci, kd, ki)) continue;  // beaten by an insertion of this round
        const int pos = __popc(__ballot_sync(kFullMask, lex_less(ld, li, cd, ci)));  // < k
        const T up_d = __shfl_up_sync(kFullMask, ld, 1);
        const int up_i = __shfl_up_sync(kFullMask, li, 1);
        if (lane == pos) {
          ld = cd;
          li = ci;
        } else if (lane > pos) {
          ld = up_d;
          li = up_i;
        }
        kd = __shfl_sync(kFullMask, ld, k - 1);
        ki = __shfl_sync(kFullMask, li, k - 1);
      }
    }
  }
  if (valid && lane < k) {
    out_d[(b * M + q) * k + lane] = ld;
    out_i[(b * M + q) * k + lane] = static_cast<int64_t>(li);
  }
}

// One thread per query, a sorted insertion list of k <= KMAX entries in thread-local memory. A
// register copy of the current k-th distance rejects most candidates with one comparison; an
// accepted one is shifted in after every entry with an equal distance (those have lower indices,
// as references arrive in increasing index order).
template <typename T, int KMAX>
__global__ void __launch_bounds__(kKnnLocalThreads)
    knn_local_kernel(const T* __restrict__ query, const T* __restrict__ ref, int64_t M, int64_t N, int k,
                     int64_t blocks_per_batch, T* __restrict__ out_d, int64_t* __restrict__ out_i) {
  __shared__ T tile[3 * kKnnLocalThreads];
  const int64_t b = blockIdx.x / blocks_per_batch;
  const int64_t q = (blockIdx.x % blocks_per_batch) * blockDim.x + threadIdx.x;
  const bool valid = q < M;
  T qx, qy, qz;
  load_point(query, b * M + q, valid, qx, qy, qz);
  T bd[KMAX];
  int bi[KMAX];
  int filled = 0;
  T worst = pos_inf<T>();
  const T* cloud = ref + b * N * 3;
  for (int64_t t0 = 0; t0 < N; t0 += kKnnLocalThreads) {
    const int n_tile = static_cast<int>(min(static_cast<int64_t>(kKnnLocalThreads), N - t0));
    __syncthreads();
    load_tile(cloud, t0, n_tile, tile);
    __syncthreads();
    if (!valid) continue;
    for (int t = 0; t < n_tile; ++t) {
      const T d = sqdist3(tile[3 * t + 0], tile[3 * t + 1], tile[3 * t + 2], qx, qy, qz);
      int j;
      if (filled < k) {
        j = filled++;
      } else if (d < worst) {
        j = k - 1;
      } else {
        continue;
      }
      while (j > 0 && bd[j - 1] > d) {
        bd[j] = bd[j - 1];
        bi[j] = bi[j - 1];
        --j;
      }
      bd[j] = d;
      bi[j] = static_cast<int>(t0 + t);
      if (filled == k) worst = bd[k - 1];
    }
  }
  if (!valid) return;
  T* od = out_d + (b * M + q) * k;
  int64_t* oi = out_i + (b * M + q) * k;
  for (int j = 0; j < k; ++j) {
    od[j] = bd[j];
    oi[j] = static_cast<int64_t>(bi[j]);
  }
}

// dist[b, m, n] = |query[b,m] - ref[b,n]|^2 (the same arithmetic as the list kernels).
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
    CLORA3D_ASSERT_FINITE3(qp[0], qp[1], qp[2], "query");
    CLORA3D_ASSERT_FINITE3(rp[0], rp[1], rp[2], "reference");
    dist[e] = sqdist3(rp[0], rp[1], rp[2], qp[0], qp[1], qp[2]);
  }
}

}  // namespace knn_detail
}  // namespace clora3d
