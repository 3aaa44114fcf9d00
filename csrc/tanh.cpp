// trpo_torchrl::tanh — tanh with this project's fast float32 CPU kernel: schema, kernels, dispatch.
//
// ATen's float tanh is a high-accuracy vector routine that costs more than the 64-wide matrix
// products around it in a small MLP (benchmarks/tanh.py times it against this kernel). The kernel
// here (tanh_vec.inc) is compiled three times with GCC on x86, for AVX-512, AVX2 and plain SSE2,
// and the widest one the CPU supports is picked once at load time (other compilers and CPUs: the
// 16-byte version alone). float64 and other devices use ATen's tanh.
#include "tanh.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

namespace trpo_torchrl {
namespace {

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define TRPO_TORCHRL_X86_CLONES 1
#endif

#ifdef TRPO_TORCHRL_X86_CLONES
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,fma")
namespace avx512 {
typedef float V __attribute__((vector_size(64)));
typedef int32_t I __attribute__((vector_size(64)));
#include "tanh_vec.inc"
}  // namespace avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
typedef float V __attribute__((vector_size(32)));
typedef int32_t I __attribute__((vector_size(32)));
#include "tanh_vec.inc"
}  // namespace avx2
#pragma GCC pop_options
#endif

// the baseline: 16-byte vectors (SSE2 on x86-64, NEON on AArch64, scalar code elsewhere)
namespace sse2 {
typedef float V __attribute__((vector_size(16)));
typedef int32_t I __attribute__((vector_size(16)));
#include "tanh_vec.inc"
}  // namespace sse2

using Span = void (*)(const float*, float*, int64_t);

Span pick_span() {
#ifdef TRPO_TORCHRL_X86_CLONES
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("fma")) {
    return avx512::tanh_span;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return avx2::tanh_span;
#endif
  return sse2::tanh_span;
}

const Span span = pick_span();

at::Tensor tanh_cpu(const at::Tensor& x) {
  // every path returns a contiguous tensor, as the op's fake kernel says (at::tanh would keep x's strides)
  if (x.scalar_type() != at::kFloat) return at::tanh(x.contiguous());
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in, at::MemoryFormat::Contiguous);
  const float* src = in.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  at::parallel_for(0, in.numel(), 1 << 15,
                   [&](int64_t begin, int64_t end) { span(src + begin, dst + begin, end - begin); });
  return out;
}

at::Tensor& tanh_inplace_cpu(at::Tensor& x) {
  if (x.scalar_type() != at::kFloat || !x.is_contiguous()) return x.tanh_();
  float* data = x.mutable_data_ptr<float>();
  at::parallel_for(0, x.numel(), 1 << 15,
                   [&](int64_t begin, int64_t end) { span(data + begin, data + begin, end - begin); });
  return x;
}

at::Tensor tanh_any(const at::Tensor& x) {
  return at::tanh(x.contiguous());
}

at::Tensor& tanh_inplace_any(at::Tensor& x) {
  return x.tanh_();
}

}  // namespace

void tanh_float(const float* in, float* out, int64_t n) {
  span(in, out, n);
}

TORCH_LIBRARY_FRAGMENT(trpo_torchrl, m) {
  m.def("tanh(Tensor x) -> Tensor");
  // in place: a fresh activation buffer is overwritten, no second large allocation
  m.def("tanh_(Tensor(a!) x) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(trpo_torchrl, CPU, m) {
  m.impl("tanh", &tanh_cpu);
  m.impl("tanh_", &tanh_inplace_cpu);
}

// every other device: ATen's own tanh
TORCH_LIBRARY_IMPL(trpo_torchrl, CompositeExplicitAutograd, m) {
  m.impl("tanh", &tanh_any);
  m.impl("tanh_", &tanh_inplace_any);
}

}  // namespace trpo_torchrl
