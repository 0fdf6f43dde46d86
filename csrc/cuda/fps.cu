// Exact farthest point sampling on the GPU: one thread block per batch element.
//
// Each thread owns the points i = tid, tid + blockDim, ... and keeps their running squared
// distance to the selected set. Per step every thread finds its local maximum (strict `>` while
// walking indices upwards, so its lowest index wins on ties), then a warp-shuffle + shared-memory
// argmax reduction that prefers the lower index on equal distances picks the next point. Points and
// distances live in shared memory when they fit (opting in to the device's large shared memory),
// otherwise in global memory. Unlike pointnet2_ops there is no near-origin skip.
#include "common.cuh"
#include "cuda_ops.h"

namespace clora3d {
namespace {

using cuda_detail::pos_inf;
using cuda_detail::sqdist3;

constexpr int kMaxFpsThreads = 1024;

// Keep (v, i) if it beats (best, best_i): larger distance, or equal distance and lower index.
template <typename T>
__device__ __forceinline__ void argmax_merge(T& best, int64_t& best_i, T v, int64_t i) {
  if (v > best || (v == best && i < best_i)) {
    best = v;
    best_i = i;
  }
}

template <typename T>
__global__ void __launch_bounds__(kMaxFpsThreads)
    fps_kernel(const T* __restrict__ xyz, int64_t N, int64_t S, int64_t start, T* __restrict__ gdist,
               int64_t* __restrict__ out, bool use_smem) {
  extern __shared__ __align__(16) unsigned char fps_smem[];
  __shared__ T warp_best[kMaxFpsThreads / 32];
  __shared__ int64_t warp_best_i[kMaxFpsThreads / 32];
  __shared__ int64_t current;

  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int nwarps = (blockDim.x + 31) >> 5;
  const T* gpts = xyz + b * N * 3;
  int64_t* o = out + b * S;

  const T* pts;
  T* dist;
  if (use_smem) {
    T* s = reinterpret_cast<T*>(fps_smem);
    for (int64_t i = tid; i < 3 * N; i += blockDim.x) s[i] = gpts[i];
    pts = s;
    dist = s + 3 * N;
  } else {
    pts = gpts;
    dist = gdist + b * N;
  }
  for (int64_t i = tid; i < N; i += blockDim.x) dist[i] = pos_inf<T>();
  if (tid == 0) {
    current = start;
    o[0] = start;
  }
  __syncthreads();

  for (int64_t s = 1; s < S; ++s) {
    const int64_t c = current;
    const T cx = pts[3 * c + 0], cy = pts[3 * c + 1], cz = pts[3 * c + 2];
    T best = T(-1);
    int64_t best_i = INT64_MAX;
    for (int64_t i = tid; i < N; i += blockDim.x) {
      const T d = sqdist3(pts[3 * i + 0], pts[3 * i + 1], pts[3 * i + 2], cx, cy, cz);
      T m = dist[i];
      if (d < m) {
        m = d;
        dist[i] = d;
      }
      if (m > best) {  // strict: the lowest index of this thread wins on ties
        best = m;
        best_i = i;
      }
    }
    // Warp-level argmax.
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const T v = __shfl_down_sync(0xffffffffu, best, offset);
      const int64_t vi = __shfl_down_sync(0xffffffffu, best_i, offset);
      argmax_merge(best, best_i, v, vi);
    }
    if (lane == 0) {
      warp_best[warp] = best;
      warp_best_i[warp] = best_i;
    }
    __syncthreads();
    if (warp == 0) {
      best = lane < nwarps ? warp_best[lane] : T(-1);
      best_i = lane < nwarps ? warp_best_i[lane] : INT64_MAX;
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) {
        const T v = __shfl_down_sync(0xffffffffu, best, offset);
        const int64_t vi = __shfl_down_sync(0xffffffffu, best_i, offset);
        argmax_merge(best, best_i, v, vi);
      }
      if (lane == 0) {
        current = best_i;
        o[s] = best_i;
      }
    }
    __syncthreads();
  }
}

int fps_threads(int64_t N) {
  if (N >= 8192) return 1024;
  int t = 32;
  while (t < N && t < 512) t <<= 1;
  return t;
}

}  // namespace

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

  const int threads = fps_threads(N);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();

  AT_DISPATCH_FLOATING_TYPES(xyz.scalar_type(), "fps_cuda", [&] {
    const size_t smem_bytes = static_cast<size_t>(N) * 4 * sizeof(scalar_t);
    // Leave room for the kernel's static shared memory (reduction buffers, < 1 KiB).
    const size_t static_smem = 2 * 1024;
    bool use_smem = smem_bytes + static_smem <= 48 * 1024;
    if (!use_smem && smem_bytes + static_smem <= prop->sharedMemPerBlockOptin) {
      // Opt in to more than 48 KiB of dynamic shared memory (Volta and newer).
      use_smem = cudaFuncSetAttribute(fps_kernel<scalar_t>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem_bytes)) == cudaSuccess;
      if (!use_smem) (void)cudaGetLastError();  // clear the (non-sticky) error, use global memory
    }
    at::Tensor gdist;
    if (!use_smem) gdist = at::empty({B, N}, xyz.options());
    fps_kernel<scalar_t><<<static_cast<unsigned int>(B), threads, use_smem ? smem_bytes : 0, stream>>>(
        xyz.data_ptr<scalar_t>(), N, S, start, use_smem ? nullptr : gdist.data_ptr<scalar_t>(), out.data_ptr<int64_t>(),
        use_smem);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace clora3d
