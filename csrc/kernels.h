// The per-device kernel table of conure's operators.
//
// The operators' orchestration (csrc/conv.cpp, csrc/block.cpp) is device-generic: GEMMs through conure::gemm
// (oneDNN or BLAS on the CPU, cuBLAS on CUDA) around a handful of memory-bound kernels, which each backend supplies in
// one table (csrc/cpu/kernels_cpu.cpp, csrc/cuda/kernels_cuda.cpp) registered at load time. An operator finds the
// table of its inputs' device with kernels_for. All tensors are contiguous and on one device unless a comment says
// otherwise; statistics (mean, rstd, dgamma, dbeta) are float32 for float32/bfloat16/float16 activations and float64
// for float64 ones.
#pragma once

#include <ATen/ATen.h>

namespace conure {

struct Kernels {
  // ---- weight layout (the masked conv and the fused block)
  // out[o, j - j0, i] = w[o, i, j] if 1 <= owner[o, i, j] <= task else 0, for j in [j0, K). w, owner: [C_out, C_in, K];
  // out: a [C_out, K - j0, C_in] view of any strides (the conv: its [K, C_in, C_out] taps permuted; the block: its
  // [C_out, (K - j0) * C_in] rows).
  void (*mask_weight)(const at::Tensor& w, const at::Tensor& owner, int64_t task, int64_t j0, at::Tensor& out);
  // grad_w[o, i, j] = grad[o, j - j0, i] if j >= j0 and owner[o, i, j] == task >= 1, else 0. grad: a
  // [C_out, K - j0, C_in] view whose last dimension has unit stride; owner, grad_w: [C_out, C_in, K].
  void (*scatter_grad)(const at::Tensor& grad, const at::Tensor& owner, int64_t task, int64_t j0, at::Tensor& grad_w);

  // ---- the fused block, streaming step and multi-task forward (csrc/block.cpp)
  // LayerNorm + ReLU + im2col. in: [S, L_in, C] (S sequences); gamma, beta: [C]; col: [S, L_out, (K-j0)*C] with
  // L_out <= L_in (the LAST L_out positions of each sequence):
  //   a[s, p]  = relu(gamma * (in[s, p] - mean[s, p]) * rstd[s, p] + beta)
  //   col[s, r, (j-j0)*C + c] = a[s, L_in - L_out + r - (K-1-j)*dilation, c], or 0 where that index is < 0.
  // mean, rstd: [S * L_in]; written when compute_stats, else read (backward's recompute). Both may be undefined
  // tensors when compute_stats (then the statistics are not stored). copy_out: undefined, or [S, L_copy, C] with
  // L_copy <= L_in that receives the last L_copy positions of `in` in the same pass (the block's residual).
  void (*ln_relu_im2col)(const at::Tensor& in, const at::Tensor& gamma, const at::Tensor& beta, double eps, int64_t K,
                         int64_t j0, int64_t dilation, bool compute_stats, at::Tensor& mean, at::Tensor& rstd,
                         at::Tensor& col, at::Tensor& copy_out);

  // Backward of ln_relu_im2col with L_out == L_in == L. gcol: [S, L, (K-j0)*C], the gradient of col.
  //   ga[s, p] = sum_{j >= j0, p + s_j < L} gcol[s, p + s_j, (j-j0)*C : ...]      (col2im)
  //   dz = ga * (z > 0) with z = gamma * xhat + beta, xhat = (in - mean) * rstd
  //   grad_in = residual + rstd * (dz*gamma - mean_c(dz*gamma) - xhat * mean_c(dz*gamma*xhat))
  //   dgamma += sum_{s,p} dz * xhat; dbeta += sum_{s,p} dz            ([C], stats dtype)
  // residual may be undefined (then 0); grad_in undefined: not computed; dgamma/dbeta undefined: not computed.
  void (*ln_relu_col2im_backward)(const at::Tensor& gcol, const at::Tensor& in, const at::Tensor& mean,
                                  const at::Tensor& rstd, const at::Tensor& gamma, const at::Tensor& beta, int64_t K,
                                  int64_t j0, int64_t dilation, const at::Tensor& residual, at::Tensor& grad_in,
                                  at::Tensor& dgamma, at::Tensor& dbeta);

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

  // ---- the magnitude prune (arguments checked; weights of any strides, owners contiguous): frees the
  // smallest-|w| share of task's entries over all tensors (one threshold; ties to the lower flat index), writing the
  // owners in place; returns how many it kept.
  int64_t (*prune)(at::TensorList weights, at::TensorList owners, int64_t task, double keep_ratio);
};

// Registers a backend's table (a static initializer of its kernels_*.cpp); returns true.
bool register_kernels(c10::DeviceType device, const Kernels* kernels);

// The table for t's device; `op` names the operator in the error when conure has no kernels there.
const Kernels& kernels_for(const at::Tensor& t, const char* op);

}  // namespace conure
