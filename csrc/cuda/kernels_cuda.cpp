// Torch side of conure's CUDA kernels: the CUDA kernel table (csrc/kernels.h) over the launchers of kernels_cuda.h.
// The operators' device-generic orchestration (csrc/conv.cpp, csrc/block.cpp) sets the device guard and runs the GEMMs
// on cuBLAS; these functions pass raw pointers, the current stream and the dtype, and raise the launchers' errors.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <vector>

#include "../conv.h"
#include "../kernels.h"
#include "kernels_cuda.h"

namespace conure {
namespace cuda {
namespace {

DType dtype_of(at::ScalarType type, const char* where) {
  switch (type) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, where, ": CUDA kernels support float32, float64, float16 and bfloat16, got ", type);
  return DType::kFloat32;  // unreachable
}

void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

void mask_weight_cuda(const at::Tensor& w, const at::Tensor& owner, int64_t task, int64_t j0, at::Tensor& out) {
  TORCH_INTERNAL_ASSERT(w.is_contiguous() && owner.is_contiguous());
  C10_CUDA_CHECK(mask_weight(dtype_of(w.scalar_type(), "mask_weight"), w.data_ptr(), owner.data_ptr<uint8_t>(),
                             static_cast<int>(task), w.size(0), w.size(1), w.size(2), j0, out.data_ptr(), out.stride(0),
                             out.stride(1), out.stride(2), stream()));
}

void scatter_grad_cuda(const at::Tensor& grad, const at::Tensor& owner, int64_t task, int64_t j0, at::Tensor& grad_w) {
  TORCH_INTERNAL_ASSERT(grad.stride(2) == 1 && owner.is_contiguous() && grad_w.is_contiguous());
  C10_CUDA_CHECK(scatter_grad(dtype_of(grad_w.scalar_type(), "scatter_grad"), grad.data_ptr(), grad.stride(0),
                              grad.stride(1), owner.data_ptr<uint8_t>(), static_cast<int>(task), grad_w.size(0),
                              grad_w.size(1), grad_w.size(2), j0, grad_w.data_ptr(), stream()));
}

void ln_relu_im2col_cuda(const at::Tensor& in, const at::Tensor& gamma, const at::Tensor& beta, double eps, int64_t K,
                         int64_t j0, int64_t dil, bool compute_stats, at::Tensor& mean, at::Tensor& rstd,
                         at::Tensor& col, at::Tensor& copy_out) {
  TORCH_INTERNAL_ASSERT(in.is_contiguous() && col.is_contiguous());
  C10_CUDA_CHECK(ln_relu_im2col(dtype_of(in.scalar_type(), "ln_relu_im2col"), in.data_ptr(), gamma.data_ptr(),
                                beta.data_ptr(), eps, in.size(0), in.size(1), col.size(1), in.size(2), K, j0, dil,
                                compute_stats, ptr_or_null(mean), ptr_or_null(rstd), col.data_ptr(),
                                ptr_or_null(copy_out), copy_out.defined() ? copy_out.size(1) : 0, stream()));
}

void ln_relu_col2im_backward_cuda(const at::Tensor& gcol, const at::Tensor& in, const at::Tensor& mean,
                                  const at::Tensor& rstd, const at::Tensor& gamma, const at::Tensor& beta, int64_t K,
                                  int64_t j0, int64_t dil, const at::Tensor& residual, at::Tensor& grad_in,
                                  at::Tensor& dgamma, at::Tensor& dbeta) {
  const auto dtype = dtype_of(in.scalar_type(), "residual_block_backward");
  at::Tensor workspace;  // per-warp partial sums of the LayerNorm parameter gradients (deterministic reduction)
  if (dgamma.defined() || dbeta.defined()) {
    const size_t bytes = ln_relu_col2im_workspace_bytes(dtype, in.size(0), in.size(1), in.size(2));
    workspace = at::empty({static_cast<int64_t>(bytes)}, in.options().dtype(at::kByte));
  }
  C10_CUDA_CHECK(ln_relu_col2im_backward(dtype, gcol.data_ptr(), in.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                                         gamma.data_ptr(), beta.data_ptr(), in.size(0), in.size(1), in.size(2), K, j0,
                                         dil, ptr_or_null(residual), ptr_or_null(grad_in), ptr_or_null(dgamma),
                                         ptr_or_null(dbeta), ptr_or_null(workspace), stream()));
}

void sum_parts_cuda(const at::Tensor& parts, at::Tensor& out) {
  C10_CUDA_CHECK(sum_parts(dtype_of(out.scalar_type(), "residual_block_backward"), parts.data_ptr(), parts.size(0),
                           parts.size(1), out.data_ptr(), stream()));
}

void stream_gather_cuda(const at::Tensor& in, const at::Tensor& gamma, const at::Tensor& beta, double eps,
                        at::Tensor& ring, const at::Tensor& pos, int64_t K, int64_t dil, at::Tensor& col) {
  const void* g = gamma.defined() ? gamma.data_ptr() : nullptr;  // none: no LayerNorm (post-LN conv1)
  const void* b = beta.defined() ? beta.data_ptr() : nullptr;
  C10_CUDA_CHECK(stream_gather(dtype_of(in.scalar_type(), "stream_step_"), in.data_ptr(), in.size(0), g, b, eps,
                               ring.data_ptr(), ring.size(0), ring.size(1), ring.size(2), in.size(2),
                               pos.data_ptr<int64_t>(), K, dil, col.data_ptr(), stream()));
}

// One global radix select over all tensors on the device; one host sync (inside the launcher) for the count.
int64_t prune_cuda(at::TensorList weights, at::TensorList owners, int64_t task, double keep_ratio) {
  const DType dtype = dtype_of(weights[0].scalar_type(), "magnitude_prune_");
  std::vector<at::Tensor> contiguous;  // keeps copies of non-contiguous weights alive until the sync
  std::vector<PruneTensor> tensors;
  contiguous.reserve(weights.size());
  tensors.reserve(weights.size());
  for (size_t n = 0; n < weights.size(); ++n) {
    contiguous.push_back(weights[n].contiguous());
    tensors.push_back({contiguous.back().data_ptr(), owners[n].data_ptr<uint8_t>(), weights[n].numel()});
  }
  const int count = static_cast<int>(tensors.size());
  TORCH_CHECK(static_cast<size_t>(count) == tensors.size(), "magnitude_prune_: too many tensors");
  const size_t bytes = prune_workspace_bytes(tensors.data(), count);
  const at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, weights[0].options().dtype(at::kByte));
  PruneResult result;
  C10_CUDA_CHECK(magnitude_prune(dtype, tensors.data(), count, static_cast<int>(task), keep_ratio, workspace.data_ptr(),
                                 bytes, stream(), &result));
  TORCH_CHECK(!result.saw_nan, "magnitude_prune_: a weight owned by task ", task, " is NaN");
  TORCH_INTERNAL_ASSERT(result.kept == kept_count(keep_ratio, result.n), "magnitude_prune_: the device kept ",
                        result.kept, " of ", result.n, ", the host rule says ", kept_count(keep_ratio, result.n));
  return result.kept;
}

const Kernels kCuda{mask_weight_cuda, scatter_grad_cuda,  ln_relu_im2col_cuda, ln_relu_col2im_backward_cuda,
                    sum_parts_cuda,   stream_gather_cuda, prune_cuda};

const bool kRegistered = register_kernels(c10::DeviceType::CUDA, &kCuda);

}  // namespace
}  // namespace cuda
}  // namespace conure
