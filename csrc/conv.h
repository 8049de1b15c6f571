// The masked causal conv's shared pieces: the GEMM every operator uses (gemm.h), argument checks, the prune's keep
// count.
//
// The masked causal conv is K GEMMs (one per tap) on [B*L, C] row blocks (bfloat16/float16: one GEMM over the
// taps side by side, so the sum rounds once), done with conure::gemm, plus the backend's weight layout kernels
// (mask_weight, scatter_grad: csrc/kernels.h) that fuse the owner-map mask with the layout change the GEMMs want.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "gemm.h"

namespace conure {

// Argument checks shared by every backend (the Python wrapper checks first with friendlier messages).
void check_conv_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& owner, int64_t task,
                     const std::optional<at::Tensor>& bias, int64_t dilation);
void check_prune_args(at::TensorList weights, at::TensorList owners, int64_t task, double keep_ratio);

// Python's round(keep_ratio * n): round half to even.
int64_t kept_count(double keep_ratio, int64_t n);

}  // namespace conure
