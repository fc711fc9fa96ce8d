// Rotary position embedding and RMSNorm arithmetic shared by the CPU and CUDA kernels of the
// block-draft helpers (host + device). It follows Hugging Face's Qwen3 code step by step so
// that a drafter trained there sees the same numbers here:
//   RMSNorm:  n = round(x * rsqrt(mean(x^2) + eps)); y = round(weight * n)
//   RoPE:     inv_freq_i = 1 / theta^(2i / Dh) (float32, the power correctly rounded), angle = float(pos) * inv_freq_i,
//             c = round(cos(angle)), s = round(sin(angle)) and, for i < Dh/2 (rotate-half),
//             y_i = round(round(x_i c) - round(x_{i+Dh/2} s)),
//             y_{i+Dh/2} = round(round(x_{i+Dh/2} c) + round(x_i s)),
// where round() is the rounding to the storage dtype (the identity for float32).
#pragma once

#include <cmath>
#include <cstdint>

#include "dspark/host_device.h"

namespace dspark {

// theta^e is evaluated in double and rounded once to float32, i.e. the correctly rounded
// float32 power (what glibc's powf, and so Hugging Face on the CPU, returns for these inputs).
// Device powf is only accurate to 2 ulp; an ulp of inv_freq is an angle error of about
// position * 6e-8 rad (0.01 rad at position 2e5), so float32 powf made the CPU and CUDA
// kernels disagree far beyond float32 tolerance at long contexts.
DSPARK_HD float rope_inv_freq(int64_t i, int64_t head_dim, float theta) {
  const float e = static_cast<float>(2 * i) / static_cast<float>(head_dim);  // float32, as in HF
  return 1.0f / static_cast<float>(pow(static_cast<double>(theta), static_cast<double>(e)));
}

DSPARK_HD float rope_angle(int64_t position, int64_t i, int64_t head_dim, float theta) {
  return static_cast<float>(position) * rope_inv_freq(i, head_dim, theta);
}

}  // namespace dspark
