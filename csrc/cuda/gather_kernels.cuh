// Device code of gather (and its scatter-add backward) and three-point interpolation (and its
// backward w.r.t. the features): one thread per output element, grid-stride loops, offset
// arithmetic in I (int32 when the tensors allow it, see CLORA3D_DISPATCH_INDEX). Free of ATen, so
// that the emulator of tests/cuda_emu (float and double) compiles it too.
#pragma once

#include <cstdint>

#include "device_common.cuh"

// The includer supplies the atomic add: gpuAtomicAddNoReturn (ATen, every dtype) through common.cuh
// in the .cu files, a plain update in the emulator's driver; Acc is the accumulation type
// (at::opmath_type in the .cu files: float for half and bfloat16).
#ifndef CLORA3D_ATOMIC_ADD
#error "define CLORA3D_ATOMIC_ADD(ptr, value) before including gather_kernels.cuh"
#endif

#define CLORA3D_ASSERT_INDEX(cond, op, range)                                                    \
  CLORA3D_DEVICE_ASSERT(cond, "clora3d: " op " got an index out of range (idx must be in " range \
                              "); checked on the device, without a sync")

namespace clora3d {
namespace gather_detail {

// out[b, s, c] = points[b, idx[b, s], c]
template <typename T, typename I>
__global__ void gather_forward_kernel(const T* __restrict__ points, const int64_t* __restrict__ idx, I B, I N, I S, I C,
                                      T* __restrict__ out) {
  const I total = B * S * C;
  for (I e = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<I>(gridDim.x) * blockDim.x) {
    const I bs = e / C;
    const I c = e - bs * C;
    const I b = bs / S;
    const int64_t n = idx[bs];
    CLORA3D_ASSERT_INDEX(n >= 0 && n < N, "gather", "[0, N)");
    out[e] = points[(b * N + static_cast<I>(n)) * C + c];
  }
}

// grad_points[b, idx[b, s], c] += grad_out[b, s, c], accumulated in Acc (float for half / bfloat16: the
// host casts the sums once, as the CPU kernel does)
template <typename T, typename Acc, typename I>
__global__ void gather_backward_kernel(const T* __restrict__ grad_out, const int64_t* __restrict__ idx, I B, I N, I S,
                                       I C, Acc* __restrict__ grad_points) {
  const I total = B * S * C;
  for (I e = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<I>(gridDim.x) * blockDim.x) {
    const I bs = e / C;
    const I c = e - bs * C;
    const I b = bs / S;
    const int64_t n = idx[bs];
    CLORA3D_ASSERT_INDEX(n >= 0 && n < N, "gather backward", "[0, N)");
    CLORA3D_ATOMIC_ADD(grad_points + (b * N + static_cast<I>(n)) * C + c, static_cast<Acc>(grad_out[e]));
  }
}

// out[b, i, c] = sum_{j<3} weight[b, i, j] * features[b, idx[b, i, j], c], accumulated in Acc in the
// reference's order without FMA contraction (bit-identical to it in float32 / float64)
template <typename T, typename Acc, typename I>
__global__ void three_interpolate_forward_kernel(const T* __restrict__ features, const int64_t* __restrict__ idx,
                                                 const T* __restrict__ weight, I B, I m, I n, I C,
                                                 T* __restrict__ out) {
  using acc = Acc;
  const I total = B * n * C;
  for (I e = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<I>(gridDim.x) * blockDim.x) {
    const I bi = e / C;  // b * n + i
    const I c = e - bi * C;
    const I b = bi / n;
    const T* f = features + b * m * C + c;
    acc sum = acc(0);
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      const int64_t k = idx[bi * 3 + j];
      CLORA3D_ASSERT_INDEX(k >= 0 && k < m, "three_interpolate", "[0, m)");
      sum = cuda_detail::add_rn(
          sum, cuda_detail::mul_rn(static_cast<acc>(weight[bi * 3 + j]), static_cast<acc>(f[static_cast<I>(k) * C])));
    }
    out[e] = static_cast<T>(sum);
  }
}

// grad_features[b, idx[b, i, j], c] += weight[b, i, j] * grad_out[b, i, c], accumulated in Acc
template <typename T, typename Acc, typename I>
__global__ void three_interpolate_backward_kernel(const T* __restrict__ grad_out, const int64_t* __restrict__ idx,
                                                  const T* __restrict__ weight, I B, I m, I n, I C,
                                                  Acc* __restrict__ grad_features) {
  using acc = Acc;
  const I total = B * n * C;
  for (I e = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<I>(gridDim.x) * blockDim.x) {
    const I bi = e / C;
    const I c = e - bi * C;
    const I b = bi / n;
    const acc g = static_cast<acc>(grad_out[e]);
#pragma unroll
    for (int j = 0; j < 3; ++j) {
      const int64_t k = idx[bi * 3 + j];
      CLORA3D_ASSERT_INDEX(k >= 0 && k < m, "three_interpolate backward", "[0, m)");
      CLORA3D_ATOMIC_ADD(grad_features + (b * m + static_cast<I>(k)) * C + c,
                         cuda_detail::mul_rn(static_cast<acc>(weight[bi * 3 + j]), g));
    }
  }
}

}  // namespace gather_detail
}  // namespace clora3d
