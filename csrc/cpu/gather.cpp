// Gather and three-point interpolation (forward + backward) on the CPU, channel-last layout.
//
// Forward passes are row copies / three-row blends parallel over batch x rows. Backward passes
// scatter-add; they are parallel over (batch, channel block) so no two tasks write the same value
// and no atomics are needed (each task also zeroes its own slice of the output). Interpolation sums as (w0*f0 + w1*f1)
// + w2*f2, like the reference.
#pragma GCC optimize("fp-contract=off")

#include "cpu/cpu_ops.h"

#include <algorithm>
#include <cstring>

namespace clora3d {
namespace {

constexpr int64_t kChannelBlock = 64;

inline int64_t channel_blocks(int64_t C) { return std::max<int64_t>(1, (C + kChannelBlock - 1) / kChannelBlock); }

// dst[c] += src[c]  (pragmas cannot sit inside the AT_DISPATCH macro argument, hence helpers)
template <typename T>
CLORA3D_INLINE void add_row(T* dst, const T* src, int64_t c0, int64_t c1) {
#pragma omp simd
  for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
}

// dst[c] += w * src[c]
template <typename T>
CLORA3D_INLINE void axpy_row(T* dst, T w, const T* src, int64_t c0, int64_t c1) {
#pragma omp simd
  for (int64_t c = c0; c < c1; ++c) dst[c] += w * src[c];
}

// dst[c] = (w0*f0[c] + w1*f1[c]) + w2*f2[c]
template <typename T>
CLORA3D_INLINE void blend3_row(T* dst, T w0, const T* f0, T w1, const T* f1, T w2, const T* f2, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) dst[c] = (w0 * f0[c] + w1 * f1[c]) + w2 * f2[c];
}

}  // namespace

at::Tensor gather_forward_cpu(const at::Tensor& points_in, const at::Tensor& idx_in) {
  const at::Tensor points = points_in.contiguous(), idx = idx_in.contiguous();
  const int64_t B = points.size(0), N = points.size(1), C = points.size(2), S = idx.size(1);
  auto out = at::empty({B, S, C}, points.options());
  if (B == 0 || S == 0 || C == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "gather_forward_cpu", [&] {
    const scalar_t* p = points.data_ptr<scalar_t>();
    const int64_t* ix = idx.data_ptr<int64_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    detail::parallel_dynamic(
        B * S, std::max<int64_t>(1, 16384 / C),
        [&]() {
          return [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
              const int64_t b = r / S;
              std::memcpy(o + r * C, p + (b * N + ix[r]) * C, sizeof(scalar_t) * C);
            }
          };
        },
        static_cast<double>(C));
  });
  return out;
}

at::Tensor gather_backward_cpu(const at::Tensor& grad_in, const at::Tensor& idx_in, int64_t N) {
  const at::Tensor grad = grad_in.contiguous(), idx = idx_in.contiguous();
  const int64_t B = grad.size(0), S = grad.size(1), C = grad.size(2);
  auto out = at::empty({B, N, C}, grad.options());  // zeroed by the tasks below
  if (B == 0 || N == 0 || C == 0) return out;
  if (S == 0) return out.zero_();
  const int64_t CB = channel_blocks(C);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "gather_backward_cpu", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const int64_t* ix = idx.data_ptr<int64_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    detail::parallel_dynamic(
        B * CB, 1,
        [&]() {
          return [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
              const int64_t b = t / CB, c0 = (t % CB) * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock);
              for (int64_t j = 0; j < N; ++j)
                std::fill(o + (b * N + j) * C + c0, o + (b * N + j) * C + c1, scalar_t(0));
              for (int64_t s = 0; s < S; ++s) {
                const scalar_t* gs = g + (b * S + s) * C;
                scalar_t* os = o + (b * N + ix[b * S + s]) * C;
                add_row(os, gs, c0, c1);
              }
            }
          };
        },
        static_cast<double>(S + N) * std::min<int64_t>(C, kChannelBlock));
  });
  return out;
}

at::Tensor three_interpolate_forward_cpu(const at::Tensor& feat_in, const at::Tensor& idx_in,
                                         const at::Tensor& weight_in) {
  const at::Tensor feat = feat_in.contiguous(), idx = idx_in.contiguous(), weight = weight_in.contiguous();
  const int64_t B = feat.size(0), m = feat.size(1), C = feat.size(2), n = idx.size(1);
  auto out = at::empty({B, n, C}, feat.options());
  if (B == 0 || n == 0 || C == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "three_interpolate_forward_cpu", [&] {
    const scalar_t* f = feat.data_ptr<scalar_t>();
    const int64_t* ix = idx.data_ptr<int64_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    detail::parallel_dynamic(
        B * n, std::max<int64_t>(1, 16384 / C),
        [&]() {
          return [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; ++r) {
              const int64_t b = r / n;
              const scalar_t* f0 = f + (b * m + ix[3 * r]) * C;
              const scalar_t* f1 = f + (b * m + ix[3 * r + 1]) * C;
              const scalar_t* f2 = f + (b * m + ix[3 * r + 2]) * C;
              const scalar_t w0 = w[3 * r], w1 = w[3 * r + 1], w2 = w[3 * r + 2];
              scalar_t* orow = o + r * C;
              blend3_row(orow, w0, f0, w1, f1, w2, f2, C);
            }
          };
        },
        3.0 * static_cast<double>(C));
  });
  return out;
}

at::Tensor three_interpolate_backward_cpu(const at::Tensor& grad_in, const at::Tensor& idx_in,
                                          const at::Tensor& weight_in, int64_t m) {
  const at::Tensor grad = grad_in.contiguous(), idx = idx_in.contiguous(), weight = weight_in.contiguous();
  const int64_t B = grad.size(0), n = grad.size(1), C = grad.size(2);
  auto out = at::empty({B, m, C}, grad.options());  // zeroed by the tasks below
  if (B == 0 || m == 0 || C == 0) return out;
  if (n == 0) return out.zero_();
  const int64_t CB = channel_blocks(C);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "three_interpolate_backward_cpu", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const int64_t* ix = idx.data_ptr<int64_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    detail::parallel_dynamic(
        B * CB, 1,
        [&]() {
          return [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
              const int64_t b = t / CB, c0 = (t % CB) * kChannelBlock, c1 = std::min(C, c0 + kChannelBlock);
              for (int64_t j = 0; j < m; ++j)
                std::fill(o + (b * m + j) * C + c0, o + (b * m + j) * C + c1, scalar_t(0));
              for (int64_t i = 0; i < n; ++i) {
                const int64_t r = b * n + i;
                const scalar_t* gr = g + r * C;
                for (int kk = 0; kk < 3; ++kk) {
                  const scalar_t wk = w[3 * r + kk];
                  scalar_t* orow = o + (b * m + ix[3 * r + kk]) * C;
                  axpy_row(orow, wk, gr, c0, c1);
                }
              }
            }
          };
        },
        static_cast<double>(3 * n + m) * std::min<int64_t>(C, kChannelBlock));
  });
  return out;
}

}  // namespace clora3d
