// clora3d._C: the point cloud kernels registered as torch custom operators (namespace "clora3d",
// called as torch.ops.clora3d.<op>), with CPU kernels (csrc/cpu) and, when built WITH_CUDA, CUDA
// kernels (csrc/cuda). Being dispatcher operators, they trace under torch.compile / torch.export
// (fake implementations and autograd are registered in Python: clora3d/ops/_library.py) and
// every TORCH_CHECK reaches Python through torch's own error translation as a RuntimeError.
//
// Checks: every entry point checks rank, shape, dtype and device eagerly (cheap, no data access).
// Value checks differ by device:
//   - CPU: finite coordinates and index ranges are checked here with one serial pass each
//     (RuntimeError naming the argument), so a direct call with bad input cannot crash the process;
//   - CUDA: nothing is read back to the host (that would synchronise every training step).
//     The kernels assert on the device that the coordinates they read are finite (FPS, kNN,
//     three_nn, Chamfer) and that indices are in range (gather, interpolation, Chamfer backward):
//     a bad value ends in "CUDA error: device-side assert triggered" at the next synchronisation
//     (message on stderr), never in a wrong result or an out-of-bounds access. No extra launch.
// The user-facing validation with ValueError lives in clora3d/ops (Python).
// A small pybind11 module (TORCH_EXTENSION_NAME) remains for build_info and diagnostics.
#include <torch/extension.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <utility>

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

bool is_float(const at::Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble; }
bool is_half(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(is_float(t), name, " must be float32 or float64, got ", t.scalar_type());
}

// Features (not coordinates): float32 / float64 / float16 / bfloat16.
void check_feature_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(is_float(t) || is_half(t), name, " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
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
  TORCH_CHECK(a.device() == b.device(), an, " and ", bn, " must be on the same device, got ", a.device(), " and ",
              b.device());
  if (dtype)
    TORCH_CHECK(a.scalar_type() == b.scalar_type(), an, " and ", bn, " must have the same dtype, got ", a.scalar_type(),
                " and ", b.scalar_type());
  TORCH_CHECK(a.size(0) == b.size(0), an, " and ", bn, " must have the same batch size, got ", a.size(0), " and ",
              b.size(0));
}

// (min, max) of a non-empty int64 CPU tensor: one serial pass (no torch parallel region, which can
// stall for a scheduler time slice on a busy machine).
std::pair<int64_t, int64_t> minmax_long_cpu(const at::Tensor& idx_in) {
  TORCH_CHECK(idx_in.device().is_cpu(), "minmax_long_cpu needs a CPU tensor");
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

// CPU only (the CUDA kernels assert their index ranges on the device).
void check_index_range_cpu(const at::Tensor& idx, int64_t n, const char* name) {
  if (idx.numel() == 0) return;
  const auto [lo, hi] = minmax_long_cpu(idx);
  TORCH_CHECK(lo >= 0 && hi < n, name, " must hold indices in [0, ", n, "), got values in [", lo, ", ", hi, "]");
}

// Coordinates must be finite: with a NaN every distance comparison is false and kNN / three_nn
// would return indices that were never written. CPU only: one serial pass, cheap next to the kernel.
void check_finite_cpu(const at::Tensor& t_in, const char* name) {
  if (t_in.numel() == 0) return;
  const at::Tensor t = t_in.contiguous();
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "check_finite",
                             [&] { ok = all_finite_cpu(t.data_ptr<scalar_t>(), t.numel()); });
  TORCH_CHECK(ok, name, " must hold finite coordinates, found NaN or inf");
}

#ifdef WITH_CUDA
#define CLORA3D_CUDA_GUARD(t) const c10::cuda::OptionalCUDAGuard device_guard_((t).device())
#endif

// ----------------------------------------------------------------------------- argument checks
// (shape / dtype / device: eager on every device, no access to the data)

void fps_args(const at::Tensor& xyz, int64_t S, int64_t start) {
  check_points(xyz, "xyz");
  const int64_t N = xyz.size(1);
  TORCH_CHECK(N >= 1, "xyz must hold at least one point, got shape ", xyz.sizes());
  TORCH_CHECK(S >= 1 && S <= N, "S must be in [1, N=", N, "], got ", S);
  TORCH_CHECK(start >= 0 && start < N, "start must be in [0, N=", N, "), got ", start);
}

void knn_args(const at::Tensor& query, const at::Tensor& ref, int64_t k) {
  check_points(query, "query");
  check_points(ref, "ref");
  check_same(query, "query", ref, "ref");
  const int64_t N = ref.size(1);
  TORCH_CHECK(N >= 1, "ref must hold at least one point, got shape ", ref.sizes());
  TORCH_CHECK(k >= 1 && k <= N, "k must be in [1, N=", N, "], got ", k);
}

