// trpo_torchrl::mlp_fit_adam's ATen-composed kernel (mlp_fit_composite.cpp), which the CUDA kernel
// (cuda/mlp_fit.cu) falls back to for networks that do not fit one thread block's shared memory.
#pragma once

#include <ATen/ATen.h>

namespace trpo_torchrl {

// The whole fit as ATen operations: runs on any device ATen runs on.
at::Tensor mlp_fit_adam_composite(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                  const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& order,
                                  int64_t minibatch_size, c10::string_view activation, double coeff, double lr,
                                  double beta1, double beta2, double eps, int64_t step);

}  // namespace trpo_torchrl
