// Furthest point sampling on the CPU.
//
// One cloud per task (dynamically scheduled over torch's threads). The cloud is copied to SoA buffers, a
// running min-distance array is updated in one vectorised pass per sample that also computes the
// maximum, and a chunked scan finds the first index holding that maximum (ties -> lowest index).
// Distances are (dx*dx + dy*dy) + dz*dz without FMA contraction, bit-identical to the reference.
#pragma GCC optimize("fp-contract=off")

#include "cpu/cpu_ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

namespace clora3d {
namespace {

constexpr int64_t kChunk = 32;

// Index of the first element of d[0..n) equal to v (v is known to occur).
template <typename T>
CLORA3D_INLINE int64_t first_equal(const T* d, int64_t n, T v) {
  int64_t j = 0;
  for (; j + kChunk <= n; j += kChunk) {
    int hit = 0;
#pragma omp simd reduction(| : hit)
    for (int64_t t = 0; t < kChunk; ++t) hit |= (d[j + t] == v);
    if (hit) break;
  }
  for (; j < n; ++j)
    if (d[j] == v) return j;
  return 0;  // unreachable for finite inputs
}

template <typename T>
CLORA3D_INLINE void fps_one_impl(const T* x, const T* y, const T* z, T* dist, int64_t N, int64_t S, int64_t start,
                                 int64_t* out) {
  for (int64_t j = 0; j < N; ++j) dist[j] = std::numeric_limits<T>::infinity();
  int64_t cur = start;
  out[0] = cur;
  for (int64_t s = 1; s < S; ++s) {
    const T cx = x[cur], cy = y[cur], cz = z[cur];
    T best = T(-1);
#pragma omp simd reduction(max : best)
    for (int64_t j = 0; j < N; ++j) {
      const T dx = x[j] - cx, dy = y[j] - cy, dz = z[j] - cz;
      const T d = (dx * dx + dy * dy) + dz * dz;
      const T m = d < dist[j] ? d : dist[j];
      dist[j] = m;
      best = m > best ? m : best;
    }
    cur = first_equal(dist, N, best);
    out[s] = cur;
  }
}

CLORA3D_MULTIVERSION
void fps_one_f32(const float* x, const float* y, const float* z, float* dist, int64_t N, int64_t S, int64_t start,
                 int64_t* out) {
  fps_one_impl<float>(x, y, z, dist, N, S, start, out);
}

CLORA3D_MULTIVERSION
void fps_one_f64(const double* x, const double* y, const double* z, double* dist, int64_t N, int64_t S, int64_t start,
                 int64_t* out) {
  fps_one_impl<double>(x, y, z, dist, N, S, start, out);
}

inline void fps_one(const float* x, const float* y, const float* z, float* dist, int64_t N, int64_t S, int64_t start,
                    int64_t* out) {
  fps_one_f32(x, y, z, dist, N, S, start, out);
}
inline void fps_one(const double* x, const double* y, const double* z, double* dist, int64_t N, int64_t S,
                    int64_t start, int64_t* out) {
  fps_one_f64(x, y, z, dist, N, S, start, out);
}

}  // namespace

at::Tensor fps_cpu(const at::Tensor& xyz_in, int64_t S, int64_t start) {
  const int64_t B = xyz_in.size(0), N = xyz_in.size(1);
  auto out = at::empty({B, S}, xyz_in.options().dtype(at::kLong));
  if (B == 0 || S == 0) return out;
  // SoA copy (B,3,N): contiguous x, y, z rows.
  const at::Tensor soa = detail::to_soa(xyz_in);
  AT_DISPATCH_FLOATING_TYPES(soa.scalar_type(), "fps_cpu", [&] {
    const scalar_t* p = soa.data_ptr<scalar_t>();
    int64_t* o = out.data_ptr<int64_t>();
    detail::parallel_dynamic(
        B, 1,
        [&]() {
          return [&, dist = std::vector<scalar_t>(static_cast<size_t>(N))](int64_t b0, int64_t b1) mutable {
            for (int64_t b = b0; b < b1; ++b) {
              const scalar_t* base = p + b * 3 * N;
              fps_one(base, base + N, base + 2 * N, dist.data(), N, S, start, o + b * S);
            }
          };
        },
        static_cast<double>(S) * static_cast<double>(N));
  });
  return out;
}

}  // namespace clora3d
