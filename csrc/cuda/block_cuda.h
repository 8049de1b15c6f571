// Launchers of the CUDA kernels of conure's fused block, streaming step and multi-task forward: plain C++ (no torch),
// implemented in block_cuda.cu; the torch side is block_cuda_binding.cpp. Semantics: the Kernels struct in
// csrc/block.h (same names). Every launcher enqueues its work on `stream` and returns the first CUDA error it met.
// Pointers are device pointers to contiguous data. Statistics (mean, rstd, dgamma, dbeta) are float for float32,
// float16 and bfloat16 activations and double for float64 ones.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace conure {
namespace block_cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// rows[o, (j - j0) * C_in + i] = w[o, i, j] if 1 <= owner[o, i, j] <= task else 0.  rows: [C_out, (K - j0) * C_in].
cudaError_t mask_rows(DType dtype, const void* w, const uint8_t* owner, int task, int64_t C_out, int64_t C_in,
                      int64_t K, int64_t j0, void* rows, cudaStream_t stream);

// grad_w[o, i, j] = grows[o, (j - j0) * C_in + i] if j >= j0 and owner[o, i, j] == task, else 0.
cudaError_t scatter_rows(DType dtype, const void* grows, const uint8_t* owner, int task, int64_t C_out, int64_t C_in,
                         int64_t K, int64_t j0, void* grad_w, cudaStream_t stream);

// LayerNorm + ReLU + im2col of in [S, L_in, C] into col [S, L_out, (K - j0) * C] (see block.h). mean, rstd: [S*L_in]
// (written when compute_stats; may then be null; read otherwise). copy_out: null or [S, L_copy, C] (gets the last
// L_copy positions of `in`, L_copy <= L_in).
cudaError_t ln_relu_im2col(DType dtype, const void* in, const void* gamma, const void* beta, double eps, int64_t S,
                           int64_t L_in, int64_t L_out, int64_t C, int64_t K, int64_t j0, int64_t dilation,
                           bool compute_stats, void* mean, void* rstd, void* col, void* copy_out, int64_t L_copy,
                           cudaStream_t stream);

// Backward of ln_relu_im2col with L_in == L_out == L (see block.h). residual, grad_in, dgamma, dbeta may be null;
// dgamma and dbeta ([C], stats dtype) are accumulated into, deterministically (per-warp partial sums in `workspace`,
// added in a fixed order): `workspace` needs ln_relu_col2im_workspace_bytes(...) bytes when dgamma or dbeta is given
// (contents need no initialization), else it may be null.
size_t ln_relu_col2im_workspace_bytes(DType dtype, int64_t S, int64_t L, int64_t C);
cudaError_t ln_relu_col2im_backward(DType dtype, const void* gcol, const void* in, const void* mean, const void* rstd,
                                    const void* gamma, const void* beta, int64_t S, int64_t L, int64_t C, int64_t K,
                                    int64_t j0, int64_t dilation, const void* residual, void* grad_in, void* dgamma,
                                    void* dbeta, void* workspace, cudaStream_t stream);

// out[m] = sum_{i < n} parts[i, m], added in order (deterministic). parts: [n, M]; out: [M].
cudaError_t sum_parts(DType dtype, const void* parts, int64_t n, int64_t M, void* out, cudaStream_t stream);

// One streaming step of one conv's input side (see block.h): in [T_in, B, C] (T_in is 1 or T_r), ring
// [T_r, B, R, C], pos [B] int64 (>= 0), col [T_r, B, K * C]. gamma == nullptr: no LayerNorm + ReLU (the row as it is).
cudaError_t stream_gather(DType dtype, const void* in, int64_t T_in, const void* gamma, const void* beta, double eps,
                          void* ring, int64_t T_r, int64_t B, int64_t R, int64_t C, const int64_t* pos, int64_t K,
                          int64_t dilation, void* col, cudaStream_t stream);

}  // namespace block_cuda
}  // namespace conure
