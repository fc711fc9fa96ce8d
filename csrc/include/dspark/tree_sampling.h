// Recursive rejection sampling arithmetic of verify_tree (SPEC §5), shared by the CPU and
// CUDA kernels (host + device).
//
// At node i the children c_1..c_m were drawn i.i.d. from q = q_i. The SPEC's rule: p'_0 = p;
// child j is accepted when u_j * q(x_j) < p'_j(x_j); after a rejection
// p'_{j+1} = norm(max(0, p'_j - q)). Because q is the SAME for every child, the residuals
// have a closed form:
//
//     p'_j = max(0, p - c_j q) / D_j,   D_j = Σ_v max(0, p(v) - c_j q(v)),
//     c_0 = 0, D_0 = 1,   c_{j+1} = c_j + D_j.
//
// Proof by induction: if p(v) - c_j q(v) <= 0 then p'_j(v) = 0 and p'_j(v) - q(v) <= 0, and
// p(v) - c_{j+1} q(v) <= 0 too (q >= 0, D_j > 0): both sides are 0. Otherwise
// max(0, p'_j - q) = max(0, p - c_j q - D_j q) / D_j = max(0, p - c_{j+1} q) / D_j, and
// normalising gives the formula with D_{j+1} = Σ max(0, p - c_{j+1} q).
//
// So a kernel never stores p': it keeps two scalars (c, D) and recomputes p'(v) from the p
// and q rows. Testing a child reads one entry of each row; each rejection that is followed by
// another child costs one streamed pass over both rows for D_{j+1}; the token emitted after
// the last rejection is a Gumbel race over log max(0, p - c q), which needs no normaliser.
// If D_{j+1} = 0 (p' had no mass left, only possible through rounding) no later child is
// accepted and the emitted token is drawn from p itself (SPEC: "if that mass is 0, from p").
#pragma once

#include "dspark/sampling.h"

#include <cstdint>

namespace dspark {

// positions[r, i] of tree_metadata: prefix_lens[r] + depth (depth >= 0), saturated at
// INT64_MAX so that the sum never overflows where the value check of prefix_lens is off
// (CUDA without DSPARK_CHECK=1).
DSPARK_HD int64_t tree_position(int64_t prefix_len, int64_t depth) {
  return prefix_len > INT64_MAX - depth ? INT64_MAX : prefix_len + depth;
}

// Unnormalised residual weight p(v) - c q(v) (may be <= 0). Written without contraction into
// an FMA on the device so that the CPU and CUDA kernels round it the same way.
DSPARK_HD float tree_residual(float p, float c, float q) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(p, __fmul_rn(c, q));
#else
  return p - c * q;  // baseline x86-64 has no FMA, so the host does not contract this
#endif
}

// p'(x) for the acceptance test of a child with p(x), q(x) under the state (c, D).
DSPARK_HD float tree_residual_prob(float p, float q, float c, float D) {
  const float r = tree_residual(p, c, q);
  return r > 0.0f ? r / D : 0.0f;
}

}  // namespace dspark
