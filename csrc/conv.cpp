// The masked causal conv and the magnitude prune: device-generic orchestration over the kernel table
// (csrc/kernels.h), with the GEMM every operator uses (csrc/gemm.cpp). Schemas: csrc/ops.cpp.
#include "conv.h"

#include <ATen/DeviceGuard.h>

#include <algorithm>
#include <cfenv>
#include <cmath>

#include "kernels.h"
#include "ops.h"

namespace conure {

void check_conv_args(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& owner, int64_t task,
                     const std::optional<at::Tensor>& bias, int64_t dilation) {
  TORCH_CHECK(x.dim() == 3, "masked_causal_conv1d: x must be [B, L, C_in], got ", x.sizes());
  TORCH_CHECK(weight.dim() == 3, "masked_causal_conv1d: weight must be [C_out, C_in, K], got ", weight.sizes());
  TORCH_CHECK(x.size(2) == weight.size(1), "masked_causal_conv1d: x has ", x.size(2), " channels, weight expects ",
              weight.size(1));
  TORCH_CHECK(weight.size(0) > 0 && weight.size(1) > 0 && weight.size(2) > 0, "masked_causal_conv1d: weight ",
              weight.sizes(), " has an empty dimension");
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() && at::isFloatingType(x.scalar_type()),
              "masked_causal_conv1d: x and weight must share one floating dtype, got ", x.scalar_type(), " and ",
              weight.scalar_type());
  TORCH_CHECK(owner.scalar_type() == at::kByte, "masked_causal_conv1d: owner must be uint8, got ", owner.scalar_type());
  TORCH_CHECK(owner.sizes() == weight.sizes(), "masked_causal_conv1d: owner shape ", owner.sizes(), " != weight shape ",
              weight.sizes());
  TORCH_CHECK(x.device() == weight.device() && owner.device() == weight.device(),
              "masked_causal_conv1d: x, weight and owner must be on one device");
  TORCH_CHECK(task >= 0 && task <= 255, "masked_causal_conv1d: task must be in [0, 255], got ", task);
  TORCH_CHECK(dilation >= 1, "masked_causal_conv1d: dilation must be >= 1, got ", dilation);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "masked_causal_conv1d: bias must be [",
                weight.size(0), "], got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == weight.scalar_type() && bias->device() == weight.device(),
                "masked_causal_conv1d: bias must match weight's dtype and device");
  }
}

void check_prune_args(at::TensorList weights, at::TensorList owners, int64_t task, double keep_ratio) {
  TORCH_CHECK(!weights.empty() && weights.size() == owners.size(),
              "magnitude_prune_: need as many owners as weights (at least one)");
  TORCH_CHECK(task >= 0 && task <= 255, "magnitude_prune_: task must be in [0, 255], got ", task);
  TORCH_CHECK(keep_ratio >= 0.0 && keep_ratio <= 1.0, "magnitude_prune_: keep_ratio must be in [0, 1], got ",
              keep_ratio);
  for (size_t n = 0; n < weights.size(); ++n) {
    TORCH_CHECK(at::isFloatingType(weights[n].scalar_type()) && weights[n].scalar_type() == weights[0].scalar_type(),
                "magnitude_prune_: weights must share one floating dtype");
    TORCH_CHECK(owners[n].scalar_type() == at::kByte, "magnitude_prune_: owner ", n, " must be uint8");
    TORCH_CHECK(owners[n].sizes() == weights[n].sizes(), "magnitude_prune_: owner ", n, " shape ", owners[n].sizes(),
                " != weight shape ", weights[n].sizes());
    TORCH_CHECK(owners[n].is_contiguous(), "magnitude_prune_: owner ", n, " must be contiguous");
    TORCH_CHECK(weights[n].device() == weights[0].device() && owners[n].device() == weights[0].device(),
                "magnitude_prune_: all tensors must be on one device");
  }
}

int64_t kept_count(double keep_ratio, int64_t n) {
  // std::nearbyint in the default rounding mode rounds half to even, like Python's round().
  return static_cast<int64_t>(std::nearbyint(keep_ratio * static_cast<double>(n)));
}

// bfloat16 and float16 round every GEMM's result once; K GEMMs accumulating into y would round K times. Their
// taps meet instead in one GEMM over the taps side by side (col[r, j*C + c] = v[b, t -/+ s_j, c], zero outside the
// sequence), whose float32 accumulator rounds once. Chunks of whole sequences bound the col buffer.
bool rounds_per_gemm(at::ScalarType dtype) { return dtype == at::kHalf || dtype == at::kBFloat16; }

constexpr int64_t kColChunkElems = int64_t{1} << 22;  // 4M elements: 8 MiB at 2 bytes

