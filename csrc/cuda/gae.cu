// trpo_torchrl::gae — CUDA kernels and the CUDA registration.
//
// One warp scans one stretch of one row, a tile of 32 lanes x kPerLane steps at a time, from the
// last tile backwards. Inside a tile each lane folds its steps into one affine map (gae.h), the
// warp combines the 32 maps with a suffix scan over shuffles, and each lane then rescans its own
// steps from its now-known right boundary. The lanes of a warp read neighbouring time steps, so
// loads are coalesced whenever time is the fastest-moving dimension.
//
// Two ways to read a row: the strided one takes any strides and dtype; the dense one (float and
// double whose rows have time stride 1 and 16-byte alignment, the common case) gives each lane
// one vector load per tensor for its kPerLane steps and keeps index arithmetic in 32 bits.
//
// Many rows: one warp per row, one launch. Too few rows to occupy the GPU (B = 1, T = 1e6): each
// row is cut into segments so that every SM has warps to run; three launches — each segment's map, a per-row
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
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include "common.cuh"
#include "gae.h"
#include "gae_args.h"

namespace trpo_torchrl {
namespace {

constexpr int kPerLane = 4;              // consecutive steps held by one lane
constexpr int kTile = kWarp * kPerLane;  // steps one warp covers per iteration
constexpr int kWarpsPerBlock = 8;
constexpr int kBlockThreads = kWarpsPerBlock * kWarp;
// Scan blocks resident per SM that the register budget must allow (__launch_bounds__): 4 x 256
// threads caps a thread at 64 registers, so 4096 one-warp rows fit in one wave on 132 SMs.
constexpr int kMinBlocksPerSm = 4;
constexpr int kResidentWarpsPerSm = kMinBlocksPerSm * kWarpsPerBlock;
// Rows are cut into segments only when they give fewer warps than this per SM: a split costs a
// second read of every input, which only pays when most of the GPU would otherwise sit idle.
constexpr int kSplitBelowWarpsPerSm = 8;
constexpr int kCarryThreads = 1024;

template <typename acc_t>
__device__ __forceinline__ AffineMap<acc_t> shfl_down_map(AffineMap<acc_t> f, int delta) {
  return {__shfl_down_sync(kFullMask, f.alpha, delta), __shfl_down_sync(kFullMask, f.beta, delta)};
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
// V(s) is not kept: the readers read it again when writing value_target (an L1 hit), which keeps
// the scan kernels within 64 registers (see kMinBlocksPerSm).
template <typename acc_t>
struct LaneSteps {
  acc_t delta[kPerLane];
  acc_t discount[kPerLane];

  __device__ __forceinline__ void set(int k, acc_t gamma, acc_t lmbda, acc_t v, acc_t nv, acc_t r, bool done,
                                      bool terminated) {
    delta[k] = gae_delta<acc_t>(r, v, nv, gamma, terminated);
    discount[k] = gae_discount<acc_t>(gamma, lmbda, done);
  }
  __device__ __forceinline__ void set_identity(int k) {
    delta[k] = acc_t(0);
    discount[k] = acc_t(1);
  }

  __device__ __forceinline__ AffineMap<acc_t> map() const {
    AffineMap<acc_t> f = identity_map<acc_t>();
#pragma unroll
    for (int k = kPerLane - 1; k >= 0; --k) f = compose<acc_t>({delta[k], discount[k]}, f);
    return f;
  }
};

// ---- Row readers. Each gives a lane's kPerLane steps from t (load) and writes its outputs
// (store); `full` says the whole tile lies before t_end, which the dense reader needs to use
// vector accesses. Steps >= t_end are never read or written.

// Any strides, any dtype: one scalar access per element, 64-bit offsets.
template <typename scalar_t>
struct StridedRow {
  using index_t = int64_t;
  using acc_t = at::opmath_type<scalar_t>;
  const GaeArgs<scalar_t>& a;
  int64_t row;

  __device__ __forceinline__ void load(LaneSteps<acc_t>& s, int64_t t, int64_t t_end, bool) const {
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      const int64_t tk = t + k;
      if (tk < t_end) {
        s.set(k, a.gamma[offset(a.s_gamma, row, tk)], a.lmbda[offset(a.s_lmbda, row, tk)],
              a.value[offset(a.s_value, row, tk)], a.next_value[offset(a.s_next_value, row, tk)],
              a.reward[offset(a.s_reward, row, tk)], a.done[offset(a.s_done, row, tk)],
              a.terminated[offset(a.s_terminated, row, tk)]);
      } else {
        s.set_identity(k);
      }
    }
  }
  __device__ __forceinline__ void store(const acc_t (&adv)[kPerLane], int64_t t, int64_t t_end, bool) const {
    // reads interleaved with writes: reading all 4 values first (the compiler cannot move them
    // past possibly aliasing writes itself) costs 3-6 more registers and spills under the cap
#pragma unroll
    for (int k = 0; k < kPerLane; ++k) {
      if (t + k < t_end) {
        const acc_t v = a.value[offset(a.s_value, row, t + k)];
        a.advantage[offset(a.s_advantage, row, t + k)] = static_cast<scalar_t>(adv[k]);
        a.value_target[offset(a.s_value_target, row, t + k)] = static_cast<scalar_t>(adv[k] + v);
      }
    }
  }
};

// Vector accesses for kPerLane = 4 consecutive, 16-byte aligned elements, through the read-only
// cache for inputs.
__device__ __forceinline__ void load4(const float* p, float (&o)[4]) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p));
  o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
}
__device__ __forceinline__ void load4(const double* p, double (&o)[4]) {
  const double2 lo = __ldg(reinterpret_cast<const double2*>(p));
  const double2 hi = __ldg(reinterpret_cast<const double2*>(p) + 1);
  o[0] = lo.x, o[1] = lo.y, o[2] = hi.x, o[3] = hi.y;
}
// 4 bools (one byte each, 4-byte aligned) in one 32-bit load; little-endian, so step k is byte k.
__device__ __forceinline__ void load4(const bool* p, bool (&o)[4]) {
  const unsigned bits = __ldg(reinterpret_cast<const unsigned*>(p));
  o[0] = (bits & 0xffu) != 0, o[1] = (bits & 0xff00u) != 0, o[2] = (bits & 0xff0000u) != 0,
  o[3] = (bits & 0xff000000u) != 0;
}
__device__ __forceinline__ void store4(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void store4(double* p, const double (&v)[4]) {
  reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
  reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
}

// float/double rows with time stride 1 whose every lane's 4 steps are 16-byte aligned (checked on
// the host). kUniform: gamma and lmbda are one scalar each (strides 0), read once per warp.
template <typename scalar_t, bool kUniform>
struct DenseRow {
  static_assert(std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>);
  static_assert(kPerLane == 4, "load4/store4 move 4 steps");
  using index_t = int;  // the host sends only T < 2^31 - kTile here
  using acc_t = scalar_t;
  const scalar_t* __restrict__ gamma;
  const scalar_t* __restrict__ lmbda;
  const scalar_t* __restrict__ value;
  const scalar_t* __restrict__ next_value;
  const scalar_t* __restrict__ reward;
  const bool* __restrict__ done;
  const bool* __restrict__ terminated;
  scalar_t* __restrict__ advantage;
  scalar_t* __restrict__ value_target;
  acc_t gamma0, lmbda0;  // kUniform only

  __device__ __forceinline__ DenseRow(const GaeArgs<scalar_t>& a, int64_t row)
      : gamma(a.gamma + row * a.s_gamma[0]),
        lmbda(a.lmbda + row * a.s_lmbda[0]),
        value(a.value + row * a.s_value[0]),
        next_value(a.next_value + row * a.s_next_value[0]),
        reward(a.reward + row * a.s_reward[0]),
        done(a.done + row * a.s_done[0]),
        terminated(a.terminated + row * a.s_terminated[0]),
        advantage(a.advantage + row * a.s_advantage[0]),
        value_target(a.value_target + row * a.s_value_target[0]),
        gamma0(kUniform ? __ldg(a.gamma) : acc_t(0)),
        lmbda0(kUniform ? __ldg(a.lmbda) : acc_t(0)) {}

  __device__ __forceinline__ void load(LaneSteps<acc_t>& s, int t, int t_end, bool full) const {
    if (full) {
      scalar_t g[4], l[4], v[4], nv[4], r[4];
      bool d[4], te[4];
      if constexpr (!kUniform) {
        load4(gamma + t, g);
        load4(lmbda + t, l);
      }
      load4(value + t, v);
      load4(next_value + t, nv);
      load4(reward + t, r);
      load4(done + t, d);
      load4(terminated + t, te);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        s.set(k, kUniform ? gamma0 : g[k], kUniform ? lmbda0 : l[k], v[k], nv[k], r[k], d[k], te[k]);
      }
      return;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int tk = t + k;
      if (tk < t_end) {
        s.set(k, kUniform ? gamma0 : gamma[tk], kUniform ? lmbda0 : lmbda[tk], value[tk], next_value[tk], reward[tk],
              done[tk], terminated[tk]);
      } else {
        s.set_identity(k);
      }
    }
  }
  __device__ __forceinline__ void store(const acc_t (&adv)[4], int t, int t_end, bool full) const {
    if (full) {
      scalar_t v[4], target[4];
      load4(value + t, v);
#pragma unroll
      for (int k = 0; k < 4; ++k) target[k] = adv[k] + v[k];
      store4(advantage + t, adv);
      store4(value_target + t, target);
      return;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (t + k < t_end) {
        advantage[t + k] = adv[k];
        value_target[t + k] = adv[k] + value[t + k];
      }
    }
  }
};

