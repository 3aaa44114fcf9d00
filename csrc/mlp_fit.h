// trpo_torchrl::mlp_fit_adam: what the CPU (mlp_fit.cpp) and CUDA (cuda/mlp_fit.cu) kernels share:
// the argument unpacking and checks, and the ATen-composed kernel, which the CUDA kernel falls back to for
// networks that do not fit one thread block's shared memory.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace trpo_torchrl {

// The op's arguments as every kernel needs them: the tensor lists as vectors and the activation as a
// string, after a TORCH_CHECK of every argument (shapes, dtypes, devices, contiguity, the MLP's chain).
struct MlpFitArgs {
  std::vector<at::Tensor> params, exp_avgs, exp_avg_sqs;
  std::string activation;
  int64_t num_losses;  // epochs · ceil(N / minibatch_size): one loss per Adam step
};

MlpFitArgs mlp_fit_unpack(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                          const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& order,
                          int64_t minibatch_size, c10::string_view activation, int64_t step);

// The whole fit as ATen operations: runs on any device ATen runs on.
at::Tensor mlp_fit_adam_composite(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                  const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& order,
                                  int64_t minibatch_size, c10::string_view activation, double coeff, double lr,
                                  double beta1, double beta2, double eps, int64_t step);

}  // namespace trpo_torchrl
