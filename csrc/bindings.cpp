// Python bindings of clora3d._C: device-dispatching entry points over the CPU kernels
// (csrc/cpu) and, when built WITH_CUDA, the CUDA kernels (csrc/cuda).
//
// Every entry point re-checks rank, shape, dtype, device and index ranges with TORCH_CHECK (raised
// in Python as RuntimeError), so a direct call with bad input cannot crash the process; the
// user-facing validation with ValueError lives in clora3d/ops.
#include <torch/extension.h>

#include <string>
#include <utility>
#include <tuple>

#include "cpu/cpu_ops.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAGuard.h>

#include "cuda/cuda_ops.h"
#endif

#if defined(__has_include)
#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace clora3d {
namespace {

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

void check_long(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.scalar_type() == at::kLong, name, " must be int64, got ", t.scalar_type());
}

void check_rank(const at::Tensor& t, int64_t rank, const char* name) {
  TORCH_CHECK(t.dim() == rank, name, " must have ", rank, " dimensions, got shape ", t.sizes());
}

void check_points(const at::Tensor& t, const char* name) {
  check_float(t, name);
  check_rank(t, 3, name);
  TORCH_CHECK(t.size(2) == 3, name, " must have shape (B, N, 3), got ", t.sizes());
}

void check_same(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn, bool dtype = true) {
  TORCH_CHECK(a.device() == b.device(), an, " and ", bn, " must be on the same device, got ", a.device(),
              " and ", b.device());
  if (dtype)
    TORCH_CHECK(a.scalar_type() == b.scalar_type(), an, " and ", bn, " must have the same dtype, got ",
                a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.size(0) == b.size(0), an, " and ", bn, " must have the same batch size, got ", a.size(0),
              " and ", b.size(0));
}

// (min, max) of a non-empty int64 tensor. CPU: one serial pass (no torch parallel region, which
// can stall for a scheduler time slice on a busy machine); other devices: torch reductions.
std::pair<int64_t, int64_t> minmax_long(const at::Tensor& idx_in) {
  if (!idx_in.device().is_cpu()) return {idx_in.min().item<int64_t>(), idx_in.max().item<int64_t>()};
  const at::Tensor idx = idx_in.contiguous();
  const int64_t* p = idx.data_ptr<int64_t>();
  int64_t lo = p[0], hi = p[0];
  const int64_t n = idx.numel();
  for (int64_t i = 1; i < n; ++i) {
    lo = p[i] < lo ? p[i] : lo;
    hi = p[i] > hi ? p[i] : hi;
  }
  return {lo, hi};
}

void check_index_range(const at::Tensor& idx, int64_t n, const char* name) {
  if (idx.numel() == 0) return;
  const auto [lo, hi] = minmax_long(idx);
  TORCH_CHECK(lo >= 0 && hi < n, name, " must hold indices in [0, ", n, "), got values in [", lo, ", ", hi, "]");
}

// Coordinates must be finite: with a NaN every distance comparison is false and kNN / three_nn would
// return indices that were never written. Checked here for CPU tensors (one serial pass, cheap next
// to the kernel). CUDA tensors are not checked here: that would force a device-to-host sync in every
// training step; clora3d.ops validates them before the call.
void check_finite(const at::Tensor& t_in, const char* name) {
  if (!t_in.device().is_cpu() || t_in.numel() == 0) return;
  const at::Tensor t = t_in.contiguous();
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "check_finite", [&] { ok = all_finite_cpu(t.data_ptr<scalar_t>(), t.numel()); });
  TORCH_CHECK(ok, name, " must hold finite coordinates, found NaN or inf");
}

// Which implementation runs for a tensor's device.
bool use_cuda(const at::Tensor& t) {
  if (t.device().is_cpu()) return false;
  if (t.device().is_cuda()) {
#ifdef WITH_CUDA
    return true;
#else
    TORCH_CHECK(false, "clora3d._C was built without CUDA kernels, but got a CUDA tensor; rebuild with nvcc "
                       "available (or FORCE_CUDA=1), or set CLORA3D_OPS=reference");
#endif
  }
  TORCH_CHECK(false, "clora3d._C supports CPU and CUDA tensors, got device ", t.device());
  return false;
}

#ifdef WITH_CUDA
#define CLORA3D_DISPATCH(tensor, fn, ...)                                    \
  if (use_cuda(tensor)) {                                                    \
    const c10::cuda::OptionalCUDAGuard guard(tensor.device());               \
    return fn##_cuda(__VA_ARGS__);                                           \
  }                                                                          \
  return fn##_cpu(__VA_ARGS__);