// Scans the tile starting at t0 (steps >= t_end ignored) from `carry`, the advantage just after
// the tile; writes outputs and returns the advantage at the tile's first step (in every lane).
template <typename Row, typename acc_t, typename index_t>
__device__ __forceinline__ acc_t scan_tile(const Row& rd, index_t t0, index_t t_end, acc_t carry, int lane) {
  LaneSteps<acc_t> s;
  const index_t lane_t0 = t0 + lane * kPerLane;
  const bool full = t0 + kTile <= t_end;  // the same in every lane: no divergence
  rd.load(s, lane_t0, t_end, full);
  const AffineMap<acc_t> suffix = warp_suffix_scan(s.map(), lane);
  const AffineMap<acc_t> after_me = shfl_down_map(suffix, 1);
  acc_t adv = lane == kWarp - 1 ? carry : apply(after_me, carry);
  acc_t out_adv[kPerLane];
#pragma unroll
  for (int k = kPerLane - 1; k >= 0; --k) {
    adv = s.delta[k] + adv * s.discount[k];
    out_adv[k] = adv;
  }
  rd.store(out_adv, lane_t0, t_end, full);
  // lane 0's last advantage is the one written at t0 (t0 < t_end always): passing it on keeps
  // A_{t0-1} = delta + c * A_{t0} exact across tiles, and saves recomputing it from the suffix
  return __shfl_sync(kFullMask, adv, 0);
}

