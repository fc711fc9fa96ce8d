// Reading one row of logits as LOGICAL groups of kGroup<T> = 16 / sizeof(T) entries (group g is
// entries [g * kGroup, g * kGroup + kGroup) counted from the row's first entry), with 16-byte
// loads whatever the row's alignment. A row of [N, V] starts SHIFT = (address / sizeof(T)) mod
// kGroup entries past a 16-byte boundary, SHIFT known at compile time (dispatch_shift): group g
// is then the last kGroup - SHIFT entries of one aligned vector and the first SHIFT of the next,
// two 16-byte loads (the second mostly an L1 hit: the next lane loaded it) and register moves
// fixed at compile time. Only the groups whose aligned vectors would leave the row (the first
// when SHIFT > 0, and the last one or two) are read one entry at a time.
//
// Why logical groups and not "peel to the next boundary": which entries a thread accumulates,
// and in which order, must not depend on the row's place in the batch (SPEC §2 (a)); the
// groups and their order here depend only on T and the row length, never on SHIFT.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"

namespace dspark::cuda {

template <typename T>
constexpr int kGroup = static_cast<int>(16 / sizeof(T));

// f(std::integral_constant<int, SHIFT>{}) with SHIFT = shift, one of [0, kGroup<T>).
template <typename T, int SHIFT = 0, typename F>
__device__ __forceinline__ void dispatch_shift(int shift, F&& f) {
  if constexpr (SHIFT == kGroup<T> - 1) {
    f(std::integral_constant<int, SHIFT>{});
  } else {
    if (shift == SHIFT) return f(std::integral_constant<int, SHIFT>{});
    dispatch_shift<T, SHIFT + 1>(shift, static_cast<F&&>(f));
  }
}

// The SHIFT of a row that starts at `row` (every tensor element is aligned to sizeof(T)).
template <typename T>
__device__ __forceinline__ int row_shift(const T* row) {
  return static_cast<int>((reinterpret_cast<uintptr_t>(row) / sizeof(T)) % kGroup<T>);
}

// Group g of a row read one entry at a time into x [G]; entries at or past `end` are NaN
// (NaN reads as -inf in every consumer: scaled_logit, ArgMax).
template <typename T>
__device__ __forceinline__ void load_group_scalar(const T* __restrict__ row, int64_t g, int64_t end,
                                                  float (&x)[kGroup<T>]) {
#pragma unroll
  for (int j = 0; j < kGroup<T>; ++j) {
    const int64_t v = g * kGroup<T> + j;
    x[j] = v < end ? to_float(row[v]) : NAN;
  }
}

// Calls visit(x, first) for the logical groups g of a row with [g * G, (g + 1) * G) meeting
// [begin, end) (begin a multiple of G = kGroup<T>), g = begin / G + threadIdx.x + i * blockDim.x
// in increasing order; x [G] holds the raw logits as float (load_group_scalar's NaN past end).
// This one reads entry by entry: for short rows (sparse draft rows).
template <typename T, typename Visit>
__device__ __forceinline__ void for_each_group_scalar(const T* __restrict__ row, int64_t begin, int64_t end,
                                                      Visit&& visit) {
  float x[kGroup<T>];
  for (int64_t g = begin / kGroup<T> + threadIdx.x; g * kGroup<T> < end; g += blockDim.x) {
    load_group_scalar(row, g, end, x);
    visit(x, g * kGroup<T>);
  }
}

// for_each_group_scalar's groups and order for a row `row` [width] that starts SHIFT entries
// past a 16-byte boundary, read with 16-byte loads except at the row's ends.
template <int SHIFT, typename T, typename Visit>
__device__ __forceinline__ void for_each_group(const T* __restrict__ row, int64_t width, int64_t begin, int64_t end,
                                               Visit&& visit) {
  constexpr int G = kGroup<T>;
  float x[G];
  // Groups [lo, hi) are whole vectors: the aligned loads stay inside the row and before `end`.
  const int64_t g_end = (end + G - 1) / G, whole = end / G;
  const int64_t lo = SHIFT > 0 ? 1 : 0;
  int64_t hi = SHIFT > 0 ? (width - 2 * G + SHIFT >= 0 ? (width - 2 * G + SHIFT) / G + 1 : 0) : width / G;
  hi = hi < whole ? hi : whole;
  hi = hi > lo ? hi : lo;
  int64_t g = begin / G + threadIdx.x;
  for (; g < lo; g += blockDim.x) {  // the head group
    if (g >= g_end) return;
    load_group_scalar(row, g, end, x);
    visit(x, g * G);
  }
#pragma unroll 2
  for (; g < hi; g += blockDim.x) {
    const T* a = row + g * G - SHIFT;  // 16-byte aligned
    vec_t<T, G> first;
    first.load(a);
    if constexpr (SHIFT == 0) {
#pragma unroll
      for (int j = 0; j < G; ++j) x[j] = to_float(first[j]);
    } else {
      vec_t<T, G> second;
      second.load(a + G);
#pragma unroll
      for (int j = 0; j < G; ++j) x[j] = to_float(j + SHIFT < G ? first[j + SHIFT] : second[j + SHIFT - G]);
    }
    visit(x, g * G);
  }
  for (; g < g_end; g += blockDim.x) {  // the tail groups
    load_group_scalar(row, g, end, x);
    visit(x, g * G);
  }
}

}  // namespace dspark::cuda
