// Turns a launcher's cudaError_t into a RuntimeError (host only).
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

// On failure the runtime's last-error slot is cleared first, so that the next, unrelated
// launch check (torch's) does not report this error again.
#define DSPARK_CUDA_CHECK(expr)                                                                                   \
  do {                                                                                                            \
    const cudaError_t dspark_err_ = (expr);                                                                       \
    if (dspark_err_ != cudaSuccess) (void)cudaGetLastError();                                                     \
    TORCH_CHECK(dspark_err_ == cudaSuccess, "dspark CUDA launch failed: ", cudaGetErrorString(dspark_err_), " (", \
                #expr, ")");                                                                                      \
  } while (0)
