// conure's operator from C++, as a C++ application calls it: load the library (its TORCH_LIBRARY blocks register
// conure::*), look the operator up in PyTorch's dispatcher by name, call it, and check the result against a plain
// loop over the formula in conure/ops.py.
//
//   conure_example [path/to/libconure_ops.so]      (default: the library this CMake build made)
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <optional>

#ifndef CONURE_OPS_LIBRARY
#define CONURE_OPS_LIBRARY "libconure_ops.so"
#endif

namespace {

// y[b,t,o] = bias[o] + sum_{i,j} w[o,i,j] * (1 <= owner[o,i,j] <= task) * x[b, t-(K-1-j)*dilation, i]
at::Tensor plain_conv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& owner, int64_t task,
                      const at::Tensor& bias, int64_t dilation) {
  const int64_t B = x.size(0), L = x.size(1), C_in = x.size(2), C_out = w.size(0), K = w.size(2);
  auto y = at::zeros({B, L, C_out}, x.options());
  auto xa = x.accessor<float, 3>();
  auto wa = w.accessor<float, 3>();
  auto oa = owner.accessor<uint8_t, 3>();
  auto ba = bias.accessor<float, 1>();
  auto ya = y.accessor<float, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int64_t o = 0; o < C_out; ++o) {
        double acc = ba[o];
        for (int64_t i = 0; i < C_in; ++i)
          for (int64_t j = 0; j < K; ++j) {
            const int64_t s = t - (K - 1 - j) * dilation;
            if (s >= 0 && oa[o][i][j] >= 1 && oa[o][i][j] <= task) acc += double(wa[o][i][j]) * xa[b][s][i];
          }
        ya[b][t][o] = static_cast<float>(acc);
      }
  return y;
}

}  // namespace

int main(int argc, char** argv) {
  const char* library = argc > 1 ? argv[1] : CONURE_OPS_LIBRARY;
  if (dlopen(library, RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    std::fprintf(stderr, "conure_example: cannot load %s: %s\n", library, dlerror());
    return 1;
  }
  // The schema, from csrc/ops.cpp: masked_causal_conv1d(Tensor x, Tensor weight, Tensor owner, int task,
  // Tensor? bias=None, int dilation=1) -> Tensor.
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("conure::masked_causal_conv1d", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                  const std::optional<at::Tensor>&, int64_t)>();

  at::manual_seed(0);
  const int64_t B = 2, L = 9, C_in = 3, C_out = 4, K = 3, dilation = 2, task = 2;
  auto x = at::randn({B, L, C_in});
  auto w = at::randn({C_out, C_in, K});
  auto owner = at::randint(0, 4, {C_out, C_in, K}, at::kByte);  // tasks 0 (free) to 3: task 2 uses owners 1 and 2
  auto bias = at::randn({C_out});

  auto y = op.call(x, w, owner, task, bias, dilation);
  if (y.sizes() != at::IntArrayRef({B, L, C_out})) {
    std::fprintf(stderr, "conure_example: y has shape %s, want [%ld, %ld, %ld]\n",
                 c10::str(y.sizes()).c_str(), long(B), long(L), long(C_out));
    return 1;
  }
  const double diff = (y - plain_conv(x, w, owner, task, bias, dilation)).abs().max().item<double>();
  // A known value: at t = 0 only the last tap sees data (causal), so with every weight of task 1 and no bias,
  // y[0, 0, o] = sum_i w[o, i, K-1] * x[0, 0, i].
  auto y0 = op.call(x, w, at::ones_like(owner), 1, std::nullopt, dilation);
  const double known = (y0[0][0] - at::matmul(w.select(2, K - 1), x[0][0])).abs().max().item<double>();
  if (!(diff < 1e-4) || !(known < 1e-5)) {
    std::fprintf(stderr, "conure_example: mismatch (max |diff| %.3g against the loop, %.3g at t = 0)\n", diff, known);
    return 1;
  }
  std::printf("conure_example: conure::masked_causal_conv1d [%ld, %ld, %ld] matches the plain loop "
              "(max |diff| %.2g)\n", long(B), long(L), long(C_out), diff);
  return 0;
}
