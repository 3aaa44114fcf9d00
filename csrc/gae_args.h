// Host-side argument checks of the GAE op and the conversion of its tensors to GaeArgs; shared
// by the CPU and the CUDA registrations so both reject the same inputs with the same messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <utility>

#include "gae.h"

namespace trpo_torchrl {

inline void check_gae_inputs(const at::Tensor& gamma, const at::Tensor& lmbda, const at::Tensor& value,
                             const at::Tensor& next_value, const at::Tensor& reward, const at::Tensor& done,
                             const at::Tensor& terminated) {
  TORCH_CHECK(value.dim() == 2, "trpo_torchrl::gae: state_value must be 2-D [rows, T], got shape ", value.sizes());
  TORCH_CHECK(at::isFloatingType(value.scalar_type()), "trpo_torchrl::gae: state_value must be a floating tensor, got ",
              value.scalar_type());
  const std::pair<const char*, const at::Tensor*> floats[] = {
      {"gamma", &gamma}, {"lmbda", &lmbda}, {"next_state_value", &next_value}, {"reward", &reward}};
  for (const auto& [name, t] : floats) {
    TORCH_CHECK(t->sizes() == value.sizes(), "trpo_torchrl::gae: ", name, " has shape ", t->sizes(),
                " but state_value has shape ", value.sizes());
    TORCH_CHECK(t->scalar_type() == value.scalar_type(), "trpo_torchrl::gae: ", name, " has dtype ", t->scalar_type(),
                " but state_value has dtype ", value.scalar_type());
    TORCH_CHECK(t->device() == value.device(), "trpo_torchrl::gae: ", name, " is on ", t->device(),
                " but state_value is on ", value.device());
  }
  const std::pair<const char*, const at::Tensor*> flags[] = {{"done", &done}, {"terminated", &terminated}};
  for (const auto& [name, t] : flags) {
    TORCH_CHECK(t->sizes() == value.sizes(), "trpo_torchrl::gae: ", name, " has shape ", t->sizes(),
                " but state_value has shape ", value.sizes());
    TORCH_CHECK(t->scalar_type() == at::kBool, "trpo_torchrl::gae: ", name, " must be a bool tensor, got ",
                t->scalar_type());
    TORCH_CHECK(t->device() == value.device(), "trpo_torchrl::gae: ", name, " is on ", t->device(),
                " but state_value is on ", value.device());
  }
}

template <typename scalar_t>
GaeArgs<scalar_t> make_gae_args(const at::Tensor& gamma, const at::Tensor& lmbda, const at::Tensor& value,
                                const at::Tensor& next_value, const at::Tensor& reward, const at::Tensor& done,
                                const at::Tensor& terminated, at::Tensor& advantage, at::Tensor& value_target) {
  GaeArgs<scalar_t> a;
  a.gamma = gamma.const_data_ptr<scalar_t>();
  a.lmbda = lmbda.const_data_ptr<scalar_t>();
  a.value = value.const_data_ptr<scalar_t>();
  a.next_value = next_value.const_data_ptr<scalar_t>();
  a.reward = reward.const_data_ptr<scalar_t>();
  a.done = done.const_data_ptr<bool>();
  a.terminated = terminated.const_data_ptr<bool>();
  a.advantage = advantage.mutable_data_ptr<scalar_t>();
  a.value_target = value_target.mutable_data_ptr<scalar_t>();
  a.rows = value.size(0);
  a.T = value.size(1);
  auto fill = [](int64_t (&s)[2], const at::Tensor& t) {
    s[0] = t.stride(0);
    s[1] = t.stride(1);
  };
  fill(a.s_gamma, gamma);
  fill(a.s_lmbda, lmbda);
  fill(a.s_value, value);
  fill(a.s_next_value, next_value);
  fill(a.s_reward, reward);
  fill(a.s_done, done);
  fill(a.s_terminated, terminated);
  fill(a.s_advantage, advantage);
  fill(a.s_value_target, value_target);
  return a;
}

}  // namespace trpo_torchrl
