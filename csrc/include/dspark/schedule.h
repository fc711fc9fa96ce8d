// The arithmetic of dspark::schedule_lengths (SPEC §6) shared by the CPU and CUDA kernels
// (host + device), so both rank the candidates and round tau / Theta identically.
//
// Candidates. a_{r,j} = ((c'_1 * c'_2) * ...) * c'_j, a float32 left fold, with
// c' = fmin(fmax(c, 0), 1) (NaN -> 0). A slot (r, j), 1 <= j <= cap_r, is a candidate when
// a_{r,j} > 0. Its 64-bit sort key is (bits(a) << 32) | (0xFFFFFFFF - s), s = (j-1)*R + r:
// for positive floats the bit pattern orders like the value, so sorting keys in DESCENDING
// order ranks a desc, then j asc, then r asc, and keys are unique. Non-candidates get key 0.
//
// Sums. The sorted candidates are cut into chunks of kScheduleChunk = 16 positions. Within
// chunk t, s_{t,m} = (((a_{16t} + a_{16t+1}) + ...) + a_{16t+m}) (left fold). The chunk
// totals T_t = s_{t,15} (zeros past the end) are scanned by Hillis-Steele:
//   for d = 1, 2, 4, ... while d < nchunks:  T_t <- T_t + T_{t-d} for t >= d  (old values)
// E_t = scanned T_{t-1} (E_0 = 0). Then for position i = 16t + m:
//   P_i = E_t + s_{t,m},  tau_i = float(R) + P_i,  Theta_i = tau_i * sps[R + i + 1],
// and Theta_init = float(R) * sps[R] for the empty prefix. Every operation is one IEEE
// float32 add or multiply with round-to-nearest (the CUDA code uses __fadd_rn/__fmul_rn so
// nothing is contracted into an FMA), hence CPU and CUDA agree bit for bit.
//
// Kept prefix n (number of admitted candidates), with Theta_{-1} = Theta_init:
//   mode 0: the first i with !(Theta_i > Theta_{i-1}); n = i (or K if none). Since every kept
//           step raised Theta*, Theta* before step i is exactly Theta_{i-1}.
//   mode 1: n = 1 + the first index of the largest Theta_i (NaN never wins) when it is
//           > Theta_init, else 0 (shortest prefix reaching the largest Theta).
//   mode 2: n = min(budget, K).
#pragma once

#include <cmath>
#include <cstdint>

#include "dspark/host_device.h"

namespace dspark {

constexpr int kScheduleChunk = 16;
constexpr int64_t kScheduleMaxCudaCandidates = 16384;  // R * γ limit of the one-block CUDA kernel

enum ScheduleMode : int64_t { kScheduleCausal = 0, kScheduleGlobal = 1, kScheduleTopK = 2 };

DSPARK_HD float schedule_clamp_confidence(float c) {
#if defined(__CUDA_ARCH__)
  return fminf(fmaxf(c, 0.0f), 1.0f);  // fmaxf(NaN, 0) = 0
#else
  return std::fmin(std::fmax(c, 0.0f), 1.0f);
#endif
}

// key of candidate slot s = (j-1)*R + r with survival a (> 0); 0 for "no candidate".
DSPARK_HD uint64_t schedule_key(float a, uint32_t slot) {
  return a > 0.0f ? (static_cast<uint64_t>(bit_cast<uint32_t>(a)) << 32) | (0xFFFFFFFFu - slot) : 0;
}
DSPARK_HD float schedule_key_survival(uint64_t key) { return bit_cast<float>(static_cast<uint32_t>(key >> 32)); }
DSPARK_HD uint32_t schedule_key_slot(uint64_t key) { return 0xFFFFFFFFu - static_cast<uint32_t>(key); }

DSPARK_HD float schedule_add(float x, float y) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(x, y);
#else
  volatile float s = x + y;  // volatile: one rounded add, never fused or kept wider
  return s;
#endif
}
DSPARK_HD float schedule_mul(float x, float y) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(x, y);
#else
  volatile float p = x * y;
  return p;
#endif
}

}  // namespace dspark
