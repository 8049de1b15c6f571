// Launchers of conure's CUDA kernels: plain C++ (no torch), implemented in conv_cuda.cu (weight layout),
// prune_cuda.cu and block_cuda.cu (semantics of the block kernels: the Kernels table in csrc/kernels.h).
//
// Every launcher enqueues its work on `stream` and returns the first CUDA error it met (cudaSuccess otherwise). Only
// magnitude_prune synchronizes with the host, once, at its end (to return the count it kept). Pointers are device
// pointers to contiguous data unless a comment says otherwise. The float dtypes are moved as raw bits: the kernels
// never do float arithmetic on them, so float16 and bfloat16 need no CUDA half headers.
#pragma once

#include "common.h"

#include <cstddef>
#include <cstdint>

namespace conure {
namespace cuda {

// The weight layout kernels, shared by the conv and the fused block. The other side is a [C_out, K - j0, C_in]
// array given by its strides (in elements): out[o, jj, i] at out + o * so + jj * sj + i * si.
// mask_weight: out[o, j - j0, i] = weight[o, i, j] if 1 <= owner[o, i, j] <= task else 0 (+0.0), j in [j0, K).
// weight, owner: [C_out, C_in, K] contiguous; out must not alias weight.
cudaError_t mask_weight(DType dtype, const void* weight, const uint8_t* owner, int task, int64_t C_out, int64_t C_in,
                        int64_t K, int64_t j0, void* out, int64_t so, int64_t sj, int64_t si, cudaStream_t stream);

// scatter_grad: grad_weight[o, i, j] = grad[o, j - j0, i] if j >= j0 and owner[o, i, j] == task >= 1, else 0
// (+0.0). grad: strided as above, with si == 1; owner, grad_weight: [C_out, C_in, K] contiguous, not aliasing grad.
cudaError_t scatter_grad(DType dtype, const void* grad, int64_t so, int64_t sj, const uint8_t* owner, int task,
                         int64_t C_out, int64_t C_in, int64_t K, int64_t j0, void* grad_weight, cudaStream_t stream);

// One tensor of a magnitude prune: a contiguous weight of the prune's dtype and its contiguous uint8 owner map,
// both with `numel` elements (the pointers may be null when numel == 0).
struct PruneTensor {
  const void* weight;
  uint8_t* owner;
  int64_t numel;
};

struct PruneResult {
  int64_t n = 0;         // entries owned by `task` over all tensors
  int64_t kept = 0;      // k = round-half-even(keep_ratio * n); meaningful unless saw_nan
  bool saw_nan = false;  // a weight owned by `task` is NaN; then no owner was changed
};

// Device workspace bytes magnitude_prune needs for this list (`tensors` is a host array of num_tensors >= 1 entries;
// only the numels are read).
size_t prune_workspace_bytes(const PruneTensor* tensors, int num_tensors);

// Magnitude prune with one global threshold over the list (flat order: list order, then element order): among the n
// entries with owner == task keep the k largest |weight| (sign bit cleared; ties go to the lower flat index) and set
// the owner of the other n - k to 0. Same entries as conure's CPU prune. `tensors` is a host array; `workspace`
// (device, at least prune_workspace_bytes(tensors, num_tensors) bytes, 256-byte aligned as
// cudaMalloc and torch's allocator give) is scratch; its contents need no initialization.
// Enqueues all passes on `stream` with no host round trip between them, then waits for `stream` once to fill
// *result. task in [0, 255], keep_ratio in [0, 1] (not checked here).
cudaError_t magnitude_prune(DType dtype, const PruneTensor* tensors, int num_tensors, int task, double keep_ratio,
                            void* workspace, size_t workspace_bytes, cudaStream_t stream, PruneResult* result);

// Fused block, streaming step and multi-task forward (block_cuda.cu). Statistics (mean, rstd, dgamma, dbeta) are
// float for float32, float16 and bfloat16 activations and double for float64 ones.
// LayerNorm + ReLU + im2col of in [S, L_in, C] into col [S, L_out, (K - j0) * C] (csrc/kernels.h). mean, rstd: [S*L_in]
// (written when compute_stats; may then be null; read otherwise). copy_out: null or [S, L_copy, C] (gets the last
// L_copy positions of `in`, L_copy <= L_in).
cudaError_t ln_relu_im2col(DType dtype, const void* in, const void* gamma, const void* beta, double eps, int64_t S,
                           int64_t L_in, int64_t L_out, int64_t C, int64_t K, int64_t j0, int64_t dilation,
                           bool compute_stats, void* mean, void* rstd, void* col, void* copy_out, int64_t L_copy,
                           cudaStream_t stream);

// Backward of ln_relu_im2col with L_in == L_out == L (csrc/kernels.h). residual, grad_in, dgamma, dbeta may be null;
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

// One streaming step of one conv's input side (see csrc/kernels.h): in [T_in, B, C] (T_in is 1 or T_r), ring
// [T_r, B, R, C], pos [B] int64 (>= 0), col [T_r, B, K * C]. gamma == nullptr: no LayerNorm + ReLU (the row as it is).
cudaError_t stream_gather(DType dtype, const void* in, int64_t T_in, const void* gamma, const void* beta, double eps,
                          void* ring, int64_t T_r, int64_t B, int64_t R, int64_t C, const int64_t* pos, int64_t K,
                          int64_t dilation, void* col, cudaStream_t stream);

}  // namespace cuda
}  // namespace conure
