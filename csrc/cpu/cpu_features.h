// Run-time CPU feature choice for the CPU kernels: hot loops are written once as plain
// vectorisable code and compiled twice (baseline and AVX2+FMA, via target attributes); the
// AVX2 build is picked once per process when the CPU has it, so results stay reproducible.
#pragma once

#if defined(__GNUC__)
#define DSPARK_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DSPARK_ALWAYS_INLINE inline
#endif

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define DSPARK_HAVE_AVX2_CLONES 1
#define DSPARK_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define DSPARK_HAVE_AVX2_CLONES 0
#define DSPARK_TARGET_AVX2
#endif

namespace dspark::cpu {

inline bool cpu_has_avx2() {
#if DSPARK_HAVE_AVX2_CLONES
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

}  // namespace dspark::cpu
