// Device-generic parts of conure's fused residual block, streaming step and multi-task serving forward.
//
// Pre-LN residual block (conure.nn.ResidualBlock, pre_ln=True), activations [B, L, C]:
//     h = conv1(relu(LN1(x)))          conv1: masked causal conv, dilation d
//     y = x + conv2(relu(LN2(h)))      conv2: masked causal conv, dilation 2d
// Each conv is ONE GEMM over an "im2col" buffer: col[b, t, jj*C + i] = a[b, t - s_j, i] (zero at negative time),
// s_j = (K-1-j)*dilation, for the taps j in [j0, K) that can reach the sequence (s_j < L). The LayerNorm + ReLU
// pass writes its output straight into that buffer (K copies of each row, no pad/transpose copy), and the masked
// weights are laid out as the matching [(K-j0)*C_in, C_out] matrix. The block is processed a few whole sequences
// at a time, so the col buffer stays small (cache resident) and peak memory is the output plus what backward needs:
// conv1's output h and the LayerNorm statistics. Backward recomputes the LN/ReLU outputs from x, h and the stats.
//
// Each backend (csrc/cpu/block_cpu.cpp, csrc/cuda/block_cuda*) supplies the kernels below; the GEMMs go to
// at::mm / oneDNN (CPU) or cuBLAS (CUDA) from block.cpp.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>

namespace conure {
namespace block {

// Per-backend kernels. All tensors contiguous and on one device unless a comment says otherwise. Statistics
// (mean, rstd) are float32 for float32/bfloat16/float16 activations and float64 for float64 ones.
struct Kernels {
  // rows[o, (j - j0) * C_in + i] = w[o, i, j] if 1 <= owner[o, i, j] <= task else 0, for j in [j0, K).
  // w, owner: [C_out, C_in, K]; rows: [C_out, (K - j0) * C_in] (the conv is col @ rows^T).
  void (*mask_rows)(const at::Tensor& w, const at::Tensor& owner, int64_t task, int64_t j0, at::Tensor& rows);

  // grad_w[o, i, j] = grows[o, (j - j0) * C_in + i] if j >= j0 and owner[o, i, j] == task >= 1, else 0.
  // grows: [C_out, (K - j0) * C_in]; owner, grad_w: [C_out, C_in, K].
  void (*scatter_rows)(const at::Tensor& grows, const at::Tensor& owner, int64_t task, int64_t j0,
                       at::Tensor& grad_w);

  // LayerNorm + ReLU + im2col. in: [S, L_in, C] (S sequences); gamma, beta: [C]; col: [S, L_out, (K-j0)*C] with
  // L_out <= L_in (the LAST L_out positions of each sequence):
  //   a[s, p]  = relu(gamma * (in[s, p] - mean[s, p]) * rstd[s, p] + beta)
  //   col[s, r, (j-j0)*C + c] = a[s, L_in - L_out + r - (K-1-j)*dilation, c], or 0 where that index is < 0.
  // mean, rstd: [S * L_in]; written when compute_stats, else read (backward's recompute). Both may be undefined
  // tensors when compute_stats (then the statistics are not stored). copy_out: undefined, or [S, L_copy, C] with
  // L_copy <= L_in that receives the last L_copy positions of `in` in the same pass (the block's residual).
  void (*ln_relu_im2col)(const at::Tensor& in, const at::Tensor& gamma, const at::Tensor& beta, double eps,
                         int64_t K, int64_t j0, int64_t dilation, bool compute_stats, at::Tensor& mean,
                         at::Tensor& rstd, at::Tensor& col, at::Tensor& copy_out);

  // Backward of ln_relu_im2col with L_out == L_in == L. gcol: [S, L, (K-j0)*C], the gradient of col.
  //   ga[s, p] = sum_{j >= j0, p + s_j < L} gcol[s, p + s_j, (j-j0)*C : ...]      (col2im)
  //   dz = ga * (z > 0) with z = gamma * xhat + beta, xhat = (in - mean) * rstd
  //   grad_in = residual + rstd * (dz*gamma - mean_c(dz*gamma) - xhat * mean_c(dz*gamma*xhat))
  //   dgamma += sum_{s,p} dz * xhat; dbeta += sum_{s,p} dz            ([C], stats dtype)
  // residual may be undefined (then 0); grad_in undefined: not computed; dgamma/dbeta undefined: not computed.
  void (*ln_relu_col2im_backward)(const at::Tensor& gcol, const at::Tensor& in, const at::Tensor& mean,
                                  const at::Tensor& rstd, const at::Tensor& gamma, const at::Tensor& beta,
                                  int64_t K, int64_t j0, int64_t dilation, const at::Tensor& residual,
                                  at::Tensor& grad_in, at::Tensor& dgamma, at::Tensor& dbeta);

  // out[m] = sum_{i < n} parts[i, m], added in order i = 0, 1, ... (deterministic). parts: [n, M]; out: [M]; any
  // floating dtype (both the same).
  void (*sum_parts)(const at::Tensor& parts, at::Tensor& out);