void gather_forward_args(const at::Tensor& points, const at::Tensor& idx) {
  check_feature_float(points, "points");
  check_rank(points, 3, "points");
  check_long(idx, "idx");
  check_rank(idx, 2, "idx");
  check_same(points, "points", idx, "idx", false);
}

void gather_backward_args(const at::Tensor& grad, const at::Tensor& idx, int64_t N) {
  check_feature_float(grad, "grad_out");
  check_rank(grad, 3, "grad_out");
  check_long(idx, "idx");
  check_rank(idx, 2, "idx");
  check_same(grad, "grad_out", idx, "idx", false);
  TORCH_CHECK(idx.size(1) == grad.size(1), "idx (B,S) and grad_out (B,S,C) disagree on S: ", idx.sizes(), " vs ",
              grad.sizes());
  TORCH_CHECK(N >= 0, "N must be >= 0, got ", N);
  TORCH_CHECK(N > 0 || idx.numel() == 0, "N = 0 but idx selects ", idx.size(1), " points");
}

void three_nn_args(const at::Tensor& unknown, const at::Tensor& known) {
  check_points(unknown, "unknown");
  check_points(known, "known");
  check_same(unknown, "unknown", known, "known");
  TORCH_CHECK(known.size(1) >= 3, "known must hold at least 3 points, got shape ", known.sizes());
}

void interp_idx_weight_args(const at::Tensor& ref, const char* refname, const at::Tensor& idx,
                            const at::Tensor& weight) {
  check_long(idx, "idx");
  check_rank(idx, 3, "idx");
  check_feature_float(weight, "weight");
  check_rank(weight, 3, "weight");
  TORCH_CHECK(idx.size(2) == 3, "idx must have shape (B, n, 3), got ", idx.sizes());
  TORCH_CHECK(weight.sizes() == idx.sizes(), "weight must have the shape of idx ", idx.sizes(), ", got ",
              weight.sizes());
  check_same(ref, refname, idx, "idx", false);
  check_same(ref, refname, weight, "weight", true);
}

void three_interpolate_forward_args(const at::Tensor& feat, const at::Tensor& idx, const at::Tensor& weight) {
  check_feature_float(feat, "features");
  check_rank(feat, 3, "features");
  interp_idx_weight_args(feat, "features", idx, weight);
  TORCH_CHECK(feat.size(1) > 0 || idx.size(1) == 0, "features has no points (m = 0)");
}

void three_interpolate_backward_args(const at::Tensor& grad, const at::Tensor& idx, const at::Tensor& weight,
                                     int64_t m) {
  check_feature_float(grad, "grad_out");
  check_rank(grad, 3, "grad_out");
  interp_idx_weight_args(grad, "grad_out", idx, weight);
  TORCH_CHECK(idx.size(1) == grad.size(1), "idx (B,n,3) and grad_out (B,n,C) disagree on n: ", idx.sizes(), " vs ",
              grad.sizes());
  TORCH_CHECK(m >= 0, "m must be >= 0, got ", m);
  TORCH_CHECK(m > 0 || idx.size(1) == 0, "m = 0 but there are ", idx.size(1), " interpolated points");
}

void chamfer_forward_args(const at::Tensor& a, const at::Tensor& b) {
  check_points(a, "a");
  check_points(b, "b");
  check_same(a, "a", b, "b");
  TORCH_CHECK(a.size(1) >= 1 && b.size(1) >= 1, "a and b must hold at least one point each, got ", a.sizes(), " and ",
              b.sizes());
}

void chamfer_backward_args(const at::Tensor& a, const at::Tensor& b, const at::Tensor& ia, const at::Tensor& ib,
                           const at::Tensor& ga, const at::Tensor& gb) {
  check_points(a, "a");
  check_points(b, "b");
  check_same(a, "a", b, "b");
  check_long(ia, "idx_a");
  check_long(ib, "idx_b");
  check_float(ga, "grad_dist_a");
  check_float(gb, "grad_dist_b");
  const int64_t B = a.size(0), N = a.size(1), M = b.size(1);
  TORCH_CHECK(ia.dim() == 2 && ia.size(0) == B && ia.size(1) == N, "idx_a must have shape (", B, ", ", N, "), got ",
              ia.sizes());
  TORCH_CHECK(ib.dim() == 2 && ib.size(0) == B && ib.size(1) == M, "idx_b must have shape (", B, ", ", M, "), got ",
              ib.sizes());
  TORCH_CHECK(ga.sizes() == ia.sizes(), "grad_dist_a must have shape ", ia.sizes(), ", got ", ga.sizes());
  TORCH_CHECK(gb.sizes() == ib.sizes(), "grad_dist_b must have shape ", ib.sizes(), ", got ", gb.sizes());
  check_same(a, "a", ia, "idx_a", false);
  check_same(a, "a", ib, "idx_b", false);
  check_same(a, "a", ga, "grad_dist_a", true);
  check_same(a, "a", gb, "grad_dist_b", true);
}

