// The two primitives every host+device header needs: DSPARK_HD (compile a function for the
// CPU and, under nvcc, for the GPU) and bit_cast (reinterpret an object's bytes as another
// trivially copyable type of the same size, with no aliasing UB on either side).
#pragma once

#include <cstring>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DSPARK_HD __host__ __device__ __forceinline__
#else
#define DSPARK_HD inline
#endif

namespace dspark {

// std::bit_cast is not a __device__ function; memcpy of a register-sized object compiles to a
// register move on both sides (nvcc and gcc alike).
template <typename To, typename From>
DSPARK_HD To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
  static_assert(std::is_trivially_copyable_v<To> && std::is_trivially_copyable_v<From>,
                "bit_cast needs trivially copyable types");
  To to;
  memcpy(&to, &from, sizeof(To));
  return to;
}

}  // namespace dspark
