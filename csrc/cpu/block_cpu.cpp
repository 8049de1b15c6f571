// CPU kernels of the fused residual block, streaming step and multi-task forward (orchestration: csrc/block.cpp;
// contracts: csrc/kernels.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels_cpu.h"

// Floating-point contraction (a*b+c fused into one FMA) off for this file's kernels: with it on, the vectorized body
// and the scalar peel/remainder iterations of a loop may contract differently, and which elements take which path
// depends on the run-time alignment of the buffers -- results then changed by an ulp from call to call and across
// threads. Off, every path computes the same IEEE operations in program order: bitwise reproducible results.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#elif defined(__clang__)
#pragma clang fp contract(off)
#endif

namespace conure {
namespace cpu {

// The row kernels are compiled for AVX-512 and AVX2 as well as the baseline (the extension is built for generic
// x86-64); the loader picks the best the CPU has. Sums use kLanes partial accumulators so they vectorize.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CONURE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CONURE_CLONES
#endif

constexpr int64_t kLanes = 16;

// Mean and 1/sqrt(var + eps) of one row (two passes).
template <typename scalar_t, typename acc_t>
inline void row_stats(const scalar_t* x, int64_t C, double eps, acc_t& mean, acc_t& rstd) {
  acc_t part[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes)
    for (int64_t u = 0; u < kLanes; ++u) part[u] += static_cast<acc_t>(x[c + u]);
  acc_t sum = 0;
  for (; c < C; ++c) sum += static_cast<acc_t>(x[c]);
  for (int64_t u = 0; u < kLanes; ++u) sum += part[u];
  mean = sum / static_cast<acc_t>(C);
  for (int64_t u = 0; u < kLanes; ++u) part[u] = 0;
  c = 0;
  for (; c + kLanes <= C; c += kLanes)
    for (int64_t u = 0; u < kLanes; ++u) {
      const acc_t d = static_cast<acc_t>(x[c + u]) - mean;
      part[u] += d * d;
    }
  acc_t sq = 0;
  for (; c < C; ++c) {
    const acc_t d = static_cast<acc_t>(x[c]) - mean;
    sq += d * d;
  }
  for (int64_t u = 0; u < kLanes; ++u) sq += part[u];
  rstd = static_cast<acc_t>(1) / std::sqrt(sq / static_cast<acc_t>(C) + static_cast<acc_t>(eps));
}

// dst = relu((x - mean) * rstd * gamma + beta)  (relu(NaN) = NaN)
template <typename scalar_t, typename acc_t>
inline void ln_relu_row(const scalar_t* x, const scalar_t* gamma, const scalar_t* beta, acc_t mean, acc_t rstd,
                        int64_t C, scalar_t* dst) {
  for (int64_t c = 0; c < C; ++c) {
    const acc_t z =
        (static_cast<acc_t>(x[c]) - mean) * rstd * static_cast<acc_t>(gamma[c]) + static_cast<acc_t>(beta[c]);
    dst[c] = static_cast<scalar_t>(z < 0 ? acc_t(0) : z);  // NaN stays NaN, like torch.relu
  }
}

// Backward of one row of LN + ReLU, given ga = dL/d(relu output) in dz (overwritten with dL/dz).
//   xh = xhat; returns via sums the two row means LayerNorm's backward needs.
template <typename scalar_t, typename acc_t>
inline void ln_relu_row_backward(const scalar_t* x, const scalar_t* gamma, const scalar_t* beta, acc_t mean, acc_t rstd,
                                 int64_t C, acc_t* dz, acc_t* xh, acc_t& sum1, acc_t& sum2) {
  acc_t p1[kLanes] = {}, p2[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes)
    for (int64_t u = 0; u < kLanes; ++u) {
      const acc_t xhat = (static_cast<acc_t>(x[c + u]) - mean) * rstd;
      const acc_t g = static_cast<acc_t>(gamma[c + u]);
      const acc_t z = xhat * g + static_cast<acc_t>(beta[c + u]);
      const acc_t d = z > 0 ? dz[c + u] : acc_t(0);
      dz[c + u] = d;
      xh[c + u] = xhat;
      p1[u] += d * g;
      p2[u] += d * g * xhat;
    }
  acc_t s1 = 0, s2 = 0;
  for (; c < C; ++c) {
    const acc_t xhat = (static_cast<acc_t>(x[c]) - mean) * rstd;
    const acc_t g = static_cast<acc_t>(gamma[c]);
    const acc_t z = xhat * g + static_cast<acc_t>(beta[c]);
    const acc_t d = z > 0 ? dz[c] : acc_t(0);
    dz[c] = d;
    xh[c] = xhat;
    s1 += d * g;
    s2 += d * g * xhat;
  }
  for (int64_t u = 0; u < kLanes; ++u) {
    s1 += p1[u];
    s2 += p2[u];
  }
  sum1 = s1;
  sum2 = s2;
}

template <typename scalar_t>
struct Im2colArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t *X, *G, *Bt;
  scalar_t *O, *CP;
  acc_t *M, *R;
  int64_t Lin, Lout, C, K, j0, dil;
  double eps;
  bool compute_stats;
  int64_t Lcopy;  // copy_out holds the last Lcopy positions of each sequence
};

template <typename scalar_t>
CONURE_CLONES void im2col_rows(const Im2colArgs<scalar_t>& a, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = a.C, Kp = a.K - a.j0, shift = a.Lin - a.Lout, width = Kp * C;
  const bool store = a.compute_stats && a.M != nullptr;
  // Input rows before first_read feed no output row (only the last L_out positions are wanted).
  const int64_t first_read = std::max<int64_t>(0, shift - (a.K - 1 - a.j0) * a.dil);
  for (int64_t n = begin; n < end; ++n) {
    const int64_t s = n / a.Lin, p = n % a.Lin;
    const scalar_t* x = a.X + n * C;
    if (a.CP != nullptr && p >= a.Lin - a.Lcopy)
      std::memcpy(a.CP + (s * a.Lcopy + p - (a.Lin - a.Lcopy)) * C, x, C * sizeof(scalar_t));
    // Output row p - shift: zeros in the taps that reach before the start of the sequence.
    const int64_t r0 = p - shift;
    if (r0 >= 0) {
      for (int64_t jj = 0; jj < Kp && p - (a.K - 1 - a.j0 - jj) * a.dil < 0; ++jj)
        std::fill_n(a.O + (s * a.Lout + r0) * width + jj * C, C, scalar_t(0));
    }
    if (p < first_read && !store) continue;
    acc_t mu, rs;
    if (a.compute_stats) {
      row_stats(x, C, a.eps, mu, rs);
      if (a.M != nullptr) a.M[n] = mu;
      if (a.R != nullptr) a.R[n] = rs;
    } else {
      mu = a.M[n];
      rs = a.R[n];
    }
    if (p < first_read) continue;
    // LN + ReLU of the row, written to the (up to K - j0) output rows that read it.
    const scalar_t* first = nullptr;
    for (int64_t jj = 0; jj < Kp; ++jj) {
      const int64_t r = p + (a.K - 1 - a.j0 - jj) * a.dil - shift;
      if (r < 0 || r >= a.Lout) continue;
      scalar_t* dst = a.O + (s * a.Lout + r) * width + jj * C;
      if (first == nullptr) {
        ln_relu_row(x, a.G, a.Bt, mu, rs, C, dst);
        first = dst;
      } else {
        std::memcpy(dst, first, C * sizeof(scalar_t));
      }
    }
  }
}

void ln_relu_im2col_cpu(const at::Tensor& in, const at::Tensor& gamma, const at::Tensor& beta, double eps, int64_t K,
                        int64_t j0, int64_t dil, bool compute_stats, at::Tensor& mean, at::Tensor& rstd,
                        at::Tensor& col, at::Tensor& copy_out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "ln_relu_im2col_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Im2colArgs<scalar_t> a{in.data_ptr<scalar_t>(),
                           gamma.data_ptr<scalar_t>(),
                           beta.data_ptr<scalar_t>(),
                           col.data_ptr<scalar_t>(),
                           copy_out.defined() ? copy_out.data_ptr<scalar_t>() : nullptr,
                           mean.defined() ? mean.data_ptr<acc_t>() : nullptr,
                           rstd.defined() ? rstd.data_ptr<acc_t>() : nullptr,
                           in.size(1),
                           col.size(1),
                           in.size(2),
                           K,
                           j0,
                           dil,
                           eps,
                           compute_stats,
                           copy_out.defined() ? copy_out.size(1) : 0};
    TORCH_INTERNAL_ASSERT(compute_stats || (a.M != nullptr && a.R != nullptr));
    at::parallel_for(0, in.size(0) * in.size(1), 16,
                     [&](int64_t begin, int64_t end) { im2col_rows<scalar_t>(a, begin, end); });
  });
}

