// Nearest-neighbour kernels for Chamfer (k = 1, and its backward) and three_nn (k = 3) (device code
// only; launched by chamfer.cu and three_nn.cu, emulated by tests/cuda_emu).
//
// One thread per source point; the target cloud streams through shared memory in tiles of
// kNearestThreads points; the best candidates stay in registers ordered by (squared distance,
// index), i.e. ties to the lower index. They assert on the device that the coordinates are finite.
#pragma once

#include <climits>

#include "device_common.cuh"

namespace clora3d {
namespace nearest_detail {

using cuda_detail::lex_less;
using cuda_detail::load_point;
using cuda_detail::load_tile;
using cuda_detail::pos_inf;
using cuda_detail::sqdist3;

constexpr int kNearestThreads = 256;

// One block's share of a nearest search: sources [first, first + blockDim.x) of cloud c get
// dist[c, i] = min_j |src_i - dst_j|^2 and idx[c, i] = the lowest argmin. Block-uniform control
// flow (it contains __syncthreads).
template <typename T>
__device__ __forceinline__ void nearest_block(const T* __restrict__ src, const T* __restrict__ dst, int64_t n_src,
                                              int64_t n_dst, int64_t c, int64_t first, T* tile, T* __restrict__ out_d,
                                              int64_t* __restrict__ out_i) {
  const int64_t i = first + threadIdx.x;
  const bool valid = i < n_src;
  T sx, sy, sz;
  load_point(src, c * n_src + i, valid, sx, sy, sz);
  const T* cloud = dst + c * n_dst * 3;
  T best = pos_inf<T>();
  int64_t best_i = INT64_MAX;
  for (int64_t t0 = 0; t0 < n_dst; t0 += kNearestThreads) {
    const int n_tile = static_cast<int>(min(static_cast<int64_t>(kNearestThreads), n_dst - t0));
    __syncthreads();  // the previous tile is consumed
    load_tile(cloud, t0, n_tile, tile);
    __syncthreads();
    if (!valid) continue;
    for (int t = 0; t < n_tile; ++t) {
      const T d = sqdist3(sx, sy, sz, tile[3 * t + 0], tile[3 * t + 1], tile[3 * t + 2]);
      const int64_t id = t0 + t;
      if (lex_less(d, id, best, best_i)) {  // also accepts an overflowing (inf) first d
        best = d;
        best_i = id;
      }
    }
  }
  if (!valid) return;
  out_d[c * n_src + i] = best;
  out_i[c * n_src + i] = best_i;
}

// Chamfer forward, both directions in one launch: of each cloud's bpb_a + bpb_b blocks, the first
// bpb_a search a -> b (dist_a, idx_a (B, N)), the others b -> a (dist_b, idx_b (B, M)).
template <typename T>
__global__ void __launch_bounds__(kNearestThreads)
    chamfer_forward_kernel(const T* __restrict__ a, const T* __restrict__ b, int64_t N, int64_t M, int64_t bpb_a,
                           int64_t bpb_b, T* __restrict__ dist_a, int64_t* __restrict__ idx_a, T* __restrict__ dist_b,
                           int64_t* __restrict__ idx_b) {
  __shared__ T tile[3 * kNearestThreads];
  const int64_t per_cloud = bpb_a + bpb_b;
  const int64_t c = blockIdx.x / per_cloud;
  const int64_t r = blockIdx.x % per_cloud;
  if (r < bpb_a) {
    nearest_block(a, b, N, M, c, r * kNearestThreads, tile, dist_a, idx_a);
  } else {
    nearest_block(b, a, M, N, c, (r - bpb_a) * kNearestThreads, tile, dist_b, idx_b);
  }
}

// Chamfer backward, both directions in one launch (grid-stride over B*N + B*M source points).
// With p = idx_a[c, i] and g = 2 (a_i - b_p) grad_a[c, i]: grad_a[i] += g, grad_b[p] -= g; the
// same for b's points with the roles swapped. Every update is atomic (a point's own term and the
// terms scattered to it by the other direction land in the same launch). The incoming gradients
// are read through their strides: those of .mean() / .sum() are expanded (stride 0), no copy.
template <typename T>
__global__ void chamfer_backward_kernel(const T* __restrict__ a, const T* __restrict__ b,
                                        const int64_t* __restrict__ idx_a, const int64_t* __restrict__ idx_b,
                                        const T* __restrict__ g_a, int64_t g_a_sb, int64_t g_a_si,
                                        const T* __restrict__ g_b, int64_t g_b_sb, int64_t g_b_si, int64_t B, int64_t N,
                                        int64_t M, T* __restrict__ grad_a, T* __restrict__ grad_b) {
  const int64_t n_a = B * N;
  const int64_t total = n_a + B * M;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool from_a = e < n_a;
    const int64_t k = from_a ? e : e - n_a;  // c * n_src + i
    const int64_t n_src = from_a ? N : M, n_dst = from_a ? M : N;
    const int64_t c = k / n_src, i = k - c * n_src;
    const int64_t p = (from_a ? idx_a : idx_b)[k];
    CLORA3D_DEVICE_ASSERT(p >= 0 && p < n_dst,
                          "clora3d: chamfer backward got an index out of range (idx_a must be in [0, M), idx_b in "
                          "[0, N))");
    const T g2 = T(2) * (from_a ? g_a[c * g_a_sb + i * g_a_si] : g_b[c * g_b_sb + i * g_b_si]);
    const T* s = (from_a ? a : b) + k * 3;
    const T* d = (from_a ? b : a) + (c * n_dst + p) * 3;
    T* gs = (from_a ? grad_a : grad_b) + k * 3;
    T* gd = (from_a ? grad_b : grad_a) + (c * n_dst + p) * 3;
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      const T g = g2 * (s[j] - d[j]);
      atomicAdd(gs + j, g);
      atomicAdd(gd + j, -g);
    }
  }
}

// For each unknown[b, u]: the three nearest known points, ascending.
template <typename T>
__global__ void __launch_bounds__(kNearestThreads)
    three_nn_kernel(const T* __restrict__ unknown, const T* __restrict__ known, int64_t n, int64_t m,
                    int64_t blocks_per_batch, T* __restrict__ out_d, int64_t* __restrict__ out_i) {
  __shared__ T tile[3 * kNearestThreads];
  const int64_t b = blockIdx.x / blocks_per_batch;
  const int64_t u = (blockIdx.x % blocks_per_batch) * blockDim.x + threadIdx.x;
  const bool valid = u < n;
  T ux, uy, uz;
  load_point(unknown, b * n + u, valid, ux, uy, uz);
  const T* cloud = known + b * m * 3;
  T d0 = pos_inf<T>(), d1 = pos_inf<T>(), d2 = pos_inf<T>();
  int64_t i0 = INT64_MAX, i1 = INT64_MAX, i2 = INT64_MAX;
  for (int64_t t0 = 0; t0 < m; t0 += kNearestThreads) {
    const int n_tile = static_cast<int>(min(static_cast<int64_t>(kNearestThreads), m - t0));
    __syncthreads();
    load_tile(cloud, t0, n_tile, tile);
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

}  // namespace nearest_detail
}  // namespace clora3d
