// trpo_torchrl's own tanh for float32 on the CPU (see tanh_vec.inc): faster than ATen's, at most
// 2.25 ulp from the exact value (benchmarks/tanh.py times the two; tests/test_tanh.py checks the
// error). The critic fit and the policy's line search spend much of their time in tanh.
#pragma once

#include <cstdint>

namespace trpo_torchrl {

// out[i] = tanh(in[i]) for i < n; in == out is allowed. Picks the widest vector unit the CPU has.
void tanh_float(const float* in, float* out, int64_t n);

}  // namespace trpo_torchrl
