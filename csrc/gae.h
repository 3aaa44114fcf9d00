// GAE math shared by the CPU and CUDA kernels.
//
// The backward recursion A_t = delta_t + c_t * A_{t+1} is affine in A_{t+1}. A run of steps
// therefore composes into one map x -> alpha + beta * x (x = the advantage just after the run),
// which is what lets a long trajectory be cut into chunks that are solved independently and
// stitched together afterwards.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define TRPO_HD __host__ __device__ __forceinline__
#else
#define TRPO_HD inline
#endif

namespace trpo_torchrl {

template <typename acc_t>
struct AffineMap {
  acc_t alpha;  // value of the run's first advantage when the advantage after the run is 0
  acc_t beta;   // product of the run's discounts c_t
};

template <typename acc_t>
TRPO_HD AffineMap<acc_t> identity_map() {
  return {acc_t(0), acc_t(1)};
}

// earlier ∘ later: the map of a run made of `earlier` followed in time by `later`.
template <typename acc_t>
TRPO_HD AffineMap<acc_t> compose(AffineMap<acc_t> earlier, AffineMap<acc_t> later) {
  return {earlier.alpha + earlier.beta * later.alpha, earlier.beta * later.beta};
}

template <typename acc_t>
TRPO_HD acc_t apply(AffineMap<acc_t> f, acc_t x) {
  return f.alpha + f.beta * x;
}

// One time step's TD error and discount, in the operation order of torchrl's
// generalized_advantage_estimate (so float64 results agree to rounding):
//   delta = r + (gamma * not_terminated) * V(s') - V(s);   c = (lmbda * gamma) * not_done
template <typename acc_t>
TRPO_HD acc_t gae_delta(acc_t reward, acc_t value, acc_t next_value, acc_t gamma, bool terminated) {
  return reward + (terminated ? acc_t(0) : gamma) * next_value - value;
}

template <typename acc_t>
TRPO_HD acc_t gae_discount(acc_t gamma, acc_t lmbda, bool done) {
  return done ? acc_t(0) : lmbda * gamma;
}

// Inputs and outputs of one GAE call, all viewed as [rows, T] with arbitrary strides (in
// elements). gamma and lmbda may have stride 0 (a scalar broadcast over the batch).
template <typename scalar_t>
struct GaeArgs {
  const scalar_t* gamma;
  const scalar_t* lmbda;
  const scalar_t* value;
  const scalar_t* next_value;
  const scalar_t* reward;
  const bool* done;
  const bool* terminated;
  scalar_t* advantage;
  scalar_t* value_target;
  int64_t rows;
  int64_t T;
  // strides [row, time] of each tensor, in the order of the pointers above
  int64_t s_gamma[2], s_lmbda[2], s_value[2], s_next_value[2], s_reward[2], s_done[2], s_terminated[2], s_advantage[2],
      s_value_target[2];
};

TRPO_HD int64_t offset(const int64_t* s, int64_t row, int64_t t) {
  return row * s[0] + t * s[1];
}

}  // namespace trpo_torchrl
