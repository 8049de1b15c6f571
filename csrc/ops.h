// conure's operators as C++ functions, one per schema of csrc/ops.cpp (same names, same arguments). Each is
// device-generic: it checks its arguments, sets the device guard, and runs on the kernel table of its inputs' device
// (csrc/kernels.h). Families: the masked conv and the prune (csrc/conv.cpp), the fused block, streaming step and
// multi-task forward (csrc/block.cpp).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace conure {

using ConvGrads = std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>>;
using BlockGrads = std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>,
                              std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>,
                              std::optional<at::Tensor>>;

// ---- csrc/conv.cpp
at::Tensor masked_causal_conv1d(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& owner, int64_t task,
                                const std::optional<at::Tensor>& bias, int64_t dilation);
ConvGrads masked_causal_conv1d_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                                        const at::Tensor& owner, int64_t task, int64_t dilation,
                                        std::array<bool, 3> output_mask);
// The count kept, as a 0-dim int64 CPU tensor (an int return would be data-dependent under tracing).
at::Tensor magnitude_prune_many_(at::TensorList weights, at::TensorList owners, int64_t task, double keep_ratio);

// ---- csrc/block.cpp
// Returns (y, h, stats): h and stats are what the backward needs (pre-LN: conv1's output [B, L, C_mid]; post-LN:
// conv1's then conv2's output, [B, L, C_mid + C] flat one after the other; stats [2, 2, B, L]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> residual_block(const at::Tensor& x, const at::Tensor& w1,
                                                              const at::Tensor& owner1, const at::Tensor& w2,
                                                              const at::Tensor& owner2, const at::Tensor& ln1_weight,
                                                              const at::Tensor& ln1_bias, const at::Tensor& ln2_weight,
                                                              const at::Tensor& ln2_bias, int64_t task,
                                                              int64_t dilation, double eps, bool post_ln);
// Gradients of (x, w1, w2, ln1_weight, ln1_bias, ln2_weight, ln2_bias), each computed when output_mask says so.
BlockGrads residual_block_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h,
                                   const at::Tensor& stats, const at::Tensor& w1, const at::Tensor& owner1,
                                   const at::Tensor& w2, const at::Tensor& owner2, const at::Tensor& ln1_weight,
                                   const at::Tensor& ln1_bias, const at::Tensor& ln2_weight, const at::Tensor& ln2_bias,
                                   int64_t task, int64_t dilation, std::array<bool, 7> output_mask, bool post_ln);
at::Tensor stream_step_(const at::Tensor& x, const at::Tensor& pos, at::TensorList rings, at::TensorList wcols,
                        at::TensorList ln_params, at::IntArrayRef dilations, int64_t kernel_size, double eps,
                        bool post_ln);
at::Tensor multi_task_forward(const at::Tensor& x, at::TensorList wcols, at::TensorList ln_params,
                              at::IntArrayRef dilations, int64_t kernel_size, double eps, int64_t out_len,
                              bool post_ln);

// ---- the CPU GEMM's backend (csrc/gemm.cpp) and diagnostics (csrc/ops.cpp)
// The rule in use: "auto (measured per shape class)", "onednn (CONURE_CPU_GEMM=onednn)", "aten (...)".
std::string cpu_gemm_backend();
// Read the plan file (first line per shape class wins) and append new decisions to it; "": in memory only. Returns
// what went wrong reading it (unreadable, malformed lines skipped), for the caller to warn about, or "".
std::string cpu_gemm_plan_file(const std::string& path);
// The plan, one line per shape class: its key, backend, both times in microseconds, "file" or "measured".
std::vector<std::string> cpu_gemm_plan();
std::string abi();  // "schemas <hash>": conure/_build.py compares it with the sources' schemas

}  // namespace conure