// The affine map of the tile starting at t0 (in every lane).
template <typename Row, typename acc_t, typename index_t>
__device__ __forceinline__ AffineMap<acc_t> tile_map(const Row& rd, index_t t0, index_t t_end, int lane) {
  LaneSteps<acc_t> s;
  rd.load(s, t0 + lane * kPerLane, t_end, t0 + kTile <= t_end);
  const AffineMap<acc_t> suffix = warp_suffix_scan(s.map(), lane);
  return {__shfl_sync(kFullMask, suffix.alpha, 0), __shfl_sync(kFullMask, suffix.beta, 0)};
}

// The reader of row `row` for the layout chosen on the host.
enum class Layout { kStrided, kDense, kDenseUniform };

// Strided double needs more than 64 registers (it spilled ~60 bytes per thread under the cap), so
// it keeps 3 blocks per SM; every other variant fits 4 without spilling.
template <Layout L, typename acc_t>
constexpr int kMinBlocks = L == Layout::kStrided && sizeof(acc_t) == 8 ? 3 : kMinBlocksPerSm;

template <Layout L, typename scalar_t>
__device__ __forceinline__ auto make_row(const GaeArgs<scalar_t>& a, int64_t row) {
  if constexpr (L == Layout::kStrided) {
    return StridedRow<scalar_t>{a, row};
  } else {
    return DenseRow<scalar_t, L == Layout::kDenseUniform>(a, row);
  }
}

