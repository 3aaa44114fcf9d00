// Host-side argument checks of the mlp_fit_adam op and the unpacking of its arguments; shared by
// the CPU, CUDA and ATen-composed kernels so all reject the same inputs with the same messages.
//
// The op takes one critic (weights [out, in], inputs [N, F], targets [N], order [epochs, N]) or M
// critics stacked along a leading member dimension (weights [M, out, in], inputs [M, N, F], targets
// [M, N], order [M, epochs, N]). Unpacking gives every kernel the member-stacked form: a single
// critic's tensors become views with a leading 1, so one kernel serves both and M = 1 is the single
// fit by construction.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>
#include <vector>

namespace trpo_torchrl {

// The op's arguments as every kernel needs them, after a TORCH_CHECK of every argument (shapes,
// dtypes, devices, contiguity, the MLP's chain, the member counts): member-stacked views of the
// tensors, the activation as a string and the sizes.
struct MlpFitArgs {
  std::vector<at::Tensor> params, exp_avgs, exp_avg_sqs;  // [M, out, in] and [M, out], contiguous
  at::Tensor inputs, targets, order;                      // [M, N, F], [M, N], [M, epochs, N]
  std::string activation;
  bool batched;  // the call passed member-stacked tensors (else M = 1 views of one critic's)
  int64_t members, num_states, epochs;
  int64_t num_losses;  // per member: epochs · ceil(N / minibatch_size), one loss per Adam step

  // The op's result: [M, num_losses], or [num_losses] for an unbatched call. Kernels write into
  // its [M, num_losses] view.
  at::Tensor new_losses() const {
    return batched ? at::empty({members, num_losses}, inputs.options()) : at::empty({num_losses}, inputs.options());
  }
};

inline MlpFitArgs mlp_fit_unpack(at::TensorList params_list, at::TensorList exp_avgs_list,
                                 at::TensorList exp_avg_sqs_list, const at::Tensor& inputs, const at::Tensor& targets,
                                 const at::Tensor& order, int64_t minibatch_size, c10::string_view activation_view,
                                 int64_t step) {
  const char* op = "trpo_torchrl::mlp_fit_adam";
  const std::vector<at::Tensor> params = params_list.vec(), exp_avgs = exp_avgs_list.vec(),
                                exp_avg_sqs = exp_avg_sqs_list.vec();
  const std::string activation(activation_view);
  TORCH_CHECK(!params.empty() && params.size() % 2 == 0, op,
              ": params must be [weight_0, bias_0, weight_1, bias_1, ...], got ", params.size(), " tensors");
  TORCH_CHECK(exp_avgs.size() == params.size() && exp_avg_sqs.size() == params.size(), op,
              ": exp_avgs and exp_avg_sqs must have one tensor per parameter");
  TORCH_CHECK(inputs.dim() == 2 || inputs.dim() == 3, op,
              ": inputs must be [N, features] (one critic) or [M, N, features] (M critics), got ", inputs.sizes());
  const bool batched = inputs.dim() == 3;
  const int64_t members = batched ? inputs.size(0) : 1;
  const int64_t num_states = inputs.size(-2);
  // every tensor's expected leading dims and the words that say so
  const std::string m = batched ? "M, " : "";
  const std::string members_note = batched ? "M = " + std::to_string(members) + " members, " : "";
  const std::string with_m = batched ? " (M = " + std::to_string(members) + " members, as the inputs)" : "";
  const std::string with_mn = " (" + members_note + "N = " + std::to_string(num_states) + " states, as the inputs)";
  const auto lead = [&](std::vector<int64_t> tail) {
    if (batched) tail.insert(tail.begin(), members);
    return tail;
  };
  TORCH_CHECK(targets.sizes() == at::IntArrayRef(lead({num_states})), op, ": targets must be [", m, "N]", with_mn,
              ", got ", targets.sizes());
  const int64_t order_dims = batched ? 3 : 2;
  TORCH_CHECK(order.dim() == order_dims && order.size(-1) == num_states && (!batched || order.size(0) == members) &&
                  order.scalar_type() == at::kLong,
              op, ": order must be int64 [", m, "epochs, N]", with_mn, ", one permutation of the states per ",
              batched ? "member and " : "", "epoch; got ", order.scalar_type(), " ", order.sizes());
  TORCH_CHECK(minibatch_size >= 1, op, ": minibatch_size must be >= 1, got ", minibatch_size);
  TORCH_CHECK(activation == "tanh" || activation == "relu", op, ": activation must be 'tanh' or 'relu', got '",
              activation, "'");
  TORCH_CHECK(step >= 0, op, ": step must be >= 0, got ", step);
  const auto dtype = inputs.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op, ": inputs must be float32 or float64, got ", dtype);
  int64_t width = inputs.size(-1);
  const size_t layers = params.size() / 2;
  for (size_t l = 0; l < layers; ++l) {
    const at::Tensor& w = params[2 * l];
    const at::Tensor& b = params[2 * l + 1];
    TORCH_CHECK(w.dim() == order_dims && w.size(-1) == width && (!batched || w.size(0) == members), op, ": weight ", l,
                " must be [", m, "out, ", width, "]", with_m, ", got ", w.sizes());
    const int64_t out = w.size(-2);
    TORCH_CHECK(b.sizes() == at::IntArrayRef(lead({out})), op, ": bias ", l, " must be [", m, out, "]", with_m,
                ", got ", b.sizes());
    width = out;
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
    const std::string why = std::string(op) + ": order holds indices outside [0, " + std::to_string(num_states) +
                            ") (each row must permute the states)";
    at::_assert_async(at::logical_and(order.ge(0), order.lt(num_states)).all(), why);
  }

  MlpFitArgs a;
  const auto stacked = [batched](const std::vector<at::Tensor>& ts) {
    std::vector<at::Tensor> out;
    out.reserve(ts.size());
    for (const at::Tensor& t : ts) out.push_back(batched ? t : t.unsqueeze(0));
    return out;
  };
  a.params = stacked(params);
  a.exp_avgs = stacked(exp_avgs);
  a.exp_avg_sqs = stacked(exp_avg_sqs);
  a.inputs = batched ? inputs : inputs.unsqueeze(0);
  a.targets = batched ? targets : targets.unsqueeze(0);
  a.order = batched ? order : order.unsqueeze(0);
  a.activation = activation;
  a.batched = batched;
  a.members = members;
  a.num_states = num_states;
  a.epochs = a.order.size(1);
  a.num_losses = a.epochs * ((num_states + minibatch_size - 1) / minibatch_size);
  return a;
}

}  // namespace trpo_torchrl
