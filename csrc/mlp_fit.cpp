// trpo_torchrl::mlp_fit_adam — a whole critic regression (epochs × minibatches of Adam steps on
// an MLP's squared error) in one call: schema and kernel.
//
// TRPO's critic fit is hundreds of tiny sequential steps (rl-zoo3's MuJoCo preset: 20 epochs × 16
// minibatches of 128 states on a 64×64 MLP). Each step is ~30 small tensor operations, so in eager
// PyTorch the time goes to the Python interpreter, autograd's graph and the optimiser's bookkeeping,
// not to arithmetic. Here the loop, the backward pass (written out: the network is a plain MLP) and
// Adam run in C++ on ATen operations. Being ATen-composed, this first kernel serves every device
// (registered as CompositeExplicitAutograd), with no host read inside the loop (Adam's bias
// corrections come from the host-side step count). CPU has a loop-fused kernel below, CUDA a
// one-block kernel in cuda/mlp_fit.cu; both fall back on nothing but this one.
//
// The math is exactly that of the Python path it replaces (trpo_torchrl.ops.reference.mlp_fit_adam):
// per minibatch, loss = coeff · mean((value − target)²) with value = MLP(inputs[idx]); then
// torch.optim.Adam's update (no weight decay, no amsgrad), in torch's own order of operations.
#include <ATen/ATen.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>
#include <torch/library.h>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "mlp_fit.h"
#include "tanh.h"

