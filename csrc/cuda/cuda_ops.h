// CUDA kernels of clora3d._C (declarations). Implemented in csrc/cuda/<op>.cu, one file per op.
//
// This header is included by csrc/bindings.cpp, which is compiled by the host C++ compiler, so it
// must only use ATen host types (no CUDA headers, no device code). Everything here is compiled
// only when setup.py defines WITH_CUDA.
//
// Signatures are identical to the CPU kernels (csrc/cpu) apart from the `_cuda` suffix.
// Conventions (all tensors channel-last, contiguous, validated by bindings.cpp and re-checked
// cheaply here with TORCH_CHECK so a direct call cannot crash the process):
//  - coordinates are float32 or float64; indices are int64;
//  - squared distances are computed as ((dx*dx + dy*dy) + dz*dz) with dx = p - q, using
//    non-contracting (no FMA) arithmetic, so they are bitwise equal to the same expression
//    evaluated on the CPU without FMA;
//  - every "nearest" search breaks ties towards the lower index.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <tuple>

// setup.py defines CLORA3D_CUDA_ARCHS=clora3d_cuda_archs, i.e. the macro names this C string
// ("8.0;8.6+PTX"), so `std::string(CLORA3D_CUDA_ARCHS)` works in any translation unit that
// includes this header. (A quoted string literal in a -D flag does not survive every build path:
// torch's ninja build passes host-compiler flags through a shell unquoted.) The list itself
// reaches version.cu as the shell- and nvcc-safe token list CLORA3D_CUDA_ARCH_TOKENS=8.0_8.6+PTX.
extern "C" const char* const clora3d_cuda_archs;

namespace clora3d {

// Largest k served by the per-query list kernels (a warp per query for k <= 32, a thread with a
// list in local memory above; knn_kernels.cuh); larger k use a full distance matrix (B*M*N
// elements) followed by a stable sort, which gives identical results.
constexpr int64_t kKnnCudaMaxInsertionK = 128;

// Exact farthest point sampling. xyz (B,N,3) float/double -> int64 (B,S). out[:,0] = start;
// each next index is the point whose squared distance to the selected set is largest, ties to
// the lowest index. No near-origin skip (unlike pointnet2_ops).
at::Tensor fps_cuda(const at::Tensor& xyz, int64_t S, int64_t start);

// k nearest neighbours of each query point among ref. query (B,M,3), ref (B,N,3), 1 <= k <= N.
// Returns (sqdist (B,M,k) same dtype, idx int64 (B,M,k)), sorted ascending, ties to lower index.
std::tuple<at::Tensor, at::Tensor> knn_cuda(const at::Tensor& query, const at::Tensor& ref, int64_t k);

// points (B,N,C) any floating type (incl. half/bfloat16), idx int64 (B,S) -> (B,S,C).
at::Tensor gather_forward_cuda(const at::Tensor& points, const at::Tensor& idx);

// grad_out (B,S,C), idx int64 (B,S) -> grad_points (B,N,C) (scatter-add with atomics).
at::Tensor gather_backward_cuda(const at::Tensor& grad_out, const at::Tensor& idx, int64_t N);

// Three nearest known points of each unknown point. unknown (B,n,3), known (B,m,3), m >= 3.
// Returns (squared distances (B,n,3) ascending, idx int64 (B,n,3)), ties to lower index.
std::tuple<at::Tensor, at::Tensor> three_nn_cuda(const at::Tensor& unknown, const at::Tensor& known);

// out[b,i,:] = sum_j weight[b,i,j] * features[b, idx[b,i,j], :].
// features (B,m,C), idx int64 (B,n,3), weight (B,n,3) same dtype as features -> (B,n,C).
at::Tensor three_interpolate_forward_cuda(const at::Tensor& features, const at::Tensor& idx, const at::Tensor& weight);

// Gradient w.r.t. features: grad_out (B,n,C), idx, weight (B,n,3) -> (B,m,C).
at::Tensor three_interpolate_backward_cuda(const at::Tensor& grad_out, const at::Tensor& idx, const at::Tensor& weight,
                                           int64_t m);

// Chamfer-L2 nearest neighbours both ways. a (B,N,3), b (B,M,3) same float dtype.
// Returns (dist_a (B,N) = min_j |a_i - b_j|^2, idx_a int64 (B,N), dist_b (B,M), idx_b (B,M)).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> chamfer_forward_cuda(const at::Tensor& a,
                                                                                const at::Tensor& b);

// Gradients of the two distance vectors w.r.t. a and b: returns (grad_a (B,N,3), grad_b (B,M,3)).
std::tuple<at::Tensor, at::Tensor> chamfer_backward_cuda(const at::Tensor& a, const at::Tensor& b,
                                                         const at::Tensor& idx_a, const at::Tensor& idx_b,
                                                         const at::Tensor& grad_dist_a, const at::Tensor& grad_dist_b);

// Build metadata for _C.build_info(), implemented in csrc/cuda/version.cu:
//  - CUDA runtime version the kernels were compiled against (CUDART_VERSION, e.g. 13000);
//  - the architectures they were compiled for, in TORCH_CUDA_ARCH_LIST syntax ("8.0;8.6+PTX").
int64_t cuda_compiled_version();
std::string cuda_build_archs();

}  // namespace clora3d
