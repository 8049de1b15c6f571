// The fused residual block (pre-LN or post-LN), streaming step and multi-task forward: device-generic orchestration
// over the kernel table (csrc/kernels.h). Schemas: csrc/ops.cpp; the operator functions at the end of this file.
//
// Pre-LN residual block (conure.nn.ResidualBlock, pre_ln=True), activations [B, L, C]:
//     h = conv1(relu(LN1(x)))          conv1: masked causal conv, dilation d
//     y = x + conv2(relu(LN2(h)))      conv2: masked causal conv, dilation 2d
// Each conv is ONE GEMM over an "im2col" buffer: col[b, t, jj*C + i] = a[b, t - s_j, i] (zero at negative time),
// s_j = (K-1-j)*dilation, for the taps j in [j0, K) that can reach the sequence (s_j < L). The LayerNorm + ReLU
// pass writes its output straight into that buffer (K copies of each row, no pad/transpose copy), and the masked
// weights are laid out as the matching [(K-j0)*C_in, C_out] matrix. The block is processed a few whole sequences
// at a time, so the col buffer stays small (cache resident) and peak memory is the output plus what backward needs:
// conv1's output h and the LayerNorm statistics. Backward recomputes the LN/ReLU outputs from x, h and the stats.
//
// The memory-bound passes are the backends' kernels (csrc/kernels.h); the GEMMs go to conure::gemm (csrc/gemm.h).
#include <ATen/ATen.h>
#include <ATen/DeviceGuard.h>

#include "conv.h"
#include "kernels.h"
#include "ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

namespace conure {
namespace block {
namespace {

// The first tap that can reach a sequence of length L: taps with (K-1-j)*dilation >= L see only negative time.
inline int64_t first_tap(int64_t K, int64_t dilation, int64_t L) {
  if (L <= 0) return K - 1;
  const int64_t reach = (L - 1) / dilation;  // largest j-offset (K-1-j) with s_j < L
  return reach >= K - 1 ? 0 : K - 1 - reach;
}

// A dilation >= L acts like L (every tap but the last reaches before the start); clamping keeps the products
// (K-1) * dilation from overflowing for absurd dilations.
inline int64_t clamp_dilation(int64_t dilation, int64_t L) { return std::min(dilation, std::max<int64_t>(L, 1)); }

// GEMMs: conure::gemm (gemm.h): on the CPU oneDNN or ATen/MKL per shape class, as csrc/gemm.cpp decides.
using conure::gemm;

// Rows (sequences * positions) per chunk of the block: the col buffer of a chunk is rows * K * C elements.
int64_t chunk_rows() {
  static const int64_t rows = [] {
    const char* env = std::getenv("CONURE_BLOCK_CHUNK_ROWS");
    const int64_t v = env ? std::atoll(env) : 0;
    return v > 0 ? v : int64_t(1024);
  }();
  return rows;
}

// Scratch memory for the col buffers: on the CPU one buffer per thread is kept between calls (up to 64 MiB), so the
// big temporaries do not go back to the OS and fault in again on every call (glibc returns large blocks; refilling
// them cost about 10% of a block's time at B=32). On other devices the caching allocator already does this.
at::Tensor scratch(int64_t numel, const at::TensorOptions& opts) {
  constexpr int64_t kMaxBytes = int64_t(64) << 20;
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(opts.dtype())));
  if (!opts.device().is_cpu() || bytes > kMaxBytes) return at::empty({numel}, opts);
  thread_local at::Tensor cache;
  if (!cache.defined() || cache.nbytes() < static_cast<size_t>(bytes) ||
      cache.storage().use_count() > 1) {  // (a view of it still alive: do not share)
    cache = at::empty({(bytes + 63) / 64 * 64}, opts.dtype(at::kByte));
  }
  return cache.narrow(0, 0, bytes).view(c10::typeMetaToScalarType(opts.dtype())).narrow(0, 0, numel);
}

// B sequences in n chunks of nearly equal size (they differ by at most one sequence). n depends on B and L only --
// never on the thread count -- so every result is the same for any number of threads.
struct Split {
  int64_t B, n;
  int64_t begin(int64_t i) const { return i * B / n; }
  int64_t size(int64_t i) const { return (i + 1) * B / n - i * B / n; }
  int64_t max_size() const { return (B + n - 1) / n; }
};

Split split_batch(int64_t B, int64_t rows_per_sequence) {
  const int64_t target = chunk_rows();
  int64_t n = std::max<int64_t>(1, (B * rows_per_sequence + target / 2) / std::max<int64_t>(target, 1));
  if (n > 1 && n % 2 == 1) ++n;  // an even count shares evenly between two (or four) threads
  return {B, std::max<int64_t>(1, std::min(n, B))};
}

// fn(i) for every chunk i. On the CPU the chunks go to the threads in ONE parallel region (each thread runs whole
// chunks: its GEMMs and kernels run single-threaded inside the region). Few regions matter on a shared machine:
// every region waits for all its threads to get a core. Elsewhere (CUDA) the chunks run in order.
template <typename F>
void for_chunks(bool cpu, int64_t n, const F& fn) {
  if (cpu && n > 1) {
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) fn(i);
    });
  } else {
    for (int64_t i = 0; i < n; ++i) fn(i);
  }
}

// A [rows, cols] view of the first rows*cols elements of a flat buffer.
at::Tensor prefix(const at::Tensor& flat, at::IntArrayRef shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return flat.narrow(0, 0, n).view(shape);
}

// The masked weights as the [C_out, (K - j0) * C_in] rows the block's GEMMs multiply by (col @ rows^T).
void mask_rows(const Kernels& k, const at::Tensor& w, const at::Tensor& owner, int64_t task, int64_t j0,
               at::Tensor& rows) {
  at::Tensor out = rows.view({w.size(0), w.size(2) - j0, w.size(1)});
  k.mask_weight(w, owner, task, j0, out);
}

