// Helpers shared by conure's CUDA device files (conv_cuda.cu, block_cuda.cu, prune_cuda.cu) and their torch-side
// binding (kernels_cuda.cpp). Plain C++ over the CUDA runtime: no torch header, so `nvcc -c` builds each .cu alone.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace conure {
namespace cuda {

// All lanes of a warp (the shuffle and vote intrinsics).
constexpr unsigned kFullMask = 0xffffffffu;

// The float dtypes the kernels take (kernels_cuda.cpp maps at::ScalarType to it).
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

inline int dtype_bytes(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
  }
  return 0;
}

// Raw-bits element type of a dtype's size: the layout kernels only move bits (+0.0 is all-zero bits in every
// format), so they need no half-precision headers.
template <int kBytes> struct Bits;
template <> struct Bits<2> {
  using type = uint16_t;
};
template <> struct Bits<4> {
  using type = uint32_t;
};
template <> struct Bits<8> {
  using type = unsigned long long;
};

// Multiprocessors of the current device (grid sizes); a failed query is cleared (it is not sticky) and a fixed
// size used instead.
inline int sm_count() {
  int device = 0, sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();
    return 132;
  }
  return sms;
}

}  // namespace cuda
}  // namespace conure

// Returns the first CUDA error a launcher meets (the launchers return cudaError_t; the binding raises it).
#define CONURE_RETURN_IF_ERROR(expr)      \
  do {                                    \
    const cudaError_t err_ = (expr);      \
    if (err_ != cudaSuccess) return err_; \
  } while (0)
