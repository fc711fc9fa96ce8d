// PTX wrappers for tiled tensor-core kernels on sm_80+ (sm_90a included): asynchronous
// 16-byte global -> shared copies (cp.async), 8x8 matrix loads from shared memory (ldmatrix)
// and the m16n8k16 mma with float32 accumulators, for bf16 and fp16 inputs. Fragment layouts
// are the PTX ISA's ("Matrix fragments for mma.m16n8k16"); the comments at each use say which
// lane holds what. Device only, no torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace dspark::cuda {

// Shared-memory address (the .shared window) of a generic pointer into shared memory.
__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Copies 16 bytes from global `src` to shared `dst` asynchronously, bypassing L1 (streamed
// once). When `valid` is false nothing is read and the 16 bytes are zero-filled (`src` must
// still be a mapped address). Completion: cp_async_commit / cp_async_wait.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}

// Closes the group of copies issued so far by this thread.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 16-bit matrices; lanes 8i..8i+7 give the 16-byte row addresses of matrix i and
// lane t receives, of each matrix, row t/4, columns 2(t%4) and 2(t%4)+1 (TRANS: the
// transpose, i.e. rows 2(t%4), 2(t%4)+1 of column t/4).
template <bool TRANS>
__device__ __forceinline__ void ldmatrix_x4(uint32_t address, uint32_t (&r)[4]) {
  if constexpr (TRANS) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(address)
                 : "memory");
  }
}

// d[16x8] += a[16x16] b[16x8] in float32; a row-major (4 registers of 2 elements), b
// column-major (2 registers). T: __nv_bfloat16 or __half.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same_v<T, __half>, "mma_16816: bf16 or fp16");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// acc[t] (TILES n8 tiles, C layout) += a (A fragment, 16 x 16) times B, where B's tiles 2n and
// 2n + 1 come from one ldmatrix x4 at `address + n * pair_step` (registers 0, 1 -> tile 2n,
// 2, 3 -> tile 2n + 1; TRANS as in ldmatrix_x4).
template <typename T, bool TRANS, int TILES>
__device__ __forceinline__ void mma_tile_pairs(float (&acc)[TILES][4], const uint32_t (&a)[4], uint32_t address,
                                               uint32_t pair_step) {
  static_assert(TILES % 2 == 0, "tiles come in pairs");
#pragma unroll
  for (int n = 0; n < TILES / 2; ++n) {
    uint32_t b[4];
    ldmatrix_x4<TRANS>(address + n * pair_step, b);
    mma_16816<T>(acc[2 * n], a, b[0], b[1]);
    mma_16816<T>(acc[2 * n + 1], a, b[2], b[3]);
  }
}

// Two floats rounded to T (round to nearest even) in one 32-bit register, `lo` in the low
// half (the lower column of an mma fragment), and back. (cvt packs straight into a register:
// the vector types are not trivially copyable, so no bit_cast.)
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
}

template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return make_float2(__uint_as_float(v << 16), __uint_as_float(v & 0xFFFF0000u));
  } else {
    return make_float2(__half2float(__ushort_as_half(static_cast<unsigned short>(v & 0xFFFFu))),
                       __half2float(__ushort_as_half(static_cast<unsigned short>(v >> 16))));
  }
}

}  // namespace dspark::cuda
