// Runs clora3d's CUDA kernels (csrc/cuda/*_kernels.cuh) in the CPU emulator (emu.h), with the
// launch geometry of the .cu host code. Inputs and outputs are raw little-endian files written and
// read by tests/test_cuda_emulated.py.
//
//   driver knn <f32|f64> B M N k query ref out_dist out_idx [warp|local|sort]
//   driver fps <f32|f64> B N S start xyz out_idx [shared_memory_limit_bytes (default 48 KiB)]
//   driver chamfer <f32|f64> B N M a b out_dist_a out_idx_a out_dist_b out_idx_b
//   driver chamfer_backward <f32|f64> B N M a b idx_a idx_b grad_dist_a grad_dist_b out_grad_a out_grad_b [expanded]
//     (expanded: grad_dist_a / grad_dist_b hold one value each, read with strides 0 as after .mean())
//   driver three_nn <f32|f64> B n m unknown known out_dist out_idx
//   driver gather <f32|f64> B N S C points idx out <i32|i64> blocks
//   driver gather_backward <f32|f64> B N S C grad_out idx out_grad_points <i32|i64> blocks
//   driver interpolate <f32|f64> B m n C features idx weight out <i32|i64> blocks
//   driver interpolate_backward <f32|f64> B m n C grad_out idx weight out_grad_features <i32|i64> blocks
//     (i32 / i64: the offset type CLORA3D_DISPATCH_INDEX picks; blocks of 64 threads, few enough for
//     the grid-stride loops to wrap)
//   driver selftest <f32|f64> MODE out   (the emulator's own checks; MODE 0 is a correct kernel)
//
// Exit status: 0 done, 2 bad usage, 3 emulator error (deadlock, partial mask), 4 device assert.
#include "emu.h"  // first: it defines the CUDA keywords and built-ins the kernel headers use
// clang-format off
#include "fps_kernels.cuh"
#define CLORA3D_ATOMIC_ADD(ptr, value) atomicAdd((ptr), (value))
#include "gather_kernels.cuh"
#include "knn_kernels.cuh"
#include "nearest_kernels.cuh"
// clang-format on

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