#else
#define CLORA3D_DISPATCH(tensor, fn, ...) \
  use_cuda(tensor);                       \
  return fn##_cpu(__VA_ARGS__);
#endif

at::Tensor fps(const at::Tensor& xyz_in, int64_t S, int64_t start) {
  check_points(xyz_in, "xyz");
  const int64_t N = xyz_in.size(1);
  TORCH_CHECK(N >= 1, "xyz must hold at least one point, got shape ", xyz_in.sizes());
  TORCH_CHECK(S >= 1 && S <= N, "S must be in [1, N=", N, "], got ", S);
  TORCH_CHECK(start >= 0 && start < N, "start must be in [0, N=", N, "), got ", start);
  check_finite(xyz_in, "xyz");
  const at::Tensor xyz = xyz_in.contiguous();
  CLORA3D_DISPATCH(xyz, fps, xyz, S, start)
}

std::tuple<at::Tensor, at::Tensor> knn(const at::Tensor& query_in, const at::Tensor& ref_in, int64_t k) {
  check_points(query_in, "query");
  check_points(ref_in, "ref");
  check_same(query_in, "query", ref_in, "ref");
  const int64_t N = ref_in.size(1);
  TORCH_CHECK(N >= 1, "ref must hold at least one point, got shape ", ref_in.sizes());
  TORCH_CHECK(k >= 1 && k <= N, "k must be in [1, N=", N, "], got ", k);
  check_finite(query_in, "query");
  check_finite(ref_in, "ref");
  const at::Tensor query = query_in.contiguous(), ref = ref_in.contiguous();
  CLORA3D_DISPATCH(query, knn, query, ref, k)
}

at::Tensor gather_forward(const at::Tensor& points_in, const at::Tensor& idx_in) {
  check_float(points_in, "points");
  check_rank(points_in, 3, "points");
  check_long(idx_in, "idx");
  check_rank(idx_in, 2, "idx");
  check_same(points_in, "points", idx_in, "idx", false);
  check_index_range(idx_in, points_in.size(1), "idx");
  const at::Tensor points = points_in.contiguous(), idx = idx_in.contiguous();
  CLORA3D_DISPATCH(points, gather_forward, points, idx)
}

at::Tensor gather_backward(const at::Tensor& grad_in, const at::Tensor& idx_in, int64_t N) {
  check_float(grad_in, "grad_out");
  check_rank(grad_in, 3, "grad_out");
  check_long(idx_in, "idx");
  check_rank(idx_in, 2, "idx");
  check_same(grad_in, "grad_out", idx_in, "idx", false);
  TORCH_CHECK(idx_in.size(1) == grad_in.size(1), "idx (B,S) and grad_out (B,S,C) disagree on S: ",
              idx_in.sizes(), " vs ", grad_in.sizes());
  TORCH_CHECK(N >= 0, "N must be >= 0, got ", N);
  check_index_range(idx_in, N, "idx");
  const at::Tensor grad = grad_in.contiguous(), idx = idx_in.contiguous();
  CLORA3D_DISPATCH(grad, gather_backward, grad, idx, N)
}

std::tuple<at::Tensor, at::Tensor> three_nn(const at::Tensor& unknown_in, const at::Tensor& known_in) {
  check_points(unknown_in, "unknown");
  check_points(known_in, "known");
  check_same(unknown_in, "unknown", known_in, "known");
  TORCH_CHECK(known_in.size(1) >= 3, "known must hold at least 3 points, got shape ", known_in.sizes());
  check_finite(unknown_in, "unknown");
  check_finite(known_in, "known");
  const at::Tensor unknown = unknown_in.contiguous(), known = known_in.contiguous();
  CLORA3D_DISPATCH(unknown, three_nn, unknown, known)
}

void check_interp_idx_weight(const at::Tensor& ref, const char* refname, const at::Tensor& idx,
                             const at::Tensor& weight) {
  check_long(idx, "idx");
  check_rank(idx, 3, "idx");
  check_float(weight, "weight");
  check_rank(weight, 3, "weight");
  TORCH_CHECK(idx.size(2) == 3, "idx must have shape (B, n, 3), got ", idx.sizes());
  TORCH_CHECK(weight.sizes() == idx.sizes(), "weight must have the shape of idx ", idx.sizes(), ", got ",
              weight.sizes());
  check_same(ref, refname, idx, "idx", false);
  check_same(ref, refname, weight, "weight", true);
}

