// CUDA kernels of the magnitude prune: radix select on the bits of |w|, all on the device. No torch headers: `nvcc -c`
// compiles this file alone. Launchers and their contracts: kernels_cuda.h.
#include "kernels_cuda.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace conure {
namespace cuda {
namespace {

using ull = unsigned long long;

// ---------------------------------------------------------------------------------------------------------------
// Prune: radix select on the bits of |w|, all on the device.
//
// |w| with the sign bit cleared is an unsigned key that orders like the value (NaN keys lie above +inf's). The
// k-th largest key (the threshold) is found kDigitBits at a time, most significant digit first: each pass is one
// histogram launch over all tensors (blocks grid-stride over tiles; a tile is kTile consecutive elements of one
// tensor, tiles numbered in flat order) counting the next digit of the keys that share the prefix chosen so far,
// then one single-block launch picks the digit and updates the prefix and `remaining` (how many keys equal to the
// threshold to keep) in device memory. A last round counts threshold ties per tile, scans the counts, and writes
// the owner maps: keys above the threshold stay, ties stay while their rank in flat order is < remaining.
// The only host sync is the copy of the state at the end.

constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr int kBlock = 256;
constexpr int kItems = 8;
constexpr int kTile = kBlock * kItems;  // elements per tile
constexpr int kWarps = kBlock / 32;
constexpr int kSelectThreads = kBins / 2;  // two bins per thread
constexpr int kScanThreads = 1024;
constexpr int kDescChunk = 64;  // descriptors passed by value per setup launch

static_assert(kSelectThreads == 1024, "select kernel scans 1024 threads of two bins");

enum Mode : int {
  kRunning = 0,  // radix passes under way
  kKeepAll = 1,  // k == n (or n == 0): nothing to free
  kFreeAll = 2,  // k == 0 < n: free every entry of the task
  kNaN = 3,      // a weight of the task is NaN: change nothing, report
  kAllTies = 4,  // threshold found, every tie is kept: keep key >= threshold
  kRank = 5,     // threshold found, ties kept by flat-order rank < remaining
};

struct PruneState {
  ull prefix;          // digits of the threshold chosen so far; after the last pass, the threshold key
  ull remaining;       // keys equal to the prefix still to keep
  long long n;         // entries owned by the task
  long long k;         // entries to keep
  int mode;            // Mode
  int nan;             // set by the first histogram pass
  long long pad[2];
};

struct TensorDesc {
  const void* weight;
  uint8_t* owner;
  long long numel;
  long long tile_begin;  // index of the tensor's first tile among all tiles
};

struct DescChunk {
  TensorDesc desc[kDescChunk];
  int count;
  int first;
};

template <typename key_t>
__device__ __forceinline__ key_t abs_mask() {
  return static_cast<key_t>(~(key_t(1) << (8 * sizeof(key_t) - 1)));
}

// Largest s with desc[s].tile_begin <= tile: the tensor holding `tile` (empty tensors own no tile and share their
// tile_begin with the next tensor, so the largest such s is never an empty one).
__device__ __forceinline__ int find_tensor(const TensorDesc* __restrict__ desc, int num_tensors, long long tile) {
  int lo = 0, hi = num_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (desc[mid].tile_begin <= tile)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Loads one tile: for item it, key[it] = |w| bits and valid[it] = (element exists and owner == task).
template <typename key_t>
__device__ __forceinline__ void load_tile(const TensorDesc* __restrict__ desc, int num_tensors, long long tile,
                                          int task, key_t (&key)[kItems], bool (&valid)[kItems], long long& base,
                                          long long& numel, uint8_t*& owner) {
  const TensorDesc d = desc[find_tensor(desc, num_tensors, tile)];
  base = (tile - d.tile_begin) * kTile + threadIdx.x;
  numel = d.numel;
  owner = d.owner;
  const key_t* w = static_cast<const key_t*>(d.weight);
  uint8_t own[kItems];
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const long long e = base + static_cast<long long>(it) * kBlock;
    const bool in = e < numel;
    key[it] = in ? w[e] : key_t(0);
    own[it] = in ? owner[e] : uint8_t(0);
    valid[it] = in;
  }
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    valid[it] = valid[it] && static_cast<int>(own[it]) == task;
    key[it] = static_cast<key_t>(key[it] & abs_mask<key_t>());
  }
}

// Copies descriptors into device memory (kernel parameters, so no host staging buffer) and, from the first
// chunk, zeroes the state and the histogram.
__global__ void prune_setup_kernel(const DescChunk chunk, TensorDesc* desc, PruneState* state, ull* hist) {
  const int tid = threadIdx.x;
  if (tid < chunk.count) desc[chunk.first + tid] = chunk.desc[tid];
  if (chunk.first == 0) {
    for (int b = tid; b < kBins; b += blockDim.x) hist[b] = 0;
    if (tid == 0) *state = PruneState{};
  }
}

// Histogram of the digit at [shift, shift + width) of the keys of the task's entries that share the prefix above it
// (pass 0: all of them; also flags NaN). Warp-aggregated shared-memory counts, flushed once per block.
template <typename key_t>
__global__ void __launch_bounds__(kBlock)
    prune_hist_kernel(const TensorDesc* __restrict__ desc, int num_tensors, long long num_tiles, PruneState* state,
                      ull* hist, int task, int pass, int shift, int width, key_t inf_key) {
  __shared__ unsigned int counts[kBins];
  if (state->mode != kRunning) return;  // uniform: written by an earlier launch
  for (int b = threadIdx.x; b < kBins; b += kBlock) counts[b] = 0;
  __syncthreads();
  const key_t prefix = static_cast<key_t>(state->prefix);
  const int high = shift + width;  // only used for pass >= 1, where high < bits of key_t
  const unsigned digit_mask = (1u << width) - 1u;
  const int lane = threadIdx.x & 31;
  bool nan = false;
  for (long long tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    key_t key[kItems];
    bool valid[kItems];
    long long base, numel;
    uint8_t* owner;
    load_tile<key_t>(desc, num_tensors, tile, task, key, valid, base, numel, owner);
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      int bin = -1;
      if (valid[it]) {
        if (pass == 0) {
          nan |= key[it] > inf_key;
          bin = static_cast<int>((key[it] >> shift) & digit_mask);
        } else if (static_cast<key_t>(key[it] >> high) == prefix) {
          bin = static_cast<int>((key[it] >> shift) & digit_mask);
        }
      }
      if (__any_sync(kFullMask, bin >= 0)) {
        const unsigned peers = __match_any_sync(kFullMask, bin);
        if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&counts[bin], static_cast<unsigned>(__popc(peers)));
      }
    }
  }
  if (__syncthreads_or(nan) && threadIdx.x == 0) atomicOr(&state->nan, 1);
  for (int b = threadIdx.x; b < kBins; b += kBlock) {
    const unsigned c = counts[b];
    if (c != 0) atomicAdd(&hist[b], static_cast<ull>(c));
  }
}