// out_rows = col(v) @ w for whole sequences [b0, b0 + nb) at a time. v: [B, L, C]; w: [K*C, C_out];
// out: [B*L, C_out] (accumulated into when accumulate). Tap j reads v at t - (K-1-j)*dilation (direction +1,
// the forward) or t + (K-1-j)*dilation (direction -1, the input gradient).
void gemm_over_taps(at::Tensor out, const at::Tensor& v, const at::Tensor& w, int64_t K, int64_t dilation,
                    int direction, bool accumulate) {
  const int64_t B = v.size(0), L = v.size(1), C = v.size(2);
  const int64_t per_seq = L * K * C;
  const int64_t nb_max = std::max<int64_t>(1, std::min<int64_t>(B, kColChunkElems / std::max<int64_t>(per_seq, 1)));
  at::Tensor col_buf = at::empty({nb_max, L, K * C}, v.options());
  for (int64_t b0 = 0; b0 < B; b0 += nb_max) {
    const int64_t nb = std::min(nb_max, B - b0);
    at::Tensor col = col_buf.narrow(0, 0, nb);
    const at::Tensor vb = v.narrow(0, b0, nb);
    for (int64_t j = 0; j < K; ++j) {
      const int64_t s = std::min((K - 1 - j) * dilation, L);
      at::Tensor dst = col.narrow(2, j * C, C);
      if (direction > 0) {  // dst[t] = v[t - s]
        dst.narrow(1, 0, s).zero_();
        dst.narrow(1, s, L - s).copy_(vb.narrow(1, 0, L - s));
      } else {  // dst[t] = v[t + s]
        dst.narrow(1, 0, L - s).copy_(vb.narrow(1, s, L - s));
        dst.narrow(1, L - s, s).zero_();
      }
    }
    gemm(out.narrow(0, b0 * L, nb * L), col.view({nb * L, K * C}), w, accumulate);
  }
}

// taps[j, i, o] = weight[o, i, j] where 1 <= owner <= task, else 0: the per-tap [C_in, C_out] GEMM operands.
void mask_taps(const Kernels& kernels, const at::Tensor& weight, const at::Tensor& owner, int64_t task,
               at::Tensor& taps) {
  at::Tensor out = taps.permute({2, 0, 1});  // the [C_out, K, C_in] view mask_weight writes through
  kernels.mask_weight(weight, owner, task, 0, out);
}

// y[b, t] = bias + sum_j x[b, t - s_j] @ Wt[j] with s_j = (K-1-j) * dilation.
// Each tap is one GEMM over the flat [B*L, C] rows shifted by s_j. Rows t < s_j of batch b >= 1 would then pick up
// batch b-1's tail; they are saved before and restored after, so no padded or transposed copy of x is made.
at::Tensor masked_causal_conv1d(const at::Tensor& x_in, const at::Tensor& weight_in, const at::Tensor& owner_in,
                                int64_t task, const std::optional<at::Tensor>& bias, int64_t dilation) {
  check_conv_args(x_in, weight_in, owner_in, task, bias, dilation);
  const at::OptionalDeviceGuard guard(at::device_of(weight_in));
  const Kernels& kernels = kernels_for(weight_in, "masked_causal_conv1d");
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), owner = owner_in.contiguous();
  const int64_t B = x.size(0), L = x.size(1), C_in = x.size(2), C_out = weight.size(0), K = weight.size(2);
  const int64_t N = B * L;
  dilation = std::min(dilation, std::max<int64_t>(L, 1));  // taps past the start read zeros; avoids overflow
  at::Tensor y = at::empty({B, L, C_out}, x.options());
  if (N == 0) return y;
  at::Tensor taps = at::empty({K, C_in, C_out}, weight.options());
  mask_taps(kernels, weight, owner, task, taps);
  const at::Tensor x2 = x.view({N, C_in});
  at::Tensor y2 = y.view({N, C_out});
  if (bias.has_value()) y2.copy_(bias->view({1, C_out}).expand({N, C_out}));
  if (rounds_per_gemm(x.scalar_type()) && K > 1) {
    gemm_over_taps(y2, x, taps.view({K * C_in, C_out}), K, dilation, +1, bias.has_value());
    return y;
  }
  gemm(y2, x2, taps[K - 1], /*accumulate=*/bias.has_value());
  for (int64_t j = 0; j < K - 1; ++j) {
    const int64_t s = (K - 1 - j) * dilation;
    if (s >= L) continue;  // reaches only negative time: zero
    at::Tensor head = B > 1 ? y.narrow(1, 0, s).clone() : at::Tensor();
    gemm(y2.narrow(0, s, N - s), x2.narrow(0, 0, N - s), taps[j], /*accumulate=*/true);
    if (B > 1) y.narrow(1, 0, s).copy_(head);
  }
  return y;
}