namespace {

template <typename T>
std::vector<T> read_file(const char* path, size_t n) {
  std::vector<T> v(n);
  FILE* f = std::fopen(path, "rb");
  if (f == nullptr || std::fread(v.data(), sizeof(T), n, f) != n) {
    std::fprintf(stderr, "driver: cannot read %zu values from %s\n", n, path);
    std::exit(2);
  }
  std::fclose(f);
  return v;
}

template <typename T>
void write_file(const char* path, const std::vector<T>& v) {
  FILE* f = std::fopen(path, "wb");
  if (f == nullptr || std::fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) {
    std::fprintf(stderr, "driver: cannot write %s\n", path);
    std::exit(2);
  }
  std::fclose(f);
}

int64_t arg(char** argv, int i) { return std::stoll(argv[i]); }

template <typename T>
int run_knn(int argc, char** argv) {
  using namespace clora3d::knn_detail;
  const int64_t B = arg(argv, 3), M = arg(argv, 4), N = arg(argv, 5), k = arg(argv, 6);
  const auto query = read_file<T>(argv[7], B * M * 3);
  const auto ref = read_file<T>(argv[8], B * N * 3);
  std::vector<T> d(B * M * k);
  std::vector<int64_t> idx(B * M * k);
  const std::string kind = argc > 11 ? argv[11] : (k <= kKnnWarpMaxK ? "warp" : "local");
  if (kind == "sort") {  // k > kKnnLocalMaxK in knn.cu: every distance, then a stable sort (at::sort there)
    std::vector<T> dist(B * M * N);
    emu::launch(pairwise_sqdist_kernel<T>, 5, 64, 0, query.data(), ref.data(), B, M, N, dist.data());
    std::vector<int64_t> order(N);
    for (int64_t bm = 0; bm < B * M; ++bm) {
      const T* row = dist.data() + bm * N;
      for (int64_t n = 0; n < N; ++n) order[n] = n;
      std::stable_sort(order.begin(), order.end(), [row](int64_t x, int64_t y) { return row[x] < row[y]; });
      for (int64_t j = 0; j < k; ++j) {
        d[bm * k + j] = row[order[j]];
        idx[bm * k + j] = order[j];
      }
    }
  } else if (kind == "warp") {
    if (k > kKnnWarpMaxK) return 2;
    const int64_t bpb = knn_warp_blocks_per_batch(M);
    emu::launch(knn_warp_kernel<T>, B * bpb, kKnnWarpsPerBlock * 32, 0, query.data(), ref.data(), M, N,
                static_cast<int>(k), bpb, d.data(), idx.data());
  } else {
    if (k > kKnnLocalMaxK) return 2;
    const int64_t bpb = clora3d::cuda_detail::ceil_div(M, kKnnLocalThreads);
    emu::launch(knn_local_kernel<T, kKnnLocalMaxK>, B * bpb, kKnnLocalThreads, 0, query.data(), ref.data(), M, N,
                static_cast<int>(k), bpb, d.data(), idx.data());
  }
  write_file(argv[9], d);
  write_file(argv[10], idx);
  return 0;
}

template <typename T>
int run_fps(int argc, char** argv) {
  using namespace clora3d::fps_detail;
  const int64_t B = arg(argv, 3), N = arg(argv, 4), S = arg(argv, 5), start = arg(argv, 6);
  const auto xyz = read_file<T>(argv[7], B * N * 3);
  std::vector<int64_t> out(B * S);
  const size_t smem_limit = argc > 9 ? static_cast<size_t>(arg(argv, 9)) : 48 * 1024;
  const FpsPlan plan = fps_plan(N, sizeof(T), smem_limit);
  std::vector<T> gdist(plan.kernel == FpsKernel::kGeneric && !plan.use_smem ? B * N : 0);
  switch (plan.kernel) {
    case FpsKernel::kRegisters4:
      emu::launch(fps_register_kernel<T, 4>, B, plan.threads, 0, xyz.data(), N, S, start, out.data());
      break;
    case FpsKernel::kRegisters8:
      emu::launch(fps_register_kernel<T, 8>, B, plan.threads, 0, xyz.data(), N, S, start, out.data());
      break;
    case FpsKernel::kGeneric:
      emu::launch(fps_generic_kernel<T>, B, plan.threads, plan.use_smem ? plan.smem_bytes : 0, xyz.data(), N, S, start,
                  gdist.data(), out.data(), plan.use_smem);
      break;
  }
  write_file(argv[8], out);
  return 0;
}

template <typename T>
int run_three_nn(char** argv) {
  using namespace clora3d::nearest_detail;
  const int64_t B = arg(argv, 3), n = arg(argv, 4), m = arg(argv, 5);
  const auto unknown = read_file<T>(argv[6], B * n * 3);
  const auto known = read_file<T>(argv[7], B * m * 3);
  std::vector<T> d(B * n * 3);
  std::vector<int64_t> idx(B * n * 3);
  const int64_t bpb = clora3d::cuda_detail::ceil_div(n, kNearestThreads);
  emu::launch(three_nn_kernel<T>, B * bpb, kNearestThreads, 0, unknown.data(), known.data(), n, m, bpb, d.data(),
              idx.data());
  write_file(argv[8], d);
  write_file(argv[9], idx);
  return 0;
}

template <typename T>
int run_chamfer(char** argv) {
  using namespace clora3d::nearest_detail;
  const int64_t B = arg(argv, 3), N = arg(argv, 4), M = arg(argv, 5);
  const auto a = read_file<T>(argv[6], B * N * 3);
  const auto b = read_file<T>(argv[7], B * M * 3);
  std::vector<T> da(B * N), db(B * M);
  std::vector<int64_t> ia(B * N), ib(B * M);
  const int64_t bpb_a = clora3d::cuda_detail::ceil_div(N, kNearestThreads);
  const int64_t bpb_b = clora3d::cuda_detail::ceil_div(M, kNearestThreads);
  emu::launch(chamfer_forward_kernel<T>, B * (bpb_a + bpb_b), kNearestThreads, 0, a.data(), b.data(), N, M, bpb_a,
              bpb_b, da.data(), ia.data(), db.data(), ib.data());
  write_file(argv[8], da);
  write_file(argv[9], ia);
  write_file(argv[10], db);
  write_file(argv[11], ib);
  return 0;
}

template <typename T>
int run_chamfer_backward(int argc, char** argv) {
  using namespace clora3d::nearest_detail;
  const int64_t B = arg(argv, 3), N = arg(argv, 4), M = arg(argv, 5);
  const bool expanded = argc > 14 && std::string(argv[14]) == "expanded";
  const auto a = read_file<T>(argv[6], B * N * 3);
  const auto b = read_file<T>(argv[7], B * M * 3);
  const auto ia = read_file<int64_t>(argv[8], B * N);
  const auto ib = read_file<int64_t>(argv[9], B * M);
  const auto ga = read_file<T>(argv[10], expanded ? 1 : B * N);
  const auto gb = read_file<T>(argv[11], expanded ? 1 : B * M);
  std::vector<T> grad_a(B * N * 3, T(0)), grad_b(B * M * 3, T(0));
  const int64_t sa = expanded ? 0 : N, sb = expanded ? 0 : M, si = expanded ? 0 : 1;
  // a small grid, so that the grid-stride loop wraps
  emu::launch(chamfer_backward_kernel<T>, 2, 64, 0, a.data(), b.data(), ia.data(), ib.data(), ga.data(), sa, si,
              gb.data(), sb, si, B, N, M, grad_a.data(), grad_b.data());
  write_file(argv[12], grad_a);
  write_file(argv[13], grad_b);
  return 0;
}

// gather / gather_backward / interpolate / interpolate_backward (see the usage above)
template <typename T, typename I>
int run_gather_family(const std::string& op, char** argv) {
  using namespace clora3d::gather_detail;
  const int64_t B = arg(argv, 3), N = arg(argv, 4), S = arg(argv, 5), C = arg(argv, 6);
  const unsigned blocks = static_cast<unsigned>(arg(argv, op == "gather" || op == "gather_backward" ? 11 : 12));
  if (op == "gather") {  // N points of C channels, S selected
    const auto points = read_file<T>(argv[7], B * N * C);
    const auto idx = read_file<int64_t>(argv[8], B * S);
    std::vector<T> out(B * S * C, T(-1));
    emu::launch(gather_forward_kernel<T, I>, blocks, 64, 0, points.data(), idx.data(), I(B), I(N), I(S), I(C),
                out.data());
    write_file(argv[9], out);
  } else if (op == "gather_backward") {
    const auto grad_out = read_file<T>(argv[7], B * S * C);
    const auto idx = read_file<int64_t>(argv[8], B * S);
    std::vector<T> grad(B * N * C, T(0));
    emu::launch(gather_backward_kernel<T, T, I>, blocks, 64, 0, grad_out.data(), idx.data(), I(B), I(N), I(S), I(C),
                grad.data());
    write_file(argv[9], grad);
  } else {  // interpolate: N = m known points, S = n interpolated points
    const bool backward = op == "interpolate_backward";
    const auto in = read_file<T>(argv[7], backward ? B * S * C : B * N * C);
    const auto idx = read_file<int64_t>(argv[8], B * S * 3);
    const auto weight = read_file<T>(argv[9], B * S * 3);
    if (backward) {
      std::vector<T> grad(B * N * C, T(0));
      emu::launch(three_interpolate_backward_kernel<T, T, I>, blocks, 64, 0, in.data(), idx.data(), weight.data(), I(B),
                  I(N), I(S), I(C), grad.data());
      write_file(argv[10], grad);
    } else {
      std::vector<T> out(B * S * C, T(-1));
      emu::launch(three_interpolate_forward_kernel<T, T, I>, blocks, 64, 0, in.data(), idx.data(), weight.data(), I(B),
                  I(N), I(S), I(C), out.data());
      write_file(argv[10], out);
    }
  }
  return 0;
}

template <typename T>
int run_gather_family(int argc, char** argv) {
  const std::string op = argv[1];
  const int index_arg = op == "gather" || op == "gather_backward" ? 10 : 11;
  if (argc <= index_arg + 1) return 2;
  const std::string index = argv[index_arg];
  if (index == "i32") return run_gather_family<T, int32_t>(op, argv);
  if (index == "i64") return run_gather_family<T, int64_t>(op, argv);
  return 2;
}

// Controls for the emulator itself: mode 0 is correct (swaps neighbouring lanes); 1 shuffles in
// half a warp only, 2 passes a partial mask, 3 lets one lane return before a shuffle. 1-3 are
// undefined behaviour on a GPU and must end the emulation with exit status 3.
__global__ void selftest_kernel(int mode, int* out) {
  const int lane = threadIdx.x & 31;
  int v = lane;
  if (mode == 0) {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  } else if (mode == 1) {
    if (lane < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  } else if (mode == 2) {
    v = __shfl_sync(0x0000ffffu, v, 0);
  } else {
    if (lane == 5) return;
    v = __shfl_sync(0xffffffffu, v, 0);
  }
  out[threadIdx.x] = v;
}

int run_selftest(char** argv) {
  std::vector<int> out(64, -1);
  emu::launch(selftest_kernel, 1, 64, 0, static_cast<int>(arg(argv, 3)), out.data());
  write_file(argv[4], out);
  return 0;
}

template <typename T>
int dispatch(int argc, char** argv) {
  const std::string op = argv[1];
  if (op == "knn" && argc >= 11) return run_knn<T>(argc, argv);
  if (op == "fps" && argc >= 9) return run_fps<T>(argc, argv);
  if (op == "three_nn" && argc >= 10) return run_three_nn<T>(argv);
  if (op == "chamfer" && argc >= 12) return run_chamfer<T>(argv);
  if (op == "chamfer_backward" && argc >= 14) return run_chamfer_backward<T>(argc, argv);
  if (op == "gather" || op == "gather_backward" || op == "interpolate" || op == "interpolate_backward")
    return run_gather_family<T>(argc, argv);
  if (op == "selftest" && argc >= 5) return run_selftest(argv);
  std::fprintf(stderr, "driver: bad arguments for %s\n", op.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: driver <op> <f32|f64> ...\n");
    return 2;
  }
  const std::string dtype = argv[2];
  if (dtype == "f32") return dispatch<float>(argc, argv);
  if (dtype == "f64") return dispatch<double>(argc, argv);
  std::fprintf(stderr, "driver: dtype must be f32 or f64, got %s\n", dtype.c_str());
  return 2;
}
