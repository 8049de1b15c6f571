// The GEMM every operator uses, and on the CPU the plan that picks its backend per shape class (csrc/gemm.cpp).
#pragma once

#include <ATen/ATen.h>

namespace conure {

// out = (accumulate ? out : 0) + a @ b; 2-D, or 3-D batched (a's batch may be 1: broadcast). CPU float32/bfloat16
// run on oneDNN or ATen's GEMM (MKL) as CONURE_CPU_GEMM and the measured plan say (gemm.cpp); else at::mm/bmm.
void gemm(at::Tensor out, const at::Tensor& a, const at::Tensor& b, bool accumulate);

}  // namespace conure