// Inclusive scan of one value per thread over the block (blockDim.x a multiple of 32, at most 1024); *total gets the
// sum. `warp_sums` is shared scratch of 32 entries. Contains barriers: call from all threads.
__device__ __forceinline__ ull block_inclusive_scan(ull v, ull* warp_sums, ull* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const ull up = __shfl_up_sync(kFullMask, v, o);
    if (lane >= o) v += up;
  }
  if (lane == 31) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    ull s = lane < warps ? warp_sums[lane] : 0ull;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const ull up = __shfl_up_sync(kFullMask, s, o);
      if (lane >= o) s += up;
    }
    warp_sums[lane] = s;
  }
  __syncthreads();
  const ull before = warp > 0 ? warp_sums[warp - 1] : 0ull;
  *total = warp_sums[warps - 1];
  __syncthreads();  // warp_sums may be reused after return
  return v + before;
}

// One block of kSelectThreads: picks the digit of this pass. Thread t holds bins b0 = kBins-1-2t and b1 = b0-1, so
// the scan in thread order gives the suffix sums S[d] = sum_{b >= d} hist[b]; the digit is the d with
// S[d+1] < remaining <= S[d] (digit 0 if remaining > S[0], which cannot happen). Zeroes the histogram for the next
// pass. After pass 0 it also sets n, k and the early-exit modes; after the last pass, kAllTies or kRank.
__global__ void __launch_bounds__(kSelectThreads)
    prune_select_kernel(PruneState* state, ull* hist, int pass, int width, int last, double keep_ratio) {
  __shared__ ull warp_sums[32];
  __shared__ ull s_remaining;
  __shared__ int s_mode;
  if (state->mode != kRunning) return;
  const int tid = threadIdx.x;
  const int b0 = kBins - 1 - 2 * tid, b1 = b0 - 1;
  const ull h0 = hist[b0], h1 = hist[b1];
  hist[b0] = 0;  // each thread clears only the bins it read
  hist[b1] = 0;
  ull total;
  const ull incl = block_inclusive_scan(h0 + h1, warp_sums, &total);
  if (tid == 0) {
    int mode = kRunning;
    ull remaining = state->remaining;
    if (pass == 0) {
      const long long n = static_cast<long long>(total);
      // rint rounds half to even, like std::nearbyint in the default mode (kept_count on the host).
      const long long k = static_cast<long long>(rint(keep_ratio * static_cast<double>(n)));
      state->n = n;
      state->k = k;
      if (state->nan)
        mode = kNaN;
      else if (k == n)
        mode = kKeepAll;
      else if (k == 0)
        mode = kFreeAll;
      remaining = static_cast<ull>(k);
    }
    if (mode != kRunning) state->mode = mode;
    s_mode = mode;
    s_remaining = remaining;
  }
  __syncthreads();
  if (s_mode != kRunning) return;
  const ull remaining = s_remaining;
  const ull excl = incl - h0 - h1;  // S[b0 + 1]
  const ull s0 = excl + h0;         // S[b0]
  int digit = -1;
  ull left = 0, ties = 0;
  if (excl < remaining && remaining <= s0) {
    digit = b0;
    left = remaining - excl;
    ties = h0;
  } else if (s0 < remaining && (remaining <= incl || tid == kSelectThreads - 1)) {
    digit = b1;
    left = remaining - s0;
    ties = h1;
  }
  if (digit >= 0) {
    state->prefix = (state->prefix << width) | static_cast<ull>(digit);
    state->remaining = left;
    if (last) state->mode = left >= ties ? kAllTies : kRank;
  }
}

