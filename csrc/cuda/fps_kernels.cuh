// Farthest point sampling kernels (device code only; launched by fps.cu, emulated by tests/cuda_emu).
//
// Exact: out[0] = start, then each step selects the point whose squared distance to the selected
// set is largest, ties to the lowest index; no near-origin skip (unlike pointnet2_ops). One thread
// block per cloud; S steps, each a block-wide argmax.
//
// N <= 8192 (the recipes): fps_register_kernel. Each thread keeps PPT points (i = tid + j*blockDim)
// and their running distances in registers, so a step reads no memory but the winner's slot. A step
// is: update the PPT distances, a per-thread argmax, a warp argmax, ONE __syncthreads, then every
// warp reduces the per-warp winners itself (the slots are double-buffered by step parity, so no
// second barrier is needed before they are overwritten). The winning warp's slot also carries the
// winner's coordinates, so nobody reads the point back from global memory.
// Larger N (scene scale): fps_generic_kernel, points and distances in shared memory when they fit
// (the host opts in to the device's large shared memory), else in global memory.
//
// Both assert on the device that every coordinate is finite.
#pragma once

#include <climits>
#include <cstddef>
#include <type_traits>

#include "device_common.cuh"

namespace clora3d {
namespace fps_detail {

using cuda_detail::kFullMask;
using cuda_detail::pos_inf;
using cuda_detail::sqdist3;

constexpr int kFpsMaxThreads = 1024;
constexpr size_t kFpsStaticSmem = 2 * 1024;  // bound on the generic kernel's static shared memory

enum class FpsKernel { kRegisters4, kRegisters8, kGeneric };

struct FpsPlan {
  FpsKernel kernel;
  int threads;
  bool use_smem;      // generic kernel: points and distances in shared memory
  size_t smem_bytes;  // their size (dynamic shared memory)
};

// Kernel and block size for N points; `smem_limit` is the dynamic shared memory the generic kernel
// may use.
inline FpsPlan fps_plan(int64_t N, size_t elem_size, size_t smem_limit) {
  const auto warps_for = [N](int ppt) {
    const int64_t threads = cuda_detail::ceil_div(cuda_detail::ceil_div(N, ppt), 32) * 32;
    return static_cast<int>(threads < 32 ? 32 : threads);
  };
  if (N <= 4 * kFpsMaxThreads) return {FpsKernel::kRegisters4, warps_for(4), false, 0};
  if (N <= 8 * kFpsMaxThreads) return {FpsKernel::kRegisters8, warps_for(8), false, 0};
  const size_t smem = static_cast<size_t>(N) * 4 * elem_size;
  return {FpsKernel::kGeneric, kFpsMaxThreads, smem + kFpsStaticSmem <= smem_limit, smem};
}

// Order-preserving map of a float to an unsigned key (larger float -> larger key), and back.
__device__ __forceinline__ unsigned float_key(float f) {
  const unsigned u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_float(unsigned k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Warp-wide argmax of (d, i): largest d, ties to the lowest i. Every lane gets the result.
template <typename T, typename I>
__device__ __forceinline__ void warp_argmax(T& d, I& i) {
#if CLORA3D_HAS_WARP_REDUCE
  if constexpr (std::is_same<T, float>::value && std::is_same<I, int>::value) {
    const unsigned key = float_key(d);
    const unsigned top = __reduce_max_sync(kFullMask, key);
    i = static_cast<int>(__reduce_min_sync(kFullMask, key == top ? static_cast<unsigned>(i) : 0xffffffffu));
    d = key_float(top);
    return;
  }
#endif
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const T od = __shfl_xor_sync(kFullMask, d, offset);
    const I oi = __shfl_xor_sync(kFullMask, i, offset);
    if (od > d || (od == d && oi < i)) {
      d = od;
      i = oi;
    }
  }
}

// blockDim.x: a multiple of 32, at most kFpsMaxThreads, with blockDim.x * PPT >= N and
// blockDim.x < N + 32 (fps_plan), so every warp owns at least one point.
template <typename T, int PPT>
__global__ void __launch_bounds__(kFpsMaxThreads)
    fps_register_kernel(const T* __restrict__ xyz, int64_t N, int64_t S, int64_t start, int64_t* __restrict__ out) {
  constexpr int kMaxWarps = kFpsMaxThreads / 32;
  __shared__ T slot_d[2][kMaxWarps];
  __shared__ int slot_i[2][kMaxWarps];
  __shared__ T slot_x[2][kMaxWarps], slot_y[2][kMaxWarps], slot_z[2][kMaxWarps];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int nwarps = blockDim.x >> 5;
  const T* pts = xyz + blockIdx.x * N * 3;
  int64_t* o = out + blockIdx.x * S;

  T px[PPT], py[PPT], pz[PPT], pd[PPT];
#pragma unroll
  for (int j = 0; j < PPT; ++j) {
    const int i = tid + j * static_cast<int>(blockDim.x);
    if (i < N) {
      px[j] = pts[3 * i + 0];
      py[j] = pts[3 * i + 1];
      pz[j] = pts[3 * i + 2];
      CLORA3D_ASSERT_FINITE3(px[j], py[j], pz[j], "fps: xyz");
      pd[j] = pos_inf<T>();
    } else {  // padding: distance -1 is never updated (d >= 0) and never selected
      px[j] = py[j] = pz[j] = T(0);
      pd[j] = T(-1);
    }
  }
  T cx = pts[3 * start + 0], cy = pts[3 * start + 1], cz = pts[3 * start + 2];
  if (tid == 0) o[0] = start;

  for (int64_t s = 1; s < S; ++s) {
    const int par = static_cast<int>(s & 1);
    T best = T(-1);
    int best_i = INT_MAX;
    T bx = T(0), by = T(0), bz = T(0);
#pragma unroll
    for (int j = 0; j < PPT; ++j) {
      const T d = sqdist3(px[j], py[j], pz[j], cx, cy, cz);
      if (d < pd[j]) pd[j] = d;
      if (pd[j] > best) {  // strict, j ascending: this thread's lowest index wins ties
        best = pd[j];
        best_i = tid + j * static_cast<int>(blockDim.x);
        bx = px[j];
        by = py[j];
        bz = pz[j];
      }
    }
    T wd = best;
    int wi = best_i;
    warp_argmax(wd, wi);
    if (best_i == wi) {  // the owner of the warp's winner (indices are unique; every warp has one)
      slot_d[par][warp] = wd;
      slot_i[par][warp] = wi;
      slot_x[par][warp] = bx;
      slot_y[par][warp] = by;
      slot_z[par][warp] = bz;
    }
    __syncthreads();
    T gd = lane < nwarps ? slot_d[par][lane] : T(-1);
    int gi = lane < nwarps ? slot_i[par][lane] : INT_MAX;
    const int mine = gi;
    warp_argmax(gd, gi);
    const int src = __ffs(__ballot_sync(kFullMask, mine == gi)) - 1;  // the winning warp
    cx = slot_x[par][src];
    cy = slot_y[par][src];
    cz = slot_z[par][src];
    if (tid == 0) o[s] = gi;
  }
}

// Any N: points and running distances in shared memory (use_smem) or global memory (gdist).
template <typename T>
__global__ void __launch_bounds__(kFpsMaxThreads)
    fps_generic_kernel(const T* __restrict__ xyz, int64_t N, int64_t S, int64_t start, T* __restrict__ gdist,
                       int64_t* __restrict__ out, bool use_smem) {
  CLORA3D_DYNAMIC_SMEM(fps_smem);
  __shared__ T warp_best[kFpsMaxThreads / 32];
  __shared__ int64_t warp_best_i[kFpsMaxThreads / 32];
  __shared__ int64_t current;

  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  const T* gpts = xyz + b * N * 3;
  int64_t* o = out + b * S;

  const T* pts;
  T* dist;
  if (use_smem) {
    T* s = reinterpret_cast<T*>(fps_smem);
    for (int64_t i = tid; i < 3 * N; i += blockDim.x) s[i] = gpts[i];
    pts = s;
    dist = s + 3 * N;
  } else {
    pts = gpts;
    dist = gdist + b * N;
  }
  for (int64_t i = tid; i < N; i += blockDim.x) {
    CLORA3D_ASSERT_FINITE3(gpts[3 * i + 0], gpts[3 * i + 1], gpts[3 * i + 2], "fps: xyz");
    dist[i] = pos_inf<T>();
  }
  if (tid == 0) {
    current = start;
    o[0] = start;
  }
  __syncthreads();

  for (int64_t s = 1; s < S; ++s) {
    const int64_t c = current;
    const T cx = pts[3 * c + 0], cy = pts[3 * c + 1], cz = pts[3 * c + 2];
    T best = T(-1);
    int64_t best_i = INT64_MAX;
    for (int64_t i = tid; i < N; i += blockDim.x) {
      const T d = sqdist3(pts[3 * i + 0], pts[3 * i + 1], pts[3 * i + 2], cx, cy, cz);
      T m = dist[i];
      if (d < m) {
        m = d;
        dist[i] = d;
      }
      if (m > best) {  // strict: the lowest index of this thread wins on ties
        best = m;
        best_i = i;
      }
    }
    warp_argmax(best, best_i);
    if (lane == 0) {
      warp_best[warp] = best;
      warp_best_i[warp] = best_i;
    }
    __syncthreads();
    if (warp == 0) {
      best = lane < nwarps ? warp_best[lane] : T(-1);
      best_i = lane < nwarps ? warp_best_i[lane] : INT64_MAX;
      warp_argmax(best, best_i);
      if (lane == 0) {
        current = best_i;
        o[s] = best_i;
      }
    }
    __syncthreads();
  }
}

}  // namespace fps_detail
}  // namespace clora3d
