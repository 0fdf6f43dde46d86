// Exact farthest point sampling on the GPU: host side. The kernels and their design are in
// fps_kernels.cuh.
#include <climits>

#include "common.cuh"
#include "cuda_ops.h"
#include "fps_kernels.cuh"

namespace clora3d {

using namespace fps_detail;

at::Tensor fps_cuda(const at::Tensor& xyz_in, int64_t S, int64_t start) {
  CLORA3D_CHECK_XYZ(xyz_in, "xyz");
  const int64_t B = xyz_in.size(0);
  const int64_t N = xyz_in.size(1);
  TORCH_CHECK(N > 0, "xyz must contain at least one point, got shape ", xyz_in.sizes());
  TORCH_CHECK(S >= 0 && S <= N, "S must be in [0, N=", N, "], got ", S);
  TORCH_CHECK(start >= 0 && start < N, "start must be in [0, N=", N, "), got ", start);

  const c10::cuda::CUDAGuard device_guard(xyz_in.device());
  const at::Tensor xyz = xyz_in.contiguous();
  at::Tensor out = at::empty({B, S}, xyz.options().dtype(at::kLong));
  if (B == 0 || S == 0) return out;

  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(B <= INT_MAX, "fps_cuda: batch size ", B, " exceeds the CUDA grid limit; split the batch");
  const unsigned int blocks = static_cast<unsigned int>(B);

  AT_DISPATCH_FLOATING_TYPES(xyz.scalar_type(), "fps_cuda", [&] {
    const scalar_t* pts = xyz.data_ptr<scalar_t>();
    int64_t* o = out.data_ptr<int64_t>();
    const FpsPlan plan = fps_plan(N, sizeof(scalar_t), prop->sharedMemPerBlockOptin);
    switch (plan.kernel) {
      case FpsKernel::kRegisters4:
        fps_register_kernel<scalar_t, 4><<<blocks, plan.threads, 0, stream>>>(pts, N, S, start, o);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        break;
      case FpsKernel::kRegisters8:
        fps_register_kernel<scalar_t, 8><<<blocks, plan.threads, 0, stream>>>(pts, N, S, start, o);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        break;
      case FpsKernel::kGeneric: {
        bool use_smem = plan.use_smem;
        if (use_smem && plan.smem_bytes + kFpsStaticSmem > 48 * 1024) {
          // Opt in to more than 48 KiB of dynamic shared memory (Volta and newer), always to the device's
          // whole budget: every call sets the same value, so concurrent calls with other N cannot lower
          // the limit between another call's opt-in and its launch.
          const int optin = static_cast<int>(prop->sharedMemPerBlockOptin - kFpsStaticSmem);
          use_smem = cudaFuncSetAttribute(fps_generic_kernel<scalar_t>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          optin) == cudaSuccess;
          if (!use_smem) (void)cudaGetLastError();  // clear the (non-sticky) error, use global memory
        }
        at::Tensor gdist;
        if (!use_smem) gdist = at::empty({B, N}, xyz.options());
        fps_generic_kernel<scalar_t><<<blocks, plan.threads, use_smem ? plan.smem_bytes : 0, stream>>>(
            pts, N, S, start, use_smem ? nullptr : gdist.data_ptr<scalar_t>(), o, use_smem);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        break;
      }
    }
  });
  return out;
}

}  // namespace clora3d
