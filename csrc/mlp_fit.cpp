// trpo_torchrl::mlp_fit_adam — a whole critic regression (epochs × minibatches of Adam steps on
// an MLP's squared error) in one call: schema, CPU kernel, CPU registration.
//
// TRPO's critic fit is hundreds of tiny sequential steps (rl-zoo3's MuJoCo preset: 20 epochs × 16
// minibatches of 128 states on a 64×64 MLP). Each step is ~30 small tensor operations, so in eager
// PyTorch the time goes to the Python interpreter, autograd's graph and the optimiser's bookkeeping,
// not to arithmetic. Here the loop, the backward pass (written out: the network is a plain MLP) and
// Adam run in C++. The kernels, one file each: this loop-fused CPU kernel, the one-block CUDA kernel
// (cuda/mlp_fit.cu) and the ATen-composed kernel that serves every other device
// (mlp_fit_composite.cpp); their argument checks are mlp_fit_args.h. benchmarks/critic_fit.py times
// the three against the eager loop.
//
// The math is exactly that of the Python path it replaces (trpo_torchrl.ops.reference.mlp_fit_adam):
// per minibatch, loss = coeff · mean((value − target)²) with value = MLP(inputs[idx]); then
// torch.optim.Adam's update (no weight decay, no amsgrad), in torch's own order of operations.
//
// The op also fits M critics at once (a member dimension: weights [M, out, in], inputs [M, N, F],
// targets [M, N], order [M, epochs, N]; mlp_fit_args.h), each with its own parameters, Adam state
// and minibatch order, and the same hyperparameters. Every kernel works on the member-stacked form;
// a single critic is M = 1.
#include <ATen/ATen.h>
#include <ATen/ops/baddbmm_cpu_dispatch.h>
#include <ATen/ops/bmm_cpu_dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "mlp_fit_args.h"
#include "tanh.h"

