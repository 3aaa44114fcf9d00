// Host-side argument checks of the mlp_fit_adam op and the unpacking of its arguments; shared by
// the CPU, CUDA and ATen-composed kernels so all reject the same inputs with the same messages.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

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

inline void check_mlp_fit_inputs(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& exp_avgs,
                                 const std::vector<at::Tensor>& exp_avg_sqs, const at::Tensor& inputs,
                                 const at::Tensor& targets, const at::Tensor& order, int64_t minibatch_size,
                                 const std::string& activation, int64_t step) {
  const char* op = "trpo_torchrl::mlp_fit_adam";
  TORCH_CHECK(!params.empty() && params.size() % 2 == 0, op,
              ": params must be [weight_0, bias_0, weight_1, bias_1, ...], got ", params.size(), " tensors");
  TORCH_CHECK(exp_avgs.size() == params.size() && exp_avg_sqs.size() == params.size(), op,
              ": exp_avgs and exp_avg_sqs must have one tensor per parameter");
  TORCH_CHECK(inputs.dim() == 2, op, ": inputs must be [N, features], got ", inputs.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == inputs.size(0), op,
              ": targets must be [N] with N = ", inputs.size(0), ", got ", targets.sizes());
  TORCH_CHECK(order.dim() == 2 && order.size(1) == inputs.size(0) && order.scalar_type() == at::kLong, op,
              ": order must be int64 [epochs, N] (one permutation of the states per epoch), got ", order.scalar_type(),
              " ", order.sizes());
  TORCH_CHECK(minibatch_size >= 1, op, ": minibatch_size must be >= 1, got ", minibatch_size);
  TORCH_CHECK(activation == "tanh" || activation == "relu", op, ": activation must be 'tanh' or 'relu', got '",
              activation, "'");
  TORCH_CHECK(step >= 0, op, ": step must be >= 0, got ", step);
  const auto dtype = inputs.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, ": inputs must be float32 or float64, got ", dtype);
  int64_t width = inputs.size(1);
  const size_t layers = params.size() / 2;
  for (size_t l = 0; l < layers; ++l) {
    const at::Tensor& w = params[2 * l];
    const at::Tensor& b = params[2 * l + 1];
    TORCH_CHECK(w.dim() == 2 && w.size(1) == width, op, ": weight ", l, " must be [out, ", width, "], got ", w.sizes());
    TORCH_CHECK(b.dim() == 1 && b.size(0) == w.size(0), op, ": bias ", l, " must be [", w.size(0), "], got ",
                b.sizes());
    width = w.size(0);
  }
  TORCH_CHECK(width == 1, op, ": the last layer must have one output (a state value), got ", width);
  for (size_t i = 0; i < params.size(); ++i) {
    for (const at::Tensor* t : {&params[i], &exp_avgs[i], &exp_avg_sqs[i]}) {
      TORCH_CHECK(t->scalar_type() == dtype && t->device() == inputs.device(), op, ": tensor ", i,
                  " of params/exp_avgs/exp_avg_sqs is ", t->scalar_type(), " on ", t->device(),
                  "; all must match the inputs (", dtype, " on ", inputs.device(), ")");
      TORCH_CHECK(t->is_contiguous(), op, ": params and Adam state must be contiguous");
    }
    TORCH_CHECK(exp_avgs[i].sizes() == params[i].sizes() && exp_avg_sqs[i].sizes() == params[i].sizes(), op,
                ": the Adam state of parameter ", i, " must have its shape ", params[i].sizes());
  }
  TORCH_CHECK(
      targets.scalar_type() == dtype && targets.device() == inputs.device() && order.device() == inputs.device(), op,
      ": targets and order must be on the inputs' device, targets of their dtype");
  if (order.numel() > 0) {
    // every kernel gathers states by these indices, the CUDA one without a bounds check: an assert
    // on the device, no host sync (on the CPU it raises here, on CUDA as a device-side assert)
    const std::string why = std::string(op) + ": order holds indices outside [0, " + std::to_string(inputs.size(0)) +
                            ") (each row must permute the states)";
    at::_assert_async(at::logical_and(order.ge(0), order.lt(inputs.size(0))).all(), why);
  }
}

inline MlpFitArgs mlp_fit_unpack(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                 const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& order,
                                 int64_t minibatch_size, c10::string_view activation, int64_t step) {
  MlpFitArgs a{params.vec(), exp_avgs.vec(), exp_avg_sqs.vec(), std::string(activation), 0};
  check_mlp_fit_inputs(a.params, a.exp_avgs, a.exp_avg_sqs, inputs, targets, order, minibatch_size, a.activation, step);
  a.num_losses = order.size(0) * ((inputs.size(0) + minibatch_size - 1) / minibatch_size);
  return a;
}

}  // namespace trpo_torchrl
