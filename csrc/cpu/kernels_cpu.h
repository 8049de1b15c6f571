// conure's CPU kernels (contracts: the Kernels table in csrc/kernels.h, filled in kernels_cpu.cpp): the weight
// layout kernels (conv_cpu.cpp), the block's row kernels (block_cpu.cpp) and the prune (prune_cpu.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace conure {
namespace cpu {

void mask_weight_cpu(const at::Tensor& w, const at::Tensor& owner, int64_t task, int64_t j0, at::Tensor& out);
void scatter_grad_cpu(const at::Tensor& grad, const at::Tensor& owner, int64_t task, int64_t j0, at::Tensor& grad_w);
void ln_relu_im2col_cpu(const at::Tensor& in, const at::Tensor& gamma, const at::Tensor& beta, double eps, int64_t K,
                        int64_t j0, int64_t dil, bool compute_stats, at::Tensor& mean, at::Tensor& rstd,
                        at::Tensor& col, at::Tensor& copy_out);
void ln_relu_col2im_backward_cpu(const at::Tensor& gcol, const at::Tensor& in, const at::Tensor& mean,
                                 const at::Tensor& rstd, const at::Tensor& gamma, const at::Tensor& beta, int64_t K,
                                 int64_t j0, int64_t dil, const at::Tensor& residual, at::Tensor& grad_in,
                                 at::Tensor& dgamma, at::Tensor& dbeta);
void sum_parts_cpu(const at::Tensor& parts, at::Tensor& out);
void stream_gather_cpu(const at::Tensor& in, const at::Tensor& gamma, const at::Tensor& beta, double eps,
                       at::Tensor& ring, const at::Tensor& pos, int64_t K, int64_t dil, at::Tensor& col);
int64_t prune_cpu(at::TensorList weights, at::TensorList owners, int64_t task, double keep_ratio);

// keep ? v : 0, without a branch (owner maps are random: a branch mispredicts about half the time).
template <typename T>
inline T keep_or_zero(bool keep, T v) {
  using U = std::conditional_t<sizeof(T) == 8, uint64_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>>;
  static_assert(sizeof(T) == sizeof(U), "keep_or_zero: unexpected scalar size");
  U bits;
  std::memcpy(&bits, &v, sizeof(T));
  bits &= static_cast<U>(U(0) - static_cast<U>(keep));
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace cpu
}  // namespace conure