at::Tensor three_interpolate_forward(const at::Tensor& feat_in, const at::Tensor& idx_in,
                                     const at::Tensor& weight_in) {
  check_float(feat_in, "features");
  check_rank(feat_in, 3, "features");
  check_interp_idx_weight(feat_in, "features", idx_in, weight_in);
  check_index_range(idx_in, feat_in.size(1), "idx");
  const at::Tensor feat = feat_in.contiguous(), idx = idx_in.contiguous(), weight = weight_in.contiguous();
  CLORA3D_DISPATCH(feat, three_interpolate_forward, feat, idx, weight)
}

at::Tensor three_interpolate_backward(const at::Tensor& grad_in, const at::Tensor& idx_in,
                                      const at::Tensor& weight_in, int64_t m) {
  check_float(grad_in, "grad_out");
  check_rank(grad_in, 3, "grad_out");
  check_interp_idx_weight(grad_in, "grad_out", idx_in, weight_in);
  TORCH_CHECK(idx_in.size(1) == grad_in.size(1), "idx (B,n,3) and grad_out (B,n,C) disagree on n: ",
              idx_in.sizes(), " vs ", grad_in.sizes());
  TORCH_CHECK(m >= 0, "m must be >= 0, got ", m);
  check_index_range(idx_in, m, "idx");
  const at::Tensor grad = grad_in.contiguous(), idx = idx_in.contiguous(), weight = weight_in.contiguous();
  CLORA3D_DISPATCH(grad, three_interpolate_backward, grad, idx, weight, m)
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chamfer_forward(const at::Tensor& a_in,
                                                                           const at::Tensor& b_in) {
  check_points(a_in, "a");
  check_points(b_in, "b");
  check_same(a_in, "a", b_in, "b");
  TORCH_CHECK(a_in.size(1) >= 1 && b_in.size(1) >= 1, "a and b must hold at least one point each, got ",
              a_in.sizes(), " and ", b_in.sizes());
  check_finite(a_in, "a");
  check_finite(b_in, "b");
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  CLORA3D_DISPATCH(a, chamfer_forward, a, b)
}

std::tuple<at::Tensor, at::Tensor> chamfer_backward(const at::Tensor& a_in, const at::Tensor& b_in,
                                                    const at::Tensor& ia_in, const at::Tensor& ib_in,
                                                    const at::Tensor& ga_in, const at::Tensor& gb_in) {
  check_points(a_in, "a");
  check_points(b_in, "b");
  check_same(a_in, "a", b_in, "b");
  check_long(ia_in, "idx_a");
  check_long(ib_in, "idx_b");
  check_float(ga_in, "grad_dist_a");
  check_float(gb_in, "grad_dist_b");
  const int64_t B = a_in.size(0), N = a_in.size(1), M = b_in.size(1);
  TORCH_CHECK(ia_in.dim() == 2 && ia_in.size(0) == B && ia_in.size(1) == N, "idx_a must have shape (", B, ", ",
              N, "), got ", ia_in.sizes());
  TORCH_CHECK(ib_in.dim() == 2 && ib_in.size(0) == B && ib_in.size(1) == M, "idx_b must have shape (", B, ", ",
              M, "), got ", ib_in.sizes());
  TORCH_CHECK(ga_in.sizes() == ia_in.sizes(), "grad_dist_a must have shape ", ia_in.sizes(), ", got ",
              ga_in.sizes());
  TORCH_CHECK(gb_in.sizes() == ib_in.sizes(), "grad_dist_b must have shape ", ib_in.sizes(), ", got ",
              gb_in.sizes());
  check_same(a_in, "a", ia_in, "idx_a", false);
  check_same(a_in, "a", ib_in, "idx_b", false);
  check_same(a_in, "a", ga_in, "grad_dist_a", true);
  check_same(a_in, "a", gb_in, "grad_dist_b", true);
  check_index_range(ia_in, M, "idx_a");
  check_index_range(ib_in, N, "idx_b");
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous(), ia = ia_in.contiguous(), ib = ib_in.contiguous(),
                   ga = ga_in.contiguous(), gb = gb_in.contiguous();
  CLORA3D_DISPATCH(a, chamfer_backward, a, b, ia, ib, ga, gb)
}

// Python-side validation helpers (serial on the CPU, see minmax_long).
bool all_finite(const at::Tensor& t_in) {
  TORCH_CHECK(t_in.defined(), "tensor is undefined");
  if (t_in.numel() == 0 || !at::isFloatingType(t_in.scalar_type())) return true;
  if (!t_in.device().is_cpu() || (t_in.scalar_type() != at::kFloat && t_in.scalar_type() != at::kDouble))
    return at::isfinite(t_in).all().item<bool>();
  const at::Tensor t = t_in.contiguous();
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "all_finite", [&] { ok = all_finite_cpu(t.data_ptr<scalar_t>(), t.numel()); });
  return ok;
}