// Warp w scans segment (w % nseg) of row (w / nseg): steps [seg * seg_len, (seg+1) * seg_len),
// starting from carries[w] (or 0 when carries is null: one segment per row).
template <Layout L, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks<L, acc_t>)
    gae_scan_kernel(const GaeArgs<scalar_t> a, int64_t seg_len, int64_t nseg, const acc_t* __restrict__ carries) {
  const int lane = threadIdx.x % kWarp;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (w >= a.rows * nseg) return;  // whole warps exit together
  const int64_t row = w / nseg, seg = w % nseg;
  const auto rd = make_row<L>(a, row);
  using index_t = typename decltype(rd)::index_t;
  const index_t t_begin = static_cast<index_t>(seg * seg_len);
  const index_t t_end = static_cast<index_t>(min(a.T, seg * seg_len + seg_len));
  acc_t carry = carries == nullptr ? acc_t(0) : carries[w];
  for (index_t t0 = t_begin + (t_end - t_begin - 1) / kTile * kTile; t0 >= t_begin; t0 -= kTile) {
    carry = scan_tile(rd, t0, t_end, carry, lane);
  }
}

// maps[w] = (alpha, beta) of segment w, laid out as in gae_scan_kernel.
template <Layout L, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks<L, acc_t>)
    gae_segment_map_kernel(const GaeArgs<scalar_t> a, int64_t seg_len, int64_t nseg, acc_t* __restrict__ maps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t w = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (w >= a.rows * nseg) return;
  const int64_t row = w / nseg, seg = w % nseg;
  const auto rd = make_row<L>(a, row);
  using index_t = typename decltype(rd)::index_t;
  const index_t t_begin = static_cast<index_t>(seg * seg_len);
  const index_t t_end = static_cast<index_t>(min(a.T, seg * seg_len + seg_len));
  AffineMap<acc_t> f = identity_map<acc_t>();
  for (index_t t0 = t_begin + (t_end - t_begin - 1) / kTile * kTile; t0 >= t_begin; t0 -= kTile) {
    f = compose(tile_map<decltype(rd), acc_t>(rd, t0, t_end, lane), f);
  }
  if (lane == 0) {
    maps[2 * w] = f.alpha;
    maps[2 * w + 1] = f.beta;
  }
}

