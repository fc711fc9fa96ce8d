// Launcher of the schedule_lengths kernel (declared for the torch binding, defined in
// schedule_lengths.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dspark::cuda {

// confidence: [R, γ] float32 contiguous; sps: [S] float32 (S > R*(γ+1)); max_lengths: [R] or
// nullptr. Outputs: lengths [R] int64, admitted [] int64, expected [] float32, throughput []
// float32. Requires R*γ <= kScheduleMaxCudaCandidates (16384). One block, no host sync.
cudaError_t launch_schedule_lengths(const float* confidence, const float* sps, const int64_t* max_lengths,
                                    int64_t requests, int64_t gamma, int64_t mode, int64_t budget, int64_t* lengths,
                                    int64_t* admitted, float* expected, float* throughput, cudaStream_t stream);

}  // namespace dspark::cuda
