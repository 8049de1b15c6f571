// Torch side of the CUDA kernels of conure's fused block, streaming step and multi-task forward: the Kernels struct
// of csrc/block.h over the launchers of block_cuda.h, and the CUDA registrations of the operators defined in
// csrc/block.cpp (whose device-generic orchestration runs the GEMMs on cuBLAS).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../block.h"
#include "block_cuda.h"

namespace conure {
namespace block {
namespace {

block_cuda::DType dtype_of(at::ScalarType type, const char* where) {
  switch (type) {
    case at::kFloat: return block_cuda::DType::kFloat32;
    case at::kDouble: return block_cuda::DType::kFloat64;
    case at::kHalf: return block_cuda::DType::kFloat16;
    case at::kBFloat16: return block_cuda::DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, where, ": CUDA kernels support float32, float64, float16 and bfloat16, got ", type);
  return block_cuda::DType::kFloat32;  // unreachable
}

void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

cudaStream_t stream() { return at::cuda::getCurrentCUDAStream(); }

void mask_rows_cuda(const at::Tensor& w, const at::Tensor& owner, int64_t task, int64_t j0, at::Tensor& rows) {
  C10_CUDA_CHECK(block_cuda::mask_rows(dtype_of(w.scalar_type(), "residual_block"), w.data_ptr(),
                                       owner.data_ptr<uint8_t>(), static_cast<int>(task), w.size(0), w.size(1),
                                       w.size(2), j0, rows.data_ptr(), stream()));
}

void scatter_rows_cuda(const at::Tensor& grows, const at::Tensor& owner, int64_t task, int64_t j0,
                       at::Tensor& grad_w) {
  C10_CUDA_CHECK(block_cuda::scatter_rows(dtype_of(grad_w.scalar_type(), "residual_block_backward"),
                                          grows.data_ptr(), owner.data_ptr<uint8_t>(), static_cast<int>(task),
                                          grad_w.size(0), grad_w.size(1), grad_w.size(2), j0, grad_w.data_ptr(),
                                          stream()));
}

void ln_relu_im2col_cuda(const at::Tensor& in, const at::Tensor& gamma, const at::Tensor& beta, double eps, int64_t K,
                         int64_t j0, int64_t dil, bool compute_stats, at::Tensor& mean, at::Tensor& rstd,
                         at::Tensor& col, at::Tensor& copy_out) {
  TORCH_INTERNAL_ASSERT(in.is_contiguous() && col.is_contiguous());
  C10_CUDA_CHECK(block_cuda::ln_relu_im2col(
      dtype_of(in.scalar_type(), "ln_relu_im2col"), in.data_ptr(), gamma.data_ptr(), beta.data_ptr(), eps, in.size(0),
      in.size(1), col.size(1), in.size(2), K, j0, dil, compute_stats, ptr_or_null(mean), ptr_or_null(rstd),
      col.data_ptr(), ptr_or_null(copy_out), copy_out.defined() ? copy_out.size(1) : 0, stream()));
}

void ln_relu_col2im_backward_cuda(const at::Tensor& gcol, const at::Tensor& in, const at::Tensor& mean,
                                  const at::Tensor& rstd, const at::Tensor& gamma, const at::Tensor& beta, int64_t K,
                                  int64_t j0, int64_t dil, const at::Tensor& residual, at::Tensor& grad_in,
                                  at::Tensor& dgamma, at::Tensor& dbeta) {
  const auto dtype = dtype_of(in.scalar_type(), "residual_block_backward");
  at::Tensor workspace;  // per-warp partial sums of the LayerNorm parameter gradients (deterministic reduction)
  if (dgamma.defined() || dbeta.defined()) {
    const size_t bytes = block_cuda::ln_relu_col2im_workspace_bytes(dtype, in.size(0), in.size(1), in.size(2));
    workspace = at::empty({static_cast<int64_t>(bytes)}, in.options().dtype(at::kByte));
  }
  C10_CUDA_CHECK(block_cuda::ln_relu_col2im_backward(
      dtype, gcol.data_ptr(), in.data_ptr(), mean.data_ptr(), rstd.data_ptr(), gamma.data_ptr(), beta.data_ptr(),
      in.size(0), in.size(1), in.size(2), K, j0, dil, ptr_or_null(residual), ptr_or_null(grad_in),
      ptr_or_null(dgamma), ptr_or_null(dbeta), ptr_or_null(workspace), stream()));
}

void sum_parts_cuda(const at::Tensor& parts, at::Tensor& out) {
  C10_CUDA_CHECK(block_cuda::sum_parts(dtype_of(out.scalar_type(), "residual_block_backward"), parts.data_ptr(),
                                       parts.size(0), parts.size(1), out.data_ptr(), stream()));
}

void stream_gather_cuda(const at::Tensor& in, const at::Tensor& gamma, const at::Tensor& beta, double eps,
                        at::Tensor& ring, const at::Tensor& pos, int64_t K, int64_t dil, at::Tensor& col) {
  const void* g = gamma.defined() ? gamma.data_ptr() : nullptr;  // none: no LayerNorm (post-LN conv1)
  const void* b = beta.defined() ? beta.data_ptr() : nullptr;
  C10_CUDA_CHECK(block_cuda::stream_gather(dtype_of(in.scalar_type(), "stream_step_"), in.data_ptr(), in.size(0), g,
                                           b, eps, ring.data_ptr(), ring.size(0), ring.size(1), ring.size(2),
                                           in.size(2), pos.data_ptr<int64_t>(), K, dil, col.data_ptr(), stream()));
}

const Kernels kCuda{mask_rows_cuda,     scatter_rows_cuda, ln_relu_im2col_cuda, ln_relu_col2im_backward_cuda,
                    sum_parts_cuda, stream_gather_cuda};

void check_cuda(const at::Tensor& t, const char* where) {
  TORCH_CHECK(t.is_cuda(), where, ": expected CUDA tensors, got one on ", t.device());
  dtype_of(t.scalar_type(), where);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> residual_block_cuda(
    const at::Tensor& x, const at::Tensor& w1, const at::Tensor& owner1, const at::Tensor& w2,
    const at::Tensor& owner2, const at::Tensor& ln1_weight, const at::Tensor& ln1_bias, const at::Tensor& ln2_weight,
    const at::Tensor& ln2_bias, int64_t task, int64_t dilation, double eps) {
  check_cuda(x, "residual_block");
  const c10::cuda::CUDAGuard guard(x.device());
  return block_forward(kCuda, x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation,
                       eps);
}

BlockGrads residual_block_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h,
                                        const at::Tensor& stats, const at::Tensor& w1, const at::Tensor& owner1,
                                        const at::Tensor& w2, const at::Tensor& owner2, const at::Tensor& ln1_weight,
                                        const at::Tensor& ln1_bias, const at::Tensor& ln2_weight,
                                        const at::Tensor& ln2_bias, int64_t task, int64_t dilation,
                                        std::array<bool, 7> output_mask) {
  check_cuda(x, "residual_block_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  return block_backward(kCuda, grad_y, x, h, stats, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight,
                        ln2_bias, task, dilation, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> residual_block_post_ln_cuda(
    const at::Tensor& x, const at::Tensor& w1, const at::Tensor& owner1, const at::Tensor& w2,
    const at::Tensor& owner2, const at::Tensor& ln1_weight, const at::Tensor& ln1_bias, const at::Tensor& ln2_weight,
    const at::Tensor& ln2_bias, int64_t task, int64_t dilation, double eps) {
  check_cuda(x, "residual_block_post_ln");
  const c10::cuda::CUDAGuard guard(x.device());
  return post_block_forward(kCuda, x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task,
                            dilation, eps);
}

BlockGrads residual_block_post_ln_backward_cuda(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h,
                                                const at::Tensor& stats, const at::Tensor& w1,
                                                const at::Tensor& owner1, const at::Tensor& w2,
                                                const at::Tensor& owner2, const at::Tensor& ln1_weight,
                                                const at::Tensor& ln1_bias, const at::Tensor& ln2_weight,
                                                const at::Tensor& ln2_bias, int64_t task, int64_t dilation,
                                                std::array<bool, 7> output_mask) {
  check_cuda(x, "residual_block_post_ln_backward");
  const c10::cuda::CUDAGuard guard(x.device());
  return post_block_backward(kCuda, grad_y, x, h, stats, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight,
                             ln2_bias, task, dilation, output_mask);
}

at::Tensor stream_step_cuda(const at::Tensor& x, const at::Tensor& pos, at::TensorList rings, at::TensorList wcols,
                            at::TensorList ln, at::IntArrayRef dilations, int64_t kernel_size, double eps) {
  check_cuda(x, "stream_step_");
  const c10::cuda::CUDAGuard guard(x.device());
  return stream_step(kCuda, x, pos, rings, wcols, ln, dilations, kernel_size, eps, /*post_ln=*/false);
}

at::Tensor stream_step_post_ln_cuda(const at::Tensor& x, const at::Tensor& pos, at::TensorList rings,
                                    at::TensorList wcols, at::TensorList ln, at::IntArrayRef dilations,
                                    int64_t kernel_size, double eps) {
  check_cuda(x, "stream_step_post_ln_");
  const c10::cuda::CUDAGuard guard(x.device());
  return stream_step(kCuda, x, pos, rings, wcols, ln, dilations, kernel_size, eps, /*post_ln=*/true);
}

at::Tensor multi_task_forward_cuda(const at::Tensor& x, at::TensorList wcols, at::TensorList ln,
                                   at::IntArrayRef dilations, int64_t kernel_size, double eps, int64_t out_len) {
  check_cuda(x, "multi_task_forward");
  const c10::cuda::CUDAGuard guard(x.device());
  return multi_task_forward(kCuda, x, wcols, ln, dilations, kernel_size, eps, out_len, /*post_ln=*/false);
}

at::Tensor multi_task_forward_post_ln_cuda(const at::Tensor& x, at::TensorList wcols, at::TensorList ln,
                                           at::IntArrayRef dilations, int64_t kernel_size, double eps,
                                           int64_t out_len) {
  check_cuda(x, "multi_task_forward_post_ln");
  const c10::cuda::CUDAGuard guard(x.device());
  return multi_task_forward(kCuda, x, wcols, ln, dilations, kernel_size, eps, out_len, /*post_ln=*/true);
}

}  // namespace
}  // namespace block
}  // namespace conure

TORCH_LIBRARY_IMPL(conure, CUDA, m) {
  m.impl("residual_block", &conure::block::residual_block_cuda);
  m.impl("residual_block_backward", &conure::block::residual_block_backward_cuda);
  m.impl("residual_block_post_ln", &conure::block::residual_block_post_ln_cuda);
  m.impl("residual_block_post_ln_backward", &conure::block::residual_block_post_ln_backward_cuda);
  m.impl("stream_step_", &conure::block::stream_step_cuda);
  m.impl("stream_step_post_ln_", &conure::block::stream_step_post_ln_cuda);
  m.impl("multi_task_forward", &conure::block::multi_task_forward_cuda);
  m.impl("multi_task_forward_post_ln", &conure::block::multi_task_forward_post_ln_cuda);
}
