// CUDA binding of dspark::random_bits: checks, allocation, launch on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/launch_check.h"
#include "cuda/random.h"
#include "dspark/checks.h"

namespace dspark::cuda {
namespace {

// seed, offset: [R] int64 -> [R, count] int64.
at::Tensor random_bits(const at::Tensor& seed, const at::Tensor& offset, int64_t purpose,
                       int64_t position, int64_t count) {
  constexpr const char* op = "dspark::random_bits";
  check_index_vector(seed, op, "seed", seed.size(0), "R", seed);
  check_index_vector(offset, op, "offset", seed.size(0), "R", seed);
  DSPARK_CHECK(count >= 0, op, "count", "must be >= 0, got ", count);
  DSPARK_CHECK(purpose >= 0 && purpose < 65536, op, "purpose", "must be in [0, 65536), got ", purpose);
  const c10::cuda::CUDAGuard guard(seed.device());
  auto out = at::empty({seed.size(0), count}, seed.options());
  const auto s = seed.contiguous(), o = offset.contiguous();
  DSPARK_CUDA_CHECK(launch_random_bits(s.data_ptr<int64_t>(), o.data_ptr<int64_t>(),
                                       static_cast<uint32_t>(purpose), static_cast<uint32_t>(position),
                                       seed.size(0), count, out.data_ptr<int64_t>(),
                                       c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) { m.impl("random_bits", &random_bits); }

}  // namespace dspark::cuda
