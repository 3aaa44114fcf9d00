// What every CUDA kernel of trpo_torchrl shares: the warp size, the block-wide sum and the
// device's SM count.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <mutex>
#include <vector>

namespace trpo_torchrl {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;  // every lane of a warp takes part in a shuffle

// Sum of v over a block of kThreads threads; every thread gets the same bits (the warp totals
// are added in one fixed order). `scratch` holds kThreads / kWarp values in shared memory.
//
// Barriers: one before scratch is written, so a call may follow another on the same scratch
// (slow threads may still be reading the previous result); one after, before it is read. The
// first also publishes every shared-memory write the block made before the call. Nothing else
// may write scratch while a thread can still be inside a call.
template <int kThreads, typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  static_assert(kThreads % kWarp == 0, "block_sum: whole warps only");
#pragma unroll
  for (int d = kWarp / 2; d > 0; d >>= 1) v += __shfl_down_sync(kFullMask, v, d);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T s = T(0);
#pragma unroll
  for (int w = 0; w < kThreads / kWarp; ++w) s += scratch[w];
  return s;
}

// The number of SMs of CUDA device `device`, asked of the driver once per device. Kernels size
// their grids by it on every call (the CG loop calls it once per iteration), so it is cached;
// the cache is filled under std::call_once per device, so concurrent callers are safe.
inline int sm_count(int device) {
  static const int num_devices = static_cast<int>(c10::cuda::device_count());
  static std::vector<std::once_flag> once(static_cast<size_t>(num_devices));
  static std::vector<int> count(static_cast<size_t>(num_devices), 0);
  TORCH_CHECK(device >= 0 && device < num_devices, "trpo_torchrl: CUDA device index ", device, " is out of range [0, ",
              num_devices, ")");
  std::call_once(once[device], [device] {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    count[device] = std::max(n, 1);
  });
  return count[device];
}

}  // namespace trpo_torchrl
