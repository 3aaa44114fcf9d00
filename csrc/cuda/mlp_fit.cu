// trpo_torchrl::mlp_fit_adam — CUDA kernel and registration: the whole critic fit in one launch,
// one thread block per critic (M critics stacked along the member dimension: M blocks).
//
// The fit is E·S dependent Adam steps on a small MLP (rl-zoo3's MuJoCo preset: 320 steps of 128
// states on 17→64→64→1). The ATen-composed kernel issues ~40 launches per step, each costing more
// in launch overhead than its arithmetic, whatever the GPU's size (benchmarks/critic_fit.py
// --device cuda times both kernels).
// One block can hold the weights, the minibatch's activations and gradients in shared memory and run
// every step without leaving the SM: per step it gathers the minibatch, runs the forward pass, the
// loss, the backward pass and Adam, with block barriers between the phases. Parameters live in shared
// memory for the whole fit and are written back at the end; Adam's moments stay in global memory
// (read and written once per step by the thread that owns the element). The members of a stacked
// call share nothing but the hyperparameters, so block m fits member m alone from its own slices of
// the stacked tensors, and M critics take one launch.
//
// Networks whose buffers do not fit the block's shared memory (wide layers, big minibatches) take
// the ATen-composed kernel instead. The math is the reference's (trpo_torchrl.ops.reference):
// loss = coeff · mean((value − target)²) per minibatch, torch.optim.Adam's update in its order.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common.cuh"
#include "mlp_fit.h"
#include "mlp_fit_args.h"

