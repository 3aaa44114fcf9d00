// trpo_torchrl::cg_step — CUDA kernels and the CUDA registration.
//
// The [B, n] rows are cut into C chunks; block (c, b) owns chunk c of system b. One iteration is
// three launches whatever B is:
//   1. dot:       partial_pAp[b, c] = sum over the chunk of p * Ap
//   2. update_xr: every block sums partial_pAp[b, :] (fixed order, so every block of a system
//                 gets the same bits and makes the same decision), then updates its chunk of x
//                 and r and writes partial_rr[b, c] = sum of the new r^2. Block c = 0 records the
//                 decision and the old r.r in scratch for launch 3.
//   3. update_p:  every block sums partial_rr[b, :], forms beta and updates its chunk of p;
//                 block c = 0 writes the per-system state.
// The per-system state (rdotr, converged, breakdown) is only read in launch 2 and only written
// in launch 3, so no block can read a value another block of the same launch has overwritten.
// Nothing is copied to the host: the op can be captured in a CUDA graph.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "cg.h"
#include "cg_args.h"
#include "common.cuh"

namespace trpo_torchrl {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxChunks = 1024;
// Fewer elements than this per block and the block spends more time reducing than streaming.
constexpr int64_t kMinChunk = 1024;

// Sum of a system's C partials, in an order that depends only on C: identical in every block.
template <typename acc_t>
__device__ __forceinline__ acc_t sum_partials(const acc_t* __restrict__ part, int C, acc_t* smem) {
  acc_t v = acc_t(0);
  for (int i = threadIdx.x; i < C; i += kThreads) v += part[i];
  return block_sum<kThreads>(v, smem);
}

struct Chunk {
  int64_t begin, end;
};

__device__ __forceinline__ Chunk chunk_of(int64_t n, int64_t chunk) {
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * chunk;
  return {begin, min(n, begin + chunk)};
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    cg_dot_kernel(const scalar_t* __restrict__ p, const scalar_t* __restrict__ Ap, int64_t n, int64_t chunk,
                  acc_t* __restrict__ partial_pAp) {
  __shared__ acc_t smem[kThreads / kWarp];
  const int64_t b = blockIdx.y;
  const Chunk ck = chunk_of(n, chunk);
  const scalar_t* pb = p + b * n;
  const scalar_t* Apb = Ap + b * n;
  acc_t v = acc_t(0);
  for (int64_t i = ck.begin + threadIdx.x; i < ck.end; i += kThreads) {
    v += static_cast<acc_t>(pb[i]) * static_cast<acc_t>(Apb[i]);
  }
  v = block_sum<kThreads>(v, smem);
  if (threadIdx.x == 0) partial_pAp[b * gridDim.x + blockIdx.x] = v;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    cg_update_xr_kernel(scalar_t* __restrict__ x, scalar_t* __restrict__ r, const scalar_t* __restrict__ p,
                        const scalar_t* __restrict__ Ap, int64_t n, int64_t chunk, const scalar_t* __restrict__ rdotr,
                        const bool* __restrict__ converged, const bool* __restrict__ breakdown,
                        const acc_t* __restrict__ partial_pAp, acc_t* __restrict__ partial_rr,
                        int32_t* __restrict__ status, acc_t* __restrict__ old_rr) {
  __shared__ acc_t smem[kThreads / kWarp];
  const int64_t b = blockIdx.y;
  const int C = gridDim.x;
  const bool active = !converged[b] && !breakdown[b];
  const acc_t pAp = sum_partials(partial_pAp + b * C, C, smem);
  const acc_t rr = rdotr[b];
  acc_t alpha;
  const CgStatus st = cg_decide<acc_t>(active, pAp, rr, alpha);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    status[b] = st;
    old_rr[b] = rr;
  }
  if (st != kCgStep) return;  // the whole block agrees, so no thread is left at a barrier
  const Chunk ck = chunk_of(n, chunk);
  scalar_t* xb = x + b * n;
  scalar_t* rb = r + b * n;
  const scalar_t* pb = p + b * n;
  const scalar_t* Apb = Ap + b * n;
  acc_t v = acc_t(0);
  for (int64_t i = ck.begin + threadIdx.x; i < ck.end; i += kThreads) {
    xb[i] = static_cast<scalar_t>(xb[i] + alpha * pb[i]);
    const scalar_t rn = static_cast<scalar_t>(rb[i] - alpha * Apb[i]);
    rb[i] = rn;
    v += static_cast<acc_t>(rn) * rn;
  }
  v = block_sum<kThreads>(v, smem);
  if (threadIdx.x == 0) partial_rr[b * C + blockIdx.x] = v;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    cg_update_p_kernel(const scalar_t* __restrict__ r, scalar_t* __restrict__ p, int64_t n, int64_t chunk,
                       const acc_t* __restrict__ partial_rr, const int32_t* __restrict__ status,
                       const acc_t* __restrict__ old_rr, acc_t residual_tol, scalar_t* __restrict__ rdotr,
                       int64_t* __restrict__ iterations, bool* __restrict__ converged, bool* __restrict__ breakdown) {
  __shared__ acc_t smem[kThreads / kWarp];
  const int64_t b = blockIdx.y;
  const int C = gridDim.x;
  const int32_t st = status[b];
  bool keep_going = false;
  acc_t beta = acc_t(0);
  if (st == kCgStep) {
    const acc_t new_rr = sum_partials(partial_rr + b * C, C, smem);
    const bool done = new_rr <= residual_tol;
    keep_going = !done;
    beta = new_rr / old_rr[b];
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      rdotr[b] = static_cast<scalar_t>(new_rr);
      iterations[b] += 1;
      converged[b] = done;
    }
  } else if (st == kCgBreakdown && blockIdx.x == 0 && threadIdx.x == 0) {
    breakdown[b] = true;
  }
  const Chunk ck = chunk_of(n, chunk);
  const scalar_t* rb = r + b * n;
  scalar_t* pb = p + b * n;
  if (keep_going) {
    for (int64_t i = ck.begin + threadIdx.x; i < ck.end; i += kThreads) {
      pb[i] = static_cast<scalar_t>(rb[i] + beta * pb[i]);
    }
  } else {
    for (int64_t i = ck.begin + threadIdx.x; i < ck.end; i += kThreads) pb[i] = scalar_t(0);
  }
}

void cg_step_cuda(at::Tensor& x, at::Tensor& r, at::Tensor& p, const at::Tensor& Ap, at::Tensor& rdotr,
                  at::Tensor& iterations, at::Tensor& converged, at::Tensor& breakdown, double residual_tol) {
  check_cg_step_inputs(x, r, p, Ap, rdotr, iterations, converged, breakdown);
  TORCH_CHECK(x.is_cuda(), "trpo_torchrl::cg_step (CUDA): x is on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), n = x.size(1);
  if (B == 0) return;
  TORCH_CHECK(B <= 65535, "trpo_torchrl::cg_step (CUDA): at most 65535 systems per call, got ", B);
  // Enough blocks to keep every SM busy (about 4 per SM), but no chunk shorter than kMinChunk:
  // for B = 64 a handful of chunks per system suffices, for B = 1 and n = 1e6 it takes hundreds.
  const int64_t target_blocks = 4 * static_cast<int64_t>(sm_count(x.get_device()));
  const int64_t by_occupancy = (target_blocks + B - 1) / B;
  const int64_t by_size = std::max<int64_t>(1, (n + kMinChunk - 1) / kMinChunk);
  int64_t C = std::clamp<int64_t>(std::min(by_occupancy, by_size), 1, kMaxChunks);
  const int64_t chunk = std::max<int64_t>(1, (n + C - 1) / C);
  C = std::max<int64_t>(1, (n + chunk - 1) / chunk);  // no empty trailing chunk
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>(B));

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cg_step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // one scratch allocation (stream-ordered by the caching allocator, so graph-capture safe):
    // partial_pAp [B, C], partial_rr [B, C], old_rr [B]
    auto scratch = at::empty({B * (2 * C + 1)}, x.options().dtype(at::toOpMathType(x.scalar_type())));
    auto status = at::empty({B}, x.options().dtype(at::kInt));
    acc_t* partial_pAp = scratch.mutable_data_ptr<acc_t>();
    acc_t* partial_rr = partial_pAp + B * C;
    acc_t* old_rr = partial_rr + B * C;
    int32_t* st = status.mutable_data_ptr<int32_t>();
    cg_dot_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(p.const_data_ptr<scalar_t>(),
                                                                  Ap.const_data_ptr<scalar_t>(), n, chunk, partial_pAp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cg_update_xr_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        x.mutable_data_ptr<scalar_t>(), r.mutable_data_ptr<scalar_t>(), p.const_data_ptr<scalar_t>(),
        Ap.const_data_ptr<scalar_t>(), n, chunk, rdotr.const_data_ptr<scalar_t>(), converged.const_data_ptr<bool>(),
        breakdown.const_data_ptr<bool>(), partial_pAp, partial_rr, st, old_rr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cg_update_p_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        r.const_data_ptr<scalar_t>(), p.mutable_data_ptr<scalar_t>(), n, chunk, partial_rr, st, old_rr,
        static_cast<acc_t>(residual_tol), rdotr.mutable_data_ptr<scalar_t>(), iterations.mutable_data_ptr<int64_t>(),
        converged.mutable_data_ptr<bool>(), breakdown.mutable_data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(trpo_torchrl, CUDA, m) {
  m.impl("cg_step", &cg_step_cuda);
}

}  // namespace trpo_torchrl