template <typename scalar_t>
struct Col2imArgs {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t *GC, *X, *G, *Bt, *RES;
  const acc_t *M, *R;
  scalar_t* GI;
  int64_t L, C, K, j0, dil;
};

// Rows [begin, end); pg (2*C accumulators: dgamma then dbeta) may be null.
template <typename scalar_t>
CONURE_CLONES void col2im_rows(const Col2imArgs<scalar_t>& a, int64_t begin, int64_t end,
                               at::opmath_type<scalar_t>* pg) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t C = a.C, L = a.L, Kp = a.K - a.j0, width = Kp * C;
  std::vector<acc_t> dz_buf(C), xh_buf(C);
  acc_t* dz = dz_buf.data();
  acc_t* xh = xh_buf.data();
  for (int64_t n = begin; n < end; ++n) {
    const int64_t s = n / L, p = n % L;
    std::fill_n(dz, C, acc_t(0));
    for (int64_t jj = 0; jj < Kp; ++jj) {
      const int64_t q = p + (a.K - 1 - a.j0 - jj) * a.dil;
      if (q >= L) continue;
      const scalar_t* src = a.GC + (s * L + q) * width + jj * C;
      for (int64_t c = 0; c < C; ++c) dz[c] += static_cast<acc_t>(src[c]);
    }
    const acc_t mu = a.M[n], rs = a.R[n];
    acc_t sum1, sum2;
    ln_relu_row_backward(a.X + n * C, a.G, a.Bt, mu, rs, C, dz, xh, sum1, sum2);
    if (pg != nullptr) {
      for (int64_t c = 0; c < C; ++c) {
        pg[c] += dz[c] * xh[c];
        pg[C + c] += dz[c];
      }
    }
    if (a.GI != nullptr) {
      const acc_t a1 = sum1 / static_cast<acc_t>(C), a2 = sum2 / static_cast<acc_t>(C);
      scalar_t* out = a.GI + n * C;
      if (a.RES != nullptr) {
        const scalar_t* res = a.RES + n * C;
        for (int64_t c = 0; c < C; ++c)
          out[c] = static_cast<scalar_t>(static_cast<acc_t>(res[c]) +
                                         rs * (dz[c] * static_cast<acc_t>(a.G[c]) - a1 - xh[c] * a2));
      } else {
        for (int64_t c = 0; c < C; ++c)
          out[c] = static_cast<scalar_t>(rs * (dz[c] * static_cast<acc_t>(a.G[c]) - a1 - xh[c] * a2));
      }
    }
  }
}