// One block per row: carries[row, s] = advantage just after segment s, i.e. the alpha of
// f_{s+1} ∘ ... ∘ f_{nseg-1}. In one pass: thread i owns `per` consecutive segments and folds
// them into one map, the block suffix-scans the 1024 thread maps, and each thread then walks its
// own segments right to left from the boundary the scan gave it.
template <typename acc_t>
__global__ void __launch_bounds__(kCarryThreads)
    gae_segment_carry_kernel(const acc_t* __restrict__ maps, int64_t nseg, acc_t* __restrict__ carries) {
  __shared__ acc_t warp_alpha[kCarryThreads / kWarp];
  __shared__ acc_t warp_beta[kCarryThreads / kWarp];
  const int64_t row = blockIdx.x;
  const acc_t* __restrict__ row_maps = maps + 2 * row * nseg;
  acc_t* __restrict__ row_carries = carries + row * nseg;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int nwarps = blockDim.x / kWarp;
  const int64_t per = (nseg + blockDim.x - 1) / blockDim.x;
  const int64_t s_begin = min(nseg, tid * per), s_end = min(nseg, s_begin + per);

  AffineMap<acc_t> mine = identity_map<acc_t>();  // f_{s_begin} ∘ ... ∘ f_{s_end-1}
  for (int64_t s = s_end - 1; s >= s_begin; --s) {
    mine = compose<acc_t>({row_maps[2 * s], row_maps[2 * s + 1]}, mine);
  }
  const AffineMap<acc_t> incl = warp_suffix_scan(mine, lane);
  if (lane == 0) {
    warp_alpha[warp] = incl.alpha;
    warp_beta[warp] = incl.beta;
  }
  __syncthreads();
  if (warp == 0) {  // exclusive suffix scan of the warp totals, in place
    AffineMap<acc_t> total = identity_map<acc_t>();
    if (lane < nwarps) total = {warp_alpha[lane], warp_beta[lane]};
    const AffineMap<acc_t> warps_incl = warp_suffix_scan(total, lane);
    AffineMap<acc_t> excl = shfl_down_map(warps_incl, 1);
    if (lane == kWarp - 1) excl = identity_map<acc_t>();
    if (lane < nwarps) {  // every lane has read its slot above (shuffles synchronise the warp)
      warp_alpha[lane] = excl.alpha;
      warp_beta[lane] = excl.beta;
    }
  }
  __syncthreads();
  const AffineMap<acc_t> later_warps = {warp_alpha[warp], warp_beta[warp]};
  AffineMap<acc_t> later_lanes = shfl_down_map(incl, 1);
  if (lane == kWarp - 1) later_lanes = identity_map<acc_t>();
  acc_t x = apply(compose(later_lanes, later_warps), acc_t(0));  // advantage after s_end - 1
  for (int64_t s = s_end - 1; s >= s_begin; --s) {
    row_carries[s] = x;
    x = apply<acc_t>({row_maps[2 * s], row_maps[2 * s + 1]}, x);
  }
}

// Whether `t` can be read by DenseRow: time stride 1, and every row start (hence, the segments
// starting at multiples of kTile, every lane's 4 steps) aligned for one vector access.
bool dense_rows(const at::Tensor& t, int64_t align_bytes) {
  const int64_t item = static_cast<int64_t>(t.element_size());
  return t.stride(1) == 1 && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % align_bytes == 0 &&
         (t.size(0) == 1 || (t.stride(0) * item) % align_bytes == 0);
}

Layout choose_layout(const at::Tensor& gamma, const at::Tensor& lmbda, const at::Tensor& value,
                     const at::Tensor& next_value, const at::Tensor& reward, const at::Tensor& done,
                     const at::Tensor& terminated, const at::Tensor& advantage, const at::Tensor& value_target) {
  const auto st = value.scalar_type();
  if (st != at::kFloat && st != at::kDouble) return Layout::kStrided;
  if (value.size(1) > std::numeric_limits<int>::max() - kTile) return Layout::kStrided;
  for (const at::Tensor* t : {&value, &next_value, &reward, &advantage, &value_target}) {
    if (!dense_rows(*t, 16)) return Layout::kStrided;
  }
  if (!dense_rows(done, 4) || !dense_rows(terminated, 4)) return Layout::kStrided;
  const bool uniform = gamma.stride(0) == 0 && gamma.stride(1) == 0 && lmbda.stride(0) == 0 && lmbda.stride(1) == 0;
  if (uniform) return Layout::kDenseUniform;
  if (dense_rows(gamma, 16) && dense_rows(lmbda, 16)) return Layout::kDense;
  return Layout::kStrided;
}

