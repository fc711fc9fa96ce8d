// CUDA kernel of dspark::random_bits: the same Philox words as the CPU (dspark/philox.h).
#include "cuda/common.cuh"
#include "cuda/random.h"

namespace dspark::cuda {
namespace {

__global__ void random_bits_kernel(const int64_t* __restrict__ seed, const int64_t* __restrict__ offset,
                                   uint32_t purpose, uint32_t position, int64_t rows, int64_t count,
                                   int64_t* __restrict__ out) {
  const int64_t total = rows * count;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / count, index = i % count;
    out[i] = random_bits(seed[r], offset[r], static_cast<Purpose>(purpose), position, static_cast<uint64_t>(index));
  }
}

}  // namespace

cudaError_t launch_random_bits(const int64_t* seed, const int64_t* offset, uint32_t purpose, uint32_t position,
                               int64_t rows, int64_t count, int64_t* out, cudaStream_t stream) {
  const int64_t total = rows * count;
  if (total == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  random_bits_kernel<<<static_cast<unsigned>(blocks < 65535 ? blocks : 65535), threads, 0, stream>>>(
      seed, offset, purpose, position, rows, count, out);
  return cudaGetLastError();
}

}  // namespace dspark::cuda
