// Nearest-neighbour kernels for Chamfer (k = 1) and three_nn (k = 3) (device code only; launched by
// chamfer.cu and three_nn.cu, emulated by tests/cuda_emu).
//
// One thread per source point; the target cloud streams through shared memory in tiles of
// kNearestThreads points; the best candidates stay in registers ordered by (squared distance,
// index), i.e. ties to the lower index. Both assert on the device that the coordinates are finite.
#pragma once

#include <climits>

#include "device_common.cuh"

namespace clora3d {
namespace nearest_detail {

using cuda_detail::lex_less;
using cuda_detail::load_tile;
using cuda_detail::pos_inf;
using cuda_detail::sqdist3;

constexpr int kNearestThreads = 256;

// For each src[b, i]: dist[b, i] = min_j |src_i - dst_j|^2, idx[b, i] = the lowest argmin.
template <typename T>
__global__ void __launch_bounds__(kNearestThreads)
    nearest_kernel(const T* __restrict__ src, const T* __restrict__ dst, int64_t n_src, int64_t n_dst,
                   int64_t blocks_per_batch, T* __restrict__ out_d, int64_t* __restrict__ out_i) {
  __shared__ T tile[3 * kNearestThreads];
  const int64_t b = blockIdx.x / blocks_per_batch;
  const int64_t i = (blockIdx.x % blocks_per_batch) * blockDim.x + threadIdx.x;
  const bool valid = i < n_src;
  T sx = T(0), sy = T(0), sz = T(0);
  if (valid) {
    const T* sp = src + (b * n_src + i) * 3;
    sx = sp[0];
    sy = sp[1];
    sz = sp[2];
    CLORA3D_ASSERT_FINITE3(sx, sy, sz, "chamfer: source");
  }
  const T* cloud = dst + b * n_dst * 3;
  T best = pos_inf<T>();
  int64_t best_i = INT64_MAX;
  for (int64_t t0 = 0; t0 < n_dst; t0 += kNearestThreads) {
    const int n_tile = static_cast<int>(min(static_cast<int64_t>(kNearestThreads), n_dst - t0));
    __syncthreads();
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
  out_d[b * n_src + i] = best;
  out_i[b * n_src + i] = best_i;
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
  T ux = T(0), uy = T(0), uz = T(0);
  if (valid) {
    const T* up = unknown + (b * n + u) * 3;
    ux = up[0];
    uy = up[1];
    uz = up[2];
    CLORA3D_ASSERT_FINITE3(ux, uy, uz, "three_nn: unknown");
  }
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
