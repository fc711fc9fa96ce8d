// The vectorised load type of the CUDA kernels (FlashInfer's vec_t): VEC consecutive elements
// of T read with one load of VEC * sizeof(T) bytes (at most 16, the widest load). The width
// is chosen on the HOST from the row length and the base pointer (vec_size) and instantiated
// as a template parameter (dispatch_vec_size), so a kernel has no runtime "aligned?" branch
// and every row of a tensor is read with the same width: the per-thread order of a row's
// elements depends on the tensor, never on the row's place in the batch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <numeric>
#include <type_traits>

#include "dspark/host_device.h"

namespace dspark::cuda {

// The unsigned word type of a load of BYTES bytes.
template <int BYTES>
struct load_word;
template <>
struct load_word<2> {
  using type = unsigned short;
};
template <>
struct load_word<4> {
  using type = unsigned int;
};
template <>
struct load_word<8> {
  using type = uint2;
};
template <>
struct load_word<16> {
  using type = uint4;
};

// Where a kernel's loads go: the read-only (non-coherent) cache for inputs that no thread of the
// launch writes, or L2 only (__ldcg) for data written earlier in the same launch, by another
// block (before a grid barrier) or by the same block (before a block barrier).
enum class Load { kReadOnly, kL2 };

template <typename T, int VEC>
struct vec_t {
  static_assert(VEC >= 1 && VEC * sizeof(T) <= 16 && (VEC & (VEC - 1)) == 0, "VEC: a power of two, <= 16 bytes");
  T data[VEC];

  // Loads VEC elements at p (aligned to VEC * sizeof(T)) through the cache L says.
  template <Load L = Load::kReadOnly>
  __device__ __forceinline__ void load(const T* p) {
    if constexpr (L == Load::kL2) {
      using W = typename load_word<VEC * sizeof(T)>::type;
      *this = bit_cast<vec_t>(__ldcg(reinterpret_cast<const W*>(p)));
    } else if constexpr (VEC * sizeof(T) == sizeof(T)) {
      data[0] = p[0];
    } else {
      using W = typename load_word<VEC * sizeof(T)>::type;
      *this = bit_cast<vec_t>(__ldg(reinterpret_cast<const W*>(p)));
    }
  }
  __device__ __forceinline__ T& operator[](int i) { return data[i]; }
  __device__ __forceinline__ const T& operator[](int i) const { return data[i]; }
};

// The widest VEC (elements, a power of two) with which every row of a [rows, len] tensor of T
// starting at `base` can be read: gcd(16 / sizeof(T), len), halved until `base` is aligned
// to VEC * sizeof(T). Host only; call it in the launcher.
template <typename T>
inline int vec_size(const void* base, int64_t len) {
  int vec = static_cast<int>(std::gcd(static_cast<int64_t>(16 / sizeof(T)), len < 0 ? int64_t{0} : len));
  if (vec < 1) vec = static_cast<int>(16 / sizeof(T));  // len == 0: nothing is read
  while (vec > 1 && reinterpret_cast<uintptr_t>(base) % (vec * sizeof(T)) != 0) vec /= 2;
  return vec;
}

// Calls f(std::integral_constant<int, VEC>{}) with VEC = vec (a value vec_size returned).
template <typename T, int MAX_VEC = static_cast<int>(16 / sizeof(T)), typename F>
decltype(auto) dispatch_vec_size(int vec, F&& f) {
  if constexpr (MAX_VEC == 1) {
    return f(std::integral_constant<int, 1>{});
  } else {
    if (vec >= MAX_VEC) return f(std::integral_constant<int, MAX_VEC>{});
    return dispatch_vec_size<T, MAX_VEC / 2>(vec, static_cast<F&&>(f));
  }
}

}  // namespace dspark::cuda