namespace trpo_torchrl {

namespace {

void check_inputs(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& exp_avgs,
                  const std::vector<at::Tensor>& exp_avg_sqs, const at::Tensor& inputs,
                  const at::Tensor& targets, const at::Tensor& order, int64_t minibatch_size,
                  const std::string& activation, int64_t step) {
  const char* op = "trpo_torchrl::mlp_fit_adam";
  TORCH_CHECK(!params.empty() && params.size() % 2 == 0, op,
              ": params must be [weight_0, bias_0, weight_1, bias_1, ...], got ", params.size(), " tensors");
  TORCH_CHECK(exp_avgs.size() == params.size() && exp_avg_sqs.size() == params.size(), op,
              ": exp_avgs and exp_avg_sqs must have one tensor per parameter");
  TORCH_CHECK(inputs.dim() == 2, op, ": inputs must be [N, features], got ", inputs.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == inputs.size(0), op, ": targets must be [N] with N = ",
              inputs.size(0), ", got ", targets.sizes());
  TORCH_CHECK(order.dim() == 2 && order.size(1) == inputs.size(0) && order.scalar_type() == at::kLong, op,
              ": order must be int64 [epochs, N] (one permutation of the states per epoch), got ",
              order.scalar_type(), " ", order.sizes());
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
    TORCH_CHECK(w.dim() == 2 && w.size(1) == width, op, ": weight ", l, " must be [out, ", width, "], got ",
                w.sizes());
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
  TORCH_CHECK(targets.scalar_type() == dtype && targets.device() == inputs.device() &&
                  order.device() == inputs.device(),
              op, ": targets and order must be on the inputs' device, targets of their dtype");
  if (order.numel() > 0) {
    // every kernel gathers states by these indices, the CUDA one without a bounds check: an assert
    // on the device, no host sync (on the CPU it raises here, on CUDA as a device-side assert)
    const std::string why = std::string(op) + ": order holds indices outside [0, " +
                            std::to_string(inputs.size(0)) + ") (each row must permute the states)";
    at::_assert_async(at::logical_and(order.ge(0), order.lt(inputs.size(0))).all(), why);
  }
}

}  // namespace

MlpFitArgs mlp_fit_unpack(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                          const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& order,
                          int64_t minibatch_size, c10::string_view activation, int64_t step) {
  MlpFitArgs a{params.vec(), exp_avgs.vec(), exp_avg_sqs.vec(), std::string(activation), 0};
  check_inputs(a.params, a.exp_avgs, a.exp_avg_sqs, inputs, targets, order, minibatch_size, a.activation, step);
  a.num_losses = order.size(0) * ((inputs.size(0) + minibatch_size - 1) / minibatch_size);
  return a;
}

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

namespace {

// ---------------------------------------------------------------------------------------- CPU
// The same fit with the per-step work that is not a matrix product written as plain loops over
// preallocated buffers: the activation (float tanh: this project's kernel, tanh.h), the loss and
// its gradient, the bias gradients, the activation's backward, and Adam as one pass per parameter.
// On a 64×64 critic with minibatches of 128 the composite version above spends most of its time in
// ~70 ATen calls per step (Adam's foreach ops alone ~40% of the fit) and in ATen's float tanh; the
// matrix products stay ATen's (at::cpu::*_out, straight to the CPU kernel, into the buffers).

template <typename T>
void activate(T* z, int64_t n, bool tanh) {
  if (tanh) {
    if constexpr (std::is_same_v<T, float>) {
      tanh_float(z, z, n);
    } else {
      for (int64_t i = 0; i < n; ++i) z[i] = std::tanh(z[i]);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) z[i] = z[i] <= T(0) ? T(0) : z[i];  // NaN stays NaN, as relu_
  }
}

// g ← g · act'(h) given the activation's output h: 1 − h² for tanh, [h > 0] for relu
template <typename T>
void activation_backward(T* g, const T* h, int64_t n, bool tanh) {
  if (tanh) {
    for (int64_t i = 0; i < n; ++i) g[i] = g[i] * (T(1) - h[i] * h[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) g[i] = h[i] <= T(0) ? T(0) : g[i];
  }
}

// torch.optim.Adam's update of one parameter (no weight decay/amsgrad), element by element:
// m ← lerp(m, g, 1 − β1); v ← β2·v + (1 − β2)·g²; p ← p − (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps)
template <typename T>
void adam_update(T* p, T* m, T* v, const T* g, int64_t n, T w1, T beta2, T w2, T bc2_sqrt, T eps, T step) {
  for (int64_t i = 0; i < n; ++i) {
    m[i] = m[i] + w1 * (g[i] - m[i]);
    v[i] = v[i] * beta2 + w2 * g[i] * g[i];
    const T denom = std::sqrt(v[i]) / bc2_sqrt + eps;
    p[i] = p[i] + step * m[i] / denom;
  }
}

template <typename T>
void fit_cpu(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& exp_avgs,
             const std::vector<at::Tensor>& exp_avg_sqs, const at::Tensor& inputs, const at::Tensor& targets,
             const at::Tensor& order, int64_t minibatch_size, bool tanh, double coeff, double lr, double beta1,
             double beta2, double eps, int64_t step, at::Tensor& losses) {
  const int64_t num_states = inputs.size(0), epochs = order.size(0);
  const size_t layers = params.size() / 2;
  const int64_t mb = std::min(minibatch_size, num_states);
  // out[l]: layer l's output (after its activation); grads as contiguous buffers
  std::vector<at::Tensor> out(layers), grads(params.size()), weights_t(layers);
  for (size_t l = 0; l < layers; ++l) {
    out[l] = at::empty({mb, params[2 * l].size(0)}, inputs.options());
    weights_t[l] = params[2 * l].t();
  }
  for (size_t i = 0; i < params.size(); ++i) grads[i] = at::empty_like(params[i]);
  at::Tensor delta = at::empty({mb, 1}, inputs.options());
  std::vector<at::Tensor> back(layers);  // back[l]: the gradient at layer l's output
  for (size_t l = 0; l + 1 < layers; ++l) back[l] = at::empty_like(out[l]);
  std::vector<at::Tensor> hs(layers + 1);  // hs[l]: the input of layer l in this minibatch; hs[layers]: the value
  T* loss_out = losses.mutable_data_ptr<T>();
  const T* target = nullptr;
  at::Tensor t_epoch;
  int64_t k = 0;
  for (int64_t e = 0; e < epochs; ++e) {
    const at::Tensor idx = order[e];
    const at::Tensor x_epoch = inputs.index_select(0, idx);
    t_epoch = targets.index_select(0, idx);
    target = t_epoch.const_data_ptr<T>();
    for (int64_t start = 0; start < num_states; start += minibatch_size, ++k) {
      const int64_t rows = std::min(minibatch_size, num_states - start);
      hs[0] = x_epoch.narrow(0, start, rows);
      for (size_t l = 0; l < layers; ++l) {
        at::Tensor z = out[l].narrow(0, 0, rows);
        at::cpu::addmm_out(z, params[2 * l + 1], hs[l], weights_t[l]);
        if (l + 1 < layers) activate(z.mutable_data_ptr<T>(), z.numel(), tanh);
        hs[l + 1] = z;
      }
      // loss = coeff · mean(d²), d = value − target; its gradient in the value is 2·coeff·d / rows
      const T* value = hs[layers].const_data_ptr<T>();
      T* d = delta.mutable_data_ptr<T>();
      T sum_sq = 0;
      const T grad_scale = static_cast<T>(2.0 * coeff / static_cast<double>(rows));
      for (int64_t i = 0; i < rows; ++i) {
        const T diff = value[i] - target[start + i];
        sum_sq += diff * diff;
        d[i] = diff * grad_scale;
      }
      loss_out[k] = sum_sq * static_cast<T>(coeff / static_cast<double>(rows));
      at::Tensor g = delta.narrow(0, 0, rows);
      for (size_t l = layers; l-- > 0;) {
        at::cpu::mm_out(grads[2 * l], g.t(), hs[l]);
        const int64_t width = g.size(1);
        const T* gp = g.const_data_ptr<T>();
        T* gb = grads[2 * l + 1].mutable_data_ptr<T>();
        for (int64_t j = 0; j < width; ++j) gb[j] = 0;
        for (int64_t i = 0; i < rows; ++i) {
          for (int64_t j = 0; j < width; ++j) gb[j] += gp[i * width + j];
        }
        if (l > 0) {
          at::Tensor gh = back[l - 1].narrow(0, 0, rows);
          at::cpu::mm_out(gh, g, params[2 * l]);
          activation_backward(gh.mutable_data_ptr<T>(), hs[l].const_data_ptr<T>(), gh.numel(), tanh);
          g = gh;
        }
      }
      const double t = static_cast<double>(step + k + 1);
      const T step_size = static_cast<T>(-lr / (1.0 - std::pow(beta1, t)));
      const T bc2_sqrt = static_cast<T>(std::sqrt(1.0 - std::pow(beta2, t)));
      for (size_t i = 0; i < params.size(); ++i) {
        adam_update(params[i].mutable_data_ptr<T>(), exp_avgs[i].mutable_data_ptr<T>(),
                    exp_avg_sqs[i].mutable_data_ptr<T>(), grads[i].const_data_ptr<T>(), params[i].numel(),
                    static_cast<T>(1.0 - beta1), static_cast<T>(beta2), static_cast<T>(1.0 - beta2), bc2_sqrt,
                    static_cast<T>(eps), step_size);
      }
    }
  }
}

at::Tensor mlp_fit_adam_cpu(at::TensorList params_list, at::TensorList exp_avgs_list,
                            at::TensorList exp_avg_sqs_list, const at::Tensor& inputs, const at::Tensor& targets,
                            const at::Tensor& order, int64_t minibatch_size, c10::string_view activation_view,
                            double coeff, double lr, double beta1, double beta2, double eps, int64_t step) {
  const MlpFitArgs args = mlp_fit_unpack(params_list, exp_avgs_list, exp_avg_sqs_list, inputs, targets, order,
                                         minibatch_size, activation_view, step);
  const auto& [params, exp_avgs, exp_avg_sqs, activation, num_losses] = args;
  at::Tensor losses = at::empty({num_losses}, inputs.options());
  if (inputs.size(0) == 0 || order.size(0) == 0) return losses.zero_();
  at::NoGradGuard no_grad;
  const at::Tensor x = inputs.contiguous(), y = targets.contiguous();
  if (x.scalar_type() == at::kFloat) {
    fit_cpu<float>(params, exp_avgs, exp_avg_sqs, x, y, order, minibatch_size, activation == "tanh", coeff, lr,
                   beta1, beta2, eps, step, losses);
  } else {
    fit_cpu<double>(params, exp_avgs, exp_avg_sqs, x, y, order, minibatch_size, activation == "tanh", coeff, lr,
                    beta1, beta2, eps, step, losses);
  }
  return losses;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(trpo_torchrl, m) {
  m.def(
      "mlp_fit_adam(Tensor(a!)[] params, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor inputs, "
      "Tensor targets, Tensor order, int minibatch_size, str activation, float coeff, float lr, float beta1, "
      "float beta2, float eps, int step) -> Tensor");
}

// ATen-composed: one implementation for every device the ATen operations run on (CPU and CUDA have
// their own kernels; the CUDA one falls back to this for networks too big for one block's memory)
TORCH_LIBRARY_IMPL(trpo_torchrl, CompositeExplicitAutograd, m) { m.impl("mlp_fit_adam", &mlp_fit_adam_composite); }

// CPU: the loop-fused version above
TORCH_LIBRARY_IMPL(trpo_torchrl, CPU, m) { m.impl("mlp_fit_adam", &mlp_fit_adam_cpu); }

}  // namespace trpo_torchrl
