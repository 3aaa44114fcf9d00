// trpo_torchrl::gae — the GAE backward scan: schema, CPU kernel, CPU registration.
//
// Inputs are [rows, T] views (the Python face moves time last and folds every other dimension
// into rows); any strides are accepted, so the caller never has to copy a non-contiguous input.
// Outputs are new contiguous [rows, T] tensors.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "gae.h"
#include "gae_args.h"

namespace trpo_torchrl {
namespace {

// Rows scanned together by one thread. Each row is a serial dependency chain (one multiply and
// one add per step); several independent rows in flight keep the FP units busy instead of
// waiting on the previous step's latency.
constexpr int kInterleave = 8;
// Time steps staged per block: the elementwise part (TD errors, discounts, value targets) runs
// over a block of contiguous steps, which the compiler vectorises, and only the recursion itself
// is serial. 8 rows x 128 steps x 2 buffers stays inside L1.
constexpr int kBlock = 128;

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
inline void load_step(const GaeArgs<scalar_t>& a, int64_t row, int64_t t, acc_t& delta, acc_t& discount) {
  const acc_t gamma = a.gamma[offset(a.s_gamma, row, t)];
  const acc_t lmbda = a.lmbda[offset(a.s_lmbda, row, t)];
  const acc_t v = a.value[offset(a.s_value, row, t)];
  const acc_t nv = a.next_value[offset(a.s_next_value, row, t)];
  const acc_t r = a.reward[offset(a.s_reward, row, t)];
  delta = gae_delta<acc_t>(r, v, nv, gamma, a.terminated[offset(a.s_terminated, row, t)]);
  discount = gae_discount<acc_t>(gamma, lmbda, a.done[offset(a.s_done, row, t)]);
}

// Scans steps [t_begin, t_end) of rows row0 .. row0+n-1 (n <= kInterleave) backwards, starting
// from carry[i], the advantage just after t_end; writes outputs.
//   kContiguous: every tensor has time stride 1 (the loads then vectorise);
//   kUniform:    gamma and lmbda are one scalar each (stride 0), read once.
template <typename scalar_t, bool kContiguous, bool kUniform>
void scan_rows(const GaeArgs<scalar_t>& a, int64_t row0, int n, int64_t t_begin, int64_t t_end,
               const at::opmath_type<scalar_t>* carry) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t delta[kInterleave][kBlock];  // TD errors, then (in place) advantages
  acc_t discount[kInterleave][kBlock];
  acc_t adv[kInterleave];
  for (int i = 0; i < n; ++i) adv[i] = carry[i];
  const acc_t g0 = a.gamma[offset(a.s_gamma, row0, 0)];
  const acc_t lg0 = a.lmbda[offset(a.s_lmbda, row0, 0)] * g0;
  auto ts = [](const int64_t* s) { return kContiguous ? int64_t{1} : s[1]; };