namespace trpo_torchrl {
namespace {

// ---------------------------------------------------------------------------------------- CPU
// The composite kernel's fit with the per-step work that is not a matrix product written as plain
// loops over preallocated buffers: the activation (float tanh: this project's kernel, tanh.h), the
// loss and its gradient, the bias gradients, the activation's backward, and Adam as one pass per
// parameter. On a small critic the composite kernel's time goes to its ~70 ATen calls per step
// (Adam's foreach ops among them) and to ATen's float tanh, not to arithmetic; the matrix products
// stay ATen's (at::cpu::*_out, straight to the CPU kernel, into the buffers), one batched product
// over the members each, so M critics cost the dispatches of one.

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
void fit_cpu(const MlpFitArgs& a, const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& order,
             int64_t minibatch_size, bool tanh, double coeff, double lr, double beta1, double beta2, double eps,
             int64_t step, const at::Tensor& losses) {
  const std::vector<at::Tensor>& params = a.params;
  const int64_t members = a.members, num_states = a.num_states, epochs = a.epochs, features = inputs.size(2);
  const size_t layers = params.size() / 2;
  const int64_t mb = std::min(minibatch_size, num_states);
  const auto options = inputs.options();
  // Flat buffers, viewed as [M, rows, width] for each minibatch: a view of the first M·rows·width
  // elements stays contiguous when the last minibatch is shorter, so the plain loops below see one
  // dense block. out[l]: layer l's output (after its activation); back[l]: the gradient there.
  std::vector<at::Tensor> out(layers), back(layers), grads(params.size()), weights_t(layers), biases(layers);
  for (size_t l = 0; l < layers; ++l) {
    const int64_t width = params[2 * l].size(1);
    out[l] = at::empty({members * mb * width}, options);
    if (l + 1 < layers) back[l] = at::empty({members * mb * width}, options);
    weights_t[l] = params[2 * l].transpose(1, 2);
    biases[l] = params[2 * l + 1].unsqueeze(1);  // [M, 1, out]: broadcast over the minibatch's rows
  }
  for (size_t i = 0; i < params.size(); ++i) grads[i] = at::empty_like(params[i]);
  const at::Tensor delta = at::empty({members * mb}, options);
  const auto rows_view = [members](const at::Tensor& flat, int64_t rows, int64_t width) {
    return flat.narrow(0, 0, members * rows * width).view({members, rows, width});
  };
  // each member's states and targets in its epoch order: one gather per epoch, the minibatches are
  // then slices [M, rows, F] (strided across members, which the batched products take as they are)
  const at::Tensor x_epoch = at::empty({members, num_states, features}, options);
  const at::Tensor t_epoch = at::empty({members, num_states}, options);
  std::vector<at::Tensor> hs(layers + 1);  // hs[l]: the input of layer l in this minibatch; hs[layers]: the value
  const T* x = inputs.const_data_ptr<T>();
  const T* y = targets.const_data_ptr<T>();
  const int64_t* idx = order.const_data_ptr<int64_t>();
  T* xe = x_epoch.mutable_data_ptr<T>();
  T* te = t_epoch.mutable_data_ptr<T>();
  T* loss_out = losses.mutable_data_ptr<T>();
  const int64_t losses_per_member = losses.size(1);
  int64_t k = 0;
  for (int64_t e = 0; e < epochs; ++e) {
    for (int64_t m = 0; m < members; ++m) {
      const int64_t* perm = idx + (m * epochs + e) * num_states;
      const T* xm = x + m * num_states * features;
      for (int64_t i = 0; i < num_states; ++i) {
        std::copy_n(xm + perm[i] * features, features, xe + (m * num_states + i) * features);
        te[m * num_states + i] = y[m * num_states + perm[i]];
      }
    }
    for (int64_t start = 0; start < num_states; start += minibatch_size, ++k) {
      const int64_t rows = std::min(minibatch_size, num_states - start);
      hs[0] = x_epoch.narrow(1, start, rows);
      for (size_t l = 0; l < layers; ++l) {
        at::Tensor z = rows_view(out[l], rows, params[2 * l].size(1));
        at::cpu::baddbmm_out(z, biases[l], hs[l], weights_t[l]);
        if (l + 1 < layers) activate(z.mutable_data_ptr<T>(), z.numel(), tanh);
        hs[l + 1] = z;
      }
      // per member: loss = coeff · mean(d²), d = value − target; its gradient in the value is 2·coeff·d / rows
      const T* value = hs[layers].const_data_ptr<T>();
      T* d = delta.mutable_data_ptr<T>();
      const T grad_scale = static_cast<T>(2.0 * coeff / static_cast<double>(rows));
      for (int64_t m = 0; m < members; ++m) {
        const T* target = te + m * num_states + start;
        T sum_sq = 0;
        for (int64_t i = 0; i < rows; ++i) {
          const T diff = value[m * rows + i] - target[i];
          sum_sq += diff * diff;
          d[m * rows + i] = diff * grad_scale;
        }
        loss_out[m * losses_per_member + k] = sum_sq * static_cast<T>(coeff / static_cast<double>(rows));
      }
      at::Tensor g = rows_view(delta, rows, 1);
      for (size_t l = layers; l-- > 0;) {
        at::cpu::bmm_out(grads[2 * l], g.transpose(1, 2), hs[l]);
        const int64_t width = g.size(2);
        const T* gp = g.const_data_ptr<T>();
        T* gb = grads[2 * l + 1].mutable_data_ptr<T>();
        for (int64_t m = 0; m < members; ++m) {
          T* gbm = gb + m * width;
          const T* gpm = gp + m * rows * width;
          for (int64_t j = 0; j < width; ++j) gbm[j] = 0;
          for (int64_t i = 0; i < rows; ++i) {
            for (int64_t j = 0; j < width; ++j) gbm[j] += gpm[i * width + j];
          }
        }
        if (l > 0) {
          at::Tensor gh = rows_view(back[l - 1], rows, params[2 * l].size(2));
          at::cpu::bmm_out(gh, g, params[2 * l]);
          activation_backward(gh.mutable_data_ptr<T>(), hs[l].const_data_ptr<T>(), gh.numel(), tanh);
          g = gh;
        }
      }
      // every member has taken the same number of steps: one bias correction, one pass per parameter
      const double t = static_cast<double>(step + k + 1);
      const T step_size = static_cast<T>(-lr / (1.0 - std::pow(beta1, t)));
      const T bc2_sqrt = static_cast<T>(std::sqrt(1.0 - std::pow(beta2, t)));
      for (size_t i = 0; i < params.size(); ++i) {
        adam_update(params[i].mutable_data_ptr<T>(), a.exp_avgs[i].mutable_data_ptr<T>(),
                    a.exp_avg_sqs[i].mutable_data_ptr<T>(), grads[i].const_data_ptr<T>(), params[i].numel(),
                    static_cast<T>(1.0 - beta1), static_cast<T>(beta2), static_cast<T>(1.0 - beta2), bc2_sqrt,
                    static_cast<T>(eps), step_size);
      }
    }
  }
}

at::Tensor mlp_fit_adam_cpu(at::TensorList params_list, at::TensorList exp_avgs_list, at::TensorList exp_avg_sqs_list,
                            const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& order,
                            int64_t minibatch_size, c10::string_view activation, double coeff, double lr, double beta1,
                            double beta2, double eps, int64_t step) {
  const MlpFitArgs args = mlp_fit_unpack(params_list, exp_avgs_list, exp_avg_sqs_list, inputs, targets, order,
                                         minibatch_size, activation, step);
  at::Tensor result = args.new_losses();
  if (args.members == 0 || args.num_states == 0 || args.epochs == 0) return result.zero_();
  const at::Tensor losses = result.view({args.members, args.num_losses});
  at::NoGradGuard no_grad;
  const at::Tensor x = args.inputs.contiguous(), y = args.targets.contiguous(), o = args.order.contiguous();
  const bool tanh = args.activation == "tanh";
  if (x.scalar_type() == at::kFloat) {
    fit_cpu<float>(args, x, y, o, minibatch_size, tanh, coeff, lr, beta1, beta2, eps, step, losses);
  } else {
    fit_cpu<double>(args, x, y, o, minibatch_size, tanh, coeff, lr, beta1, beta2, eps, step, losses);
  }
  return result;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(trpo_torchrl, m) {
  m.def(
      "mlp_fit_adam(Tensor(a!)[] params, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor inputs, "
      "Tensor targets, Tensor order, int minibatch_size, str activation, float coeff, float lr, float beta1, "
      "float beta2, float eps, int step) -> Tensor");
}

// CPU: the loop-fused kernel above (every other device: mlp_fit_composite.cpp, cuda/mlp_fit.cu)
TORCH_LIBRARY_IMPL(trpo_torchrl, CPU, m) {
  m.impl("mlp_fit_adam", &mlp_fit_adam_cpu);
}

}  // namespace trpo_torchrl
