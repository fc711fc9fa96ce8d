// Batched Philox4x32-10 fill (see philox_batch.h). The counters of eight consecutive blocks of
// four indices are kept as structure-of-arrays so each philox_round step is one vector op.
#include "cpu/philox_batch.h"

#include "cpu/cpu_features.h"

namespace dspark::cpu {
namespace {

DSPARK_ALWAYS_INLINE void fill_impl(float* u, int64_t vocab, int64_t seed, int64_t offset, Purpose purpose,
                                    uint32_t position) {
  constexpr int kBatch = 8;
  const uint64_t sd = static_cast<uint64_t>(seed), of = static_cast<uint64_t>(offset);
  const uint32_t c0 = static_cast<uint32_t>(of), c1 = static_cast<uint32_t>(of >> 32);
  const uint32_t c2 = purpose_word(purpose, position);
  const int64_t full_blocks = vocab / 4;
  int64_t blk = 0;
  for (; blk + kBatch <= full_blocks; blk += kBatch) {
    uint32_t x0[kBatch], x1[kBatch], x2[kBatch], x3[kBatch];
    for (int i = 0; i < kBatch; ++i) {
      x0[i] = c0;
      x1[i] = c1;
      x2[i] = c2;
      x3[i] = static_cast<uint32_t>(blk + i);
    }
    uint32_t k0 = static_cast<uint32_t>(sd), k1 = static_cast<uint32_t>(sd >> 32);
    for (int round = 0; round < 10; ++round) {
      for (int i = 0; i < kBatch; ++i) philox_round(x0[i], x1[i], x2[i], x3[i], k0, k1);
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    float* out = u + blk * 4;
    for (int i = 0; i < kBatch; ++i) {
      out[4 * i] = bits_to_open_uniform(x0[i]);
      out[4 * i + 1] = bits_to_open_uniform(x1[i]);
      out[4 * i + 2] = bits_to_open_uniform(x2[i]);
      out[4 * i + 3] = bits_to_open_uniform(x3[i]);
    }
  }
  for (int64_t base = blk * 4; base < vocab; base += 4) {
    const Philox4 b = random_block(seed, offset, purpose, position, static_cast<uint64_t>(base));
    for (int64_t lane = 0; lane < 4 && base + lane < vocab; ++lane) u[base + lane] = bits_to_open_uniform(b.v[lane]);
  }
}

#if DSPARK_HAVE_AVX2_CLONES
DSPARK_TARGET_AVX2 void fill_avx2(float* u, int64_t vocab, int64_t seed, int64_t offset, Purpose purpose,
                                  uint32_t position) {
  fill_impl(u, vocab, seed, offset, purpose, position);
}
#endif

}  // namespace

void fill_open_uniforms(float* u, int64_t vocab, int64_t seed, int64_t offset, Purpose purpose, uint32_t position) {
#if DSPARK_HAVE_AVX2_CLONES
  if (cpu_has_avx2()) return fill_avx2(u, vocab, seed, offset, purpose, position);
#endif
  fill_impl(u, vocab, seed, offset, purpose, position);
}

}  // namespace dspark::cpu