// grad_x[b, t] = sum_j grad_y[b, t + s_j] @ Wt[j]^T and grad_W[:, :, j] = sum_{b,t} grad_y[b, t + s_j]^T x[b, t].
// G_j (grad_y shifted back by s_j, zero past the end of each sequence) serves both GEMMs of tap j.
ConvGrads masked_causal_conv1d_backward(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                                        const at::Tensor& weight_in, const at::Tensor& owner_in, int64_t task,
                                        int64_t dilation, std::array<bool, 3> output_mask) {
  check_conv_args(x_in, weight_in, owner_in, task, std::nullopt, dilation);
  const at::OptionalDeviceGuard guard(at::device_of(weight_in));
  const Kernels& kernels = kernels_for(weight_in, "masked_causal_conv1d_backward");
  const at::Tensor x = x_in.contiguous(), weight = weight_in.contiguous(), owner = owner_in.contiguous();
  const int64_t B = x.size(0), L = x.size(1), C_in = x.size(2), C_out = weight.size(0), K = weight.size(2);
  const int64_t N = B * L;
  dilation = std::min(dilation, std::max<int64_t>(L, 1));  // as in the forward
  TORCH_CHECK(grad_y_in.device() == x.device(), "masked_causal_conv1d_backward: grad_y is on ", grad_y_in.device(),
              " but x is on ", x.device(), ": all tensors must be on one device");
  TORCH_CHECK(grad_y_in.dim() == 3 && grad_y_in.size(0) == B && grad_y_in.size(1) == L && grad_y_in.size(2) == C_out &&
                  grad_y_in.scalar_type() == x.scalar_type(),
              "masked_causal_conv1d_backward: grad_y must be [", B, ", ", L, ", ", C_out, "] of x's dtype, got ",
              grad_y_in.sizes(), " ", grad_y_in.scalar_type());
  const at::Tensor grad_y = grad_y_in.contiguous();
  const at::Tensor gy2 = grad_y.view({N, C_out});
  bool need_x = output_mask[0];
  const bool need_w = output_mask[1];

  std::optional<at::Tensor> grad_x, grad_w, grad_b;
  at::Tensor taps, grad_taps;
  if (need_x) {
    grad_x = at::empty({B, L, C_in}, x.options());
    taps = at::empty({K, C_in, C_out}, weight.options());
    mask_taps(kernels, weight, owner, task, taps);
  }
  if (need_w) grad_taps = at::empty({K, C_out, C_in}, weight.options());
  if (N == 0) {
    if (need_x) grad_x->zero_();
    if (need_w) grad_taps.zero_();
  } else if (need_x || need_w) {
    const at::Tensor x2 = x.view({N, C_in});
    if (need_x && rounds_per_gemm(x.scalar_type()) && K > 1) {
      // grad_x rows = sum_j G_j @ Wt[j]^T as one GEMM over the taps side by side (one rounding); the weight
      // gradient below is one GEMM per tap already.
      const at::Tensor taps_t = taps.transpose(1, 2).reshape({K * C_out, C_in});
      gemm_over_taps(grad_x->view({N, C_in}), grad_y, taps_t, K, dilation, -1, /*accumulate=*/false);
      need_x = false;
    }
    if (need_x) gemm(grad_x->view({N, C_in}), gy2, taps[K - 1].t(), /*accumulate=*/false);
    if (need_w) gemm(grad_taps[K - 1], gy2.t(), x2, /*accumulate=*/false);
    at::Tensor shifted;
    for (int64_t j = 0; j < K - 1; ++j) {
      const int64_t s = (K - 1 - j) * dilation;
      if (s >= L) {
        if (need_w) grad_taps[j].zero_();
        continue;
      }
      if (!shifted.defined()) shifted = at::empty({B, L, C_out}, grad_y.options());
      shifted.narrow(1, 0, L - s).copy_(grad_y.narrow(1, s, L - s));
      shifted.narrow(1, L - s, s).zero_();
      const at::Tensor g2 = shifted.view({N, C_out});
      if (need_x) gemm(grad_x->view({N, C_in}), g2, taps[j].t(), /*accumulate=*/true);
      if (need_w) gemm(grad_taps[j], g2.t(), x2, /*accumulate=*/false);
    }
  }
  if (need_w) {
    if (task == 0) {
      grad_w = at::zeros({C_out, C_in, K}, weight.options());  // owner 0 (free) is never active
    } else {
      grad_w = at::empty({C_out, C_in, K}, weight.options());
      at::Tensor& out = *grad_w;
      kernels.scatter_grad(grad_taps.permute({1, 0, 2}), owner, task, 0, out);  // [C_out, K, C_in] view
    }
  }
  if (output_mask[2]) grad_b = gy2.sum(0);
  return {grad_x, grad_w, grad_b};
}

at::Tensor magnitude_prune_many_(at::TensorList weights, at::TensorList owners, int64_t task, double keep_ratio) {
  check_prune_args(weights, owners, task, keep_ratio);
  const at::OptionalDeviceGuard guard(at::device_of(weights[0]));
  const int64_t kept = kernels_for(weights[0], "magnitude_prune_").prune(weights, owners, task, keep_ratio);
  return at::scalar_tensor(kept, at::kLong);
}

}  // namespace conure
