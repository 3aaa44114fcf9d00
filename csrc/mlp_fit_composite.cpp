// trpo_torchrl::mlp_fit_adam — the ATen-composed kernel: the whole fit as ATen operations, so it
// runs on every device ATen runs on (registered as CompositeExplicitAutograd). CPU has its own
// loop-fused kernel (mlp_fit.cpp); the CUDA kernel (cuda/mlp_fit.cu) falls back to this one for
// networks too big for one thread block's shared memory.
//
// The loop, the backward pass (written out: the network is a plain MLP) and Adam run in C++ with no
// host read inside the loop (Adam's bias corrections come from the host-side step count). The math
// is exactly that of the Python reference (trpo_torchrl.ops.reference.mlp_fit_adam): per minibatch,
// loss = coeff · mean((value − target)²) with value = MLP(inputs[idx]); then torch.optim.Adam's
// update (foreach, no weight decay, no amsgrad), in torch's own order of operations. M critics
// (the member dimension, mlp_fit_args.h) go through the same calls as batched matrix products.
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
  const std::vector<at::Tensor>& params = args.params;
  const bool tanh = args.activation == "tanh";
  const int64_t members = args.members, num_states = args.num_states, epochs = args.epochs;
  at::Tensor result = args.new_losses();
  if (members == 0 || num_states == 0 || epochs == 0) return result.zero_();
  const at::Tensor losses = result.view({members, args.num_losses});

  const size_t layers = params.size() / 2;
  std::vector<at::Tensor> hidden(layers);  // hidden[l]: the input of layer l (hidden[0] = states), [M, rows, ·]
  std::vector<at::Tensor> grads(params.size());
  const std::vector<at::Tensor>& exp_avgs = args.exp_avgs;
  const std::vector<at::Tensor>& exp_avg_sqs = args.exp_avg_sqs;
  at::NoGradGuard no_grad;
  const int64_t features = args.inputs.size(2);
  int64_t k = 0;
  for (int64_t e = 0; e < epochs; ++e) {
    // one gather per epoch, each member by its own permutation; the minibatches are then slices (views)
    const at::Tensor idx = args.order.select(1, e);  // [M, N]
    const at::Tensor x_epoch = args.inputs.gather(1, idx.unsqueeze(2).expand({members, num_states, features}));
    const at::Tensor t_epoch = args.targets.gather(1, idx);
    for (int64_t start = 0; start < num_states; start += minibatch_size, ++k) {
      const int64_t rows = std::min(minibatch_size, num_states - start);
      hidden[0] = x_epoch.narrow(1, start, rows);
      at::Tensor out;
      for (size_t l = 0; l < layers; ++l) {
        at::Tensor z = at::baddbmm(params[2 * l + 1].unsqueeze(1), hidden[l], params[2 * l].transpose(1, 2));
        if (l + 1 < layers) {
          hidden[l + 1] = tanh ? z.tanh_() : z.relu_();
        } else {
          out = z;
        }
      }
      // per member: loss = coeff · mean(d²), d = value − target; its gradient in the value is 2·coeff·d / rows
      const at::Tensor diff = out.view({members, rows}) - t_epoch.narrow(1, start, rows);
      losses.select(1, k).copy_(diff.mul(diff).sum(1).mul_(coeff / static_cast<double>(rows)));
      at::Tensor g = diff.mul(2.0 * coeff / static_cast<double>(rows)).view({members, rows, 1});
      for (size_t l = layers; l-- > 0;) {
        grads[2 * l] = at::bmm(g.transpose(1, 2), hidden[l]);
        grads[2 * l + 1] = g.sum(1);
        if (l > 0) {
          const at::Tensor gh = at::bmm(g, params[2 * l]);
          g = tanh ? at::tanh_backward(gh, hidden[l]) : at::threshold_backward(gh, hidden[l], 0);
        }
      }
      // torch.optim.Adam (foreach, no weight decay/amsgrad/maximize): the same operations in order;
      // every member has taken the same number of steps, so one bias correction serves all
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
  return result;
}

TORCH_LIBRARY_IMPL(trpo_torchrl, CompositeExplicitAutograd, m) {
  m.impl("mlp_fit_adam", &mlp_fit_adam_composite);
}

}  // namespace trpo_torchrl