// Per tile: how many of the task's keys equal the threshold (kRank only).
template <typename key_t>
__global__ void __launch_bounds__(kBlock)
    prune_ties_kernel(const TensorDesc* __restrict__ desc, int num_tensors, long long num_tiles,
                      const PruneState* state, unsigned* tile_ties, int task) {
  if (state->mode != kRank) return;
  const key_t threshold = static_cast<key_t>(state->prefix);
  for (long long tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    key_t key[kItems];
    bool valid[kItems];
    long long base, numel;
    uint8_t* owner;
    load_tile<key_t>(desc, num_tensors, tile, task, key, valid, base, numel, owner);
    int count = 0;
#pragma unroll
    for (int it = 0; it < kItems; ++it) count += __syncthreads_count(valid[it] && key[it] == threshold);
    if (threadIdx.x == 0) tile_ties[tile] = static_cast<unsigned>(count);
  }
}

// Exclusive scan of the per-tile tie counts in tile (= flat) order, one block (kRank only).
__global__ void __launch_bounds__(kScanThreads)
    prune_scan_kernel(const PruneState* state, const unsigned* tile_ties, ull* tile_offset, long long num_tiles) {
  __shared__ ull warp_sums[32];
  if (state->mode != kRank) return;
  ull carry = 0;
  for (long long start = 0; start < num_tiles; start += kScanThreads) {
    const long long i = start + threadIdx.x;
    const ull v = i < num_tiles ? static_cast<ull>(tile_ties[i]) : 0ull;
    ull total;
    const ull incl = block_inclusive_scan(v, warp_sums, &total);
    if (i < num_tiles) tile_offset[i] = carry + incl - v;
    carry += total;
  }
}