void check_vector(const at::Tensor& v, int64_t n, const at::Tensor& x, const char* name) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == n, "residual_block: ", name, " must be [", n, "], got ", v.sizes());
  TORCH_CHECK(v.scalar_type() == x.scalar_type() && v.device() == x.device(), "residual_block: ", name,
              " must match x's dtype and device, got ", v.scalar_type(), " on ", v.device());
}

void check_block_args(const at::Tensor& x, const at::Tensor& w1, const at::Tensor& owner1, const at::Tensor& w2,
                      const at::Tensor& owner2, const at::Tensor& ln1_weight, const at::Tensor& ln1_bias,
                      const at::Tensor& ln2_weight, const at::Tensor& ln2_bias, int64_t task, int64_t dilation,
                      bool post_ln = false) {
  TORCH_CHECK(x.dim() == 3, "residual_block: x must be [B, L, C], got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "residual_block: x must be floating, got ", x.scalar_type());
  TORCH_CHECK(w1.dim() == 3 && w2.dim() == 3, "residual_block: weights must be [C_out, C_in, K], got ", w1.sizes(),
              " and ", w2.sizes());
  const int64_t C = x.size(2), Cm = w1.size(0), K = w1.size(2);
  TORCH_CHECK(K >= 1 && Cm >= 1 && C >= 1, "residual_block: empty channel or tap dimension");
  TORCH_CHECK(w1.size(1) == C && w2.size(0) == C && w2.size(1) == Cm && w2.size(2) == K,
              "residual_block: w1 must be [C_mid, ", C, ", K] and w2 [", C, ", C_mid, K], got ", w1.sizes(), " and ",
              w2.sizes());
  for (const at::Tensor* w : {&w1, &w2})
    TORCH_CHECK(w->scalar_type() == x.scalar_type() && w->device() == x.device(),
                "residual_block: weights must match x's dtype and device");
  TORCH_CHECK(owner1.scalar_type() == at::kByte && owner2.scalar_type() == at::kByte,
              "residual_block: owner maps must be uint8");
  TORCH_CHECK(owner1.sizes() == w1.sizes() && owner2.sizes() == w2.sizes(),
              "residual_block: owner maps must have their weight's shape");
  TORCH_CHECK(owner1.device() == x.device() && owner2.device() == x.device(),
              "residual_block: owner maps must be on x's device");
  // Pre-LN normalizes the block input (C) then conv1's output (C_mid); post-LN conv1's output then conv2's (C).
  check_vector(ln1_weight, post_ln ? Cm : C, x, "ln1_weight");
  check_vector(ln1_bias, post_ln ? Cm : C, x, "ln1_bias");
  check_vector(ln2_weight, post_ln ? C : Cm, x, "ln2_weight");
  check_vector(ln2_bias, post_ln ? C : Cm, x, "ln2_bias");
  TORCH_CHECK(task >= 0 && task <= 255, "residual_block: task must be in [0, 255], got ", task);
  TORCH_CHECK(dilation >= 1, "residual_block: dilation must be >= 1, got ", dilation);
}

}  // namespace

at::ScalarType stats_dtype(at::ScalarType activation) { return activation == at::kDouble ? at::kDouble : at::kFloat; }

namespace {

void check_saved(const char* where, const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h,
                 const at::Tensor& stats, int64_t Cm) {
  const int64_t B = x.size(0), L = x.size(1);
  const auto sdt = stats_dtype(x.scalar_type());
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type() && grad_y.device() == x.device(),
              where, ": grad_y must be like x ", x.sizes(), ", got ", grad_y.sizes(), " ", grad_y.scalar_type());
  TORCH_CHECK(h.dim() == 3 && h.size(0) == B && h.size(1) == L && h.size(2) == Cm &&
                  h.scalar_type() == x.scalar_type() && h.device() == x.device(),
              where, ": h must be [", B, ", ", L, ", ", Cm, "] like x, got ", h.sizes());
  TORCH_CHECK(stats.dim() == 4 && stats.size(0) == 2 && stats.size(1) == 2 && stats.size(2) == B &&
                  stats.size(3) == L && stats.scalar_type() == sdt && stats.device() == x.device(),
              where, ": stats must be [2, 2, ", B, ", ", L, "] of ", sdt, ", got ", stats.sizes(), " ",
              stats.scalar_type());
}

// The two convs' effective dilations (clamped to L), first reachable taps and tap counts.
struct Taps {
  int64_t d1, d2, j01, j02, K1, K2;
};

Taps block_taps(int64_t K, int64_t dilation, int64_t L) {
  const int64_t d1 = clamp_dilation(dilation, L), d2 = clamp_dilation(2 * d1, L);
  const int64_t j01 = first_tap(K, d1, L), j02 = first_tap(K, d2, L);
  return {d1, d2, j01, j02, K - j01, K - j02};
}

// The LayerNorm statistics of sequences [b0, b0 + bc) as flat [bc * L] views of stats [2, 2, B, L] (contiguous):
// m1, r1 of the first LayerNorm, m2, r2 of the second.
struct ChunkStats {
  at::Tensor m1, r1, m2, r2;
  ChunkStats(const at::Tensor& stats, int64_t b0, int64_t bc) {
    const int64_t n = bc * stats.size(3);
    const auto part = [&](int64_t ln, int64_t which) { return stats[ln][which].narrow(0, b0, bc).view({n}); };
    m1 = part(0, 0), r1 = part(0, 1), m2 = part(1, 0), r2 = part(1, 1);
  }
};

