// CUDA binding of dspark::random_bits: checks, allocation, launch on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/random_args.h"
#include "cuda/launch_check.h"
#include "cuda/random.h"

namespace dspark::cuda {
namespace {

// seed, offset: [R] int64 -> [R, count] int64.
at::Tensor random_bits(const at::Tensor& seed, const at::Tensor& offset, int64_t purpose, int64_t position,
                       int64_t count) {
  const int64_t rows = check_random_bits_args(seed, offset, purpose, count);
  const c10::cuda::CUDAGuard guard(seed.device());
  auto out = at::empty({rows, count}, seed.options());
  const auto s = seed.contiguous(), o = offset.contiguous();
  DSPARK_CUDA_CHECK(launch_random_bits(s.data_ptr<int64_t>(), o.data_ptr<int64_t>(), static_cast<uint32_t>(purpose),
                                       static_cast<uint32_t>(position), rows, count, out.data_ptr<int64_t>(),
                                       c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) { m.impl("random_bits", &random_bits); }

}  // namespace dspark::cuda
