// trpo_torchrl::gae — CUDA kernels and the CUDA registration.
//
// One warp scans one stretch of one row, a tile of 32 lanes x kPerLane steps at a time, from the
// last tile backwards. Inside a tile each lane folds its steps into one affine map (gae.h), the
// warp combines the 32 maps with a suffix scan over shuffles, and each lane then rescans its own
// steps from its now-known right boundary. The lanes of a warp read neighbouring time steps, so
// loads are coalesced whenever time is the fastest-moving dimension.
//
// Many rows: one warp per row, one launch. Few long rows (B = 1, T = 1e6): each row is cut into
// segments so that every SM has warps to run; three launches — each segment's map, a per-row
// scan of the segment maps that gives each segment's right boundary, then the scan proper.
// No launch reads anything back to the host, so the op can be captured in a CUDA graph.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "gae.h"
#include "gae_args.h"

namespace trpo_torchrl {
namespace {

constexpr int kWarp = 32;
constexpr int kPerLane = 4;               // consecutive steps held by one lane
constexpr int kTile = kWarp * kPerLane;   // steps one warp covers per iteration
constexpr int kWarpsPerBlock = 8;
constexpr int kCarryThreads = 1024;
constexpr unsigned kFull = 0xffffffffu;

template <typename acc_t>
__device__ __forceinline__ AffineMap<acc_t> shfl_down_map(AffineMap<acc_t> f, int delta) {
  return {__shfl_down_sync(kFull, f.alpha, delta), __shfl_down_sync(kFull, f.beta, delta)};
}

// Inclusive suffix scan over a warp: lane l ends with f_l ∘ f_{l+1} ∘ ... ∘ f_31.
template <typename acc_t>
__device__ __forceinline__ AffineMap<acc_t> warp_suffix_scan(AffineMap<acc_t> f, int lane) {
#pragma unroll
  for (int d = 1; d < kWarp; d <<= 1) {
    const AffineMap<acc_t> later = shfl_down_map(f, d);
    if (lane + d < kWarp) f = compose(f, later);
  }
  return f;
}

// One tile's inputs as held by one lane; steps past t_end are the identity (delta 0, discount 1).
template <typename scalar_t, typename acc_t>
struct LaneSteps {
  acc_t delta[kPerLane];
  acc_t discount[kPerLane];
  acc_t value[kPerLane];

  __device__ __forceinline__ void load(const GaeArgs<scalar_t>& a, int64_t row, int64_t t0,
                                       int64_t t_end) {
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int64_t t = t0 + k;
      if (t < t_end) {
        const acc_t gamma = a.gamma[offset(a.s_gamma, row, t)];
        const acc_t lmbda = a.lmbda[offset(a.s_lmbda, row, t)];
        const acc_t r = a.reward[offset(a.s_reward, row, t)];
        const acc_t nv = a.next_value[offset(a.s_next_value, row, t)];
        value[k] = a.value[offset(a.s_value, row, t)];
        delta[k] = gae_delta<acc_t>(r, value[k], nv, gamma, a.terminated[offset(a.s_terminated, row, t)]);
        discount[k] = gae_discount<acc_t>(gamma, lmbda, a.done[offset(a.s_done, row, t)]);
      } else {
        delta[k] = acc_t(0);
        discount[k] = acc_t(1);
        value[k] = acc_t(0);
      }
    }
  }

  __device__ __forceinline__ AffineMap<acc_t> map() const {
    AffineMap<acc_t> f = identity_map<acc_t>();
#pragma unroll
    for (int k = kPerLane - 1; k >= 0; --k) f = compose<acc_t>({delta[k], discount[k]}, f);
    return f;
  }
};

// Scans the tile starting at t0 (steps >= t_end ignored) from `carry`, the advantage just after
// the tile; writes outputs and returns the advantage at the tile's first step (in every lane).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t scan_tile(const GaeArgs<scalar_t>& a, int64_t row, int64_t t0,
                                           int64_t t_end, acc_t carry, int lane) {
  LaneSteps<scalar_t, acc_t> s;
  const int64_t lane_t0 = t0 + lane * kPerLane;
  s.load(a, row, lane_t0, t_end);
  const AffineMap<acc_t> suffix = warp_suffix_scan(s.map(), lane);
  const AffineMap<acc_t> after_me = shfl_down_map(suffix, 1);
  acc_t adv = lane == kWarp - 1 ? carry : apply(after_me, carry);
#pragma unroll
  for (int k = kPerLane - 1; k >= 0; --k) {
    adv = s.delta[k] + adv * s.discount[k];
    const int64_t t = lane_t0 + k;
    if (t < t_end) {
      a.advantage[offset(a.s_advantage, row, t)] = static_cast<scalar_t>(adv);
      a.value_target[offset(a.s_value_target, row, t)] = static_cast<scalar_t>(adv + s.value[k]);
    }
  }
  return __shfl_sync(kFull, apply(suffix, carry), 0);
}