template <Layout L, typename scalar_t>
void launch(const GaeArgs<scalar_t>& args, int64_t rows, int64_t nseg, int64_t seg_len, int64_t blocks,
            const at::TensorOptions& acc_options, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  if (nseg == 1) {
    gae_scan_kernel<L, scalar_t, acc_t><<<blocks, kBlockThreads, 0, stream>>>(args, seg_len, 1, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  auto maps = at::empty({rows, nseg, 2}, acc_options);
  auto carries = at::empty({rows, nseg}, acc_options);
  gae_segment_map_kernel<L, scalar_t, acc_t>
      <<<blocks, kBlockThreads, 0, stream>>>(args, seg_len, nseg, maps.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  gae_segment_carry_kernel<acc_t>
      <<<rows, kCarryThreads, 0, stream>>>(maps.const_data_ptr<acc_t>(), nseg, carries.mutable_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  gae_scan_kernel<L, scalar_t, acc_t>
      <<<blocks, kBlockThreads, 0, stream>>>(args, seg_len, nseg, carries.const_data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> gae_cuda(const at::Tensor& gamma, const at::Tensor& lmbda, const at::Tensor& value,
                                            const at::Tensor& next_value, const at::Tensor& reward,
                                            const at::Tensor& done, const at::Tensor& terminated) {
  check_gae_inputs(gamma, lmbda, value, next_value, reward, done, terminated);
  TORCH_CHECK(value.is_cuda(), "trpo_torchrl::gae (CUDA): state_value is on ", value.device());
  const c10::cuda::CUDAGuard guard(value.device());
  auto advantage = at::empty(value.sizes(), value.options());
  auto value_target = at::empty(value.sizes(), value.options());
  if (value.numel() == 0) return {advantage, value_target};

  const int64_t rows = value.size(0), T = value.size(1);
  const int64_t tiles = (T + kTile - 1) / kTile;
  // Split rows into segments only when rows alone leave most SMs idle; then aim for a full GPU.
  const int64_t sms = sm_count(value.get_device());
  int64_t nseg = 1;
  if (rows < sms * kSplitBelowWarpsPerSm) {
    const int64_t target_warps = sms * kResidentWarpsPerSm;
    nseg = std::clamp<int64_t>((target_warps + rows - 1) / rows, 1, tiles);
  }
  const int64_t tiles_per_seg = (tiles + nseg - 1) / nseg;
  nseg = (tiles + tiles_per_seg - 1) / tiles_per_seg;
  const int64_t seg_len = tiles_per_seg * kTile;
  const int64_t warps = rows * nseg;
  const int64_t blocks = (warps + kWarpsPerBlock - 1) / kWarpsPerBlock;
  TORCH_CHECK(blocks < (int64_t{1} << 31), "trpo_torchrl::gae (CUDA): input too large: ", rows, " rows x ", T,
              " steps");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto acc_options = value.options().dtype(at::toOpMathType(value.scalar_type()));
  const Layout layout =
      choose_layout(gamma, lmbda, value, next_value, reward, done, terminated, advantage, value_target);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "gae_cuda", [&] {
    const auto args =
        make_gae_args<scalar_t>(gamma, lmbda, value, next_value, reward, done, terminated, advantage, value_target);
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
      if (layout == Layout::kDenseUniform) {
        return launch<Layout::kDenseUniform>(args, rows, nseg, seg_len, blocks, acc_options, stream);
      }
      if (layout == Layout::kDense) {
        return launch<Layout::kDense>(args, rows, nseg, seg_len, blocks, acc_options, stream);
      }
    }
    launch<Layout::kStrided>(args, rows, nseg, seg_len, blocks, acc_options, stream);
  });
  return {advantage, value_target};
}

}  // namespace

TORCH_LIBRARY_IMPL(trpo_torchrl, CUDA, m) {
  m.impl("gae", &gae_cuda);
}

}  // namespace trpo_torchrl
