// Three-point weighted interpolation of features and its backward w.r.t. the features.
//   out[b, i, c] = sum_{j<3} weight[b, i, j] * features[b, idx[b, i, j], c]
// float32 / float64 / float16 / bfloat16 (half types accumulate in float); host code (the kernels
// are in gather_kernels.cuh).
#include <algorithm>

#include "common.cuh"
#include "cuda_ops.h"
#include "gather_kernels.cuh"

namespace clora3d {
namespace {

using cuda_detail::kThreads;
using gather_detail::three_interpolate_backward_kernel;
using gather_detail::three_interpolate_forward_kernel;

void check_idx_weight(const at::Tensor& ref, const char* ref_name, const at::Tensor& idx, const at::Tensor& weight) {
  CLORA3D_CHECK_INDEX(idx, "idx");
  CLORA3D_CHECK_CUDA(weight, "weight");
  CLORA3D_CHECK_DIM(idx, 3, "idx");
  CLORA3D_CHECK_DIM(weight, 3, "weight");
  TORCH_CHECK(idx.size(2) == 3 && weight.sizes() == idx.sizes(), "idx and weight must both have shape (B, n, 3), got ",
              idx.sizes(), " and ", weight.sizes());
  TORCH_CHECK(idx.size(0) == ref.size(0), ref_name, " and idx must have the same batch size, got ", ref.size(0),
              " and ", idx.size(0));
  TORCH_CHECK(weight.scalar_type() == ref.scalar_type(), "weight must have the dtype of ", ref_name, " (",
              ref.scalar_type(), "), got ", weight.scalar_type());
  TORCH_CHECK(idx.device() == ref.device() && weight.device() == ref.device(), ref_name,
              ", idx and weight must be on the same device");
}

}  // namespace

at::Tensor three_interpolate_forward_cuda(const at::Tensor& features_in, const at::Tensor& idx_in,
                                          const at::Tensor& weight_in) {
  CLORA3D_CHECK_CUDA(features_in, "features");
  CLORA3D_CHECK_DIM(features_in, 3, "features");
  check_idx_weight(features_in, "features", idx_in, weight_in);
  const int64_t B = features_in.size(0), m = features_in.size(1), C = features_in.size(2);
  const int64_t n = idx_in.size(1);
  TORCH_CHECK(m > 0 || n == 0, "features has no points (m = 0)");

  const c10::cuda::CUDAGuard device_guard(features_in.device());
  const at::Tensor features = features_in.contiguous();
  const at::Tensor idx = idx_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  at::Tensor out = at::empty({B, n, C}, features.options());
  if (out.numel() == 0) return out;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "three_interpolate_forward_cuda", [&] {
        CLORA3D_DISPATCH_INDEX(std::max({out.numel(), features.numel(), idx.numel()}), [&] {
          three_interpolate_forward_kernel<scalar_t, at::opmath_type<scalar_t>, index_t>
              <<<cuda_detail::grid_for(out.numel()), kThreads, 0, stream>>>(
                  features.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), weight.data_ptr<scalar_t>(),
                  static_cast<index_t>(B), static_cast<index_t>(m), static_cast<index_t>(n), static_cast<index_t>(C),
                  out.data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return out;
}

at::Tensor three_interpolate_backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& idx_in,
                                           const at::Tensor& weight_in, int64_t m) {
  CLORA3D_CHECK_CUDA(grad_out_in, "grad_out");
  CLORA3D_CHECK_DIM(grad_out_in, 3, "grad_out");
  check_idx_weight(grad_out_in, "grad_out", idx_in, weight_in);
  TORCH_CHECK(grad_out_in.size(1) == idx_in.size(1), "grad_out (B,n,C) and idx (B,n,3) disagree: ", grad_out_in.sizes(),
              " vs ", idx_in.sizes());
  TORCH_CHECK(m >= 0, "m must be non-negative, got ", m);
  const int64_t B = grad_out_in.size(0), n = grad_out_in.size(1), C = grad_out_in.size(2);
  TORCH_CHECK(m > 0 || n == 0, "m = 0 but there are ", n, " interpolated points");

  const c10::cuda::CUDAGuard device_guard(grad_out_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor idx = idx_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  if (grad_out.numel() == 0) return at::zeros({B, m, C}, grad_out.options());
  at::Tensor grad_features;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_out.scalar_type(), "three_interpolate_backward_cuda", [&] {
        // half / bfloat16 accumulate in float32 (one rounding per element at the end, as on the CPU)
        using acc_t = at::opmath_type<scalar_t>;
        at::Tensor acc = at::zeros({B, m, C}, grad_out.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        CLORA3D_DISPATCH_INDEX(std::max({grad_out.numel(), acc.numel(), idx.numel()}), [&] {
          three_interpolate_backward_kernel<scalar_t, acc_t, index_t>
              <<<cuda_detail::grid_for(grad_out.numel()), kThreads, 0, stream>>>(
                  grad_out.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(), weight.data_ptr<scalar_t>(),
                  static_cast<index_t>(B), static_cast<index_t>(m), static_cast<index_t>(n), static_cast<index_t>(C),
                  acc.data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
        grad_features = acc.scalar_type() == grad_out.scalar_type() ? acc : acc.to(grad_out.scalar_type());
      });
  return grad_features;
}

}  // namespace clora3d
