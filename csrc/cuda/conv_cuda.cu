// CUDA weight layout kernels, shared by the masked conv and the fused block: the owner-map mask fused with the
// re-layout the GEMMs want, and the gradient scatter back to the [C_out, C_in, K] layout. No torch headers: `nvcc -c`
// compiles this file alone. Launchers and their contracts: kernels_cuda.h.
#include "kernels_cuda.h"

#include <algorithm>

namespace conure {
namespace cuda {
namespace {

// mask_weight: the weight is a [C_out, M = C_in*K] matrix (rows o, contiguous columns m = i*K + j). A 32x32 tile per
// step: reads coalesced along m. When o is the output's unit-stride dimension (the conv's [K, C_in, C_out] taps) the
// tile goes through shared memory so the writes are coalesced along o too; otherwise (the block's [C_out, K*C_in]
// rows, unit stride along i) each value is written where it was read. Block (32, 8); blockIdx.x walks the m tiles,
// blockIdx.y (grid-stride) the o tiles.
constexpr int kTransTile = 32;
constexpr int kTransRows = 8;

template <typename T, typename idx_t>
__global__ void __launch_bounds__(kTransTile* kTransRows)
    mask_weight_kernel(const T* __restrict__ weight, const uint8_t* __restrict__ owner, int task, idx_t C_out,
                       idx_t C_in, idx_t K, idx_t j0, T* __restrict__ out, idx_t so, idx_t sj, idx_t si,
                       bool transpose) {
  __shared__ T tile[kTransTile][kTransTile + 1];
  const idx_t M = C_in * K;
  const idx_t m0 = static_cast<idx_t>(blockIdx.x) * kTransTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (idx_t o0 = static_cast<idx_t>(blockIdx.y) * kTransTile; o0 < C_out;
       o0 += static_cast<idx_t>(gridDim.y) * kTransTile) {
    const idx_t m = m0 + tx;
#pragma unroll
    for (int r = 0; r < kTransTile; r += kTransRows) {
      const idx_t o = o0 + ty + r;
      T v = 0;
      if (o < C_out && m < M) {
        const idx_t src = o * M + m;
        const int t = owner[src];
        if (t >= 1 && t <= task) v = weight[src];
        const idx_t i = m / K, j = m - i * K;
        if (!transpose && j >= j0) out[o * so + (j - j0) * sj + i * si] = v;
      }
      tile[ty + r][tx] = v;
    }
    if (!transpose) continue;  // the same for every thread of the launch
    __syncthreads();
    const idx_t o = o0 + tx;
#pragma unroll
    for (int r = 0; r < kTransTile; r += kTransRows) {
      const idx_t mm = m0 + ty + r;
      if (o < C_out && mm < M) {
        const idx_t i = mm / K, j = mm - i * K;
        if (j >= j0) out[o * so + (j - j0) * sj + i * si] = tile[tx][ty + r];
      }
    }
    __syncthreads();  // the tile is refilled by the next o tile
  }
}

// scatter_grad: grad_weight is a [R = C_out*C_in, K] matrix (row r = o*C_in + i). A block takes kScatterRows rows r
// and up to kScatterCols columns j: loads each tap's run of rows (unit stride along i: coalesced) into shared memory,
// then writes its [rows, cols] block of grad_weight, one contiguous run when K <= kScatterCols. blockIdx.x walks the
// row chunks, blockIdx.y (grid-stride) the column chunks.
constexpr int kScatterRows = 256;
constexpr int kScatterCols = 16;

template <typename T, typename idx_t>
__global__ void __launch_bounds__(kScatterRows)
    scatter_grad_kernel(const T* __restrict__ grad, idx_t so, idx_t sj, const uint8_t* __restrict__ owner, int task,
                        idx_t C_in, idx_t R, idx_t K, idx_t j0, T* __restrict__ grad_weight) {
  __shared__ T tile[kScatterCols][kScatterRows + 1];
  const int tid = threadIdx.x;
  const idx_t r0 = static_cast<idx_t>(blockIdx.x) * kScatterRows;
  const int nr = static_cast<int>(R - r0 < kScatterRows ? R - r0 : kScatterRows);
  for (idx_t jc = static_cast<idx_t>(blockIdx.y) * kScatterCols; jc < K;
       jc += static_cast<idx_t>(gridDim.y) * kScatterCols) {
    const int nj = static_cast<int>(K - jc < kScatterCols ? K - jc : kScatterCols);
    if (tid < nr) {
      const idx_t r = r0 + tid, o = r / C_in, i = r - o * C_in;
      for (int jj = 0; jj < nj; ++jj) {
        const idx_t j = jc + jj;
        if (j >= j0) tile[jj][tid] = grad[o * so + (j - j0) * sj + i];
      }
    }
    __syncthreads();
    for (int f = tid; f < nr * nj; f += kScatterRows) {
      const int rr = f / nj, jj = f - rr * nj;
      const idx_t j = jc + jj, idx = (r0 + rr) * K + j;
      grad_weight[idx] = (j >= j0 && task >= 1 && owner[idx] == task) ? tile[jj][rr] : T(0);
    }
    __syncthreads();
  }
}

// One block per x tile (at most 2^31 - 1 of them) and up to 65535 along y, which the kernels grid-stride over.
bool tile_grid(int64_t nx, int64_t tile_x, int64_t ny, int64_t tile_y, dim3& grid) {
  const int64_t x_tiles = (nx + tile_x - 1) / tile_x, y_tiles = (ny + tile_y - 1) / tile_y;
  if (x_tiles > 0x7fffffff) return false;
  grid = dim3(static_cast<unsigned>(x_tiles), static_cast<unsigned>(std::min<int64_t>(y_tiles, 65535)));
  return true;
}

template <typename T, typename idx_t>
cudaError_t launch_mask_weight(const void* weight, const uint8_t* owner, int task, int64_t C_out, int64_t C_in,
                               int64_t K, int64_t j0, void* out, int64_t so, int64_t sj, int64_t si,
                               cudaStream_t stream) {
  dim3 grid;
  if (!tile_grid(C_in * K, kTransTile, C_out, kTransTile, grid)) return cudaErrorInvalidConfiguration;
  const dim3 block(kTransTile, kTransRows);
  mask_weight_kernel<T, idx_t><<<grid, block, 0, stream>>>(
      static_cast<const T*>(weight), owner, task, static_cast<idx_t>(C_out), static_cast<idx_t>(C_in),
      static_cast<idx_t>(K), static_cast<idx_t>(j0), static_cast<T*>(out), static_cast<idx_t>(so),
      static_cast<idx_t>(sj), static_cast<idx_t>(si), so == 1 && C_out > 1);
  return cudaGetLastError();
}

template <typename T, typename idx_t>
cudaError_t launch_scatter_grad(const void* grad, int64_t so, int64_t sj, const uint8_t* owner, int task, int64_t C_out,
                                int64_t C_in, int64_t K, int64_t j0, void* grad_weight, cudaStream_t stream) {
  const int64_t R = C_out * C_in;
  dim3 grid;
  if (!tile_grid(R, kScatterRows, K, kScatterCols, grid)) return cudaErrorInvalidConfiguration;
  scatter_grad_kernel<T, idx_t>
      <<<grid, kScatterRows, 0, stream>>>(static_cast<const T*>(grad), static_cast<idx_t>(so), static_cast<idx_t>(sj),
                                          owner, task, static_cast<idx_t>(C_in), static_cast<idx_t>(R),
                                          static_cast<idx_t>(K), static_cast<idx_t>(j0), static_cast<T*>(grad_weight));
  return cudaGetLastError();
}

// f(bits, index) with a value of the dtype's raw-bits type and of the index type: int where every offset fits with
// headroom for the grid strides, else long long.
template <typename F>
cudaError_t by_type(DType dtype, int64_t C_out, int64_t C_in, int64_t K, F&& f) {
  const bool small = C_out * C_in * K <= (1LL << 30);
  switch (dtype_bytes(dtype)) {
    case 2: return small ? f(Bits<2>::type(), 0) : f(Bits<2>::type(), 0LL);
    case 4: return small ? f(Bits<4>::type(), 0) : f(Bits<4>::type(), 0LL);
    case 8: return small ? f(Bits<8>::type(), 0) : f(Bits<8>::type(), 0LL);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t mask_weight(DType dtype, const void* weight, const uint8_t* owner, int task, int64_t C_out, int64_t C_in,
                        int64_t K, int64_t j0, void* out, int64_t so, int64_t sj, int64_t si, cudaStream_t stream) {
  if (C_out <= 0 || C_in <= 0 || K <= j0) return cudaSuccess;
  return by_type(dtype, C_out, C_in, K, [&](auto bits, auto index) {
    return launch_mask_weight<decltype(bits), decltype(index)>(weight, owner, task, C_out, C_in, K, j0, out, so, sj, si,
                                                               stream);
  });
}

cudaError_t scatter_grad(DType dtype, const void* grad, int64_t so, int64_t sj, const uint8_t* owner, int task,
                         int64_t C_out, int64_t C_in, int64_t K, int64_t j0, void* grad_weight, cudaStream_t stream) {
  if (C_out <= 0 || C_in <= 0 || K <= 0) return cudaSuccess;
  return by_type(dtype, C_out, C_in, K, [&](auto bits, auto index) {
    return launch_scatter_grad<decltype(bits), decltype(index)>(grad, so, sj, owner, task, C_out, C_in, K, j0,
                                                                grad_weight, stream);
  });
}

}  // namespace cuda
}  // namespace conure