// The affine map of the tile starting at t0 (in every lane).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ AffineMap<acc_t> tile_map(const GaeArgs<scalar_t>& a, int64_t row,
                                                     int64_t t0, int64_t t_end, int lane) {
  LaneSteps<scalar_t, acc_t> s;
  s.load(a, row, t0 + lane * kPerLane, t_end);
  const AffineMap<acc_t> suffix = warp_suffix_scan(s.map(), lane);
  return {__shfl_sync(kFull, suffix.alpha, 0), __shfl_sync(kFull, suffix.beta, 0)};
}

// Warp w scans segment (w % nseg) of row (w / nseg): steps [seg * seg_len, (seg+1) * seg_len),
// starting from carries[w] (or 0 when carries is null: one segment per row).
template <typename scalar_t, typename acc_t>
__global__ void gae_scan_kernel(const GaeArgs<scalar_t> a, int64_t seg_len, int64_t nseg,
                                const acc_t* __restrict__ carries) {
  const int lane = threadIdx.x % kWarp;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (w >= a.rows * nseg) return;  // whole warps exit together
  const int64_t row = w / nseg, seg = w % nseg;
  const int64_t t_begin = seg * seg_len;
  const int64_t t_end = min(a.T, t_begin + seg_len);
  acc_t carry = carries == nullptr ? acc_t(0) : carries[w];
  for (int64_t t0 = t_begin + (t_end - t_begin - 1) / kTile * kTile; t0 >= t_begin; t0 -= kTile) {
    carry = scan_tile<scalar_t, acc_t>(a, row, t0, t_end, carry, lane);
  }
}

// maps[w] = (alpha, beta) of segment w, laid out as in gae_scan_kernel.
template <typename scalar_t, typename acc_t>
__global__ void gae_segment_map_kernel(const GaeArgs<scalar_t> a, int64_t seg_len, int64_t nseg,
                                       acc_t* __restrict__ maps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (w >= a.rows * nseg) return;
  const int64_t row = w / nseg, seg = w % nseg;
  const int64_t t_begin = seg * seg_len;
  const int64_t t_end = min(a.T, t_begin + seg_len);
  AffineMap<acc_t> f = identity_map<acc_t>();
  for (int64_t t0 = t_begin + (t_end - t_begin - 1) / kTile * kTile; t0 >= t_begin; t0 -= kTile) {
    f = compose(tile_map<scalar_t, acc_t>(a, row, t0, t_end, lane), f);
  }
  if (lane == 0) {
    maps[2 * w] = f.alpha;
    maps[2 * w + 1] = f.beta;
  }
}