// Rank of this thread's flag among the block's set flags in thread order; *total gets their count. Barriers.
__device__ __forceinline__ unsigned block_exclusive_count(bool flag, unsigned* warp_counts, unsigned* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned ballot = __ballot_sync(kFullMask, flag);
  if (lane == 0) warp_counts[warp] = static_cast<unsigned>(__popc(ballot));
  __syncthreads();
  unsigned before = 0, sum = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const unsigned c = warp_counts[w];
    before += w < warp ? c : 0u;
    sum += c;
  }
  __syncthreads();  // warp_counts is rewritten by the next call
  *total = sum;
  return before + static_cast<unsigned>(__popc(ballot & ((1u << lane) - 1u)));
}

// Writes the owner maps: frees the task's entries that are not kept.
template <typename key_t>
__global__ void __launch_bounds__(kBlock)
    prune_write_kernel(const TensorDesc* __restrict__ desc, int num_tensors, long long num_tiles,
                       const PruneState* state, const unsigned* tile_ties, const ull* tile_offset, int task) {
  __shared__ unsigned warp_counts[kWarps];
  const int mode = state->mode;
  if (mode != kFreeAll && mode != kAllTies && mode != kRank) return;
  const key_t threshold = static_cast<key_t>(state->prefix);
  const ull remaining = state->remaining;
  for (long long tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    key_t key[kItems];
    bool valid[kItems];
    long long base, numel;
    uint8_t* owner;
    load_tile<key_t>(desc, num_tensors, tile, task, key, valid, base, numel, owner);
    bool keep_ties = mode == kAllTies;  // every tie of this tile is kept
    bool boundary = false;              // some ties of this tile are kept, some not: rank them
    ull rank_base = 0;                  // ties (of the task, in flat order) before this tile / item
    if (mode == kRank) {
      rank_base = tile_offset[tile];
      const ull here = tile_ties[tile];
      keep_ties = rank_base + here <= remaining;
      boundary = rank_base < remaining && !keep_ties;
    }
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      bool keep = false;
      if (mode != kFreeAll && valid[it]) keep = key[it] > threshold || (key[it] == threshold && keep_ties);
      if (boundary) {  // block-uniform
        const bool tie = valid[it] && key[it] == threshold;
        unsigned count;
        const unsigned rank = block_exclusive_count(tie, warp_counts, &count);
        if (tie) keep = rank_base + rank < remaining;
        rank_base += count;
      }
      if (valid[it] && !keep) owner[base + static_cast<long long>(it) * kBlock] = 0;
    }
  }
}

// Workspace layout (offsets from the start, each aligned to 256 bytes).
struct PruneLayout {
  size_t state, hist, desc, tile_ties, tile_offset, bytes;
  long long num_tiles;
};

size_t align_up(size_t v) { return (v + 255) & ~size_t(255); }

PruneLayout prune_layout(const PruneTensor* tensors, int num_tensors) {
  PruneLayout l{};
  long long tiles = 0;
  for (int s = 0; s < num_tensors; ++s) tiles += (tensors[s].numel + kTile - 1) / kTile;
  l.num_tiles = tiles;
  size_t at = 0;
  l.state = at;
  at = align_up(at + sizeof(PruneState));
  l.hist = at;
  at = align_up(at + sizeof(ull) * kBins);
  l.desc = at;
  at = align_up(at + sizeof(TensorDesc) * static_cast<size_t>(num_tensors));
  l.tile_ties = at;
  at = align_up(at + sizeof(unsigned) * static_cast<size_t>(tiles));
  l.tile_offset = at;
  at = align_up(at + sizeof(ull) * static_cast<size_t>(tiles));
  l.bytes = at;
  return l;
}

