// Torch side of conure's CUDA kernels: argument handling, streams and device guards around the launchers of
// conure_cuda.h, and the CUDA registrations of the operators defined in csrc/masked_conv.cpp.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../masked_conv.h"
#include "conure_cuda.h"

namespace conure {
namespace {

cuda::DType cuda_dtype(at::ScalarType type, const char* where) {
  switch (type) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kDouble: return cuda::DType::kFloat64;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, where, ": CUDA kernels support float32, float64, float16 and bfloat16, got ", type);
  return cuda::DType::kFloat32;  // unreachable
}

// ---------------------------------------------------------------------------------------------------------------
// Conv: the two kernels of ConvKernels (all tensors contiguous, on the current device: the ops below set the guard).

void mask_weight_cuda(const at::Tensor& weight, const at::Tensor& owner, int64_t task, at::Tensor& out) {
  TORCH_INTERNAL_ASSERT(weight.is_contiguous() && owner.is_contiguous() && out.is_contiguous());
  C10_CUDA_CHECK(cuda::mask_weight(cuda_dtype(weight.scalar_type(), "masked_causal_conv1d"), weight.data_ptr(),
                                   owner.data_ptr<uint8_t>(), static_cast<int>(task), weight.size(0), weight.size(1),
                                   weight.size(2), out.data_ptr(), at::cuda::getCurrentCUDAStream()));
}

void scatter_grad_cuda(const at::Tensor& grad_taps, const at::Tensor& owner, int64_t task, at::Tensor& grad_w) {
  TORCH_INTERNAL_ASSERT(grad_taps.is_contiguous() && owner.is_contiguous() && grad_w.is_contiguous());
  C10_CUDA_CHECK(cuda::scatter_grad(cuda_dtype(grad_w.scalar_type(), "masked_causal_conv1d_backward"),
                                    grad_taps.data_ptr(), owner.data_ptr<uint8_t>(), static_cast<int>(task),
                                    grad_w.size(0), grad_w.size(1), grad_w.size(2), grad_w.data_ptr(),
                                    at::cuda::getCurrentCUDAStream()));
}

const ConvKernels kCudaKernels{mask_weight_cuda, scatter_grad_cuda};

at::Tensor conv_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& owner, int64_t task,
                     const std::optional<at::Tensor>& bias, int64_t dilation) {
  TORCH_CHECK(weight.is_cuda(), "masked_causal_conv1d: weight must be a CUDA tensor");
  cuda_dtype(weight.scalar_type(), "masked_causal_conv1d");
  const c10::cuda::CUDAGuard guard(weight.device());
  return masked_conv_forward(kCudaKernels, x, weight, owner, task, bias, dilation);
}

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>> conv_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& owner, int64_t task,
    int64_t dilation, std::array<bool, 3> output_mask) {
  TORCH_CHECK(weight.is_cuda(), "masked_causal_conv1d_backward: weight must be a CUDA tensor");
  TORCH_CHECK(grad_y.device() == weight.device(), "masked_causal_conv1d_backward: grad_y is on ", grad_y.device(),
              ", weight on ", weight.device());
  cuda_dtype(weight.scalar_type(), "masked_causal_conv1d_backward");
  const c10::cuda::CUDAGuard guard(weight.device());
  return masked_conv_backward(kCudaKernels, grad_y, x, weight, owner, task, dilation, output_mask);
}

// ---------------------------------------------------------------------------------------------------------------
// Prune: one global radix select over all tensors on the device; one host sync (inside the launcher) for the count.

// Returns the count kept as a 0-dim int64 CPU tensor, like the CPU kernel (the schema returns a Tensor).
at::Tensor prune_cuda(at::TensorList weights, at::TensorList owners, int64_t task, double keep_ratio) {
  check_prune_args(weights, owners, task, keep_ratio);
  TORCH_CHECK(weights[0].is_cuda(), "magnitude_prune_: tensors must be CUDA tensors");
  const cuda::DType dtype = cuda_dtype(weights[0].scalar_type(), "magnitude_prune_");
  const c10::cuda::CUDAGuard guard(weights[0].device());
  std::vector<at::Tensor> contiguous;  // keeps copies of non-contiguous weights alive until the sync
  std::vector<cuda::PruneTensor> tensors;
  contiguous.reserve(weights.size());
  tensors.reserve(weights.size());
  for (size_t n = 0; n < weights.size(); ++n) {
    contiguous.push_back(weights[n].contiguous());
    tensors.push_back({contiguous.back().data_ptr(), owners[n].data_ptr<uint8_t>(), weights[n].numel()});
  }
  const int count = static_cast<int>(tensors.size());
  TORCH_CHECK(static_cast<size_t>(count) == tensors.size(), "magnitude_prune_: too many tensors");
  const size_t bytes = cuda::prune_workspace_bytes(tensors.data(), count);
  const at::Tensor workspace =
      at::empty({static_cast<int64_t>(bytes)}, weights[0].options().dtype(at::kByte));
  cuda::PruneResult result;
  C10_CUDA_CHECK(cuda::magnitude_prune(dtype, tensors.data(), count, static_cast<int>(task), keep_ratio,
                                       workspace.data_ptr(), bytes, at::cuda::getCurrentCUDAStream(), &result));
  TORCH_CHECK(!result.saw_nan, "magnitude_prune_: a weight owned by task ", task, " is NaN");
  TORCH_INTERNAL_ASSERT(result.kept == kept_count(keep_ratio, result.n), "magnitude_prune_: the device kept ",
                        result.kept, " of ", result.n, ", the host rule says ", kept_count(keep_ratio, result.n));
  return at::scalar_tensor(result.kept, at::kLong);
}

}  // namespace
}  // namespace conure

TORCH_LIBRARY_IMPL(conure, CUDA, m) {
  m.impl("masked_causal_conv1d", &conure::conv_cuda);
  m.impl("masked_causal_conv1d_backward", &conure::conv_backward_cuda);
  m.impl("magnitude_prune_many_", &conure::prune_cuda);
}
