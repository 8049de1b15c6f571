// CPU kernel of the magnitude prune: radix select on the bits of |w| (orchestration: csrc/conv.cpp; contract:
// csrc/kernels.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <atomic>
#include <cstring>
#include <vector>

#include "../conv.h"
#include "kernels_cpu.h"

namespace conure {
namespace cpu {
namespace {

// ---------------------------------------------------------------------------------------------------------------
// Prune: radix select on the bits of |w|.
//
// For non-negative IEEE values the bit pattern orders like the value, so |w| becomes an unsigned key (sign bit
// cleared) and the k-th largest key is found one digit at a time: each pass histograms the next digit of the keys
// that share the prefix chosen so far. A last pass in flat order writes the owner map, keeping entries above the
// threshold and the first `ties` entries equal to it (lower flat index wins ties). Digits are 11 bits (3 passes
// for float32): a 2048-bin histogram stays in L1, where 16-bit digits spent most of the time on the 512 KiB table.

template <typename scalar_t> struct KeyOf;
template <> struct KeyOf<float> {
  using type = uint32_t;
  static constexpr type kInf = 0x7f800000u;
};
template <> struct KeyOf<double> {
  using type = uint64_t;
  static constexpr type kInf = 0x7ff0000000000000ull;
};
template <> struct KeyOf<c10::Half> {
  using type = uint16_t;
  static constexpr type kInf = 0x7c00u;
};
template <> struct KeyOf<c10::BFloat16> {
  using type = uint16_t;
  static constexpr type kInf = 0x7f80u;
};

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

// The final pass in flat order (sequential: the tie rule depends on order): frees task's entries below the threshold
// key and those equal to it after the first `ties` of them (all of them when !keep_any). A function of its own, not
// inlined: its code then does not depend on what surrounds the call (measured ~7% apart between two inlined builds).
template <typename scalar_t>
__attribute__((noinline)) void write_owners(const std::vector<PruneSpan>& spans, uint8_t task,
                                            typename KeyOf<scalar_t>::type threshold, int64_t ties, bool keep_any) {
  using key_t = typename KeyOf<scalar_t>::type;
  int64_t ties_left = ties;
  for (const PruneSpan& span : spans) {
    const scalar_t* w = static_cast<const scalar_t*>(span.weight);
    uint8_t* own = span.owner;
    for (int64_t e = 0; e < span.numel; ++e) {  // branch-free, as above
      const key_t key = abs_key(w[e]);
      const bool mine = own[e] == task;
      const bool tie = mine & (key == threshold) & (ties_left > 0);
      const bool keep = keep_any & ((key > threshold) | tie);
      ties_left -= tie;
      own[e] = (mine & !keep) ? uint8_t(0) : own[e];
    }
  }
}

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

  write_owners<scalar_t>(spans, task, prefix, k == 0 ? 0 : remaining, k != 0);
  return k;
}

}  // namespace

int64_t prune_cpu(at::TensorList weights, at::TensorList owners, int64_t task, double keep_ratio) {
  std::vector<at::Tensor> contiguous;  // keeps copies of non-contiguous weights alive
  std::vector<PruneSpan> spans;
  for (size_t n = 0; n < weights.size(); ++n) {
    contiguous.push_back(weights[n].contiguous());
    spans.push_back({contiguous.back().data_ptr(), owners[n].data_ptr<uint8_t>(), weights[n].numel()});
  }
  int64_t kept = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weights[0].scalar_type(), "prune_cpu",
                                  [&] { kept = prune_impl<scalar_t>(spans, static_cast<uint8_t>(task), keep_ratio); });
  return kept;
}

}  // namespace cpu
}  // namespace conure