  for (int64_t hi = t_end; hi > t_begin; hi -= kBlock) {
    const int64_t lo = std::max(t_begin, hi - kBlock);
    const int len = static_cast<int>(hi - lo);
    for (int i = 0; i < n; ++i) {
      const int64_t row = row0 + i;
      const scalar_t* __restrict__ v = a.value + row * a.s_value[0] + lo * ts(a.s_value);
      const scalar_t* __restrict__ nv = a.next_value + row * a.s_next_value[0] + lo * ts(a.s_next_value);
      const scalar_t* __restrict__ r = a.reward + row * a.s_reward[0] + lo * ts(a.s_reward);
      const uint8_t* __restrict__ d = reinterpret_cast<const uint8_t*>(a.done + row * a.s_done[0] + lo * ts(a.s_done));
      const uint8_t* __restrict__ te =
          reinterpret_cast<const uint8_t*>(a.terminated + row * a.s_terminated[0] + lo * ts(a.s_terminated));
      acc_t* __restrict__ delta_i = delta[i];
      acc_t* __restrict__ discount_i = discount[i];
#pragma GCC ivdep
      for (int k = 0; k < len; ++k) {
        if constexpr (kUniform) {
          // flags as 0/1 factors rather than selects, so the loop vectorises; gamma * 1 and
          // gamma * 0 are exact, so the rounding matches gae_delta / gae_discount
          const acc_t not_term = acc_t(1) - static_cast<acc_t>(te[k * ts(a.s_terminated)]);
          const acc_t not_done = acc_t(1) - static_cast<acc_t>(d[k * ts(a.s_done)]);
          delta_i[k] = static_cast<acc_t>(r[k * ts(a.s_reward)]) +
                       (g0 * not_term) * static_cast<acc_t>(nv[k * ts(a.s_next_value)]) -
                       static_cast<acc_t>(v[k * ts(a.s_value)]);
          discount_i[k] = lg0 * not_done;
        } else {
          load_step<scalar_t>(a, row, lo + k, delta_i[k], discount_i[k]);
        }
      }
    }
    if (lo > t_begin && kContiguous) {
      // the next block (earlier in time) is read right after this one's serial scan: ask for it
      // now, while the scan keeps the core busy
      const int64_t plo = std::max(t_begin, lo - kBlock);
      for (int i = 0; i < n; ++i) {
        const int64_t row = row0 + i;
        for (int64_t t = plo; t < lo; t += 64 / static_cast<int64_t>(sizeof(scalar_t))) {
          __builtin_prefetch(a.value + row * a.s_value[0] + t);
          __builtin_prefetch(a.next_value + row * a.s_next_value[0] + t);
          __builtin_prefetch(a.reward + row * a.s_reward[0] + t);
        }
        for (int64_t t = plo; t < lo; t += 64) {
          __builtin_prefetch(a.done + row * a.s_done[0] + t);
          __builtin_prefetch(a.terminated + row * a.s_terminated[0] + t);
        }
      }
    }
    if (n == kInterleave) {
      for (int k = len - 1; k >= 0; --k) {
#pragma GCC unroll 8
        for (int i = 0; i < kInterleave; ++i) {
          adv[i] = delta[i][k] + adv[i] * discount[i][k];
          delta[i][k] = adv[i];
        }
      }
    } else {
      for (int k = len - 1; k >= 0; --k) {
        for (int i = 0; i < n; ++i) {
          adv[i] = delta[i][k] + adv[i] * discount[i][k];
          delta[i][k] = adv[i];
        }
      }
    }
    for (int i = 0; i < n; ++i) {
      const int64_t row = row0 + i;
      const scalar_t* __restrict__ v = a.value + row * a.s_value[0] + lo * ts(a.s_value);
      scalar_t* __restrict__ out_a = a.advantage + row * a.s_advantage[0] + lo * ts(a.s_advantage);
      scalar_t* __restrict__ out_v = a.value_target + row * a.s_value_target[0] + lo * ts(a.s_value_target);
      const acc_t* __restrict__ adv_i = delta[i];
#pragma GCC ivdep
      for (int k = 0; k < len; ++k) {
        out_a[k * ts(a.s_advantage)] = static_cast<scalar_t>(adv_i[k]);
        out_v[k * ts(a.s_value_target)] = static_cast<scalar_t>(adv_i[k] + static_cast<acc_t>(v[k * ts(a.s_value)]));
      }
    }
  }
}

template <typename scalar_t>
void scan_rows_any(const GaeArgs<scalar_t>& a, int64_t row0, int n, int64_t t_begin, int64_t t_end,
                   const at::opmath_type<scalar_t>* carry) {
  const bool contiguous = a.s_value[1] == 1 && a.s_next_value[1] == 1 && a.s_reward[1] == 1 && a.s_done[1] == 1 &&
                          a.s_terminated[1] == 1 && a.s_advantage[1] == 1 && a.s_value_target[1] == 1;
  const bool uniform = a.s_gamma[0] == 0 && a.s_gamma[1] == 0 && a.s_lmbda[0] == 0 && a.s_lmbda[1] == 0;
  if (contiguous && uniform) {
    scan_rows<scalar_t, true, true>(a, row0, n, t_begin, t_end, carry);
  } else if (uniform) {
    scan_rows<scalar_t, false, true>(a, row0, n, t_begin, t_end, carry);
  } else {
    scan_rows<scalar_t, false, false>(a, row0, n, t_begin, t_end, carry);
  }
}

// The affine map of steps [t_begin, t_end) of one row (nothing written).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
AffineMap<acc_t> chunk_map(const GaeArgs<scalar_t>& a, int64_t row, int64_t t_begin, int64_t t_end) {
  AffineMap<acc_t> f = identity_map<acc_t>();
  for (int64_t t = t_end - 1; t >= t_begin; --t) {
    AffineMap<acc_t> step;
    load_step<scalar_t>(a, row, t, step.alpha, step.beta);
    f = compose<acc_t>(step, f);
  }
  return f;
}

template <typename scalar_t>
void gae_cpu_kernel(const GaeArgs<scalar_t>& a) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t threads = at::get_num_threads();
  // Few long rows: cut time into chunks so every thread has work. Each chunk's affine map is
  // found in parallel, the maps are chained right to left per row (cheap: one per chunk), and
  // each chunk is then rescanned from its now-known right boundary.
  constexpr int64_t kMinChunk = 1 << 14;
  if (a.rows < threads && a.T >= 2 * kMinChunk) {
    const int64_t chunks_per_row = std::min<int64_t>((threads + a.rows - 1) / a.rows * 4, a.T / kMinChunk);
    const int64_t len = (a.T + chunks_per_row - 1) / chunks_per_row;
    const int64_t total = a.rows * chunks_per_row;
    std::vector<AffineMap<acc_t>> maps(total);
    at::parallel_for(0, total, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const int64_t row = j / chunks_per_row, c = j % chunks_per_row;
        maps[j] = chunk_map<scalar_t>(a, row, c * len, std::min(a.T, (c + 1) * len));
      }
    });
    std::vector<acc_t> carry(total);  // advantage just after each chunk
    for (int64_t row = 0; row < a.rows; ++row) {
      acc_t next = 0;
      for (int64_t c = chunks_per_row - 1; c >= 0; --c) {
        carry[row * chunks_per_row + c] = next;
        next = apply(maps[row * chunks_per_row + c], next);
      }
    }
    at::parallel_for(0, total, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin; j < end; ++j) {
        const int64_t row = j / chunks_per_row, c = j % chunks_per_row;
        scan_rows_any<scalar_t>(a, row, 1, c * len, std::min(a.T, (c + 1) * len), &carry[j]);
      }
    });
    return;
  }
  // Many rows: each thread scans whole rows, kInterleave at a time.
  const int64_t groups = (a.rows + kInterleave - 1) / kInterleave;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, a.T * kInterleave));
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    const acc_t zeros[kInterleave] = {};
    for (int64_t g = begin; g < end; ++g) {
      const int64_t row = g * kInterleave;
      const int n = static_cast<int>(std::min<int64_t>(kInterleave, a.rows - row));
      scan_rows_any<scalar_t>(a, row, n, 0, a.T, zeros);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> gae_cpu(const at::Tensor& gamma, const at::Tensor& lmbda, const at::Tensor& value,
                                           const at::Tensor& next_value, const at::Tensor& reward,
                                           const at::Tensor& done, const at::Tensor& terminated) {
  check_gae_inputs(gamma, lmbda, value, next_value, reward, done, terminated);
  TORCH_CHECK(value.device().is_cpu(), "trpo_torchrl::gae (CPU): state_value is on ", value.device());
  auto advantage = at::empty(value.sizes(), value.options());
  auto value_target = at::empty(value.sizes(), value.options());
  if (value.numel() == 0) return {advantage, value_target};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "gae_cpu", [&] {
    const auto args =
        make_gae_args<scalar_t>(gamma, lmbda, value, next_value, reward, done, terminated, advantage, value_target);
    gae_cpu_kernel<scalar_t>(args);
  });
  return {advantage, value_target};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(trpo_torchrl, m) {
  m.def(
      "gae(Tensor gamma, Tensor lmbda, Tensor state_value, Tensor next_state_value, "
      "Tensor reward, Tensor done, Tensor terminated) -> (Tensor advantage, Tensor value_target)");
}

TORCH_LIBRARY_IMPL(trpo_torchrl, CPU, m) {
  m.impl("gae", &gae_cpu);
}

}  // namespace trpo_torchrl
