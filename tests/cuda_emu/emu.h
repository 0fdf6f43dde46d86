// A small CPU emulator of the CUDA execution model, for testing clora3d's kernel headers
// (csrc/cuda/*_kernels.cuh) on a machine without a GPU.
//
// Every thread of a block is a ucontext coroutine on one OS thread. A thread runs until it
// reaches a barrier: __syncthreads (all live threads of the block) or a warp collective
// (__shfl*_sync, __ballot_sync, __reduce_*_sync: the 32 lanes of its warp). A barrier opens when
// every thread it waits for has arrived. The emulator is stricter than the hardware where the
// hardware is undefined: a warp collective needs all 32 lanes alive and at the same collective,
// the mask must be full, and a barrier that can never open (divergent collectives, a lane that
// returned early) ends the run with "deadlock" instead of hanging. Warps run one at a time as far
// as they can, in a shuffled order (maximal skew between warps, see run_block). Blocks run one
// after another, so `static` stands in for __shared__.
//
// What it does not model: memory ordering between blocks, atomics, timing, register limits.
// Arithmetic is the host's IEEE arithmetic; compile with -ffp-contract=off, like the kernels'
// non-contracting __f*_rn operations.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define CLORA3D_CUDA_EMULATION 1

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) alignas(n)

namespace emu {

constexpr int kWarp = 32;
enum State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Thread {
  ucontext_t ctx;
  std::vector<char> stack;
  State state = kRunnable;
};

struct Block {
  std::vector<Thread> threads;
  std::vector<uint64_t> slot;  // one exchange word per thread for warp collectives
  ucontext_t scheduler;
  unsigned current = 0;
};

inline Block* g_block = nullptr;
inline dim3 g_block_idx, g_block_dim, g_grid_dim;
inline std::vector<unsigned char> g_dynamic_smem;
inline std::function<void()> g_body;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "emu: %s (block %u, thread %u)\n", what, g_block_idx.x, g_block ? g_block->current : 0u);
  std::fflush(stderr);
  std::_Exit(3);
}

// Deterministic scheduling order (xorshift; EMU_SEED in the environment changes it).
inline uint64_t g_random = 0;
inline unsigned next_random() {
  if (g_random == 0) {
    const char* seed = std::getenv("EMU_SEED");
    g_random = 0x9E3779B97F4A7C15ull ^ (seed ? std::strtoull(seed, nullptr, 10) : 1ull);
  }
  g_random ^= g_random << 13;
  g_random ^= g_random >> 7;
  g_random ^= g_random << 17;
  return static_cast<unsigned>(g_random >> 32);
}

inline Thread& self() { return g_block->threads[g_block->current]; }
inline unsigned tid() { return g_block->current; }
inline unsigned lane() { return tid() % kWarp; }
inline unsigned warp_base() { return tid() - lane(); }

inline void wait(State s) {
  Thread& t = self();
  t.state = s;
  swapcontext(&t.ctx, &g_block->scheduler);
}

inline void check_mask(unsigned mask) {
  if (mask != 0xffffffffu) fail("warp collective with a partial mask (the emulator supports full masks only)");
}

template <typename V>
inline void put(V v) {
  static_assert(sizeof(V) <= 8, "exchange word is 8 bytes");
  uint64_t w = 0;
  std::memcpy(&w, &v, sizeof(V));
  g_block->slot[tid()] = w;
}

template <typename V>
inline V get(unsigned thread) {
  V v;
  std::memcpy(&v, &g_block->slot[thread], sizeof(V));
  return v;
}

// Every lane publishes v; returns the value of lane src(lane) of the same warp.
template <typename V, typename F>
inline V exchange(unsigned mask, V v, F&& src) {
  check_mask(mask);
  put(v);
  wait(kAtWarpBarrier);
  const int s = src(static_cast<int>(lane()));
  const V r = get<V>(warp_base() + static_cast<unsigned>(s));
  wait(kAtWarpBarrier);  // nobody overwrites a slot before every lane has read
  return r;
}

inline unsigned char* dynamic_smem() { return g_dynamic_smem.data(); }

inline void device_assert(bool ok, const char* cond, const char* msg) {
  if (!ok) {
    std::fprintf(stderr, "emu: device-side assertion `%s` failed: %s\n", cond, msg);
    std::fflush(stderr);
    std::_Exit(4);
  }
}

inline void trampoline() {
  g_body();
  self().state = kDone;  // uc_link returns to the scheduler
}

