// Counter-based randomness shared by the CPU and CUDA kernels (SPEC §2).
//
// Every random number is a pure function of (seed, offset, purpose, position, index):
//   key     = (lo32(seed), hi32(seed))
//   counter = (lo32(offset), hi32(offset), purpose << 16 | position, index >> 2)
//   bits    = Philox4x32-10(key, counter)[index & 3]
// so one Philox call yields the numbers of four consecutive indices. Nothing here
// depends on the request's row in the batch, which is what makes the ops batch-invariant,
// and the same header is compiled for host and device, so CPU and CUDA draw the same bits.
#pragma once

#include <cstdint>

#include "dspark/host_device.h"

namespace dspark {

// What a random number is used for. Distinct purposes give independent streams, so the
// draft's sampling noise never correlates with the verifier's coins.
enum class Purpose : uint32_t {
  kDraftSample = 1,     // markov_draft: Gumbel noise for x_k, position k, index = vocab id
  kChainCoin = 2,       // verify_chain: acceptance coin u_k, position k, index 0
  kChainResample = 3,   // verify_chain: residual / bonus token, position k, index = vocab id
  kTreeCoin = 4,        // verify_tree: coin of child c at node i: position i, index c
  kTreeResample = 5,    // verify_tree: token emitted at node i, position i, index = vocab id
};

struct Philox4 {
  uint32_t v[4];
};

DSPARK_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  return static_cast<uint32_t>(product);
}

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;

// One Philox4x32 round on the counter words (c0, c1, c2, c3) with round key (k0, k1).
// Written on scalars so that CPU loops over many counters vectorise it (cpu/philox_batch.cpp).
DSPARK_HD void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  uint32_t hi0, hi1;
  const uint32_t lo0 = mulhilo32(kPhiloxM0, c0, &hi0);
  const uint32_t lo1 = mulhilo32(kPhiloxM1, c2, &hi1);
  c0 = hi1 ^ c1 ^ k0;
  c1 = lo1;
  c2 = hi0 ^ c3 ^ k1;
  c3 = lo0;
}

// Philox4x32 with 10 rounds (Salmon et al., SC'11), the Random123 reference definition.
DSPARK_HD Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    philox_round(ctr.v[0], ctr.v[1], ctr.v[2], ctr.v[3], k0, k1);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return ctr;
}

// The third counter word: which stream (purpose) and where in it (position, 16 bits).
DSPARK_HD uint32_t purpose_word(Purpose purpose, uint32_t position) {
  return (static_cast<uint32_t>(purpose) << 16) | (position & 0xFFFFu);
}

// The four words whose lane (index & 3) is the number for `index`.
DSPARK_HD Philox4 random_block(int64_t seed, int64_t offset, Purpose purpose, uint32_t position, uint64_t index) {
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  Philox4 ctr{{static_cast<uint32_t>(o), static_cast<uint32_t>(o >> 32), purpose_word(purpose, position),
               static_cast<uint32_t>(index >> 2)}};
  return philox4x32_10(ctr, static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32));
}

// Word `lane` (0..3) of a block by selects, not by indexing: a run-time index into the
// register array would move it to local memory on the GPU (STL/LDL in the SASS).
DSPARK_HD uint32_t philox_word(const Philox4& block, uint32_t lane) {
  const uint32_t low = (lane & 1u) ? block.v[1] : block.v[0];
  const uint32_t high = (lane & 1u) ? block.v[3] : block.v[2];
  return (lane & 2u) ? high : low;
}

DSPARK_HD uint32_t random_bits(int64_t seed, int64_t offset, Purpose purpose, uint32_t position, uint64_t index) {
  return philox_word(random_block(seed, offset, purpose, position, index), static_cast<uint32_t>(index & 3));
}

// Uniform in [0, 1) with 24 bits, exactly representable in float32.
DSPARK_HD float bits_to_uniform(uint32_t bits) { return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f); }

// Uniform in (0, 1): the midpoint of a 23-bit cell, in [2^-24, 1 - 2^-24], so logs stay
// finite. (A 24-bit midpoint would not do: 16777215.5 is not a float and rounds up to 2^24,
// giving u = 1 and an infinite Gumbel once in 2^24 draws.)
DSPARK_HD float bits_to_open_uniform(uint32_t bits) {
  return (static_cast<float>(bits >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

// The coin of SPEC §2: accept when coin * q < p.
DSPARK_HD float random_uniform(int64_t seed, int64_t offset, Purpose purpose, uint32_t position, uint64_t index) {
  return bits_to_uniform(random_bits(seed, offset, purpose, position, index));
}

}  // namespace dspark