// One block per row: carries[row, s] = advantage just after segment s, i.e. the alpha of
// f_{s+1} ∘ ... ∘ f_{nseg-1}. Segments go through in chunks of blockDim.x, from the right.
template <typename acc_t>
__global__ void gae_segment_carry_kernel(const acc_t* __restrict__ maps, int64_t nseg,
                                         acc_t* __restrict__ carries) {
  __shared__ acc_t warp_alpha[kCarryThreads / kWarp];
  __shared__ acc_t warp_beta[kCarryThreads / kWarp];
  __shared__ acc_t chunk_start;
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int nwarps = blockDim.x / kWarp;
  acc_t x = acc_t(0);  // advantage just after the current chunk (the same in every thread)
  for (int64_t c0 = (nseg - 1) / blockDim.x * blockDim.x; c0 >= 0; c0 -= blockDim.x) {
    const int64_t s = c0 + tid;
    AffineMap<acc_t> f = identity_map<acc_t>();
    if (s < nseg) f = {maps[2 * (row * nseg + s)], maps[2 * (row * nseg + s) + 1]};
    f = warp_suffix_scan(f, lane);
    if (lane == 0) {
      warp_alpha[warp] = f.alpha;
      warp_beta[warp] = f.beta;
    }
    __syncthreads();
    if (warp == 0) {
      AffineMap<acc_t> total = identity_map<acc_t>();
      if (lane < nwarps) total = {warp_alpha[lane], warp_beta[lane]};
      const AffineMap<acc_t> incl = warp_suffix_scan(total, lane);
      AffineMap<acc_t> excl = shfl_down_map(incl, 1);
      if (lane == kWarp - 1) excl = identity_map<acc_t>();
      if (lane < nwarps) {  // every lane has read its slot above (shuffles synchronise the warp)
        warp_alpha[lane] = excl.alpha;
        warp_beta[lane] = excl.beta;
      }
    }
    __syncthreads();
    const AffineMap<acc_t> later_warps = {warp_alpha[warp], warp_beta[warp]};
    const AffineMap<acc_t> suffix = compose(f, later_warps);  // f_s ∘ ... ∘ f_(chunk end)
    AffineMap<acc_t> after_me = shfl_down_map(suffix, 1);
    if (lane == kWarp - 1) after_me = later_warps;
    if (s < nseg) carries[row * nseg + s] = apply(after_me, x);
    __syncthreads();  // every thread has read warp_alpha/beta before they are reused
    if (tid == 0) chunk_start = apply(suffix, x);
    __syncthreads();
    x = chunk_start;
  }
}

int sm_count(int device) {
  static int cache[64] = {};
  if (device < 0 || device >= 64) device = 0;
  if (cache[device] == 0) {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    cache[device] = std::max(n, 1);
  }
  return cache[device];
}

std::tuple<at::Tensor, at::Tensor> gae_cuda(const at::Tensor& gamma, const at::Tensor& lmbda,
                                            const at::Tensor& value, const at::Tensor& next_value,
                                            const at::Tensor& reward, const at::Tensor& done,
                                            const at::Tensor& terminated) {
  check_gae_inputs(gamma, lmbda, value, next_value, reward, done, terminated);
  TORCH_CHECK(value.is_cuda(), "trpo_torchrl::gae (CUDA): state_value is on ", value.device());
  const c10::cuda::CUDAGuard guard(value.device());
  auto advantage = at::empty(value.sizes(), value.options());
  auto value_target = at::empty(value.sizes(), value.options());
  if (value.numel() == 0) return {advantage, value_target};

  const int64_t rows = value.size(0), T = value.size(1);
  const int64_t tiles = (T + kTile - 1) / kTile;
  // Enough warps to fill every SM; split rows into segments only when rows alone do not.
  const int64_t target_warps = static_cast<int64_t>(sm_count(value.get_device())) * 32;
  int64_t nseg = std::clamp<int64_t>((target_warps + rows - 1) / rows, 1, tiles);
  const int64_t tiles_per_seg = (tiles + nseg - 1) / nseg;
  nseg = (tiles + tiles_per_seg - 1) / tiles_per_seg;
  const int64_t seg_len = tiles_per_seg * kTile;
  const int64_t warps = rows * nseg;
  const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "trpo_torchrl::gae (CUDA): input too large: ", rows,
              " rows x ", T, " steps");
  const auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "gae_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto args = make_gae_args<scalar_t>(gamma, lmbda, value, next_value, reward, done,
                                              terminated, advantage, value_target);
    const dim3 block(kWarpsPerBlock * kWarp);
    if (nseg == 1) {
      gae_scan_kernel<scalar_t, acc_t><<<blocks, block, 0, stream>>>(args, seg_len, 1, nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
    const auto acc_options = value.options().dtype(at::toOpMathType(value.scalar_type()));
    auto maps = at::empty({rows, nseg, 2}, acc_options);
    auto carries = at::empty({rows, nseg}, acc_options);
    gae_segment_map_kernel<scalar_t, acc_t>
        <<<blocks, block, 0, stream>>>(args, seg_len, nseg, maps.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gae_segment_carry_kernel<acc_t><<<rows, kCarryThreads, 0, stream>>>(
        maps.const_data_ptr<acc_t>(), nseg, carries.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gae_scan_kernel<scalar_t, acc_t><<<blocks, block, 0, stream>>>(
        args, seg_len, nseg, carries.const_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {advantage, value_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(trpo_torchrl, CUDA, m) { m.impl("gae", &gae_cuda); }

}  // namespace trpo_torchrl
