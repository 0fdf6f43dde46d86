// CPU kernels of clora3d._C (namespace clora3d).
//
// Every function expects inputs that bindings.cpp has already validated and made contiguous:
// coordinates / features are float32 or float64, indices int64, all tensors on the CPU.
// The CUDA kernels (csrc/cuda/cuda_ops.h) declare the `_cuda` twins with identical signatures.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <optional>
#include <vector>

#include <cstdint>
#include <tuple>

// Hot loops are compiled for several x86-64 levels and picked at load time (GCC ifunc), so the
// shipped build needs no -march=native and still uses AVX2 / AVX-512 where the CPU has them.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(CLORA3D_NO_MULTIVERSION)
#define CLORA3D_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLORA3D_MULTIVERSION
#endif

// Helpers of multiversioned kernels must be inlined into each clone to get its instruction set.
#if defined(__GNUC__)
#define CLORA3D_INLINE inline __attribute__((always_inline))
#else
#define CLORA3D_INLINE inline
#endif

namespace clora3d {

namespace detail {
// Runs fn(block, worker) for every block in [0, nblocks) on up to `nthreads` threads (worker 0 is
// the calling thread, 1.. are helpers of a small persistent pool, started lazily on first use).
// The caller works from the first block; helpers that are slow to wake on a busy machine simply
// claim fewer blocks, and the caller never waits for a helper that has not started -- unlike a
// fork/join region, whose barrier stalls whenever one team thread is descheduled. Runs serially
// when nthreads <= 1, inside another parallel region, after fork(), or when the pool is busy.
void run_blocks(int64_t nblocks, int nthreads, const std::function<void(int64_t, int)>& fn);

// Dynamic scheduling over [0, total) in blocks of `block` on torch.get_num_threads() threads
// (one thread when total * cost_per_item < kMinParallelCost): every thread calls make_worker()
// once (to set up its scratch buffers) and feeds the returned callable (begin, end) ranges.
// Jobs whose estimated cost (in units of roughly one distance evaluation, ~0.2 ns) is below this
// (~0.3 ms)
// run on the calling thread only: waking helper threads costs more than it saves there.
constexpr double kMinParallelCost = 1.5e6;

template <typename MakeWorker>
void parallel_dynamic(int64_t total, int64_t block, const MakeWorker& make_worker, double cost_per_item = 1e9) {
  if (total <= 0) return;
  block = std::max<int64_t>(1, block);
  const int64_t nblocks = (total + block - 1) / block;
  int nthreads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), nblocks)));
  if (at::in_parallel_region() || static_cast<double>(total) * cost_per_item < kMinParallelCost) nthreads = 1;
  using Worker = decltype(make_worker());
  std::vector<std::optional<Worker>> workers(static_cast<size_t>(nthreads));
  run_blocks(nblocks, nthreads, [&](int64_t blk, int w) {
    if (!workers[w]) workers[w].emplace(make_worker());
    (*workers[w])(blk* block, std::min(total, (blk + 1) * block));
  });
}
// (jobs, jobs run with helpers, blocks run by helpers) since load -- for tests and diagnostics.
std::tuple<int64_t, int64_t, int64_t> pool_stats();

// xyz (B,N,3) contiguous -> SoA (B,3,N) written serially (a torch copy would open a parallel region).
at::Tensor to_soa(const at::Tensor& xyz);
}  // namespace detail

// True when none of the n values is NaN or infinite (vectorised, serial).
bool all_finite_cpu(const float* p, int64_t n);
bool all_finite_cpu(const double* p, int64_t n);

// Furthest point sampling: xyz (B,N,3) -> int64 (B,S); first index = start, exact, ties -> lowest index.
at::Tensor fps_cpu(const at::Tensor& xyz, int64_t S, int64_t start);

// k nearest neighbours of every query among ref: sqdist (B,M,k) ascending, idx int64 (ties -> lower idx).
std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& query, const at::Tensor& ref, int64_t k);

// out[b,s,:] = points[b, idx[b,s], :]
at::Tensor gather_forward_cpu(const at::Tensor& points, const at::Tensor& idx);
// grad_points[b, idx[b,s], :] += grad_out[b,s,:]  -> (B,N,C)
at::Tensor gather_backward_cpu(const at::Tensor& grad_out, const at::Tensor& idx, int64_t N);

// Three nearest known points of every unknown point: sqdist (B,n,3), idx int64 (B,n,3).
std::tuple<at::Tensor, at::Tensor> three_nn_cpu(const at::Tensor& unknown, const at::Tensor& known);

// out[b,i,:] = sum_k weight[b,i,k] * features[b, idx[b,i,k], :]  -> (B,n,C)
at::Tensor three_interpolate_forward_cpu(const at::Tensor& features, const at::Tensor& idx, const at::Tensor& weight);
// grad_features (B,m,C)
at::Tensor three_interpolate_backward_cpu(const at::Tensor& grad_out, const at::Tensor& idx, const at::Tensor& weight,
                                          int64_t m);

// Chamfer-L2: dist_a (B,N) = min_j |a_i-b_j|^2, idx_a int64 (B,N), dist_b (B,M), idx_b (B,M).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chamfer_forward_cpu(const at::Tensor& a,
                                                                               const at::Tensor& b);
// grad_a (B,N,3), grad_b (B,M,3) of sum(grad_dist_a * dist_a) + sum(grad_dist_b * dist_b).
std::tuple<at::Tensor, at::Tensor> chamfer_backward_cpu(const at::Tensor& a, const at::Tensor& b,
                                                        const at::Tensor& idx_a, const at::Tensor& idx_b,
                                                        const at::Tensor& grad_dist_a, const at::Tensor& grad_dist_b);

}  // namespace clora3d
