// Launchers of the random_bits kernel (declared for the torch binding, defined in random.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dspark::cuda {

// seed, offset: [rows]; out: [rows, count] (uint32 words stored as int64).
cudaError_t launch_random_bits(const int64_t* seed, const int64_t* offset, uint32_t purpose, uint32_t position,
                               int64_t rows, int64_t count, int64_t* out, cudaStream_t stream);

}  // namespace dspark::cuda