namespace trpo_torchrl {
namespace {

constexpr int kMaxLayers = 8;
constexpr int kThreads = 1024;

// Row stride of a [rows, n] buffer in shared memory: odd, so that 32 consecutive rows fall in 32
// different banks (a warp reading one column of consecutive rows, or one row of consecutive
// weights, is then conflict-free).
__host__ __device__ __forceinline__ int odd_stride(int n) {
  return n | 1;
}

template <typename T>
struct FitArgs {
  int layers;
  int dims[kMaxLayers + 1];  // dims[0] = features, dims[layers] = 1
  T* w[kMaxLayers];
  T* b[kMaxLayers];
  T* m_w[kMaxLayers];
  T* m_b[kMaxLayers];
  T* v_w[kMaxLayers];
  T* v_b[kMaxLayers];
  const T* inputs;
  const T* targets;
  const int64_t* order;
  T* losses;
  int64_t num_states, epochs, minibatch, step;
  int64_t losses_per_member;  // the row length of losses [M, ·]
  double coeff, lr, beta1, beta2, eps;
};

// Shared-memory elements the kernel carves (the layout is the kernel's, in the same order).
template <typename T>
int64_t shared_elements(const FitArgs<T>& a) {
  int64_t n = 0, widest = 1;
  for (int l = 0; l < a.layers; ++l) {
    n += static_cast<int64_t>(a.dims[l + 1]) * odd_stride(a.dims[l]) + a.dims[l + 1];  // W_l, b_l
    n += a.minibatch * odd_stride(a.dims[l]);                                          // h_l
    widest = std::max<int64_t>(widest, odd_stride(a.dims[l + 1]));
  }
  n += a.minibatch;               // the value
  n += 2 * a.minibatch * widest;  // two gradient buffers
  n += a.minibatch;               // the targets
  n += kThreads / kWarp;          // reduction scratch
  return n;
}

template <typename T, bool kTanh>
__device__ __forceinline__ T activate(T z) {
  if constexpr (kTanh) {
    return tanh(z);
  } else {
    return z <= T(0) ? T(0) : z;  // NaN stays NaN, as relu_
  }
}

// The activation's derivative from its output h: 1 − h² for tanh, [h > 0] for relu.
template <typename T, bool kTanh>
__device__ __forceinline__ T activation_backward(T g, T h) {
  if constexpr (kTanh) {
    return g * (T(1) - h * h);
  } else {
    return h <= T(0) ? T(0) : g;
  }
}

// Σ_k a[k·sa]·b[k·sb] over k < n in four interleaved partial sums: four independent chains of FMAs
// keep the pipeline busy where a single chain would wait on each previous FMA.
template <typename T>
__device__ __forceinline__ T strided_dot(const T* a, int sa, const T* b, int sb, int n) {
  T s0 = T(0), s1 = T(0), s2 = T(0), s3 = T(0);
  int k = 0;
  for (; k + 4 <= n; k += 4) {
    s0 += a[k * sa] * b[k * sb];
    s1 += a[(k + 1) * sa] * b[(k + 1) * sb];
    s2 += a[(k + 2) * sa] * b[(k + 2) * sb];
    s3 += a[(k + 3) * sa] * b[(k + 3) * sb];
  }
  for (; k < n; ++k) s0 += a[k * sa] * b[k * sb];
  return (s0 + s1) + (s2 + s3);
}

// torch.optim.Adam on one element, in torch's order of operations (see mlp_fit_composite.cpp).
template <typename T>
__device__ __forceinline__ void adam(T& p, T* m, T* v, T g, T w1, T beta2, T w2, T bc2_sqrt, T eps, T step_size) {
  const T mm = *m + w1 * (g - *m);
  const T vv = *v * beta2 + w2 * g * g;
  *m = mm;
  *v = vv;
  p = p + step_size * mm / (sqrt(vv) / bc2_sqrt + eps);
}

template <typename T, bool kTanh>
__global__ void __launch_bounds__(kThreads) fit_kernel(const FitArgs<T> a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  const int L = a.layers;
  const int tid = threadIdx.x;
  const int64_t mb = a.minibatch;
  // this block's member: its slice of every stacked tensor
  const int64_t member = blockIdx.x;
  const int64_t N = a.num_states;
  const T* inputs = a.inputs + member * N * a.dims[0];
  const T* targets = a.targets + member * N;
  const int64_t* order = a.order + member * a.epochs * N;
  T* losses = a.losses + member * a.losses_per_member;
  T* w_g[kMaxLayers];  // global memory: the member's weights, biases and Adam moments
  T* b_g[kMaxLayers];
  T* m_w[kMaxLayers];
  T* m_b[kMaxLayers];
  T* v_w[kMaxLayers];
  T* v_b[kMaxLayers];
  for (int l = 0; l < L; ++l) {
    const int64_t w_size = static_cast<int64_t>(a.dims[l + 1]) * a.dims[l], b_size = a.dims[l + 1];
    w_g[l] = a.w[l] + member * w_size;
    b_g[l] = a.b[l] + member * b_size;
    m_w[l] = a.m_w[l] + member * w_size;
    m_b[l] = a.m_b[l] + member * b_size;
    v_w[l] = a.v_w[l] + member * w_size;
    v_b[l] = a.v_b[l] + member * b_size;
  }

  T* W[kMaxLayers];
  T* B[kMaxLayers];
  T* H[kMaxLayers];  // H[l]: the input of layer l in this minibatch (H[0]: the states)
  int64_t off = 0, widest = 1;
  for (int l = 0; l < L; ++l) {
    W[l] = smem + off;
    off += static_cast<int64_t>(a.dims[l + 1]) * odd_stride(a.dims[l]);
    B[l] = smem + off;
    off += a.dims[l + 1];
  }
  for (int l = 0; l < L; ++l) {
    H[l] = smem + off;
    off += mb * odd_stride(a.dims[l]);
    widest = max(widest, static_cast<int64_t>(odd_stride(a.dims[l + 1])));
  }
  T* value = smem + off;
  off += mb;
  T* g = smem + off;
  off += mb * widest;
  T* g_next = smem + off;
  off += mb * widest;
  T* target = smem + off;
  off += mb;
  T* scratch = smem + off;

  // the parameters, into shared memory for the whole fit
  for (int l = 0; l < L; ++l) {
    const int in = a.dims[l], out = a.dims[l + 1], s = odd_stride(in);
    for (int t = tid; t < out * in; t += kThreads) W[l][(t / in) * s + t % in] = w_g[l][t];
    for (int t = tid; t < out; t += kThreads) B[l][t] = b_g[l][t];
  }
  __syncthreads();

  const T w1 = static_cast<T>(1.0 - a.beta1), beta2 = static_cast<T>(a.beta2), w2 = static_cast<T>(1.0 - a.beta2);
  const T eps = static_cast<T>(a.eps);
  int64_t k = 0;
  for (int64_t e = 0; e < a.epochs; ++e) {
    for (int64_t start = 0; start < N; start += mb, ++k) {
      const int rows = static_cast<int>(min(mb, N - start));
      const int64_t* idx = order + e * N + start;
      {
        const int in = a.dims[0], s = odd_stride(in);
        for (int t = tid; t < rows * in; t += kThreads) {
          const int r = t / in, i = t % in;
          H[0][r * s + i] = inputs[idx[r] * in + i];
        }
        for (int t = tid; t < rows; t += kThreads) target[t] = targets[idx[t]];
      }
      __syncthreads();

      // forward: H[l + 1] = act(H[l] W_lᵀ + b_l); the last layer writes the value
      for (int l = 0; l < L; ++l) {
        const int in = a.dims[l], out = a.dims[l + 1], si = odd_stride(in), so = odd_stride(out);
        const bool last = l + 1 == L;
        T* dst = last ? value : H[l + 1];
        for (int t = tid; t < rows * out; t += kThreads) {
          const int r = t / out, j = t % out;
          const T acc = B[l][j] + strided_dot(H[l] + r * si, 1, W[l] + j * si, 1, in);
          dst[r * so + j] = last ? acc : activate<T, kTanh>(acc);
        }
        __syncthreads();
      }

      // loss = coeff · mean(d²), d = value − target; its gradient in the value: 2·coeff·d / rows
      const T grad_scale = static_cast<T>(2.0 * a.coeff / rows);
      T local = T(0);
      for (int t = tid; t < rows; t += kThreads) {
        const T d = value[t] - target[t];
        local += d * d;
        g[t] = d * grad_scale;
      }
      const T total = block_sum<kThreads>(local, scratch);  // its first barrier also publishes g
      if (tid == 0) losses[k] = total * static_cast<T>(a.coeff / rows);

      const double step = static_cast<double>(a.step + k + 1);
      const T step_size = static_cast<T>(-a.lr / (1.0 - pow(a.beta1, step)));
      const T bc2_sqrt = static_cast<T>(sqrt(1.0 - pow(a.beta2, step)));

      // backward, last layer first; g holds the gradient at layer l's output ([rows, out])
      for (int l = L - 1; l >= 0; --l) {
        const int in = a.dims[l], out = a.dims[l + 1], si = odd_stride(in), sg = odd_stride(out);
        if (l > 0) {
          // the gradient at layer l's input, through the weights before this step's update
          for (int t = tid; t < rows * in; t += kThreads) {
            const int r = t / in, i = t % in;
            const T acc = strided_dot(g + r * sg, 1, W[l] + i, si, out);
            g_next[r * si + i] = activation_backward<T, kTanh>(acc, H[l][r * si + i]);
          }
          __syncthreads();
        }
        // the weights' and biases' gradients, each element's Adam step right away
        for (int t = tid; t < out * in; t += kThreads) {
          const int j = t / in, i = t % in;
          const T acc = strided_dot(g + j, sg, H[l] + i, si, rows);
          adam(W[l][j * si + i], m_w[l] + t, v_w[l] + t, acc, w1, beta2, w2, bc2_sqrt, eps, step_size);
        }
        for (int j = tid; j < out; j += kThreads) {
          T acc = T(0);
          for (int r = 0; r < rows; ++r) acc += g[r * sg + j];
          adam(B[l][j], m_b[l] + j, v_b[l] + j, acc, w1, beta2, w2, bc2_sqrt, eps, step_size);
        }
        __syncthreads();
        T* swap = g;
        g = g_next;
        g_next = swap;
      }
    }
  }

  for (int l = 0; l < L; ++l) {
    const int in = a.dims[l], out = a.dims[l + 1], s = odd_stride(in);
    for (int t = tid; t < out * in; t += kThreads) w_g[l][t] = W[l][(t / in) * s + t % in];
    for (int t = tid; t < out; t += kThreads) b_g[l][t] = B[l][t];
  }
}

template <typename T>
bool launch_fit(const MlpFitArgs& args, const at::Tensor& x, const at::Tensor& y, const at::Tensor& order,
                int64_t minibatch_size, bool tanh, double coeff, double lr, double beta1, double beta2, double eps,
                int64_t step, const at::Tensor& losses) {
  FitArgs<T> a{};
  a.layers = static_cast<int>(args.params.size() / 2);
  a.dims[0] = static_cast<int>(x.size(2));
  for (int l = 0; l < a.layers; ++l) {
    a.dims[l + 1] = static_cast<int>(args.params[2 * l].size(1));
    a.w[l] = args.params[2 * l].mutable_data_ptr<T>();
    a.b[l] = args.params[2 * l + 1].mutable_data_ptr<T>();
    a.m_w[l] = args.exp_avgs[2 * l].mutable_data_ptr<T>();
    a.m_b[l] = args.exp_avgs[2 * l + 1].mutable_data_ptr<T>();
    a.v_w[l] = args.exp_avg_sqs[2 * l].mutable_data_ptr<T>();
    a.v_b[l] = args.exp_avg_sqs[2 * l + 1].mutable_data_ptr<T>();
  }
  a.inputs = x.const_data_ptr<T>();
  a.targets = y.const_data_ptr<T>();
  a.order = order.const_data_ptr<int64_t>();
  a.losses = losses.mutable_data_ptr<T>();
  a.num_states = args.num_states;
  a.epochs = args.epochs;
  a.minibatch = std::min(minibatch_size, args.num_states);
  a.step = step;
  a.losses_per_member = args.num_losses;
  a.coeff = coeff;
  a.lr = lr;
  a.beta1 = beta1;
  a.beta2 = beta2;
  a.eps = eps;

  const int64_t bytes = shared_elements(a) * static_cast<int64_t>(sizeof(T));
  int device = 0, optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const int64_t limit = optin;
  if (bytes > limit) return false;
  auto kernel = tanh ? fit_kernel<T, true> : fit_kernel<T, false>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  // one block per member (the grid's x dimension holds up to 2³¹ − 1 blocks)
  kernel<<<static_cast<unsigned>(args.members), kThreads, bytes, c10::cuda::getCurrentCUDAStream()>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

at::Tensor mlp_fit_adam_cuda(at::TensorList params_list, at::TensorList exp_avgs_list, at::TensorList exp_avg_sqs_list,
                             const at::Tensor& inputs, const at::Tensor& targets, const at::Tensor& order,
                             int64_t minibatch_size, c10::string_view activation_view, double coeff, double lr,
                             double beta1, double beta2, double eps, int64_t step) {
  const MlpFitArgs args = mlp_fit_unpack(params_list, exp_avgs_list, exp_avg_sqs_list, inputs, targets, order,
                                         minibatch_size, activation_view, step);
  const int64_t num_states = args.num_states, features = args.inputs.size(2);
  const bool small = args.params.size() / 2 <= static_cast<size_t>(kMaxLayers) && num_states < (int64_t{1} << 31) &&
                     features * std::min(minibatch_size, num_states) < (int64_t{1} << 31) &&
                     args.members < (int64_t{1} << 31);
  if (args.members > 0 && num_states > 0 && args.epochs > 0 && small) {
    c10::cuda::CUDAGuard guard(inputs.device());
    at::Tensor result = args.new_losses();
    const at::Tensor losses = result.view({args.members, args.num_losses});
    const at::Tensor x = args.inputs.contiguous(), y = args.targets.contiguous(), o = args.order.contiguous();
    const bool tanh = args.activation == "tanh";
    at::NoGradGuard no_grad;
    const bool launched =
        x.scalar_type() == at::kFloat
            ? launch_fit<float>(args, x, y, o, minibatch_size, tanh, coeff, lr, beta1, beta2, eps, step, losses)
            : launch_fit<double>(args, x, y, o, minibatch_size, tanh, coeff, lr, beta1, beta2, eps, step, losses);
    if (launched) return result;
  }
  // too big for one block (or nothing to fit): the ATen-composed kernel
  return mlp_fit_adam_composite(params_list, exp_avgs_list, exp_avg_sqs_list, inputs, targets, order, minibatch_size,
                                activation_view, coeff, lr, beta1, beta2, eps, step);
}

}  // namespace

TORCH_LIBRARY_IMPL(trpo_torchrl, CUDA, m) {
  m.impl("mlp_fit_adam", &mlp_fit_adam_cuda);
}

}  // namespace trpo_torchrl
