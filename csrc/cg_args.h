// Host-side argument checks of the cg_step op, shared by the CPU and CUDA registrations so both
// reject the same inputs with the same messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <utility>

namespace trpo_torchrl {

inline void check_cg_step_inputs(const at::Tensor& x, const at::Tensor& r, const at::Tensor& p, const at::Tensor& Ap,
                                 const at::Tensor& rdotr, const at::Tensor& iterations, const at::Tensor& converged,
                                 const at::Tensor& breakdown) {
  TORCH_CHECK(x.dim() == 2, "trpo_torchrl::cg_step: x must be 2-D [B, n], got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "trpo_torchrl::cg_step: x must be float32 or float64, got ", x.scalar_type());
  // The kernels walk rows with unit stride; the Python face owns x, r, p and makes Ap
  // contiguous, so requiring it here costs the caller nothing.
  const std::pair<const char*, const at::Tensor*> vecs[] = {{"x", &x}, {"r", &r}, {"p", &p}, {"Ap", &Ap}};
  for (const auto& [name, t] : vecs) {
    TORCH_CHECK(t->sizes() == x.sizes(), "trpo_torchrl::cg_step: ", name, " has shape ", t->sizes(),
                " but x has shape ", x.sizes());
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "trpo_torchrl::cg_step: ", name, " has dtype ", t->scalar_type(),
                " but x has dtype ", x.scalar_type());
    TORCH_CHECK(t->device() == x.device(), "trpo_torchrl::cg_step: ", name, " is on ", t->device(), " but x is on ",
                x.device());
    TORCH_CHECK(t->is_contiguous(), "trpo_torchrl::cg_step: ", name, " must be contiguous");
  }
  const int64_t B = x.size(0);
  const std::pair<const char*, const at::Tensor*> state[] = {
      {"rdotr", &rdotr}, {"iterations", &iterations}, {"converged", &converged}, {"breakdown", &breakdown}};
  const at::ScalarType want[] = {x.scalar_type(), at::kLong, at::kBool, at::kBool};
  for (int i = 0; i < 4; ++i) {
    const auto& [name, t] = state[i];
    TORCH_CHECK(t->dim() == 1 && t->size(0) == B, "trpo_torchrl::cg_step: ", name, " must have shape [B] = [", B,
                "], got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == want[i], "trpo_torchrl::cg_step: ", name, " must have dtype ", want[i], ", got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), "trpo_torchrl::cg_step: ", name, " is on ", t->device(), " but x is on ",
                x.device());
    TORCH_CHECK(t->is_contiguous(), "trpo_torchrl::cg_step: ", name, " must be contiguous");
  }
}

}  // namespace trpo_torchrl
