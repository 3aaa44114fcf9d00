// trpo_torchrl::cg_step — one masked, batched conjugate-gradient iteration: schema, CPU kernel,
// CPU registration.
//
// The caller forms Ap = A p (any operator) and then calls this op, which does all the vector
// work of the iteration in place on [B, n] contiguous rows: the dots p.Ap and r.r, the updates
// of x, r and p, and the per-system state (rdotr, iterations, converged, breakdown). Nothing is
// read back to the host, so a solver built on it has no synchronisation point per iteration.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "cg.h"
#include "cg_args.h"

namespace trpo_torchrl {
namespace {

// Independent partial sums: they let the compiler vectorise the dot (a single accumulator is a
// serial chain) and make float32 sums over 1e6 terms noticeably more accurate.
constexpr int kLanes = 8;

template <typename scalar_t, typename acc_t>
acc_t dot(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n) {
  acc_t acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma GCC unroll 8
    for (int k = 0; k < kLanes; ++k) acc[k] += static_cast<acc_t>(a[i + k]) * b[i + k];
  }
  for (; i < n; ++i) acc[0] += static_cast<acc_t>(a[i]) * b[i];
  acc_t s = 0;
  for (int k = 0; k < kLanes; ++k) s += acc[k];
  return s;
}

template <typename scalar_t>
void cg_step_row(scalar_t* __restrict__ x, scalar_t* __restrict__ r, scalar_t* __restrict__ p,
                 const scalar_t* __restrict__ Ap, int64_t n, scalar_t& rdotr, int64_t& iterations, bool& converged,
                 bool& breakdown, double residual_tol) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool active = !converged && !breakdown;
  const acc_t rr = rdotr;
  acc_t alpha;
  const CgStatus status = cg_decide<acc_t>(active, active ? dot<scalar_t, acc_t>(p, Ap, n) : acc_t(0), rr, alpha);
  if (status != kCgStep) {
    if (status == kCgBreakdown) breakdown = true;
    std::fill(p, p + n, scalar_t(0));
    return;
  }
  // x and r in one pass, r.r accumulated on the fly while the new r is still in registers
  acc_t acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma GCC unroll 8
    for (int k = 0; k < kLanes; ++k) {
      x[i + k] = static_cast<scalar_t>(x[i + k] + alpha * p[i + k]);
      const scalar_t rn = static_cast<scalar_t>(r[i + k] - alpha * Ap[i + k]);
      r[i + k] = rn;
      acc[k] += static_cast<acc_t>(rn) * rn;
    }
  }
  for (; i < n; ++i) {
    x[i] = static_cast<scalar_t>(x[i] + alpha * p[i]);
    const scalar_t rn = static_cast<scalar_t>(r[i] - alpha * Ap[i]);
    r[i] = rn;
    acc[0] += static_cast<acc_t>(rn) * rn;
  }
  acc_t new_rr = 0;
  for (int k = 0; k < kLanes; ++k) new_rr += acc[k];
  const bool done = new_rr <= static_cast<acc_t>(residual_tol);
  rdotr = static_cast<scalar_t>(new_rr);
  iterations += 1;
  converged = done;
  if (done) {
    std::fill(p, p + n, scalar_t(0));
  } else {
    const acc_t beta = new_rr / rr;
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) p[j] = static_cast<scalar_t>(r[j] + beta * p[j]);
  }
}

void cg_step_cpu(at::Tensor& x, at::Tensor& r, at::Tensor& p, const at::Tensor& Ap, at::Tensor& rdotr,
                 at::Tensor& iterations, at::Tensor& converged, at::Tensor& breakdown, double residual_tol) {
  check_cg_step_inputs(x, r, p, Ap, rdotr, iterations, converged, breakdown);
  TORCH_CHECK(x.device().is_cpu(), "trpo_torchrl::cg_step (CPU): x is on ", x.device());
  const int64_t B = x.size(0), n = x.size(1);
  if (B == 0) return;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cg_step_cpu", [&] {
    scalar_t* xp = x.mutable_data_ptr<scalar_t>();
    scalar_t* rp = r.mutable_data_ptr<scalar_t>();
    scalar_t* pp = p.mutable_data_ptr<scalar_t>();
    const scalar_t* App = Ap.const_data_ptr<scalar_t>();
    scalar_t* rr = rdotr.mutable_data_ptr<scalar_t>();
    int64_t* it = iterations.mutable_data_ptr<int64_t>();
    bool* conv = converged.mutable_data_ptr<bool>();
    bool* brk = breakdown.mutable_data_ptr<bool>();
    // Systems are independent: one thread takes whole rows. Rows are grouped so that a thread
    // gets at least ~256k elements: below that, waking a second thread costs more than it saves
    // (and far more when the cores are shared with other processes).
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(n, 1));
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        cg_step_row<scalar_t>(xp + b * n, rp + b * n, pp + b * n, App + b * n, n, rr[b], it[b], conv[b], brk[b],
                              residual_tol);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(trpo_torchrl, m) {
  m.def(
      "cg_step(Tensor(a!) x, Tensor(b!) r, Tensor(c!) p, Tensor Ap, Tensor(d!) rdotr, "
      "Tensor(e!) iterations, Tensor(f!) converged, Tensor(g!) breakdown, float residual_tol) -> ()");
}

TORCH_LIBRARY_IMPL(trpo_torchrl, CPU, m) {
  m.impl("cg_step", &cg_step_cpu);
}

}  // namespace trpo_torchrl