void ln_relu_col2im_backward_cpu(const at::Tensor& gcol, const at::Tensor& in, const at::Tensor& mean,
                                 const at::Tensor& rstd, const at::Tensor& gamma, const at::Tensor& beta, int64_t K,
                                 int64_t j0, int64_t dil, const at::Tensor& residual, at::Tensor& grad_in,
                                 at::Tensor& dgamma, at::Tensor& dbeta) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "ln_relu_col2im_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t C = in.size(2);
    Col2imArgs<scalar_t> a{gcol.data_ptr<scalar_t>(),
                           in.data_ptr<scalar_t>(),
                           gamma.data_ptr<scalar_t>(),
                           beta.data_ptr<scalar_t>(),
                           residual.defined() ? residual.data_ptr<scalar_t>() : nullptr,
                           mean.data_ptr<acc_t>(),
                           rstd.data_ptr<acc_t>(),
                           grad_in.defined() ? grad_in.data_ptr<scalar_t>() : nullptr,
                           in.size(1),
                           C,
                           K,
                           j0,
                           dil};
    const bool params = dgamma.defined() || dbeta.defined();
    // dgamma/dbeta: partial sums over fixed blocks of rows, added in block order, so the result does not depend on
    // how many threads ran or how the rows were split between them.
    constexpr int64_t kParamRows = 64;
    const int64_t rows = in.size(0) * in.size(1), blocks = (rows + kParamRows - 1) / kParamRows;
    std::vector<acc_t> partial(params ? static_cast<size_t>(blocks) * 2 * C : 0, acc_t(0));
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t blk = begin; blk < end; ++blk) {
        acc_t* pg = params ? partial.data() + static_cast<size_t>(blk) * 2 * C : nullptr;
        col2im_rows<scalar_t>(a, blk * kParamRows, std::min(rows, (blk + 1) * kParamRows), pg);
      }
    });
    if (params) {
      acc_t* dg = dgamma.defined() ? dgamma.data_ptr<acc_t>() : nullptr;
      acc_t* db = dbeta.defined() ? dbeta.data_ptr<acc_t>() : nullptr;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const acc_t* pg = partial.data() + static_cast<size_t>(blk) * 2 * C;
        for (int64_t c = 0; c < C; ++c) {
          if (dg != nullptr) dg[c] += pg[c];
          if (db != nullptr) db[c] += pg[C + c];
        }
      }
    }
  });
}