template <typename key_t>
cudaError_t prune_run(const PruneTensor* tensors, int num_tensors, int task, double keep_ratio, key_t inf_key,
                      void* workspace, size_t workspace_bytes, cudaStream_t stream, PruneResult* result) {
  const PruneLayout l = prune_layout(tensors, num_tensors);
  if (workspace == nullptr || workspace_bytes < l.bytes) return cudaErrorInvalidValue;
  char* ws = static_cast<char*>(workspace);
  PruneState* state = reinterpret_cast<PruneState*>(ws + l.state);
  ull* hist = reinterpret_cast<ull*>(ws + l.hist);
  TensorDesc* desc = reinterpret_cast<TensorDesc*>(ws + l.desc);
  unsigned* tile_ties = reinterpret_cast<unsigned*>(ws + l.tile_ties);
  ull* tile_offset = reinterpret_cast<ull*>(ws + l.tile_offset);

  long long tile_begin = 0;
  for (int first = 0; first < num_tensors; first += kDescChunk) {
    DescChunk chunk;
    memset(&chunk, 0, sizeof(chunk));
    chunk.first = first;
    chunk.count = std::min(kDescChunk, num_tensors - first);
    for (int c = 0; c < chunk.count; ++c) {
      const PruneTensor& t = tensors[first + c];
      chunk.desc[c] = TensorDesc{t.weight, t.owner, static_cast<long long>(t.numel), tile_begin};
      tile_begin += (t.numel + kTile - 1) / kTile;
    }
    prune_setup_kernel<<<1, kBins / 8, 0, stream>>>(chunk, desc, state, hist);
    CONURE_RETURN_IF_ERROR(cudaGetLastError());
  }

  const long long grid_ll = std::max<long long>(1, std::min<long long>(l.num_tiles, 4LL * sm_count()));
  const unsigned grid = static_cast<unsigned>(grid_ll);
  constexpr int kBits = 8 * static_cast<int>(sizeof(key_t));
  constexpr int kPasses = (kBits + kDigitBits - 1) / kDigitBits;
  for (int pass = 0; pass < kPasses; ++pass) {
    const int top = kBits - kDigitBits * pass;  // digit bits [shift, top)
    const int shift = std::max(top - kDigitBits, 0);
    const int width = top - shift;
    prune_hist_kernel<key_t>
        <<<grid, kBlock, 0, stream>>>(desc, num_tensors, l.num_tiles, state, hist, task, pass, shift, width, inf_key);
    CONURE_RETURN_IF_ERROR(cudaGetLastError());
    prune_select_kernel<<<1, kSelectThreads, 0, stream>>>(state, hist, pass, width, pass == kPasses - 1 ? 1 : 0,
                                                          keep_ratio);
    CONURE_RETURN_IF_ERROR(cudaGetLastError());
  }
  prune_ties_kernel<key_t><<<grid, kBlock, 0, stream>>>(desc, num_tensors, l.num_tiles, state, tile_ties, task);
  CONURE_RETURN_IF_ERROR(cudaGetLastError());
  prune_scan_kernel<<<1, kScanThreads, 0, stream>>>(state, tile_ties, tile_offset, l.num_tiles);
  CONURE_RETURN_IF_ERROR(cudaGetLastError());
  prune_write_kernel<key_t>
      <<<grid, kBlock, 0, stream>>>(desc, num_tensors, l.num_tiles, state, tile_ties, tile_offset, task);
  CONURE_RETURN_IF_ERROR(cudaGetLastError());

  PruneState host;
  CONURE_RETURN_IF_ERROR(cudaMemcpyAsync(&host, state, sizeof(host), cudaMemcpyDeviceToHost, stream));
  CONURE_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
  result->n = host.n;
  result->kept = host.k;
  result->saw_nan = host.mode == kNaN;
  return cudaSuccess;
}

}  // namespace

size_t prune_workspace_bytes(const PruneTensor* tensors, int num_tensors) {
  return prune_layout(tensors, num_tensors).bytes;
}

cudaError_t magnitude_prune(DType dtype, const PruneTensor* tensors, int num_tensors, int task, double keep_ratio,
                            void* workspace, size_t workspace_bytes, cudaStream_t stream, PruneResult* result) {
  if (tensors == nullptr || num_tensors < 1 || result == nullptr) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat32:
      return prune_run<uint32_t>(tensors, num_tensors, task, keep_ratio, 0x7f800000u, workspace, workspace_bytes,
                                 stream, result);
    case DType::kFloat64:
      return prune_run<ull>(tensors, num_tensors, task, keep_ratio, 0x7ff0000000000000ull, workspace, workspace_bytes,
                            stream, result);
    case DType::kFloat16:
      return prune_run<uint16_t>(tensors, num_tensors, task, keep_ratio, uint16_t(0x7c00u), workspace, workspace_bytes,
                                 stream, result);
    case DType::kBFloat16:
      return prune_run<uint16_t>(tensors, num_tensors, task, keep_ratio, uint16_t(0x7f80u), workspace, workspace_bytes,
                                 stream, result);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace conure
