// CUDA kernels of conure's fused residual block, streaming step and multi-task forward. No torch headers:
// `nvcc -c` compiles this file alone. Launchers and their contracts: kernels_cuda.h (semantics: csrc/kernels.h).
//
// Row kernels use one warp per row of C channels (lane-strided), with warp-shuffle reductions for the LayerNorm
// statistics; they are memory-bound passes next to the GEMMs (cuBLAS, from csrc/block.cpp).
#include "kernels_cuda.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace conure {
namespace cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kRowThreads = 32 * kWarpsPerBlock;

template <typename T> struct AccOf {
  using type = float;
};
template <> struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <typename T> __device__ __forceinline__ T from_acc(double v);
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// Blocks for `rows` rows at kWarpsPerBlock rows per block, capped (the kernels grid-stride over rows).
unsigned row_blocks(int64_t rows, int64_t cap) {
  const int64_t want = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(want, cap)));
}

unsigned flat_blocks(int64_t n) {
  const int64_t want = (n + 255) / 256;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(want, 65535)));
}

// Mean and rstd of one row by one warp (two passes over the row, which stays in L1/L2).
template <typename T, typename A>
__device__ __forceinline__ void warp_row_stats(const T* __restrict__ x, int64_t C, double eps, int lane, A& mean,
                                               A& rstd) {
  A s = 0;
  for (int64_t c = lane; c < C; c += 32) s += to_acc(x[c]);
  mean = warp_sum(s) / static_cast<A>(C);
  A q = 0;
  for (int64_t c = lane; c < C; c += 32) {
    const A d = to_acc(x[c]) - mean;
    q += d * d;
  }
  rstd = static_cast<A>(1) / sqrt(warp_sum(q) / static_cast<A>(C) + static_cast<A>(eps));
}

// ---------------------------------------------------------------------------------------------------------------
// LayerNorm + ReLU + im2col, and its backward.

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    ln_relu_im2col_kernel(const T* __restrict__ in, const T* __restrict__ gamma, const T* __restrict__ beta, double eps,
                          int64_t S, int64_t Lin, int64_t Lout, int64_t C, int64_t K, int64_t j0, int64_t dil,
                          bool compute_stats, typename AccOf<T>::type* __restrict__ mean,
                          typename AccOf<T>::type* __restrict__ rstd, T* __restrict__ col, T* __restrict__ copy_out,
                          int64_t Lcopy) {
  using A = typename AccOf<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t Kp = K - j0, shift = Lin - Lout, width = Kp * C, rows = S * Lin;
  const bool store = compute_stats && mean != nullptr;
  const int64_t reach = shift - (K - 1 - j0) * dil;
  const int64_t first_read = reach > 0 ? reach : 0;
  const T zero = from_acc<T>(A(0));
  for (int64_t n = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); n < rows;
       n += int64_t(gridDim.x) * kWarpsPerBlock) {
    const int64_t s = n / Lin, p = n % Lin;
    const T* x = in + n * C;
    if (copy_out != nullptr && p >= Lin - Lcopy) {
      T* dst = copy_out + (s * Lcopy + p - (Lin - Lcopy)) * C;
      for (int64_t c = lane; c < C; c += 32) dst[c] = x[c];
    }
    const int64_t r0 = p - shift;
    if (r0 >= 0) {
      for (int64_t jj = 0; jj < Kp && p - (K - 1 - j0 - jj) * dil < 0; ++jj) {
        T* dst = col + (s * Lout + r0) * width + jj * C;
        for (int64_t c = lane; c < C; c += 32) dst[c] = zero;
      }
    }
    if (p < first_read && !store) continue;
    A mu, rs;
    if (compute_stats) {
      warp_row_stats(x, C, eps, lane, mu, rs);
      if (lane == 0) {
        if (mean != nullptr) mean[n] = mu;
        if (rstd != nullptr) rstd[n] = rs;
      }
    } else {
      mu = mean[n];
      rs = rstd[n];
    }
    if (p < first_read) continue;
    for (int64_t jj = 0; jj < Kp; ++jj) {
      const int64_t r = p + (K - 1 - j0 - jj) * dil - shift;
      if (r < 0 || r >= Lout) continue;
      T* dst = col + (s * Lout + r) * width + jj * C;
      for (int64_t c = lane; c < C; c += 32) {
        const A z = (to_acc(x[c]) - mu) * rs * to_acc(gamma[c]) + to_acc(beta[c]);
        dst[c] = from_acc<T>(z < A(0) ? A(0) : z);
      }
    }
  }
}

