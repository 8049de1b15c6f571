// Device-generic parts of conure's operators.
//
// The masked causal conv is K GEMMs (one per tap) on [B*L, C] row blocks (bfloat16/float16: one GEMM over the
// taps side by side, so the sum rounds once), done with at::mm (BLAS or oneDNN on CPU, cuBLAS on CUDA), plus two
// small backend kernels that fuse the owner-map mask with the layout change the GEMMs want. Each backend
// (csrc/cpu, csrc/cuda) supplies those two kernels and its own prune.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace conure {

// The two per-backend kernels the conv needs. All tensors contiguous.
struct ConvKernels {
  // out[j, i, o] = weight[o, i, j] if 1 <= owner[o, i, j] <= task else 0.
  // weight, owner: [C_out, C_in, K]; out: [K, C_in, C_out].
  void (*mask_weight)(const at::Tensor& weight, const at::Tensor& owner, int64_t task, at::Tensor& out);
  // grad_weight[o, i, j] = grad_taps[j, o, i] if owner[o, i, j] == task else 0.
  // grad_taps: [K, C_out, C_in]; owner, grad_weight: [C_out, C_in, K].
  void (*scatter_grad)(const at::Tensor& grad_taps, const at::Tensor& owner, int64_t task, at::Tensor& grad_weight);
};

// out = (accumulate ? out : 0) + a @ b; 2-D, or 3-D batched (a's batch may be 1: broadcast). CPU float32/bfloat16
// go to oneDNN when this torch exports at::native::mkldnn_matmul (see masked_conv.cpp); else at::mm/bmm.
void gemm(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate);

// Argument checks shared by every backend (the Python wrapper checks first with friendlier messages).
void check_conv_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& owner, int64_t task,
                     const std::optional<at::Tensor>& bias, int64_t dilation);
void check_prune_args(at::TensorList weights, at::TensorList owners, int64_t task, double keep_ratio);

// Python's round(keep_ratio * n): round half to even.
int64_t kept_count(double keep_ratio, int64_t n);

at::Tensor masked_conv_forward(const ConvKernels& kernels, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& owner, int64_t task, const std::optional<at::Tensor>& bias,
                               int64_t dilation);

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>> masked_conv_backward(
    const ConvKernels& kernels, const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& owner, int64_t task, int64_t dilation, std::array<bool, 3> output_mask);

}  // namespace conure
