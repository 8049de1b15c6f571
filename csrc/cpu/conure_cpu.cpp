// CPU kernels of the conure operators: the two conv layout/mask kernels and the radix-select magnitude prune.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <atomic>
#include <cstring>
#include <vector>

#include "../masked_conv.h"

namespace conure {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Conv: mask + layout kernels.

void mask_weight_cpu(const at::Tensor& weight, const at::Tensor& owner, int64_t task, at::Tensor& out) {
  const int64_t C_out = weight.size(0), C_in = weight.size(1), K = weight.size(2);
  const uint8_t* own = owner.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "mask_weight_cpu", [&] {
    const scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    // One output row (j, i) per step: writes are contiguous over o, reads strided by C_in*K.
    at::parallel_for(0, K * C_in, 64, [&](int64_t begin, int64_t end) {
      for (int64_t ji = begin; ji < end; ++ji) {
        const int64_t j = ji / C_in, i = ji % C_in;
        scalar_t* dst = o + ji * C_out;
        for (int64_t c = 0; c < C_out; ++c) {
          const int64_t src = (c * C_in + i) * K + j;
          const uint8_t t = own[src];
          dst[c] = (t >= 1 && t <= task) ? w[src] : scalar_t(0);
        }
      }
    });
  });
}

void scatter_grad_cpu(const at::Tensor& grad_taps, const at::Tensor& owner, int64_t task, at::Tensor& grad_w) {
  const int64_t C_out = grad_w.size(0), C_in = grad_w.size(1), K = grad_w.size(2);
  const uint8_t* own = owner.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_w.scalar_type(), "scatter_grad_cpu", [&] {
    const scalar_t* g = grad_taps.data_ptr<scalar_t>();
    scalar_t* dst = grad_w.data_ptr<scalar_t>();
    at::parallel_for(0, C_out * C_in, 256, [&](int64_t begin, int64_t end) {
      for (int64_t oi = begin; oi < end; ++oi) {
        for (int64_t j = 0; j < K; ++j) {
          const int64_t idx = oi * K + j;
          dst[idx] = own[idx] == task ? g[j * C_out * C_in + oi] : scalar_t(0);
        }
      }
    });
  });
}

const ConvKernels kCpuKernels{mask_weight_cpu, scatter_grad_cpu};

at::Tensor conv_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& owner, int64_t task,
                    const std::optional<at::Tensor>& bias, int64_t dilation) {
  return masked_conv_forward(kCpuKernels, x, weight, owner, task, bias, dilation);
}

std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>, std::optional<at::Tensor>> conv_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& owner, int64_t task,
    int64_t dilation, std::array<bool, 3> output_mask) {
  return masked_conv_backward(kCpuKernels, grad_y, x, weight, owner, task, dilation, output_mask);
}

// ---------------------------------------------------------------------------------------------------------------
// Prune: radix select on the bits of |w|.
//
// For non-negative IEEE values the bit pattern orders like the value, so |w| becomes an unsigned key (sign bit
// cleared) and the k-th largest key is found one digit at a time: each pass histograms the next digit of the keys
// that share the prefix chosen so far. A last pass in flat order writes the owner map, keeping entries above the
// threshold and the first `ties` entries equal to it (lower flat index wins ties). Digits are 11 bits (3 passes
// for float32): a 2048-bin histogram stays in L1, where 16-bit digits spent most of the time on the 512 KiB table.

template <typename scalar_t> struct KeyOf;
template <> struct KeyOf<float> { using type = uint32_t; static constexpr type kInf = 0x7f800000u; };
template <> struct KeyOf<double> { using type = uint64_t; static constexpr type kInf = 0x7ff0000000000000ull; };
template <> struct KeyOf<c10::Half> { using type = uint16_t; static constexpr type kInf = 0x7c00u; };
template <> struct KeyOf<c10::BFloat16> { using type = uint16_t; static constexpr type kInf = 0x7f80u; };

template <typename scalar_t>
inline typename KeyOf<scalar_t>::type abs_key(scalar_t v) {
  using key_t = typename KeyOf<scalar_t>::type;
  key_t bits;
  std::memcpy(&bits, &v, sizeof(key_t));
  return bits & static_cast<key_t>(~(key_t(1) << (8 * sizeof(key_t) - 1)));
}

struct PruneSpan {
  const void* weight;
  uint8_t* owner;
  int64_t numel;
};

