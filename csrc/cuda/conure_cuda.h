// Launchers of conure's CUDA kernels: plain C++ (no torch), implemented in conure_cuda.cu.
//
// Every launcher enqueues its work on `stream` and returns the first CUDA error it met (cudaSuccess otherwise). Only
// magnitude_prune synchronizes with the host, once, at its end (to return the count it kept). Pointers are device
// pointers to contiguous data unless a comment says otherwise. The float dtypes are moved as raw bits: the kernels
// never do float arithmetic on them, so float16 and bfloat16 need no CUDA half headers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace conure {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// out[j, i, o] = weight[o, i, j] if 1 <= owner[o, i, j] <= task else 0 (+0.0).
// weight, owner: [C_out, C_in, K]; out: [K, C_in, C_out] (must not alias weight).
cudaError_t mask_weight(DType dtype, const void* weight, const uint8_t* owner, int task, int64_t C_out, int64_t C_in,
                        int64_t K, void* out, cudaStream_t stream);

// grad_weight[o, i, j] = grad_taps[j, o, i] if owner[o, i, j] == task else 0 (+0.0).
// grad_taps: [K, C_out, C_in]; owner, grad_weight: [C_out, C_in, K] (grad_weight must not alias grad_taps).
cudaError_t scatter_grad(DType dtype, const void* grad_taps, const uint8_t* owner, int task, int64_t C_out,
                         int64_t C_in, int64_t K, void* grad_weight, cudaStream_t stream);

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

}  // namespace cuda
}  // namespace conure