// float16 / bfloat16 features on the CPU: computed in float32 and rounded once at the end (the
// CUDA kernels accumulate half types in float32 too).
at::Tensor up(const at::Tensor& t) { return is_half(t) ? t.to(at::kFloat) : t; }

// ----------------------------------------------------------------------------- CPU implementations

at::Tensor fps_cpu_impl(const at::Tensor& xyz, int64_t S, int64_t start) {
  fps_args(xyz, S, start);
  check_finite_cpu(xyz, "xyz");
  return fps_cpu(xyz.contiguous(), S, start);
}

std::tuple<at::Tensor, at::Tensor> knn_cpu_impl(const at::Tensor& query, const at::Tensor& ref, int64_t k) {
  knn_args(query, ref, k);
  check_finite_cpu(query, "query");
  check_finite_cpu(ref, "ref");
  return knn_cpu(query.contiguous(), ref.contiguous(), k);
}

at::Tensor gather_forward_cpu_impl(const at::Tensor& points, const at::Tensor& idx) {
  gather_forward_args(points, idx);
  check_index_range_cpu(idx, points.size(1), "idx");
  return gather_forward_cpu(up(points).contiguous(), idx.contiguous()).to(points.scalar_type());
}

at::Tensor gather_backward_cpu_impl(const at::Tensor& grad, const at::Tensor& idx, int64_t N) {
  gather_backward_args(grad, idx, N);
  check_index_range_cpu(idx, N, "idx");
  return gather_backward_cpu(up(grad).contiguous(), idx.contiguous(), N).to(grad.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> three_nn_cpu_impl(const at::Tensor& unknown, const at::Tensor& known) {
  three_nn_args(unknown, known);
  check_finite_cpu(unknown, "unknown");
  check_finite_cpu(known, "known");
  return three_nn_cpu(unknown.contiguous(), known.contiguous());
}

at::Tensor three_interpolate_forward_cpu_impl(const at::Tensor& feat, const at::Tensor& idx, const at::Tensor& weight) {
  three_interpolate_forward_args(feat, idx, weight);
  check_index_range_cpu(idx, feat.size(1), "idx");
  return three_interpolate_forward_cpu(up(feat).contiguous(), idx.contiguous(), up(weight).contiguous())
      .to(feat.scalar_type());
}

at::Tensor three_interpolate_backward_cpu_impl(const at::Tensor& grad, const at::Tensor& idx, const at::Tensor& weight,
                                               int64_t m) {
  three_interpolate_backward_args(grad, idx, weight, m);
  check_index_range_cpu(idx, m, "idx");
  return three_interpolate_backward_cpu(up(grad).contiguous(), idx.contiguous(), up(weight).contiguous(), m)
      .to(grad.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chamfer_forward_cpu_impl(const at::Tensor& a,
                                                                                    const at::Tensor& b) {
  chamfer_forward_args(a, b);
  check_finite_cpu(a, "a");
  check_finite_cpu(b, "b");
  return chamfer_forward_cpu(a.contiguous(), b.contiguous());
}

std::tuple<at::Tensor, at::Tensor> chamfer_backward_cpu_impl(const at::Tensor& a, const at::Tensor& b,
                                                             const at::Tensor& ia, const at::Tensor& ib,
                                                             const at::Tensor& ga, const at::Tensor& gb) {
  chamfer_backward_args(a, b, ia, ib, ga, gb);
  check_index_range_cpu(ia, b.size(1), "idx_a");
  check_index_range_cpu(ib, a.size(1), "idx_b");
  return chamfer_backward_cpu(a.contiguous(), b.contiguous(), ia.contiguous(), ib.contiguous(), ga.contiguous(),
                              gb.contiguous());
}

// ----------------------------------------------------------------------------- CUDA implementations
#ifdef WITH_CUDA

at::Tensor fps_cuda_impl(const at::Tensor& xyz, int64_t S, int64_t start) {
  fps_args(xyz, S, start);
  CLORA3D_CUDA_GUARD(xyz);
  return fps_cuda(xyz.contiguous(), S, start);
}

std::tuple<at::Tensor, at::Tensor> knn_cuda_impl(const at::Tensor& query, const at::Tensor& ref, int64_t k) {
  knn_args(query, ref, k);
  CLORA3D_CUDA_GUARD(query);
  return knn_cuda(query.contiguous(), ref.contiguous(), k);
}

at::Tensor gather_forward_cuda_impl(const at::Tensor& points, const at::Tensor& idx) {
  gather_forward_args(points, idx);
  CLORA3D_CUDA_GUARD(points);
  return gather_forward_cuda(points.contiguous(), idx.contiguous());
}

at::Tensor gather_backward_cuda_impl(const at::Tensor& grad, const at::Tensor& idx, int64_t N) {
  gather_backward_args(grad, idx, N);
  CLORA3D_CUDA_GUARD(grad);
  return gather_backward_cuda(grad.contiguous(), idx.contiguous(), N);
}

std::tuple<at::Tensor, at::Tensor> three_nn_cuda_impl(const at::Tensor& unknown, const at::Tensor& known) {
  three_nn_args(unknown, known);
  CLORA3D_CUDA_GUARD(unknown);
  return three_nn_cuda(unknown.contiguous(), known.contiguous());
}

at::Tensor three_interpolate_forward_cuda_impl(const at::Tensor& feat, const at::Tensor& idx,
                                               const at::Tensor& weight) {
  three_interpolate_forward_args(feat, idx, weight);
  CLORA3D_CUDA_GUARD(feat);
  return three_interpolate_forward_cuda(feat.contiguous(), idx.contiguous(), weight.contiguous());
}

at::Tensor three_interpolate_backward_cuda_impl(const at::Tensor& grad, const at::Tensor& idx, const at::Tensor& weight,
                                                int64_t m) {
  three_interpolate_backward_args(grad, idx, weight, m);
  CLORA3D_CUDA_GUARD(grad);
  return three_interpolate_backward_cuda(grad.contiguous(), idx.contiguous(), weight.contiguous(), m);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chamfer_forward_cuda_impl(const at::Tensor& a,
                                                                                     const at::Tensor& b) {
  chamfer_forward_args(a, b);
  CLORA3D_CUDA_GUARD(a);
  return chamfer_forward_cuda(a.contiguous(), b.contiguous());
}

std::tuple<at::Tensor, at::Tensor> chamfer_backward_cuda_impl(const at::Tensor& a, const at::Tensor& b,
                                                              const at::Tensor& ia, const at::Tensor& ib,
                                                              const at::Tensor& ga, const at::Tensor& gb) {
  chamfer_backward_args(a, b, ia, ib, ga, gb);
  CLORA3D_CUDA_GUARD(a);
  // the gradients go in as they are: the kernel reads them through their strides (no copy)
  return chamfer_backward_cuda(a.contiguous(), b.contiguous(), ia.contiguous(), ib.contiguous(), ga, gb);
}

#else  // built without CUDA: a CUDA tensor gets one clear error instead of the dispatcher's

[[noreturn]] void no_cuda(const char* op) {
  TORCH_CHECK(false, "clora3d::", op,
              " got a CUDA tensor, but clora3d._C was built without CUDA kernels; "
              "rebuild with nvcc available (FORCE_CUDA=1), or set CLORA3D_OPS=reference");
}
at::Tensor fps_cuda_impl(const at::Tensor&, int64_t, int64_t) { no_cuda("fps"); }
std::tuple<at::Tensor, at::Tensor> knn_cuda_impl(const at::Tensor&, const at::Tensor&, int64_t) { no_cuda("knn"); }
at::Tensor gather_forward_cuda_impl(const at::Tensor&, const at::Tensor&) { no_cuda("gather_forward"); }
at::Tensor gather_backward_cuda_impl(const at::Tensor&, const at::Tensor&, int64_t) { no_cuda("gather_backward"); }
std::tuple<at::Tensor, at::Tensor> three_nn_cuda_impl(const at::Tensor&, const at::Tensor&) { no_cuda("three_nn"); }
at::Tensor three_interpolate_forward_cuda_impl(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  no_cuda("three_interpolate_forward");
}
at::Tensor three_interpolate_backward_cuda_impl(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t) {
  no_cuda("three_interpolate_backward");
}
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chamfer_forward_cuda_impl(const at::Tensor&,
                                                                                     const at::Tensor&) {
  no_cuda("chamfer_forward");
}
std::tuple<at::Tensor, at::Tensor> chamfer_backward_cuda_impl(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                              const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  no_cuda("chamfer_backward");
}
#endif

// ----------------------------------------------------------------------------- validation helpers
// Used by clora3d.ops on CPU tensors (serial, see minmax_long_cpu). Registered as operators too,
// so that a bad argument is a RuntimeError through the dispatcher.

bool all_finite_impl(const at::Tensor& t_in) {
  TORCH_CHECK(t_in.defined(), "tensor is undefined");
  if (t_in.numel() == 0 || !at::isFloatingType(t_in.scalar_type())) return true;
  TORCH_CHECK(t_in.device().is_cpu(), "clora3d::all_finite is a CPU helper, got a tensor on ", t_in.device());
  if (!is_float(t_in)) return at::isfinite(t_in).all().item<bool>();
  const at::Tensor t = t_in.contiguous();
  bool ok = true;
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "all_finite",
                             [&] { ok = all_finite_cpu(t.data_ptr<scalar_t>(), t.numel()); });
  return ok;
}

std::tuple<int64_t, int64_t> index_range_impl(const at::Tensor& idx) {
  check_long(idx, "idx");
  TORCH_CHECK(idx.device().is_cpu(), "clora3d::index_range is a CPU helper, got a tensor on ", idx.device());
  TORCH_CHECK(idx.numel() > 0, "index_range needs a non-empty tensor");
  const auto [lo, hi] = minmax_long_cpu(idx);
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

TORCH_LIBRARY(clora3d, m) {
  m.def("fps(Tensor xyz, int S, int start=0) -> Tensor");
  m.def("knn(Tensor query, Tensor ref, int k) -> (Tensor, Tensor)");
  m.def("gather_forward(Tensor points, Tensor idx) -> Tensor");
  m.def("gather_backward(Tensor grad_out, Tensor idx, int N) -> Tensor");
  m.def("three_nn(Tensor unknown, Tensor known) -> (Tensor, Tensor)");
  m.def("three_interpolate_forward(Tensor features, Tensor idx, Tensor weight) -> Tensor");
  m.def("three_interpolate_backward(Tensor grad_out, Tensor idx, Tensor weight, int m) -> Tensor");
  m.def("chamfer_forward(Tensor a, Tensor b) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "chamfer_backward(Tensor a, Tensor b, Tensor idx_a, Tensor idx_b, Tensor grad_dist_a, "
      "Tensor grad_dist_b) -> (Tensor, Tensor)");
  m.def("all_finite(Tensor t) -> bool");
  m.def("index_range(Tensor idx) -> (int, int)");
}

TORCH_LIBRARY_IMPL(clora3d, CPU, m) {
  m.impl("fps", &clora3d::fps_cpu_impl);
  m.impl("knn", &clora3d::knn_cpu_impl);
  m.impl("gather_forward", &clora3d::gather_forward_cpu_impl);
  m.impl("gather_backward", &clora3d::gather_backward_cpu_impl);
  m.impl("three_nn", &clora3d::three_nn_cpu_impl);
  m.impl("three_interpolate_forward", &clora3d::three_interpolate_forward_cpu_impl);
  m.impl("three_interpolate_backward", &clora3d::three_interpolate_backward_cpu_impl);
  m.impl("chamfer_forward", &clora3d::chamfer_forward_cpu_impl);
  m.impl("chamfer_backward", &clora3d::chamfer_backward_cpu_impl);
  m.impl("all_finite", &clora3d::all_finite_impl);
  m.impl("index_range", &clora3d::index_range_impl);
}

TORCH_LIBRARY_IMPL(clora3d, CUDA, m) {
  m.impl("fps", &clora3d::fps_cuda_impl);
  m.impl("knn", &clora3d::knn_cuda_impl);
  m.impl("gather_forward", &clora3d::gather_forward_cuda_impl);
  m.impl("gather_backward", &clora3d::gather_backward_cuda_impl);
  m.impl("three_nn", &clora3d::three_nn_cuda_impl);
  m.impl("three_interpolate_forward", &clora3d::three_interpolate_forward_cuda_impl);
  m.impl("three_interpolate_backward", &clora3d::three_interpolate_backward_cuda_impl);
  m.impl("chamfer_forward", &clora3d::chamfer_forward_cuda_impl);
  m.impl("chamfer_backward", &clora3d::chamfer_backward_cuda_impl);
}

// The Python module only carries build metadata and diagnostics; the ops are torch.ops.clora3d.*.
// (Functions here must not throw: the ops' errors go through the dispatcher instead.)
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "clora3d compiled point cloud kernels: registered as torch.ops.clora3d.* on import";
  m.def("build_info", &clora3d::build_info, "how this extension was built");
  m.def("_pool_stats", &clora3d::detail::pool_stats,
        "(jobs, jobs run with helper threads, blocks run by helpers) -- diagnostics");
}