void sum_parts_cpu(const at::Tensor& parts, at::Tensor& out) {
  const int64_t n = parts.size(0), M = parts.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sum_parts_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = parts.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, M, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        acc_t sum = static_cast<acc_t>(src[m]);
        for (int64_t i = 1; i < n; ++i) sum += static_cast<acc_t>(src[i * M + m]);
        dst[m] = static_cast<scalar_t>(sum);
      }
    });
  });
}

template <typename scalar_t>
void stream_gather_impl(const at::Tensor& in, const at::Tensor& gamma, const at::Tensor& beta, double eps,
                        at::Tensor& ring, const at::Tensor& pos, int64_t K, int64_t dil, at::Tensor& col) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t Tr = ring.size(0), B = ring.size(1), R = ring.size(2), C = in.size(2), Tin = in.size(0);
  const scalar_t* X = in.data_ptr<scalar_t>();
  const bool normalize = gamma.defined();  // else the input row goes into the ring as it is (post-LN conv1)
  const scalar_t* G = normalize ? gamma.data_ptr<scalar_t>() : nullptr;
  const scalar_t* Bt = normalize ? beta.data_ptr<scalar_t>() : nullptr;
  scalar_t* RING = ring.data_ptr<scalar_t>();
  scalar_t* O = col.data_ptr<scalar_t>();
  const int64_t* P = pos.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(P[b] >= 0, "stream_step_: pos must be >= 0, got ", P[b]);
  at::parallel_for(0, Tr * B, 8, [&](int64_t begin, int64_t end) {
    for (int64_t tb = begin; tb < end; ++tb) {
      const int64_t t = tb / B, b = tb % B;
      const scalar_t* x = X + ((Tin == 1 ? 0 : t) * B + b) * C;
      scalar_t* out = O + tb * K * C;
      scalar_t* a = out + (K - 1) * C;
      if (normalize) {
        acc_t mu, rs;
        row_stats(x, C, eps, mu, rs);
        ln_relu_row(x, G, Bt, mu, rs, C, a);
      } else {
        std::memcpy(a, x, C * sizeof(scalar_t));
      }
      if (R == 0) continue;
      const int64_t p = P[b];
      scalar_t* slots = RING + tb * R * C;
      for (int64_t j = 0; j < K - 1; ++j) {
        const int64_t slot = ((p - (K - 1 - j) * dil) % R + R) % R;
        std::memcpy(out + j * C, slots + slot * C, C * sizeof(scalar_t));
      }
      std::memcpy(slots + (p % R) * C, a, C * sizeof(scalar_t));
    }
  });
}

void stream_gather_cpu(const at::Tensor& in, const at::Tensor& gamma, const at::Tensor& beta, double eps,
                       at::Tensor& ring, const at::Tensor& pos, int64_t K, int64_t dil, at::Tensor& col) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "stream_gather_cpu",
                                  [&] { stream_gather_impl<scalar_t>(in, gamma, beta, eps, ring, pos, K, dil, col); });
}

}  // namespace cpu
}  // namespace conure