// Per-chunk partial gradients, added in chunk order at the end (deterministic): the row-layout weight gradients
// and the LayerNorm parameter gradients (stats dtype). Undefined where the output mask does not ask for them.
struct Partials {
  at::Tensor G1, G2, dg1, db1, dg2, db2;
  static Partials make(int64_t n, const std::array<bool, 7>& mask, int64_t g1_rows, int64_t g1_cols, int64_t g2_rows,
                       int64_t g2_cols, int64_t ln1, int64_t ln2, const at::TensorOptions& opts, at::ScalarType sdt) {
    Partials p;
    if (mask[1]) p.G1 = at::empty({n, g1_rows, g1_cols}, opts);
    if (mask[2]) p.G2 = at::empty({n, g2_rows, g2_cols}, opts);
    if (mask[3]) p.dg1 = at::zeros({n, ln1}, opts.dtype(sdt));
    if (mask[4]) p.db1 = at::zeros({n, ln1}, opts.dtype(sdt));
    if (mask[5]) p.dg2 = at::zeros({n, ln2}, opts.dtype(sdt));
    if (mask[6]) p.db2 = at::zeros({n, ln2}, opts.dtype(sdt));
    return p;
  }
  static at::Tensor at(const at::Tensor& parts, int64_t i) { return parts.defined() ? parts[i] : at::Tensor(); }
};

