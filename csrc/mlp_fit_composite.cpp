// trpo_torchrl::mlp_fit_adam — the ATen-composed kernel: the whole fit as ATen operations, so it
// runs on every device ATen runs on (registered as CompositeExplicitAutograd). CPU has its own
// loop-fused kernel (mlp_fit.cpp); the CUDA kernel (cuda/mlp_fit.cu) falls back to this one for
// networks too big for one thread block's shared memory.
//
// The loop, the backward pass (written out: the network is a plain MLP) and Adam run in C++ with no
// host read inside the loop (Adam's bias corrections come from the host-side step count). The math
// is exactly that of the Python reference (trpo_torchrl.ops.reference.mlp_fit_adam): per minibatch,
// loss = coeff · mean((value − target)²) with value = MLP(inputs[idx]); then torch.optim.Adam's
// update (foreach, no weight decay, no amsgrad), in torch's own order of operations.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "mlp_fit.h"
#include "mlp_fit_args.h"

namespace trpo_torchrl {

at::Tensor mlp_fit_adam_composite(at::TensorList params_list, at::TensorList exp_avgs_list,
                                  at::TensorList exp_avg_sqs_list, const at::Tensor& inputs, const at::Tensor& targets,
                                  const at::Tensor& order, int64_t minibatch_size, c10::string_view activation_view,
                                  double coeff, double lr, double beta1, double beta2, double eps, int64_t step) {
  const MlpFitArgs args = mlp_fit_unpack(params_list, exp_avgs_list, exp_avg_sqs_list, inputs, targets, order,
                                         minibatch_size, activation_view, step);
  const auto& [params, exp_avgs, exp_avg_sqs, activation, num_losses] = args;
  const bool tanh = activation == "tanh";

  const int64_t num_states = inputs.size(0), epochs = order.size(0);
  at::Tensor losses = at::empty({num_losses}, inputs.options());
  if (num_states == 0 || epochs == 0) return losses.zero_();

  const size_t layers = params.size() / 2;
  std::vector<at::Tensor> hidden(layers);  // hidden[l]: the input of layer l (hidden[0] = states)
  std::vector<at::Tensor> grads(params.size());
  at::NoGradGuard no_grad;
  int64_t k = 0;
  for (int64_t e = 0; e < epochs; ++e) {
    // one gather per epoch; the minibatches are then contiguous slices (views)
    const at::Tensor idx = order[e];
    const at::Tensor x_epoch = inputs.index_select(0, idx);
    const at::Tensor t_epoch = targets.index_select(0, idx);
    for (int64_t start = 0; start < num_states; start += minibatch_size, ++k) {
      const int64_t rows = std::min(minibatch_size, num_states - start);
      hidden[0] = x_epoch.narrow(0, start, rows);
      at::Tensor out;
      for (size_t l = 0; l < layers; ++l) {
        at::Tensor z = at::addmm(params[2 * l + 1], hidden[l], params[2 * l].t());
        if (l + 1 < layers) {
          hidden[l + 1] = tanh ? z.tanh_() : z.relu_();
        } else {
          out = z;
        }
      }
      // loss = coeff · mean(d²), d = value − target; its gradient in the value is 2·coeff·d / rows
      const at::Tensor diff = out.view({rows}) - t_epoch.narrow(0, start, rows);
      losses[k].copy_(at::dot(diff, diff).mul_(coeff / static_cast<double>(rows)));
      at::Tensor g = diff.mul(2.0 * coeff / static_cast<double>(rows)).view({rows, 1});
      for (size_t l = layers; l-- > 0;) {
        grads[2 * l] = at::mm(g.t(), hidden[l]);
        grads[2 * l + 1] = g.sum(0);
        if (l > 0) {
          const at::Tensor gh = at::mm(g, params[2 * l]);
          g = tanh ? at::tanh_backward(gh, hidden[l]) : at::threshold_backward(gh, hidden[l], 0);
        }
      }
      // torch.optim.Adam (foreach, no weight decay/amsgrad/maximize): the same operations in order
      const double t = static_cast<double>(step + k + 1);
      const double bias_correction1 = 1.0 - std::pow(beta1, t);
      const double bias_correction2_sqrt = std::sqrt(1.0 - std::pow(beta2, t));
      at::_foreach_lerp_(exp_avgs, grads, 1.0 - beta1);
      at::_foreach_mul_(exp_avg_sqs, beta2);
      at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2);
      std::vector<at::Tensor> denom = at::_foreach_sqrt(exp_avg_sqs);
      at::_foreach_div_(denom, bias_correction2_sqrt);
      at::_foreach_add_(denom, eps);
      at::_foreach_addcdiv_(params, exp_avgs, denom, -lr / bias_correction1);
    }
  }
  return losses;
}

TORCH_LIBRARY_IMPL(trpo_torchrl, CompositeExplicitAutograd, m) {
  m.impl("mlp_fit_adam", &mlp_fit_adam_composite);
}

}  // namespace trpo_torchrl
