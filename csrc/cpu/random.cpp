// CPU kernel of dspark::random_bits: the raw Philox words of SPEC §2, one row per request.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/random_args.h"
#include "dspark/philox.h"

namespace dspark::cpu {
namespace {

// seed, offset: [R] int64 -> [R, count] int64 holding uint32 words.
at::Tensor random_bits(const at::Tensor& seed, const at::Tensor& offset, int64_t purpose, int64_t position,
                       int64_t count) {
  const int64_t rows = check_random_bits_args(seed, offset, purpose, count);
  auto out = at::empty({rows, count}, seed.options());
  const auto s = seed.contiguous(), o = offset.contiguous();
  const int64_t* sp = s.data_ptr<int64_t>();
  const int64_t* op_ = o.data_ptr<int64_t>();
  int64_t* dst = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < count; ++i)
      dst[r * count + i] = random_bits(sp[r], op_[r], static_cast<Purpose>(purpose), static_cast<uint32_t>(position),
                                       static_cast<uint64_t>(i));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CPU, m) { m.impl("random_bits", &random_bits); }

}  // namespace dspark::cpu