// dz for channel c of row (s, p): the col2im sum of the col gradient times the ReLU mask; also returns xhat.
template <typename T, typename A>
__device__ __forceinline__ A relu_ln_dz(const T* __restrict__ gcol, const T* __restrict__ x,
                                        const T* __restrict__ gamma, const T* __restrict__ beta, A mu, A rs, int64_t s,
                                        int64_t p, int64_t c, int64_t L, int64_t C, int64_t K, int64_t j0, int64_t dil,
                                        A& xhat) {
  const int64_t Kp = K - j0, width = Kp * C;
  A ga = 0;
  for (int64_t jj = 0; jj < Kp; ++jj) {
    const int64_t q = p + (K - 1 - j0 - jj) * dil;
    if (q < L) ga += to_acc(gcol[(s * L + q) * width + jj * C + c]);
  }
  xhat = (to_acc(x[c]) - mu) * rs;
  const A z = xhat * to_acc(gamma[c]) + to_acc(beta[c]);
  return z > A(0) ? ga : A(0);
}

// One warp per row (rows dealt to warps round-robin by global warp index). The LayerNorm parameter gradients are
// deterministic: each warp adds its rows' terms into its own slice of `partial` ([warps, 2, C], lane-exclusive
// channels, so no atomics), and reduce_partials_kernel sums the slices in warp order.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    ln_relu_col2im_backward_kernel(const T* __restrict__ gcol, const T* __restrict__ in,
                                   const typename AccOf<T>::type* __restrict__ mean,
                                   const typename AccOf<T>::type* __restrict__ rstd, const T* __restrict__ gamma,
                                   const T* __restrict__ beta, int64_t S, int64_t L, int64_t C, int64_t K, int64_t j0,
                                   int64_t dil, const T* __restrict__ residual, T* __restrict__ grad_in,
                                   typename AccOf<T>::type* __restrict__ partial) {
  using A = typename AccOf<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t rows = S * L;
  const int64_t warp = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5);
  const int64_t warps = int64_t(gridDim.x) * kWarpsPerBlock;
  A* pg = partial != nullptr ? partial + warp * 2 * C : nullptr;
  for (int64_t n = warp; n < rows; n += warps) {
    const int64_t s = n / L, p = n % L;
    const T* x = in + n * C;
    const A mu = mean[n], rs = rstd[n];
    A s1 = 0, s2 = 0;
    for (int64_t c = lane; c < C; c += 32) {
      A xhat;
      const A d = relu_ln_dz(gcol, x, gamma, beta, mu, rs, s, p, c, L, C, K, j0, dil, xhat);
      const A dg = d * to_acc(gamma[c]);
      s1 += dg;
      s2 += dg * xhat;
      if (pg != nullptr) {
        pg[c] += d * xhat;
        pg[C + c] += d;
      }
    }
    if (grad_in == nullptr) continue;
    const A a1 = warp_sum(s1) / static_cast<A>(C), a2 = warp_sum(s2) / static_cast<A>(C);
    for (int64_t c = lane; c < C; c += 32) {
      A xhat;
      const A d = relu_ln_dz(gcol, x, gamma, beta, mu, rs, s, p, c, L, C, K, j0, dil, xhat);
      A v = rs * (d * to_acc(gamma[c]) - a1 - xhat * a2);
      if (residual != nullptr) v += to_acc(residual[n * C + c]);
      grad_in[n * C + c] = from_acc<T>(v);
    }
  }
}

