// A small persistent helper-thread pool for the CPU kernels (see detail::run_blocks in cpu_ops.h).
#pragma GCC optimize("fp-contract=off")

#include "cpu/cpu_ops.h"

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#ifdef _WIN32
#include <process.h>
#define CLORA3D_GETPID _getpid
#else
#include <unistd.h>
#define CLORA3D_GETPID getpid
#endif

namespace clora3d {
namespace detail {
std::atomic<int64_t> g_helper_blocks{0}, g_jobs{0}, g_parallel_jobs{0};
namespace {

class Pool {
 public:
  void run(int64_t nblocks, int nthreads, const std::function<void(int64_t, int)>& fn) {
    g_jobs.fetch_add(1, std::memory_order_relaxed);
    if (nthreads <= 1 || nblocks <= 1 || static_cast<long>(CLORA3D_GETPID()) != pid_ || !submit_.try_lock()) {
      for (int64_t b = 0; b < nblocks; ++b) fn(b, 0);
      return;
    }
    std::lock_guard<std::mutex> submit_guard(submit_, std::adopt_lock);
    g_parallel_jobs.fetch_add(1, std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(mu_);
      while (static_cast<int>(threads_.size()) < nthreads - 1) {
        const int h = static_cast<int>(threads_.size()) + 1;
        threads_.emplace_back([this, h] { helper(h); });
        threads_.back().detach();
      }
      fn_ = &fn;
      nblocks_ = nblocks;
      next_.store(0, std::memory_order_relaxed);
      max_helper_ = nthreads - 1;
      closed_ = false;
      error_ = nullptr;
      ++gen_;
    }
    cv_work_.notify_all();
    std::exception_ptr err;
    try {
      for (;;) {
        const int64_t b = next_.fetch_add(1, std::memory_order_relaxed);
        if (b >= nblocks) break;
        fn(b, 0);
      }
    } catch (...) {
      err = std::current_exception();
      next_.store(nblocks, std::memory_order_relaxed);
    }
    {
      std::unique_lock<std::mutex> lk(mu_);
      closed_ = true;
      cv_done_.wait(lk, [this] { return active_ == 0; });
      fn_ = nullptr;
      if (!err) err = error_;
    }
    if (err) std::rethrow_exception(err);
  }

 private:
  void helper(int h) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_work_.wait(lk, [&] { return gen_ != seen; });
      seen = gen_;
      if (closed_ || h > max_helper_) continue;
      ++active_;
      const std::function<void(int64_t, int)>* fn = fn_;
      const int64_t nblocks = nblocks_;
      lk.unlock();
      try {
        for (;;) {
          const int64_t b = next_.fetch_add(1, std::memory_order_relaxed);
          if (b >= nblocks) break;
          (*fn)(b, h);
          g_helper_blocks.fetch_add(1, std::memory_order_relaxed);
        }
      } catch (...) {
        next_.store(nblocks, std::memory_order_relaxed);
        std::lock_guard<std::mutex> g(err_mu_);
        error_ = std::current_exception();
      }
      lk.lock();
      if (--active_ == 0) cv_done_.notify_all();
    }
  }

  const long pid_ = static_cast<long>(CLORA3D_GETPID());
  std::mutex submit_;  // one job at a time; concurrent callers run serially
  std::mutex mu_, err_mu_;
  std::condition_variable cv_work_, cv_done_;
  std::vector<std::thread> threads_;
  uint64_t gen_ = 0;
  bool closed_ = true;
  int active_ = 0, max_helper_ = 0;
  const std::function<void(int64_t, int)>* fn_ = nullptr;
  int64_t nblocks_ = 0;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
};

Pool& pool() {
  static Pool* p = new Pool();  // leaked on purpose: helpers are detached and outlive static destructors
  return *p;
}

}  // namespace

void run_blocks(int64_t nblocks, int nthreads, const std::function<void(int64_t, int)>& fn) {
  pool().run(nblocks, nthreads, fn);
}

std::tuple<int64_t, int64_t, int64_t> pool_stats() {
  return {g_jobs.load(), g_parallel_jobs.load(), g_helper_blocks.load()};
}

at::Tensor to_soa(const at::Tensor& xyz_in) {
  const at::Tensor xyz = xyz_in.contiguous();
  const int64_t B = xyz.size(0), N = xyz.size(1);
  auto out = at::empty({B, 3, N}, xyz.options());
  AT_DISPATCH_FLOATING_TYPES(xyz.scalar_type(), "to_soa", [&] {
    const scalar_t* p = xyz.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* pb = p + b * N * 3;
      scalar_t* ob = o + b * 3 * N;
      for (int64_t j = 0; j < N; ++j) {
        ob[j] = pb[3 * j];
        ob[N + j] = pb[3 * j + 1];
        ob[2 * N + j] = pb[3 * j + 2];
      }
    }
  });
  return out;
}

}  // namespace detail

namespace {
template <typename T>
CLORA3D_INLINE bool all_finite_impl(const T* p, int64_t n) {
  int bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t i = 0; i < n; ++i) bad |= (p[i] - p[i] != T(0)) ? 1 : 0;  // NaN and +-inf give NaN
  return bad == 0;
}
CLORA3D_MULTIVERSION bool all_finite_f32(const float* p, int64_t n) { return all_finite_impl(p, n); }
CLORA3D_MULTIVERSION bool all_finite_f64(const double* p, int64_t n) { return all_finite_impl(p, n); }
}  // namespace

bool all_finite_cpu(const float* p, int64_t n) { return all_finite_f32(p, n); }
bool all_finite_cpu(const double* p, int64_t n) { return all_finite_f64(p, n); }
}  // namespace clora3d