std::tuple<int64_t, int64_t> index_range(const at::Tensor& idx) {
  check_long(idx, "idx");
  TORCH_CHECK(idx.numel() > 0, "index_range needs a non-empty tensor");
  const auto [lo, hi] = minmax_long(idx);
  return {lo, hi};
}

pybind11::dict build_info() {
  pybind11::dict d;
  d["cpu"] = true;
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
#ifdef WITH_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
#ifdef CLORA3D_CUDA_ARCHS
  d["cuda_archs"] = std::string(CLORA3D_CUDA_ARCHS);
#else
  d["cuda_archs"] = std::string("");
#endif
#ifdef __VERSION__
  d["compiler"] = std::string(__VERSION__);
#else
  d["compiler"] = std::string("unknown");
#endif
#ifdef TORCH_VERSION
  d["torch_version"] = std::string(TORCH_VERSION);
#else
  d["torch_version"] = std::string("");
#endif
  d["multiversion"] = std::string(
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(CLORA3D_NO_MULTIVERSION)
      "x86-64-v4,x86-64-v3,default"
#else
      "none"
#endif
  );
  return d;
}

}  // namespace
}  // namespace clora3d

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "clora3d compiled point cloud kernels (CPU; CUDA when built with it)";
  m.def("fps", &clora3d::fps, "furthest point sampling: xyz (B,N,3), S, start -> int64 (B,S)",
        pybind11::arg("xyz"), pybind11::arg("S"), pybind11::arg("start") = 0);
  m.def("knn", &clora3d::knn, "k nearest neighbours -> (sqdist (B,M,k), idx int64 (B,M,k))",
        pybind11::arg("query"), pybind11::arg("ref"), pybind11::arg("k"));
  m.def("gather_forward", &clora3d::gather_forward, "points (B,N,C), idx (B,S) -> (B,S,C)",
        pybind11::arg("points"), pybind11::arg("idx"));
  m.def("gather_backward", &clora3d::gather_backward, "grad_out (B,S,C), idx (B,S), N -> (B,N,C)",
        pybind11::arg("grad_out"), pybind11::arg("idx"), pybind11::arg("N"));
  m.def("three_nn", &clora3d::three_nn, "three nearest known points -> (sqdist (B,n,3), idx (B,n,3))",
        pybind11::arg("unknown"), pybind11::arg("known"));
  m.def("three_interpolate_forward", &clora3d::three_interpolate_forward,
        "features (B,m,C), idx (B,n,3), weight (B,n,3) -> (B,n,C)", pybind11::arg("features"),
        pybind11::arg("idx"), pybind11::arg("weight"));
  m.def("three_interpolate_backward", &clora3d::three_interpolate_backward,
        "grad_out (B,n,C), idx, weight, m -> grad_features (B,m,C)", pybind11::arg("grad_out"),
        pybind11::arg("idx"), pybind11::arg("weight"), pybind11::arg("m"));
  m.def("chamfer_forward", &clora3d::chamfer_forward, "a (B,N,3), b (B,M,3) -> (dist_a, idx_a, dist_b, idx_b)",
        pybind11::arg("a"), pybind11::arg("b"));
  m.def("chamfer_backward", &clora3d::chamfer_backward,
        "a, b, idx_a, idx_b, grad_dist_a, grad_dist_b -> (grad_a, grad_b)", pybind11::arg("a"),
        pybind11::arg("b"), pybind11::arg("idx_a"), pybind11::arg("idx_b"), pybind11::arg("grad_dist_a"),
        pybind11::arg("grad_dist_b"));
  m.def("build_info", &clora3d::build_info, "how this extension was built");
  m.def("_pool_stats", &clora3d::detail::pool_stats,
        "(jobs, jobs run with helper threads, blocks run by helpers) -- diagnostics");
  m.def("all_finite", &clora3d::all_finite, "True when a float tensor holds no NaN/inf (serial on CPU)",
        pybind11::arg("t"));
  m.def("index_range", &clora3d::index_range, "(min, max) of a non-empty int64 tensor (serial on CPU)",
        pybind11::arg("idx"));
}