// The chunks' partial sums added in chunk order, weight gradients scattered back to [C_out, C_in, K] where
// owner == task, LayerNorm gradients cast to the activation dtype.
BlockGrads finish_grads(const Kernels& k, const Partials& p, std::optional<at::Tensor> gx, const at::Tensor& w1,
                        const at::Tensor& owner1, const at::Tensor& w2, const at::Tensor& owner2, int64_t task,
                        int64_t j01, int64_t j02, int64_t rows, at::ScalarType dtype) {
  const auto total = [&](const at::Tensor& parts) {
    if (parts.size(0) == 1) return parts[0];
    at::Tensor out = at::empty(parts.sizes().slice(1), parts.options());
    at::Tensor flat = out.view({-1});
    k.sum_parts(parts.view({parts.size(0), -1}), flat);
    return out;
  };
  const auto scatter = [&](const at::Tensor& parts, const at::Tensor& w, const at::Tensor& owner, int64_t j0) {
    if (task == 0 || rows == 0) return at::zeros(w.sizes(), w.options());  // owner 0 (free) is never active
    at::Tensor out = at::empty(w.sizes(), w.options());  // scatter_grad writes every entry
    const at::Tensor rows = total(parts);  // [C_out, (K - j0) * C_in]
    k.scatter_grad(rows.view({w.size(0), w.size(2) - j0, w.size(1)}), owner.contiguous(), task, j0, out);
    return out;
  };
  const auto param = [&](const at::Tensor& parts) -> std::optional<at::Tensor> {
    if (!parts.defined()) return std::nullopt;
    return total(parts).to(dtype);
  };
  std::optional<at::Tensor> gw1, gw2;
  if (p.G1.defined()) gw1 = scatter(p.G1, w1, owner1, j01);
  if (p.G2.defined()) gw2 = scatter(p.G2, w2, owner2, j02);
  return {gx, gw1, gw2, param(p.dg1), param(p.db1), param(p.dg2), param(p.db2)};
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Fused residual block, pre-LN:  h = conv1(relu(LN1(x))), y = x + conv2(relu(LN2(h)));
//                       post-LN: h1 = conv1(x), h2 = conv2(relu(LN1(h1))), y = x + relu(LN2(h2)).
// Both go a few whole sequences at a time (chunks of about chunk_rows() rows, one parallel region). The post-LN
// conv1 reads x itself, so its im2col is a plain shifted copy (ATen copies per tap, no kernel of its own); its
// LN2 + ReLU is the K = 1 case of ln_relu_im2col. Saved for backward: pre-LN, conv1's output h [B, L, C_mid];
// post-LN, h1 and h2 in one tensor "h" [B, L, C_mid + C] (h1's elements, then h2's); and the statistics of both
// LayerNorms. The backward recomputes the LN + ReLU outputs (a cheap pass, no GEMM).

namespace {

// col[s, r, (j-j0)*C + c] = in[s, L - L_out + r - (K-1-j)*dil, c] (0 at negative time), j in [j0, K): the taps of
// the last L_out positions. in: [S, L, C]; col: [S, L_out, (K-j0)*C], L_out <= L.
void plain_im2col(const at::Tensor& in, int64_t K, int64_t j0, int64_t dil, at::Tensor& col) {
  const int64_t L = in.size(1), C = in.size(2), L_out = col.size(1), off = L - L_out;
  for (int64_t j = j0; j < K; ++j) {
    const int64_t shift = (K - 1 - j) * dil;  // < L for j >= j0
    const int64_t zeros = std::min(L_out, std::max<int64_t>(0, shift - off));
    at::Tensor tap = col.narrow(2, (j - j0) * C, C);
    if (zeros > 0) tap.narrow(1, 0, zeros).zero_();
    tap.narrow(1, zeros, L_out - zeros).copy_(in.narrow(1, off + zeros - shift, L_out - zeros));
  }
}

// out[s, t - shift_j, c] += gcol[s, t, (j-j0)*C + c] for t >= shift_j, taps added in order j = j0, j0+1, ...
void plain_col2im_add(const at::Tensor& gcol, int64_t K, int64_t j0, int64_t dil, at::Tensor& out) {
  const int64_t L = out.size(1), C = out.size(2);
  for (int64_t j = j0; j < K; ++j) {
    const int64_t shift = (K - 1 - j) * dil;
    out.narrow(1, 0, L - shift).add_(gcol.narrow(2, (j - j0) * C, C).narrow(1, shift, L - shift));
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_forward(const Kernels& k, const at::Tensor& x_in,
                                                             const at::Tensor& w1_in, const at::Tensor& owner1_in,
                                                             const at::Tensor& w2_in, const at::Tensor& owner2_in,
                                                             const at::Tensor& ln1_weight, const at::Tensor& ln1_bias,
                                                             const at::Tensor& ln2_weight, const at::Tensor& ln2_bias,
                                                             int64_t task, int64_t dilation, double eps, bool post_ln) {
  check_block_args(x_in, w1_in, owner1_in, w2_in, owner2_in, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation,
                   post_ln);
  const at::Tensor x = x_in.contiguous();
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2), Cm = w1_in.size(0), K = w1_in.size(2);
  at::Tensor y = at::empty({B, L, C}, x.options());
  at::Tensor h = at::empty({B, L, Cm + (post_ln ? C : 0)}, x.options());
  at::Tensor stats = at::empty({2, 2, B, L}, x.options().dtype(stats_dtype(x.scalar_type())));
  if (B * L == 0) return {y, h, stats};
  const at::Tensor h1 = post_ln ? h.view({-1}).narrow(0, 0, B * L * Cm).view({B, L, Cm}) : h;
  const at::Tensor h2all = post_ln ? h.view({-1}).narrow(0, B * L * Cm, B * L * C).view({B, L, C}) : at::Tensor();

  const auto [d1, d2, j01, j02, K1, K2] = block_taps(K, dilation, L);
  at::Tensor W1 = at::empty({Cm, K1 * C}, x.options());
  at::Tensor W2 = at::empty({C, K2 * Cm}, x.options());
  mask_rows(k, w1_in.contiguous(), owner1_in.contiguous(), task, j01, W1);
  mask_rows(k, w2_in.contiguous(), owner2_in.contiguous(), task, j02, W2);
  const at::Tensor g1 = ln1_weight.contiguous(), b1 = ln1_bias.contiguous();
  const at::Tensor g2 = ln2_weight.contiguous(), b2 = ln2_bias.contiguous();

  const Split sp = split_batch(B, L);
  const int64_t width = std::max(K1 * C, K2 * Cm);
  for_chunks(x.is_cpu(), sp.n, [&](int64_t i) {
    const int64_t b0 = sp.begin(i), bc = sp.size(i), n = bc * L;
    at::Tensor col = scratch(n * width, x.options());
    at::Tensor none;
    const at::Tensor xc = x.narrow(0, b0, bc);
    at::Tensor hc = h1.narrow(0, b0, bc), yc = y.narrow(0, b0, bc);
    ChunkStats st(stats, b0, bc);
    at::Tensor col1 = prefix(col, {bc, L, K1 * C});
    if (post_ln) {
      plain_im2col(xc, K, j01, d1, col1);
    } else {
      k.ln_relu_im2col(xc, g1, b1, eps, K, j01, d1, true, st.m1, st.r1, col1, yc);  // and y := x
    }
    gemm(hc.view({n, Cm}), col1.view({n, K1 * C}), W1.t(), false);
    // conv2 reads relu(LN(h1)): pre-LN's LN2, post-LN's LN1 (statistics in their own slots).
    at::Tensor col2 = prefix(col, {bc, L, K2 * Cm});
    if (!post_ln) {
      k.ln_relu_im2col(hc, g2, b2, eps, K, j02, d2, true, st.m2, st.r2, col2, none);
      gemm(yc.view({n, C}), col2.view({n, K2 * Cm}), W2.t(), true);
      return;
    }
    k.ln_relu_im2col(hc, g1, b1, eps, K, j02, d2, true, st.m1, st.r1, col2, none);
    at::Tensor h2 = h2all.narrow(0, b0, bc);
    gemm(h2.view({n, C}), col2.view({n, K2 * Cm}), W2.t(), false);
    k.ln_relu_im2col(h2, g2, b2, eps, 1, 0, 1, true, st.m2, st.r2, yc, none);  // y := relu(LN2(h2))
    yc.add_(xc);
  });
  return {y, h, stats};
}

// The backward, as the forward a few whole sequences at a time. The LayerNorms by place: pre-LN's LN1 feeds conv1
// and its LN2 ("front") feeds conv2; post-LN's LN1 is the front one and its LN2 follows conv2 (gone back through first,
// from the saved h2). The LN + ReLU outputs are recomputed from the saved statistics. Weight and LayerNorm
// gradients: per-chunk partial sums, added in chunk order (finish_grads), so the result does not depend on threads.
BlockGrads block_backward(const Kernels& k, const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& h_in,
                          const at::Tensor& stats_in, const at::Tensor& w1_in, const at::Tensor& owner1_in,
                          const at::Tensor& w2_in, const at::Tensor& owner2_in, const at::Tensor& ln1_weight,
                          const at::Tensor& ln1_bias, const at::Tensor& ln2_weight, const at::Tensor& ln2_bias,
                          int64_t task, int64_t dilation, std::array<bool, 7> mask, bool post_ln) {
  check_block_args(x_in, w1_in, owner1_in, w2_in, owner2_in, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation,
                   post_ln);
  const int64_t B = x_in.size(0), L = x_in.size(1), C = x_in.size(2), Cm = w1_in.size(0), K = w1_in.size(2);
  check_saved(post_ln ? "residual_block_post_ln_backward" : "residual_block_backward", grad_y_in, x_in, h_in, stats_in,
              Cm + (post_ln ? C : 0));
  const auto sdt = stats_dtype(x_in.scalar_type());
  const bool need_x = mask[0], need_w1 = mask[1], need_w2 = mask[2];
  const bool need_ln1 = mask[3] || mask[4], need_ln2 = mask[5] || mask[6];
  const bool need_front = post_ln ? need_ln1 : need_ln2;  // the LayerNorm feeding conv2
  const bool need_col1_grad = need_x || (!post_ln && need_ln1);
  const bool need_gh1 = need_col1_grad || need_w1;         // gradient of conv1's output
  const bool need_col2_grad = need_gh1 || need_front;
  const bool need_g2 = need_col2_grad || need_w2;          // gradient of conv2's output
  const auto opts = x_in.options();

  std::optional<at::Tensor> gx;
  const auto [d1, d2, j01, j02, K1, K2] = block_taps(K, dilation, L);
  const Split sp = split_batch(B, L);
  // Row-layout weight gradients [Cm, K1*C], [C, K2*Cm]; LayerNorm 1 over C (post-LN: Cm), LayerNorm 2 over Cm (C).
  Partials parts = Partials::make(sp.n, mask, Cm, K1 * C, C, K2 * Cm, post_ln ? Cm : C, post_ln ? C : Cm, opts, sdt);
  if (need_x) gx = at::empty({B, L, C}, opts);

  if (B * L > 0 && (need_g2 || (post_ln && need_ln2))) {
    const at::Tensor g = grad_y_in.contiguous(), x = x_in.contiguous(), h = h_in.contiguous();
    const at::Tensor stats = stats_in.contiguous();
    const at::Tensor ga1 = ln1_weight.contiguous(), be1 = ln1_bias.contiguous();
    const at::Tensor ga2 = ln2_weight.contiguous(), be2 = ln2_bias.contiguous();
    const at::Tensor& gaf = post_ln ? ga1 : ga2;
    const at::Tensor& bef = post_ln ? be1 : be2;
    const at::Tensor h1 = post_ln ? h.view({-1}).narrow(0, 0, B * L * Cm).view({B, L, Cm}) : h;
    const at::Tensor h2all = post_ln ? h.view({-1}).narrow(0, B * L * Cm, B * L * C).view({B, L, C}) : at::Tensor();
    at::Tensor W1, W2;
    if (need_col1_grad) {
      W1 = at::empty({Cm, K1 * C}, opts);
      mask_rows(k, w1_in.contiguous(), owner1_in.contiguous(), task, j01, W1);
    }
    if (need_col2_grad) {
      W2 = at::empty({C, K2 * Cm}, opts);
      mask_rows(k, w2_in.contiguous(), owner2_in.contiguous(), task, j02, W2);
    }
    const int64_t width = std::max(K1 * C, K2 * Cm);
    for_chunks(x.is_cpu(), sp.n, [&](int64_t i) {
      const int64_t b0 = sp.begin(i), bc = sp.size(i), n = bc * L;
      // Scratch: the col buffer, then (post-LN) conv2's output gradient, then conv1's output gradient.
      at::Tensor work = scratch(n * width + (post_ln ? n * C : 0) + (need_gh1 ? n * Cm : 0), opts);
      int64_t used = n * width;
      at::Tensor none;
      const at::Tensor gc = g.narrow(0, b0, bc), xc = x.narrow(0, b0, bc), hc = h1.narrow(0, b0, bc);
      ChunkStats st(stats, b0, bc);
      at::Tensor mf = post_ln ? st.m1 : st.m2, rf = post_ln ? st.r1 : st.r2;  // the front LayerNorm's statistics
      at::Tensor g2 = gc;
      if (post_ln) {  // back through LN2 + ReLU (the K = 1 case of the col2im backward)
        g2 = work.narrow(0, used, n * C).view({bc, L, C});
        used += n * C;
        at::Tensor g2_out = need_g2 ? g2 : at::Tensor();
        at::Tensor dg2c = Partials::at(parts.dg2, i), db2c = Partials::at(parts.db2, i);
        k.ln_relu_col2im_backward(gc, h2all.narrow(0, b0, bc), st.m2, st.r2, ga2, be2, 1, 0, 1, none, g2_out, dg2c,
                                  db2c);
      }
      if (!need_g2) return;
      const at::Tensor g2d = g2.view({n, C});
      // conv2: grad of its weights from the recomputed relu(LN_front(h1)) col, then the col's gradient in its place.
      at::Tensor col2 = prefix(work, {bc, L, K2 * Cm});
      if (need_w2) {
        k.ln_relu_im2col(hc, gaf, bef, 0.0, K, j02, d2, false, mf, rf, col2, none);
        gemm(parts.G2[i], g2d.t(), col2.view({n, K2 * Cm}), false);
      }
      if (!need_col2_grad) return;
      gemm(col2.view({n, K2 * Cm}), g2d, W2, false);
      at::Tensor gh1 = need_gh1 ? work.narrow(0, used, n * Cm).view({bc, L, Cm}) : at::Tensor();
      at::Tensor dgf = Partials::at(post_ln ? parts.dg1 : parts.dg2, i);
      at::Tensor dbf = Partials::at(post_ln ? parts.db1 : parts.db2, i);
      k.ln_relu_col2im_backward(col2, hc, mf, rf, gaf, bef, K, j02, d2, none, gh1, dgf, dbf);
      if (!need_gh1) return;
      // conv1: its col is relu(LN1(x)) (pre-LN) or x itself (post-LN, a plain shifted copy).
      const at::Tensor gh1d = gh1.view({n, Cm});
      at::Tensor col1 = prefix(work, {bc, L, K1 * C});
      if (need_w1) {
        if (post_ln) {
          plain_im2col(xc, K, j01, d1, col1);
        } else {
          k.ln_relu_im2col(xc, ga1, be1, 0.0, K, j01, d1, false, st.m1, st.r1, col1, none);
        }
        gemm(parts.G1[i], gh1d.t(), col1.view({n, K1 * C}), false);
      }
      if (!need_col1_grad) return;
      gemm(col1.view({n, K1 * C}), gh1d, W1, false);
      at::Tensor gxc = need_x ? gx->narrow(0, b0, bc) : at::Tensor();
      if (post_ln) {
        gxc.copy_(gc);  // the residual
        plain_col2im_add(col1, K, j01, d1, gxc);
        return;
      }
      const at::Tensor residual = need_x ? gc : at::Tensor();
      at::Tensor dg1c = Partials::at(parts.dg1, i), db1c = Partials::at(parts.db1, i);
      k.ln_relu_col2im_backward(col1, xc, st.m1, st.r1, ga1, be1, K, j01, d1, residual, gxc, dg1c, db1c);
    });
  } else if (need_x) {
    gx->copy_(grad_y_in);  // empty batch: nothing to do but the (empty) residual path
  }
  return finish_grads(k, parts, gx, w1_in, owner1_in, w2_in, owner2_in, task, j01, j02, B * L, x_in.scalar_type());
}

// ---------------------------------------------------------------------------------------------------------------
// Inference over stacked per-task weights: the streaming step and the multi-task forward.

namespace {

// Checks the per-conv weight stack ([T, K*C_in, C_out], contiguous) and LayerNorm vectors (sized as the conv's
// input, or its output when post_ln); returns T.
int64_t check_stack(const char* where, const at::Tensor& x, int64_t C, at::TensorList wcols, at::TensorList ln,
                    at::IntArrayRef dilations, int64_t K, bool post_ln = false) {
  const int64_t nb = static_cast<int64_t>(dilations.size());
  TORCH_CHECK(nb >= 1, where, ": need at least one block");
  TORCH_CHECK(static_cast<int64_t>(wcols.size()) == 2 * nb && static_cast<int64_t>(ln.size()) == 4 * nb, where,
              ": need 2 weights and 4 LayerNorm vectors per block, got ", wcols.size(), " and ", ln.size(), " for ", nb,
              " blocks");
  TORCH_CHECK(K >= 1, where, ": kernel_size must be >= 1, got ", K);
  TORCH_CHECK(wcols[0].dim() == 3 && wcols[0].size(0) >= 1, where, ": weights must be [T, K*C_in, C_out], got ",
              wcols[0].sizes());
  const int64_t T = wcols[0].size(0);
  int64_t c_in = C;
  for (int64_t c = 0; c < 2 * nb; ++c) {
    TORCH_CHECK(dilations[c / 2] >= 1, where, ": dilations must be >= 1, got ", dilations[c / 2]);
    const at::Tensor& w = wcols[c];
    TORCH_CHECK(w.dim() == 3 && w.size(0) == T && w.size(1) == K * c_in && w.size(2) >= 1 && w.is_contiguous() &&
                    w.scalar_type() == x.scalar_type() && w.device() == x.device(),
                where, ": weight ", c, " must be a contiguous [", T, ", ", K * c_in,
                ", C_out] of x's dtype and "
                "device, got ",
                w.sizes(), " ", w.scalar_type());
    const int64_t c_out = w.size(2);
    if (c % 2 == 1) TORCH_CHECK(c_out == C, where, ": block ", c / 2, " must output ", C, " channels, got ", c_out);
    const int64_t c_ln = post_ln ? c_out : c_in;
    for (int64_t v = 0; v < 2; ++v) {
      const at::Tensor& p = ln[2 * c + v];
      TORCH_CHECK(p.dim() == 1 && p.size(0) == c_ln && p.scalar_type() == x.scalar_type() && p.device() == x.device(),
                  where, ": LayerNorm vector ", 2 * c + v, " must be [", c_ln, "] of x's dtype and device, got ",
                  p.sizes());
    }
    c_in = c_out;
  }
  return T;
}

}  // namespace

// Every block of the backbone for T task states of B users, one new item each (see csrc/kernels.h: stream_gather).
at::Tensor stream_step(const Kernels& k, const at::Tensor& x_in, const at::Tensor& pos, at::TensorList rings,
                       at::TensorList wcols, at::TensorList ln, at::IntArrayRef dilations, int64_t K, double eps,
                       bool post_ln) {
  TORCH_CHECK(x_in.dim() == 2 && at::isFloatingType(x_in.scalar_type()), "stream_step_: x must be a float [B, C], got ",
              x_in.sizes(), " ", x_in.scalar_type());
  const int64_t B = x_in.size(0), C = x_in.size(1);
  const int64_t T = check_stack("stream_step_", x_in, C, wcols, ln, dilations, K, post_ln);
  const int64_t nb = static_cast<int64_t>(dilations.size());
  TORCH_CHECK(pos.dim() == 1 && pos.size(0) == B && pos.scalar_type() == at::kLong && pos.device() == x_in.device(),
              "stream_step_: pos must be int64 [", B, "] on x's device, got ", pos.sizes(), " ", pos.scalar_type());
  TORCH_CHECK(static_cast<int64_t>(rings.size()) == 2 * nb, "stream_step_: need 2 rings per block, got ", rings.size());
  for (int64_t c = 0; c < 2 * nb; ++c) {
    const int64_t dil = dilations[c / 2] * (c % 2 + 1), ci = wcols[c].size(1) / K, tr = c == 0 ? 1 : T;
    const at::Tensor& r = rings[c];
    TORCH_CHECK(r.dim() == 4 && r.size(0) == tr && r.size(1) == B && r.size(2) == (K - 1) * dil && r.size(3) == ci &&
                    r.is_contiguous() && r.scalar_type() == x_in.scalar_type() && r.device() == x_in.device(),
                "stream_step_: ring ", c, " must be a contiguous [", tr, ", ", B, ", ", (K - 1) * dil, ", ", ci,
                "] of x's dtype and device, got ", r.sizes(), " ", r.scalar_type());
  }
  const at::Tensor x = x_in.contiguous(), p = pos.contiguous();
  at::Tensor result = at::empty({T, B, C}, x.options());
  if (B == 0) return result;
  // Tasks go in groups, every block for one group at a time: a group's GEMMs are batched over its tasks (small B:
  // one GEMM per conv for all tasks, measured ~1.2x a task-by-task loop at B=32), while its working rows stay within
  // about one task's at B=256 (kGroupBytes), so the step needs no more memory than a loop of single-task steps.
  // Shared by every task: the first conv's input side (LN + ring of the embedding row), gathered once.
  constexpr int64_t kGroupBytes = int64_t(1) << 20;
  const int64_t col_bytes = B * K * C * static_cast<int64_t>(x.element_size());
  const int64_t G = std::max<int64_t>(1, std::min<int64_t>(T, kGroupBytes / std::max<int64_t>(col_bytes, 1)));
  // The LayerNorm in front of conv c: pre-LN, its own (ln[2c], ln[2c + 1]); post-LN, none for conv1 (it reads the
  // block input as it is) and LN1 for conv2 (its input is relu(LN1(conv1))).
  auto ln_in_front = [&](int64_t c, int64_t v) -> at::Tensor {  // v = 0: weight, 1: bias
    if (!post_ln) return ln[2 * c + v].contiguous();
    return c % 2 ? ln[2 * c - 2 + v].contiguous() : at::Tensor();
  };
  at::Tensor col0 = at::empty({1, B, K * C}, x.options());
  at::Tensor ring0 = rings[0];
  k.stream_gather(x.view({1, B, C}), ln_in_front(0, 0), ln_in_front(0, 1), eps, ring0, p, K, dilations[0], col0);
  for (int64_t g0 = 0; g0 < T; g0 += G) {
    const int64_t g = std::min(G, T - g0);
    at::Tensor z = x.view({1, B, C});  // block input: one row shared by the group's tasks before the first conv
    for (int64_t l = 0; l < nb; ++l) {
      at::Tensor h;
      for (int64_t half = 0; half < 2; ++half) {
        const int64_t c = 2 * l + half, dil = dilations[l] * (half + 1);
        const at::Tensor w = wcols[c].narrow(0, g0, g);  // [g, K*ci, co]
        const int64_t ci = w.size(1) / K, co = w.size(2);
        at::Tensor col = col0;  // [1, B, K*C], broadcast over the group's tasks
        if (c > 0) {
          at::Tensor ring = rings[c].narrow(0, g0, g);
          col = at::empty({g, B, K * ci}, x.options());
          k.stream_gather(half == 0 ? z : h, ln_in_front(c, 0), ln_in_front(c, 1), eps, ring, p, K, dil, col);
        }
        const bool last = half == 1 && l == nb - 1;
        if (!post_ln) {
          at::Tensor out = last ? result.narrow(0, g0, g) : at::empty({g, B, co}, x.options());
          if (half == 1) out.copy_(z.expand({g, B, co}));  // the residual, then conv2 accumulates onto it
          gemm(out, col, w, half == 1);  // one GEMM batched over the group's tasks
          (half == 0 ? h : z) = out;
          continue;
        }
        at::Tensor out = at::empty({g, B, co}, x.options());
        gemm(out, col, w, false);
        if (half == 0) {
          h = out;  // conv2's gather applies LN1 + ReLU to it
        } else {   // z + relu(LN2(conv2)); LN2 + ReLU is the K = 1 case of ln_relu_im2col
          at::Tensor y = last ? result.narrow(0, g0, g) : at::empty({g, B, co}, x.options());
          at::Tensor none, rows = y.view({g * B, 1, co});
          k.ln_relu_im2col(out.view({g * B, 1, co}), ln[2 * c].contiguous(), ln[2 * c + 1].contiguous(), eps, 1, 0, 1,
                           true, none, none, rows, none);
          y.add_(z.expand({g, B, co}));
          z = y;
        }
      }
    }
  }
  return result;
}

// Backbone output at the last out_len positions for T tasks: [T, B, out_len, C]. Each block computes only the
// positions later blocks need (the receptive field of the last out_len outputs), the first conv's LayerNorm +
// im2col is shared by the tasks, and sequences go a chunk at a time, all tasks together: each LN/im2col pass covers
// every task's rows and each conv is one batched GEMM over the tasks' stacked weights.
at::Tensor multi_task(const Kernels& k, const at::Tensor& x_in, at::TensorList wcols, at::TensorList ln,
                      at::IntArrayRef dilations, int64_t K, double eps, int64_t out_len, bool post_ln) {
  TORCH_CHECK(x_in.dim() == 3 && at::isFloatingType(x_in.scalar_type()),
              "multi_task_forward: x must be a float [B, L, C], got ", x_in.sizes(), " ", x_in.scalar_type());
  const int64_t B = x_in.size(0), L = x_in.size(1), C = x_in.size(2);
  const int64_t T = check_stack("multi_task_forward", x_in, C, wcols, ln, dilations, K, post_ln);
  TORCH_CHECK(out_len >= 1 && out_len <= L, "multi_task_forward: out_len must be in [1, L=", L, "], got ", out_len);
  const int64_t nb = static_cast<int64_t>(dilations.size());
  // need[l]: positions of block l's input that are used; m1[l]: positions of its conv1 output that are used.
  std::vector<int64_t> need(nb + 1), m1(nb);
  need[nb] = out_len;
  std::vector<int64_t> dil(nb);  // any dilation >= L acts like L (only the last tap reaches); no overflow below
  for (int64_t l = 0; l < nb; ++l) dil[l] = clamp_dilation(dilations[l], L);
  for (int64_t l = nb - 1; l >= 0; --l) {
    m1[l] = std::min(L, need[l + 1] + (K - 1) * 2 * dil[l]);
    need[l] = std::min(L, m1[l] + (K - 1) * dil[l]);
  }
  at::Tensor out = at::empty({T, B, out_len, C}, x_in.options());
  if (B == 0) return out;
  const at::Tensor x = x_in.contiguous();
  const auto opts = x.options();
  // Chunks of about chunk_rows() rows over all T tasks (the buffers below hold every task's rows).
  const Split sp = split_batch(B, L * T);
  std::vector<at::Tensor> g(4 * nb);
  for (int64_t v = 0; v < 4 * nb; ++v) g[v] = ln[v].contiguous();
  int64_t col_rows = 0;  // per sequence: conv1 reads C channels (one copy in block 0), conv2 C_mid
  for (int64_t l = 0; l < nb; ++l)
    col_rows = std::max({col_rows, (l == 0 ? 1 : T) * m1[l] * K * C, T * need[l + 1] * K * wcols[2 * l].size(2)});
  for_chunks(x.is_cpu(), sp.n, [&](int64_t i) {
    const int64_t b0 = sp.begin(i), bc = sp.size(i);
    at::Tensor col_buf = scratch(bc * col_rows, opts);
    at::Tensor none;
    // Block input [Tz, bc, Lin, C]: one copy (Tz = 1) until block 0's first conv, then one per task.
    at::Tensor z = x.narrow(0, b0, bc).narrow(1, L - need[0], need[0]).contiguous().unsqueeze(0);
    for (int64_t l = 0; l < nb; ++l) {
      const int64_t d = dil[l], Lin = need[l], M1 = m1[l], Nout = need[l + 1], Tz = z.size(0);
      const at::Tensor &w1 = wcols[2 * l], &w2 = wcols[2 * l + 1];
      const int64_t Cm = w1.size(2);
      // conv1 over the last M1 positions of the Lin-long input: one LN/im2col pass over all tasks' rows (also
      // copying the residual into y; post-LN: a plain shifted copy, no LN), one batched GEMM (block 0: the shared
      // col against every task's weights).
      const int64_t j01 = first_tap(K, d, Lin), K1 = K - j01;
      at::Tensor y = at::empty({T, bc, Nout, C}, opts);
      at::Tensor col1 = prefix(col_buf, {Tz * bc, M1, K1 * C});
      if (post_ln) {
        plain_im2col(z.view({Tz * bc, Lin, C}), K, j01, d, col1);
      } else {
        at::Tensor residual = Tz == T ? y.view({T * bc, Nout, C}) : at::Tensor();
        k.ln_relu_im2col(z.view({Tz * bc, Lin, C}), g[4 * l], g[4 * l + 1], eps, K, j01, d, true, none, none, col1,
                         residual);
        if (Tz != T) y.copy_(z.narrow(2, Lin - Nout, Nout).expand({T, bc, Nout, C}));
      }
      at::Tensor h = at::empty({T, bc * M1, Cm}, opts);
      gemm(h, col1.view({Tz, bc * M1, K1 * C}), w1.narrow(1, j01 * C, K1 * C), false);
      // conv2 over the last Nout positions of relu(LN(h)) (pre-LN: LN2; post-LN: LN1), added to the residual;
      // post-LN adds relu(LN2(conv2)) instead, LN2 + ReLU being the K = 1 case of ln_relu_im2col.
      const int64_t j02 = first_tap(K, 2 * d, M1), K2 = K - j02;
      at::Tensor col2 = prefix(col_buf, {T * bc, Nout, K2 * Cm});
      const int64_t front = post_ln ? 4 * l : 4 * l + 2;
      k.ln_relu_im2col(h.view({T * bc, M1, Cm}), g[front], g[front + 1], eps, K, j02, 2 * d, true, none, none, col2,
                       none);
      const at::Tensor w2_taps = w2.narrow(1, j02 * Cm, K2 * Cm);
      if (post_ln) {
        at::Tensor out = at::empty({T, bc * Nout, C}, opts);
        gemm(out, col2.view({T, bc * Nout, K2 * Cm}), w2_taps, false);
        at::Tensor rows = y.view({T * bc * Nout, 1, C});
        k.ln_relu_im2col(out.view({T * bc * Nout, 1, C}), g[4 * l + 2], g[4 * l + 3], eps, 1, 0, 1, true, none, none,
                         rows, none);
        y.add_(z.narrow(2, Lin - Nout, Nout).expand({T, bc, Nout, C}));
      } else {
        gemm(y.view({T, bc * Nout, C}), col2.view({T, bc * Nout, K2 * Cm}), w2_taps, true);
      }
      z = y;
    }
    out.narrow(1, b0, bc).copy_(z);
  });
  return out;
}

}  // namespace block

using block::block_backward;
using block::block_forward;
using block::multi_task;
using block::stream_step;

// ---------------------------------------------------------------------------------------------------------------
// The operators (csrc/ops.h): device guard, the device's kernels, the variant.

std::tuple<at::Tensor, at::Tensor, at::Tensor> residual_block(const at::Tensor& x, const at::Tensor& w1,
                                                              const at::Tensor& owner1, const at::Tensor& w2,
                                                              const at::Tensor& owner2, const at::Tensor& ln1_weight,
                                                              const at::Tensor& ln1_bias, const at::Tensor& ln2_weight,
                                                              const at::Tensor& ln2_bias, int64_t task,
                                                              int64_t dilation, double eps, bool post_ln) {
  const at::OptionalDeviceGuard guard(at::device_of(x));
  const Kernels& k = kernels_for(x, post_ln ? "residual_block_post_ln" : "residual_block");
  return block_forward(k, x, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias, task, dilation, eps,
                       post_ln);
}

BlockGrads residual_block_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& h,
                                   const at::Tensor& stats, const at::Tensor& w1, const at::Tensor& owner1,
                                   const at::Tensor& w2, const at::Tensor& owner2, const at::Tensor& ln1_weight,
                                   const at::Tensor& ln1_bias, const at::Tensor& ln2_weight, const at::Tensor& ln2_bias,
                                   int64_t task, int64_t dilation, std::array<bool, 7> output_mask, bool post_ln) {
  const at::OptionalDeviceGuard guard(at::device_of(x));
  const Kernels& k = kernels_for(x, post_ln ? "residual_block_post_ln_backward" : "residual_block_backward");
  return block_backward(k, grad_y, x, h, stats, w1, owner1, w2, owner2, ln1_weight, ln1_bias, ln2_weight, ln2_bias,
                        task, dilation, output_mask, post_ln);
}

at::Tensor stream_step_(const at::Tensor& x, const at::Tensor& pos, at::TensorList rings, at::TensorList wcols,
                        at::TensorList ln_params, at::IntArrayRef dilations, int64_t kernel_size, double eps,
                        bool post_ln) {
  const at::OptionalDeviceGuard guard(at::device_of(x));
  const Kernels& k = kernels_for(x, "stream_step_");
  return stream_step(k, x, pos, rings, wcols, ln_params, dilations, kernel_size, eps, post_ln);
}

at::Tensor multi_task_forward(const at::Tensor& x, at::TensorList wcols, at::TensorList ln_params,
                              at::IntArrayRef dilations, int64_t kernel_size, double eps, int64_t out_len,
                              bool post_ln) {
  const at::OptionalDeviceGuard guard(at::device_of(x));
  const Kernels& k = kernels_for(x, "multi_task_forward");
  return multi_task(k, x, wcols, ln_params, dilations, kernel_size, eps, out_len, post_ln);
}

}  // namespace conure
