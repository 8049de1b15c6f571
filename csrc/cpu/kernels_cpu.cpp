// The CPU kernel table (csrc/kernels.h), registered when the library loads.
#include "kernels_cpu.h"
#include "../kernels.h"

namespace conure {
namespace cpu {
namespace {

const Kernels kCpu{mask_weight_cpu, scatter_grad_cpu,  ln_relu_im2col_cpu, ln_relu_col2im_backward_cpu,
                   sum_parts_cpu,   stream_gather_cpu, prune_cpu};

const bool kRegistered = register_kernels(c10::DeviceType::CPU, &kCpu);

}  // namespace
}  // namespace cpu
}  // namespace conure