template <typename scalar_t>
int64_t prune_impl(const std::vector<PruneSpan>& spans, uint8_t task, double keep_ratio) {
  using key_t = typename KeyOf<scalar_t>::type;
  constexpr int kDigitBits = 11;  // 2048 bins: the histogram stays in L1
  constexpr int64_t kBins = int64_t(1) << kDigitBits;
  constexpr int kPasses = int((sizeof(key_t) * 8 + kDigitBits - 1) / kDigitBits);
  const int threads = at::get_num_threads();
  std::vector<int64_t> hist(kBins), local(static_cast<size_t>(threads) * kBins);

  key_t prefix = 0;        // digits of the threshold chosen so far
  int64_t remaining = -1;  // how many to keep among keys sharing the prefix (set after the first pass)
  int64_t n = 0, k = 0;
  for (int pass = 0; pass < kPasses; ++pass) {
    const int shift = (kPasses - 1 - pass) * kDigitBits;
    std::fill(local.begin(), local.end(), 0);
    std::atomic<bool> saw_nan{false};
    for (const PruneSpan& span : spans) {
      const scalar_t* w = static_cast<const scalar_t*>(span.weight);
      const uint8_t* own = span.owner;
      at::parallel_for(0, span.numel, 1 << 14, [&](int64_t begin, int64_t end) {
        int64_t* h = local.data() + static_cast<size_t>(at::get_thread_num()) * kBins;
        bool nan = false;
        // Branch-free: owner maps interleave tasks at random, so `if (own[e] != task) continue` mispredicts
        // about half the time; counting with 0/1 increments keeps the loop a straight line.
        for (int64_t e = begin; e < end; ++e) {
          const key_t key = abs_key(w[e]);
          const bool mine = own[e] == task;
          const bool match = pass == 0 || static_cast<key_t>(key >> (shift + kDigitBits)) == prefix;
          nan |= mine & (key > KeyOf<scalar_t>::kInf);
          h[(key >> shift) & (kBins - 1)] += mine & match;
        }
        if (nan) saw_nan.store(true, std::memory_order_relaxed);
      });
    }
    TORCH_CHECK(!saw_nan.load(), "magnitude_prune_: a weight owned by task ", int(task), " is NaN");
    std::fill(hist.begin(), hist.end(), 0);
    for (int t = 0; t < threads; ++t)
      for (int64_t b = 0; b < kBins; ++b) hist[b] += local[static_cast<size_t>(t) * kBins + b];
    if (pass == 0) {
      for (int64_t b = 0; b < kBins; ++b) n += hist[b];
      k = kept_count(keep_ratio, n);
      if (k == n) return k;  // nothing to free
      if (k == 0) break;     // free all of them below
      remaining = k;
    }
    int64_t digit = kBins - 1;
    for (; digit > 0 && hist[digit] < remaining; --digit) remaining -= hist[digit];
    prefix = static_cast<key_t>((static_cast<uint64_t>(prefix) << kDigitBits) | static_cast<uint64_t>(digit));
  }

  // Final pass in flat order (sequential: the tie rule depends on order).
  const key_t threshold = prefix;
  int64_t ties_left = k == 0 ? 0 : remaining;
  for (const PruneSpan& span : spans) {
    const scalar_t* w = static_cast<const scalar_t*>(span.weight);
    uint8_t* own = span.owner;
    for (int64_t e = 0; e < span.numel; ++e) {  // branch-free, as above
      const key_t key = abs_key(w[e]);
      const bool mine = own[e] == task;
      const bool tie = mine & (key == threshold) & (ties_left > 0);
      const bool keep = (k != 0) & ((key > threshold) | tie);
      ties_left -= tie;
      own[e] = (mine & !keep) ? uint8_t(0) : own[e];
    }
  }
  return k;
}

at::Tensor prune_cpu(at::TensorList weights, at::TensorList owners, int64_t task, double keep_ratio) {
  check_prune_args(weights, owners, task, keep_ratio);
  std::vector<at::Tensor> contiguous;  // keeps copies of non-contiguous weights alive
  std::vector<PruneSpan> spans;
  for (size_t n = 0; n < weights.size(); ++n) {
    contiguous.push_back(weights[n].contiguous());
    spans.push_back({contiguous.back().data_ptr(), owners[n].data_ptr<uint8_t>(), weights[n].numel()});
  }
  int64_t kept = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weights[0].scalar_type(), "prune_cpu", [&] {
    kept = prune_impl<scalar_t>(spans, static_cast<uint8_t>(task), keep_ratio);
  });
  return at::scalar_tensor(kept, at::kLong);  // 0-dim int64 on the CPU (schema returns a Tensor: see masked_conv.cpp)
}

}  // namespace
}  // namespace conure

TORCH_LIBRARY_IMPL(conure, CPU, m) {
  m.impl("masked_causal_conv1d", &conure::conv_cpu);
  m.impl("masked_causal_conv1d_backward", &conure::conv_backward_cpu);
  m.impl("magnitude_prune_many_", &conure::prune_cpu);
}
