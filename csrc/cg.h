// Conjugate-gradient step math shared by the CPU and CUDA kernels.
//
// One masked CG iteration on system b, after the caller has formed Ap = A p:
//   active  = !converged && !breakdown
//   alpha   = rdotr / (p . Ap)
//   bad     = active && !(p . Ap > 0, finite, and alpha finite)   -> breakdown, x and r untouched
//   step    = active && !bad                                      -> x += alpha p, r -= alpha Ap
//   new_rr  = r . r;  converged |= step && new_rr <= tol
//   p       = (step && !converged) ? r + (new_rr / rdotr) p : 0
// A system that stops (converged or broken down) gets p = 0 so that the caller's next matvec sees
// a harmless zero vector instead of whatever (possibly non-finite) direction it stopped on.
#pragma once

#include <cmath>
#include <cstdint>

#ifndef TRPO_HD
#if defined(__CUDACC__)
#define TRPO_HD __host__ __device__ __forceinline__
#else
#define TRPO_HD inline
#endif
#endif

namespace trpo_torchrl {

// What one iteration does to one system; the CUDA kernels pass it between launches as an int.
enum CgStatus : int32_t { kCgIdle = 0, kCgBreakdown = 1, kCgStep = 2 };

template <typename acc_t>
TRPO_HD bool cg_finite(acc_t v) {
#if defined(__CUDA_ARCH__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// Decides the fate of one system from p.Ap and the current r.r; sets alpha when it steps.
template <typename acc_t>
TRPO_HD CgStatus cg_decide(bool active, acc_t pAp, acc_t rdotr, acc_t& alpha) {
  alpha = acc_t(0);
  if (!active) return kCgIdle;
  // `pAp > 0` is false for NaN, so a NaN curvature is a breakdown too
  if (!(pAp > acc_t(0)) || !cg_finite(pAp)) return kCgBreakdown;
  const acc_t a = rdotr / pAp;
  if (!cg_finite(a)) return kCgBreakdown;  // pAp so small that the step overflows
  alpha = a;
  return kCgStep;
}

}  // namespace trpo_torchrl
