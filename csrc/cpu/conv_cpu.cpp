// CPU weight layout kernels, shared by the masked conv and the fused block (contracts: csrc/kernels.h): the owner-map
// mask fused with the re-layout the GEMMs want, and the gradient scatter back to the [C_out, C_in, K] layout.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "kernels_cpu.h"

namespace conure {
namespace cpu {

// The output is a [C_out, K - j0, C_in] view of any strides; the loop order follows its unit-stride dimension so
// the writes are contiguous: along i (the block's [C_out, (K - j0) * C_in] rows: one output channel o per step, its
// [C_in, K] weights and owners contiguous) or along o (the conv's [K, C_in, C_out] taps: one (j, i) row per step,
// reads strided by C_in * K).
void mask_weight_cpu(const at::Tensor& w, const at::Tensor& owner, int64_t task, int64_t j0, at::Tensor& out) {
  const int64_t C_out = w.size(0), C_in = w.size(1), K = w.size(2), Kp = K - j0;
  const int64_t so = out.stride(0), sj = out.stride(1), si = out.stride(2);
  const uint8_t* own = owner.data_ptr<uint8_t>();
  const uint8_t top = static_cast<uint8_t>(task);
  // 1 <= t <= top  <=>  t - 1 < top in uint8 arithmetic (t = 0 wraps to 255, and top <= 255)
  const auto active = [top](uint8_t t) { return static_cast<uint8_t>(t - 1) < top; };
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "mask_weight_cpu", [&] {
    const scalar_t* src = w.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    if (si == 1 || C_out == 1) {
      at::parallel_for(0, C_out, 16, [&](int64_t begin, int64_t end) {
        for (int64_t o = begin; o < end; ++o) {
          const scalar_t* ws = src + o * C_in * K;
          const uint8_t* os = own + o * C_in * K;
          for (int64_t jj = 0; jj < Kp; ++jj) {
            const int64_t j = j0 + jj;
            scalar_t* row = dst + o * so + jj * sj;
            if (si == 1) {  // unit stride spelled out: the loop vectorizes
              for (int64_t i = 0; i < C_in; ++i) row[i] = keep_or_zero(active(os[i * K + j]), ws[i * K + j]);
            } else {
              for (int64_t i = 0; i < C_in; ++i) row[i * si] = keep_or_zero(active(os[i * K + j]), ws[i * K + j]);
            }
          }
        }
      });
      return;
    }
    at::parallel_for(0, Kp * C_in, 64, [&](int64_t begin, int64_t end) {
      for (int64_t ji = begin; ji < end; ++ji) {
        const int64_t jj = ji / C_in, i = ji % C_in;
        scalar_t* row = dst + jj * sj + i * si;
        for (int64_t o = 0; o < C_out; ++o) {
          const int64_t s = (o * C_in + i) * K + j0 + jj;
          row[o * so] = keep_or_zero(active(own[s]), src[s]);
        }
      }
    });
  });
}

void scatter_grad_cpu(const at::Tensor& grad, const at::Tensor& owner, int64_t task, int64_t j0, at::Tensor& grad_w) {
  if (task < 1) {  // owner 0 (free) is never active, so no entry can be task 0's
    grad_w.zero_();
    return;
  }
  const int64_t C_in = grad_w.size(1), K = grad_w.size(2), C_out = grad_w.size(0);
  const int64_t so = grad.stride(0), sj = grad.stride(1), si = grad.stride(2);
  const uint8_t* own = owner.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_w.scalar_type(), "scatter_grad_cpu", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    scalar_t* dst = grad_w.data_ptr<scalar_t>();
    at::parallel_for(0, C_out * C_in, 256, [&](int64_t begin, int64_t end) {
      for (int64_t oi = begin; oi < end; ++oi) {
        const int64_t o = oi / C_in, i = oi % C_in;
        const scalar_t* src = g + o * so + i * si;
        scalar_t* out = dst + oi * K;
        const uint8_t* os = own + oi * K;
        for (int64_t j = 0; j < j0; ++j) out[j] = scalar_t(0);
        for (int64_t j = j0; j < K; ++j) out[j] = keep_or_zero(os[j] == task, src[(j - j0) * sj]);
      }
    });
  });
}

}  // namespace cpu
}  // namespace conure
