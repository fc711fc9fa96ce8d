// The SMs a kernel may use, for launch plans whose blocks must all be resident at once (the
// cooperative markov_draft launch, verify_tree's groups of blocks that wait on each other).
#pragma once

#include <cuda_runtime_api.h>

namespace dspark::cuda {

// SMs that a kernel launched on `stream` (of `device`, the current device) may use: the
// device's count, or fewer when the stream belongs to a green context (an SM partition, e.g.
// torch.cuda.green_contexts' streams) or a green context is current. NOT seen: an MPS
// client's CUDA_MPS_ACTIVE_THREAD_PERCENTAGE (these queries are not known to report it), and
// SMs held by other kernels running at the same time; during stream capture, a green context
// of a stream never used outside capture (the stream's count is remembered from its calls
// outside capture). Cheap (an attribute query and driver queries that enqueue nothing; no
// sync), so callers ask per call. Sets *err on failure.
int available_sms(int device, cudaStream_t stream, cudaError_t* err);

}  // namespace dspark::cuda
