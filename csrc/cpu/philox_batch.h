// Whole rows of counter-based random numbers on the CPU, many Philox counters at a time.
#pragma once

#include <cstdint>

#include "dspark/philox.h"

namespace dspark::cpu {

// u[v] = bits_to_open_uniform(random_bits(seed, offset, purpose, position, v)) for v < vocab:
// the same numbers as the scalar definition in dspark/philox.h, eight counters per step in
// loops the compiler vectorises.
void fill_open_uniforms(float* u, int64_t vocab, int64_t seed, int64_t offset, Purpose purpose, uint32_t position);

}  // namespace dspark::cpu
