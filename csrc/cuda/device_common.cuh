// Device helpers shared by the clora3d CUDA kernels, free of ATen so that the kernel headers
// (*_kernels.cuh) also compile for the CPU emulator of tests/cuda_emu, which runs the same kernel
// code with emulated threads, warps and barriers on a machine without a GPU.
#pragma once

#include <cstdint>
#include <limits>

#ifdef CLORA3D_CUDA_EMULATION
// tests/cuda_emu/emu.h (included first) provides threads, warp intrinsics and these two.
#define CLORA3D_DYNAMIC_SMEM(name) unsigned char* name = ::emu::dynamic_smem()
#define CLORA3D_DEVICE_ASSERT(cond, msg) ::emu::device_assert((cond), #cond, msg)
#else
#include <c10/macros/Macros.h>
#define CLORA3D_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define CLORA3D_DEVICE_ASSERT(cond, msg) CUDA_KERNEL_ASSERT((cond) && msg)
#endif

// Warp-wide reductions of 32-bit integers in one instruction (sm_80 and newer; the emulator too).
#if defined(CLORA3D_CUDA_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
#define CLORA3D_HAS_WARP_REDUCE 1
#else
#define CLORA3D_HAS_WARP_REDUCE 0
#endif

// A device-side assertion on the coordinates a kernel reads (no separate checking kernel, no host
// sync): the error surfaces as "CUDA error: device-side assert triggered" at the next sync.
#define CLORA3D_ASSERT_FINITE3(x, y, z, what)                      \
  CLORA3D_DEVICE_ASSERT(isfinite(x) && isfinite(y) && isfinite(z), \
                        "clora3d: " what                           \
                        " coordinates hold NaN or inf on CUDA; "   \
                        "expected finite values (checked on the device, without a sync)")

namespace clora3d {
namespace cuda_detail {

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Non-contracting arithmetic (no FMA) so distances match a plain CPU evaluation bit for bit.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// ((dx*dx + dy*dy) + dz*dz) with dx = p - q.
template <typename T>
__device__ __forceinline__ T sqdist3(T px, T py, T pz, T qx, T qy, T qz) {
  const T dx = sub_rn(px, qx);
  const T dy = sub_rn(py, qy);
  const T dz = sub_rn(pz, qz);
  return add_rn(add_rn(mul_rn(dx, dx), mul_rn(dy, dy)), mul_rn(dz, dz));
}

template <typename T>
__device__ __forceinline__ T pos_inf() {
  return std::numeric_limits<T>::infinity();
}

// (d, i) before (bd, bi): smaller distance, ties to the lower index.
template <typename T, typename I>
__device__ __forceinline__ bool lex_less(T d, I i, T bd, I bi) {
  return d < bd || (d == bd && i < bi);
}

// x, y, z = point ``index`` of ``points`` (N, 3) when ``valid``, else the origin; asserts on the device
// that a loaded point is finite.
template <typename T>
__device__ __forceinline__ void load_point(const T* __restrict__ points, int64_t index, bool valid, T& x, T& y, T& z) {
  x = y = z = T(0);
  if (!valid) return;
  const T* p = points + index * 3;
  x = p[0];
  y = p[1];
  z = p[2];
  CLORA3D_ASSERT_FINITE3(x, y, z, "knn / three_nn / chamfer query");
}

// Copies points [t0, t0 + n) of one cloud (B, N, 3) into `tile` with the whole block (coalesced),
// asserting on the device that they are finite.
template <typename T>
__device__ __forceinline__ void load_tile(const T* __restrict__ cloud, int64_t t0, int n, T* tile) {
  const T* src = cloud + 3 * t0;
  for (int j = threadIdx.x; j < 3 * n; j += blockDim.x) {
    const T v = src[j];
    CLORA3D_DEVICE_ASSERT(isfinite(v),
                          "clora3d: point coordinates given to knn / three_nn / chamfer on CUDA hold NaN or inf; "
                          "expected finite values (checked on the device, without a sync)");
    tile[j] = v;
  }
}

}  // namespace cuda_detail
}  // namespace clora3d