  // One streaming step of one conv's input side, for T_r task states of B users:
  //   a[t, b] = relu(LN(in[t_in, b])) with t_in = t if in has T_r rows else 0 (in: [T_in, B, C], T_in in {1, T_r});
  //   a[t, b] = in[t_in, b] when gamma is undefined (a post-LN block's conv1 reads its input as it is)
  //   col[t, b, j*C : (j+1)*C] = ring[t, b, (pos[b] - s_j) mod R]  for j < K-1,   col[t, b, (K-1)*C ...] = a[t, b]
  //   then ring[t, b, pos[b] mod R] = a[t, b].
  // ring: [T_r, B, R, C] with R = (K-1)*dilation (0 when K == 1); pos: [B] int64 >= 0; col: [T_r, B, K*C].
  void (*stream_gather)(const at::Tensor& in, const at::Tensor& gamma, const at::Tensor& beta, double eps,
                        at::Tensor& ring, const at::Tensor& pos, int64_t K, int64_t dilation, at::Tensor& col);
};

// The first tap that can reach a sequence of length L: taps with (K-1-j)*dilation >= L see only negative time.
inline int64_t first_tap(int64_t K, int64_t dilation, int64_t L) {
  if (L <= 0) return K - 1;
  const int64_t reach = (L - 1) / dilation;  // largest j-offset (K-1-j) with s_j < L
  return reach >= K - 1 ? 0 : K - 1 - reach;
}

// A dilation >= L acts like L (every tap but the last reaches before the start); clamping keeps the products
// (K-1) * dilation from overflowing for absurd dilations.
inline int64_t clamp_dilation(int64_t dilation, int64_t L) { return std::min(dilation, std::max<int64_t>(L, 1)); }

at::ScalarType stats_dtype(at::ScalarType activation);

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_forward(
    const Kernels& k, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& owner1, const at::Tensor& w2,
    const at::Tensor& owner2, const at::Tensor& ln1_weight, const at::Tensor& ln1_bias, const at::Tensor& ln2_weight,
    const at::Tensor& ln2_bias, int64_t task, int64_t dilation, double eps);

using BlockGrads = std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>,
                               std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>,
                               std::optional<at::Tensor>>;

// Gradients of (x, w1, w2, ln1_weight, ln1_bias, ln2_weight, ln2_bias), each computed when output_mask says so.
BlockGrads block_backward(
    const Kernels& k, const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h, const at::Tensor& stats,
    const at::Tensor& w1, const at::Tensor& owner1, const at::Tensor& w2, const at::Tensor& owner2,
    const at::Tensor& ln1_weight, const at::Tensor& ln1_bias, const at::Tensor& ln2_weight,
    const at::Tensor& ln2_bias, int64_t task, int64_t dilation, std::array<bool, 7> output_mask);

// Post-LN block (conure.nn.ResidualBlock, pre_ln=False): h = conv1(x), y = x + relu(LN2(conv2(relu(LN1(h))))).
// ln1_*: [C_mid] (over h), ln2_*: [C] (over conv2's output). Returns (y, h, stats) like block_forward, except that
// h is [B, L, C_mid + C]: conv1's output [B, L, C_mid] then conv2's [B, L, C], stored one after the other (flat).
// The backward takes the same arguments and output mask as block_backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> post_block_forward(
    const Kernels& k, const at::Tensor& x, const at::Tensor& w1, const at::Tensor& owner1, const at::Tensor& w2,
    const at::Tensor& owner2, const at::Tensor& ln1_weight, const at::Tensor& ln1_bias, const at::Tensor& ln2_weight,
    const at::Tensor& ln2_bias, int64_t task, int64_t dilation, double eps);

BlockGrads post_block_backward(
    const Kernels& k, const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h, const at::Tensor& stats,
    const at::Tensor& w1, const at::Tensor& owner1, const at::Tensor& w2, const at::Tensor& owner2,
    const at::Tensor& ln1_weight, const at::Tensor& ln1_bias, const at::Tensor& ln2_weight,
    const at::Tensor& ln2_bias, int64_t task, int64_t dilation, std::array<bool, 7> output_mask);

// post_ln: the blocks are post-LN (rings hold conv1's raw inputs and relu(LN1(conv1)); ln[2c], ln[2c+1] follow
// conv c) instead of pre-LN (rings hold relu(LN(.)) of each conv's input; ln[2c], ln[2c+1] precede conv c).
at::Tensor stream_step(const Kernels& k, const at::Tensor& x, const at::Tensor& pos, at::TensorList rings,
                       at::TensorList wcols, at::TensorList ln, at::IntArrayRef dilations, int64_t kernel_size,
                       double eps, bool post_ln);

// post_ln as in stream_step.
at::Tensor multi_task_forward(const Kernels& k, const at::Tensor& x, at::TensorList wcols, at::TensorList ln,
                              at::IntArrayRef dilations, int64_t kernel_size, double eps, int64_t out_len,
                              bool post_ln);

}  // namespace block
}  // namespace conure