inline void run_block(unsigned threads) {
  Block block;
  block.threads.resize(threads);
  block.slot.assign(threads, 0);
  g_block = &block;
  for (unsigned t = 0; t < threads; ++t) {
    Thread& th = block.threads[t];
    th.stack.resize(256 * 1024);
    getcontext(&th.ctx);
    th.ctx.uc_stack.ss_sp = th.stack.data();
    th.ctx.uc_stack.ss_size = th.stack.size();
    th.ctx.uc_link = &block.scheduler;
    makecontext(&th.ctx, trampoline, 0);
  }
  // Warps run one at a time, each as far as it can go (through its own warp collectives, up to
  // __syncthreads or its end), in a shuffled order: this gives warps the largest possible skew, so
  // a kernel that reuses shared memory before slower warps have read it computes a wrong result
  // here instead of passing by luck.
  const unsigned n_warps = (threads + kWarp - 1) / kWarp;
  std::vector<unsigned> order(n_warps);
  for (unsigned w = 0; w < n_warps; ++w) order[w] = w;
  for (;;) {
    for (unsigned w = n_warps; w > 1; --w) std::swap(order[w - 1], order[next_random() % w]);
    for (unsigned w : order) {
      const unsigned begin = w * kWarp, end = std::min(threads, begin + kWarp);
      for (;;) {
        for (unsigned t = begin; t < end; ++t) {
          if (block.threads[t].state != kRunnable) continue;
          block.current = t;
          swapcontext(&block.scheduler, &block.threads[t].ctx);
        }
        // A full warp whose 32 lanes all wait at a warp collective goes on.
        bool all = end - begin == static_cast<unsigned>(kWarp);
        for (unsigned t = begin; t < end && all; ++t) all = block.threads[t].state == kAtWarpBarrier;
        if (!all) break;
        for (unsigned t = begin; t < end; ++t) block.threads[t].state = kRunnable;
      }
    }
    // __syncthreads: every thread that has not returned waits there (returned threads count as
    // arrived, as on the hardware).
    unsigned live = 0, at_barrier = 0;
    for (const Thread& th : block.threads) {
      live += th.state != kDone;
      at_barrier += th.state == kAtBlockBarrier;
    }
    if (live == 0) break;
    if (at_barrier == live) {
      for (Thread& th : block.threads)
        if (th.state == kAtBlockBarrier) th.state = kRunnable;
      continue;
    }
    block.current = 0;
    fail(
        "deadlock: threads wait at different barriers (a divergent warp collective, or a lane that returned "
        "before one)");
  }
  g_block = nullptr;
}

// kernel<<<grid, block, smem>>>(args...): blocks run one after another.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), unsigned grid, unsigned block, size_t smem, A... args) {
  if (block == 0 || block > 1024) fail("block size must be in [1, 1024]");
  g_grid_dim.x = grid;
  g_block_dim.x = block;
  g_dynamic_smem.assign(smem, 0xcd);
  g_body = [&] { kernel(static_cast<P>(args)...); };
  for (unsigned b = 0; b < grid; ++b) {
    g_block_idx.x = b;
    run_block(block);
  }
}

inline dim3 thread_idx() {
  dim3 d;
  d.x = tid();
  return d;
}

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::g_block_idx)
#define blockDim (::emu::g_block_dim)
#define gridDim (::emu::g_grid_dim)

inline void __syncthreads() { ::emu::wait(::emu::kAtBlockBarrier); }

template <typename V>
inline V __shfl_sync(unsigned mask, V v, int src, int width = 32) {
  if (width != 32) ::emu::fail("__shfl_sync: only width 32 is emulated");
  return ::emu::exchange(mask, v, [&](int) { return src & 31; });
}
template <typename V>
inline V __shfl_up_sync(unsigned mask, V v, unsigned delta, int width = 32) {
  if (width != 32) ::emu::fail("__shfl_up_sync: only width 32 is emulated");
  return ::emu::exchange(mask, v,
                         [&](int l) { return l >= static_cast<int>(delta) ? l - static_cast<int>(delta) : l; });
}
template <typename V>
inline V __shfl_down_sync(unsigned mask, V v, unsigned delta, int width = 32) {
  if (width != 32) ::emu::fail("__shfl_down_sync: only width 32 is emulated");
  return ::emu::exchange(mask, v,
                         [&](int l) { return l + static_cast<int>(delta) < 32 ? l + static_cast<int>(delta) : l; });
}
template <typename V>
inline V __shfl_xor_sync(unsigned mask, V v, int m, int width = 32) {
  if (width != 32) ::emu::fail("__shfl_xor_sync: only width 32 is emulated");
  return ::emu::exchange(mask, v, [&](int l) { return (l ^ m) & 31; });
}

// Collectives over all 32 lanes: every lane publishes, then reads the whole warp.
template <typename R, typename V, typename F>
inline R warp_fold(unsigned mask, V v, R init, F&& f) {
  ::emu::check_mask(mask);
  ::emu::put(v);
  ::emu::wait(::emu::kAtWarpBarrier);
  R r = init;
  for (unsigned l = 0; l < 32; ++l) r = f(r, l, ::emu::get<V>(::emu::warp_base() + l));
  ::emu::wait(::emu::kAtWarpBarrier);
  return r;
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return warp_fold(mask, pred ? 1u : 0u, 0u, [](unsigned r, unsigned l, unsigned p) { return r | (p << l); });
}
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
  return warp_fold(mask, v, 0u, [](unsigned r, unsigned, unsigned x) { return std::max(r, x); });
}
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) {
  return warp_fold(mask, v, 0xffffffffu, [](unsigned r, unsigned, unsigned x) { return std::min(r, x); });
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  (void)warp_fold(mask, 0u, 0u, [](unsigned r, unsigned, unsigned) { return r; });
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
template <typename T>
inline T atomicAdd(T* address, T v) {  // blocks run one after another: a plain update is atomic
  const T old = *address;
  *address = old + v;
  return old;
}
using std::isfinite;
using std::max;
using std::min;