// dgamma[c] += sum_w partial[w, 0, c]; dbeta[c] += sum_w partial[w, 1, c] (in warp order: deterministic).
template <typename A>
__global__ void reduce_partials_kernel(const A* __restrict__ partial, int64_t warps, int64_t C, A* __restrict__ dgamma,
                                       A* __restrict__ dbeta) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < 2 * C; c += int64_t(gridDim.x) * blockDim.x) {
    A* out = c < C ? dgamma : dbeta;
    if (out == nullptr) continue;
    A sum = 0;
    for (int64_t w = 0; w < warps; ++w) sum += partial[w * 2 * C + c];
    out[c < C ? c : c - C] += sum;
  }
}

template <typename T>
__global__ void sum_parts_kernel(const T* __restrict__ parts, int64_t n, int64_t M, T* __restrict__ out) {
  using A = typename AccOf<T>::type;
  for (int64_t m = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; m < M; m += int64_t(gridDim.x) * blockDim.x) {
    A sum = to_acc(parts[m]);
    for (int64_t i = 1; i < n; ++i) sum += to_acc(parts[i * M + m]);
    out[m] = from_acc<T>(sum);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Streaming: one warp per (task state, user).

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    stream_gather_kernel(const T* __restrict__ in, int64_t T_in, const T* __restrict__ gamma,
                         const T* __restrict__ beta, double eps, T* __restrict__ ring, int64_t T_r, int64_t B,
                         int64_t R, int64_t C, const int64_t* __restrict__ pos, int64_t K, int64_t dil,
                         T* __restrict__ col) {
  using A = typename AccOf<T>::type;
  const int lane = threadIdx.x & 31;
  for (int64_t tb = blockIdx.x * int64_t(kWarpsPerBlock) + (threadIdx.x >> 5); tb < T_r * B;
       tb += int64_t(gridDim.x) * kWarpsPerBlock) {
    const int64_t t = tb / B, b = tb % B;
    const T* x = in + ((T_in == 1 ? 0 : t) * B + b) * C;
    T* out = col + tb * K * C;
    T* a = out + (K - 1) * C;
    if (gamma == nullptr) {  // no LayerNorm: the row goes in as it is (a post-LN block's conv1); uniform per launch
      for (int64_t c = lane; c < C; c += 32) a[c] = x[c];
    } else {
      A mu, rs;
      warp_row_stats(x, C, eps, lane, mu, rs);
      for (int64_t c = lane; c < C; c += 32) {
        const A z = (to_acc(x[c]) - mu) * rs * to_acc(gamma[c]) + to_acc(beta[c]);
        a[c] = from_acc<T>(z < A(0) ? A(0) : z);
      }
    }
    if (R == 0) continue;
    const int64_t p = pos[b];
    T* slots = ring + tb * R * C;
    for (int64_t j = 0; j < K - 1; ++j) {
      const int64_t slot = ((p - (K - 1 - j) * dil) % R + R) % R;
      for (int64_t c = lane; c < C; c += 32) out[j * C + c] = slots[slot * C + c];
    }
    // Each lane reads, then overwrites, only its own channels: no sync needed between the gather and the write.
    const int64_t mine = ((p % R) + R) % R;
    for (int64_t c = lane; c < C; c += 32) slots[mine * C + c] = a[c];
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Dtype dispatch.

template <typename F>
cudaError_t dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float());
    case DType::kFloat64: return f(double());
    case DType::kFloat16: return f(__half());
    case DType::kBFloat16: return f(__nv_bfloat16());
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t ln_relu_im2col(DType dtype, const void* in, const void* gamma, const void* beta, double eps, int64_t S,
                           int64_t L_in, int64_t L_out, int64_t C, int64_t K, int64_t j0, int64_t dilation,
                           bool compute_stats, void* mean, void* rstd, void* col, void* copy_out, int64_t L_copy,
                           cudaStream_t stream) {
  const int64_t rows = S * L_in;
  if (rows == 0 || C == 0) return cudaSuccess;
  const unsigned blocks = row_blocks(rows, int64_t(sm_count()) * 64);
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename AccOf<T>::type;
    ln_relu_im2col_kernel<T><<<blocks, kRowThreads, 0, stream>>>(
        static_cast<const T*>(in), static_cast<const T*>(gamma), static_cast<const T*>(beta), eps, S, L_in, L_out, C, K,
        j0, dilation, compute_stats, static_cast<A*>(mean), static_cast<A*>(rstd), static_cast<T*>(col),
        static_cast<T*>(copy_out), L_copy);
    return cudaGetLastError();
  });
}

// Blocks of the backward kernel (fixed for a device, so the reduction order is too).
unsigned col2im_blocks(int64_t rows) { return row_blocks(rows, int64_t(sm_count()) * 2); }

size_t ln_relu_col2im_workspace_bytes(DType dtype, int64_t S, int64_t L, int64_t C) {
  const int64_t warps = int64_t(col2im_blocks(S * L)) * kWarpsPerBlock;
  return static_cast<size_t>(warps) * 2 * static_cast<size_t>(C) * (dtype == DType::kFloat64 ? 8 : 4);
}

cudaError_t ln_relu_col2im_backward(DType dtype, const void* gcol, const void* in, const void* mean, const void* rstd,
                                    const void* gamma, const void* beta, int64_t S, int64_t L, int64_t C, int64_t K,
                                    int64_t j0, int64_t dilation, const void* residual, void* grad_in, void* dgamma,
                                    void* dbeta, void* workspace, cudaStream_t stream) {
  const int64_t rows = S * L;
  if (rows == 0 || C == 0) return cudaSuccess;
  const unsigned blocks = col2im_blocks(rows);
  const int64_t warps = int64_t(blocks) * kWarpsPerBlock;
  const bool params = dgamma != nullptr || dbeta != nullptr;
  if (params) {
    if (workspace == nullptr) return cudaErrorInvalidValue;
    CONURE_RETURN_IF_ERROR(cudaMemsetAsync(workspace, 0, ln_relu_col2im_workspace_bytes(dtype, S, L, C), stream));
  }
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = typename AccOf<T>::type;
    A* partial = params ? static_cast<A*>(workspace) : nullptr;
    ln_relu_col2im_backward_kernel<T><<<blocks, kRowThreads, 0, stream>>>(
        static_cast<const T*>(gcol), static_cast<const T*>(in), static_cast<const A*>(mean),
        static_cast<const A*>(rstd), static_cast<const T*>(gamma), static_cast<const T*>(beta), S, L, C, K, j0,
        dilation, static_cast<const T*>(residual), static_cast<T*>(grad_in), partial);
    CONURE_RETURN_IF_ERROR(cudaGetLastError());
    if (params) {
      reduce_partials_kernel<A>
          <<<flat_blocks(2 * C), 256, 0, stream>>>(partial, warps, C, static_cast<A*>(dgamma), static_cast<A*>(dbeta));
      CONURE_RETURN_IF_ERROR(cudaGetLastError());
    }
    return cudaSuccess;
  });
}

cudaError_t sum_parts(DType dtype, const void* parts, int64_t n, int64_t M, void* out, cudaStream_t stream) {
  if (M == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    sum_parts_kernel<T><<<flat_blocks(M), 256, 0, stream>>>(static_cast<const T*>(parts), n, M, static_cast<T*>(out));
    return cudaGetLastError();
  });
}

cudaError_t stream_gather(DType dtype, const void* in, int64_t T_in, const void* gamma, const void* beta, double eps,
                          void* ring, int64_t T_r, int64_t B, int64_t R, int64_t C, const int64_t* pos, int64_t K,
                          int64_t dilation, void* col, cudaStream_t stream) {
  const int64_t rows = T_r * B;
  if (rows == 0 || C == 0) return cudaSuccess;
  const unsigned blocks = row_blocks(rows, int64_t(sm_count()) * 64);
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    stream_gather_kernel<T><<<blocks, kRowThreads, 0, stream>>>(
        static_cast<const T*>(in), T_in, static_cast<const T*>(gamma), static_cast<const T*>(beta), eps,
        static_cast<T*>(ring), T_r, B, R, C, pos, K, dilation, static_cast<T*>(col));
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace conure
