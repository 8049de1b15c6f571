// The whole operator API of conure (namespace torch.ops.conure): every schema, the per-device kernel tables, and the
// one registration of each operator's device-generic function (csrc/ops.h) for every device the build has.
//
// Variants are arguments (post_ln: the post-LN block of the original NextItNet, else the paper's pre-LN one), so a
// new variant adds an argument here, its orchestration, the Python wrapper and twin (conure/ops/) and a test.
#include "ops.h"

#include <torch/library.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <string>

#include "kernels.h"

namespace conure {
namespace {

// Also read by conure/_build.py (schemas_digest), which hashes the same strings to stamp a build: keep one string
// literal (or adjacent literals) per schema between the braces.
constexpr const char* kSchemas[] = {
    "masked_causal_conv1d(Tensor x, Tensor weight, Tensor owner, int task, Tensor? bias=None, int dilation=1) "
    "-> Tensor",
    "masked_causal_conv1d_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor owner, int task, int dilation, "
    "bool[3] output_mask) -> (Tensor?, Tensor?, Tensor?)",
    "magnitude_prune_many_(Tensor[] weights, Tensor(a!)[] owners, int task, float keep_ratio) -> Tensor",
    "residual_block(Tensor x, Tensor w1, Tensor owner1, Tensor w2, Tensor owner2, Tensor ln1_weight, Tensor ln1_bias, "
    "Tensor ln2_weight, Tensor ln2_bias, int task, int dilation, float eps, bool post_ln=False) "
    "-> (Tensor, Tensor, Tensor)",
    "residual_block_backward(Tensor grad_y, Tensor x, Tensor h, Tensor stats, Tensor w1, Tensor owner1, Tensor w2, "
    "Tensor owner2, Tensor ln1_weight, Tensor ln1_bias, Tensor ln2_weight, Tensor ln2_bias, int task, int dilation, "
    "bool[7] output_mask, bool post_ln=False) -> (Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?, Tensor?)",
    "stream_step_(Tensor x, Tensor pos, Tensor(a!)[] rings, Tensor[] wcols, Tensor[] ln_params, int[] dilations, "
    "int kernel_size, float eps, bool post_ln=False) -> Tensor",
    "multi_task_forward(Tensor x, Tensor[] wcols, Tensor[] ln_params, int[] dilations, int kernel_size, float eps, "
    "int out_len, bool post_ln=False) -> Tensor",
    "cpu_gemm_backend() -> str",
    "cpu_gemm_plan_file(str path) -> str",
    "cpu_gemm_plan() -> str[]",
    "has_cuda() -> bool",
    "abi() -> str",
};

// Each device's table; the backends fill it from static initializers (before any operator can run).
std::array<const Kernels*, static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)>& tables() {
  static std::array<const Kernels*, static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)> t{};
  return t;
}

bool has_cuda() {
#ifdef CONURE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Every operator's function, registered for each device key below: one list, no per-device forwarding functions
// (the function finds the device's kernels itself). Not CompositeExplicitAutograd: that key would also take sparse
// and other layouts, which must keep failing at the dispatcher with "Could not run ... from the 'SparseCPU' backend".
void register_ops(torch::Library& m) {
  m.impl("masked_causal_conv1d", &masked_causal_conv1d);
  m.impl("masked_causal_conv1d_backward", &masked_causal_conv1d_backward);
  m.impl("magnitude_prune_many_", &magnitude_prune_many_);
  m.impl("residual_block", &residual_block);
  m.impl("residual_block_backward", &residual_block_backward);
  m.impl("stream_step_", &stream_step_);
  m.impl("multi_task_forward", &multi_task_forward);
}

}  // namespace

bool register_kernels(c10::DeviceType device, const Kernels* kernels) {
  tables()[static_cast<size_t>(device)] = kernels;
  return true;
}

const Kernels& kernels_for(const at::Tensor& t, const char* op) {
  const Kernels* k = tables()[static_cast<size_t>(t.device().type())];
  TORCH_CHECK(k != nullptr, op, ": conure has no kernels for ", t.device().type(), " tensors",
              has_cuda() ? "" : " (this build has no CUDA kernels)");
  return *k;
}

// FNV-1a (64 bit) over the schemas joined by newlines: cheap, and conure/_build.py computes the same.
std::string abi() {
  uint64_t h = 0xcbf29ce484222325ull;
  bool first = true;
  for (const char* s : kSchemas) {
    if (!first) h = (h ^ static_cast<uint8_t>('\n')) * 0x100000001b3ull;
    first = false;
    for (const char* c = s; *c != '\0'; ++c) h = (h ^ static_cast<uint8_t>(*c)) * 0x100000001b3ull;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return std::string("schemas ") + buf;
}

}  // namespace conure

TORCH_LIBRARY(conure, m) {
  for (const char* schema : conure::kSchemas) m.def(schema);
  // No tensor arguments: one kernel for every dispatch key.
  m.impl("cpu_gemm_backend", &conure::cpu_gemm_backend);
  m.impl("cpu_gemm_plan_file", &conure::cpu_gemm_plan_file);
  m.impl("cpu_gemm_plan", &conure::cpu_gemm_plan);
  m.impl("has_cuda", &conure::has_cuda);
  m.impl("abi", &conure::abi);
}

TORCH_LIBRARY_IMPL(conure, CPU, m) { conure::register_ops(m); }

#ifdef CONURE_WITH_CUDA
TORCH_LIBRARY_IMPL(conure, CUDA, m) { conure::register_ops(m); }
#endif
