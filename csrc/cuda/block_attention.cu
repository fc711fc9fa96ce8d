// CUDA kernels of block_attention (SPEC §7). No torch headers: launchers take raw pointers (see
// block_draft.h). The arithmetic mirrors csrc/cpu/block_draft.cpp.
//
// block_attention is a decode-style split-KV attention. One CTA owns one (request, kv head,
// slice of up to 32 query rows, key split). Its query rows are the γ·(Hq/Hkv) queries that
// share the kv head (row ρ = t·G + g is block position t, query head h·G + g), so every K/V
// tile it loads from HBM serves all of them. Keys of request r are numbered
// 0 .. len + γ - 1: key j < len is cache slot j, key len + t is block key t (non-causal: all
// of them are visible to every block query). The keys are cut into `splits` equal ranges
// (split-K); each CTA runs an online softmax in float32 (base 2, the scale folded in) over
// its range, and a combine kernel merges the per-split (max, sum, unnormalised output) when
// splits > 1. The number of splits depends on shapes only, and the key range of a split is
// computed on the device from cache_lens, so the launch never syncs with the host and can be
// captured in a CUDA graph.
//
// Three kernels serve it (DSPARK_BLOCK_ATTENTION_KERNEL, read once per process, docs/ops.md):
// - pipelined (default for aligned bf16/fp16): K/V tiles streamed by cp.async into two
//   shared-memory stages (the next tile is in flight while the current one is multiplied),
//   S = Q Kᵀ and O += P V with mma.sync m16n8k16 from ldmatrix fragments, S, P and O held in
//   registers (FlashAttention-2's layout): a few SASS instructions per element loaded;
// - legacy (the previous tensor-core kernel): WMMA with S and O round-tripping through shared
//   memory, plain loads; kept as the reference and fallback;
// - simt: all float32 on CUDA cores; serves float32 and unaligned inputs in every mode.
#include <mma.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>

#include "cuda/block_draft.h"
#include "cuda/common.cuh"
#include "cuda/tensor_core.cuh"

namespace dspark::cuda {
namespace {

constexpr int kAttnThreads = 128;
constexpr int kAttnWarps = kAttnThreads / kWarpSize;
constexpr int kTile = 32;                            // SIMT keys per tile: one per lane for the scores
constexpr int kMaxRows = 32;                         // query rows per CTA
constexpr int kRowsPerWarp = kMaxRows / kAttnWarps;  // SIMT rows ρ = warp + i·kAttnWarps
constexpr float kLog2e = 1.4426950408889634f;

// Loads N consecutive elements at p as float: one 16-byte load when `aligned`.
template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* p, float* dst, bool aligned) {
  static_assert(N * sizeof(T) == 16, "one 16-byte vector");
  if (aligned) {
    vec_t<T, N> vals;
    vals.load(p);
#pragma unroll
    for (int e = 0; e < N; ++e) dst[e] = to_float(vals[e]);
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) dst[e] = to_float(p[e]);
  }
}

// The work of one attention CTA (every kernel): request r, KV head h, local query rows
// [0, nrows) = head rows [row0, row0 + nrows) of its γ·G rows, and keys [key_begin, key_end)
// of the request's len + γ keys (split `split`, tile-aligned so splits never share a tile).
struct AttnTile {
  int64_t r, h, group, row0, len, key_begin, key_end;
  int split, nrows;

  // Row of q / out (in rows of Dh elements) holding local query row rho.
  __device__ int64_t q_row(const BlockAttentionArgs& a, int rho) const {
    const int64_t rg = row0 + rho;
    return (r * a.gamma + rg / group) * a.q_heads + h * group + rg % group;
  }

  // The K and V rows of key j (< len + γ): cache slot j, or block key j - len.
  template <typename T, int DH>
  __device__ __forceinline__ void kv_rows(const BlockAttentionArgs& a, int64_t j, const T*& kp, const T*& vp) const {
    if (j < len) {
      kp = static_cast<const T*>(a.k_cache) + r * a.k_stride_r + j * a.k_stride_l + h * a.k_stride_h;
      vp = static_cast<const T*>(a.v_cache) + r * a.v_stride_r + j * a.v_stride_l + h * a.v_stride_h;
    } else {
      const int64_t off = ((r * a.gamma + (j - len)) * a.kv_heads + h) * DH;
      kp = static_cast<const T*>(a.k_block) + off;
      vp = static_cast<const T*>(a.v_block) + off;
    }
  }
};

__device__ AttnTile attention_tile(const BlockAttentionArgs& a, int row_chunks) {
  AttnTile t;
  int64_t bid = blockIdx.x;
  t.split = static_cast<int>(bid % a.splits);
  bid /= a.splits;
  const int chunk = static_cast<int>(bid % row_chunks);
  bid /= row_chunks;
  t.h = bid % a.kv_heads;
  t.r = bid / a.kv_heads;
  t.group = a.q_heads / a.kv_heads;
  t.row0 = static_cast<int64_t>(chunk) * kMaxRows;
  const int64_t rows_left = a.gamma * t.group - t.row0;
  t.nrows = rows_left < kMaxRows ? static_cast<int>(rows_left) : kMaxRows;
  int64_t len = a.cache_lens[t.r];
  t.len = len < 0 ? 0 : (len > a.max_len ? a.max_len : len);  // clamp, never a host check
  const int64_t keys = t.len + a.gamma;
  int64_t per = (keys + a.splits - 1) / a.splits;
  per = (per + kTile - 1) / kTile * kTile;
  t.key_begin = t.split * per;
  t.key_end = t.key_begin + per < keys ? t.key_begin + per : keys;
  return t;
}

// Writes one finished query row's dims `col`, `col + 1`: normalised into out when splits == 1
// (l > 0: every split-free row sees γ >= 1 keys), else unnormalised into the split's partial
// slot (the combine kernel merges them); lane `stats_lane` also writes the slot's (m, l).
template <typename T, int DH>
__device__ __forceinline__ void write_row_pair(const BlockAttentionArgs& a, int64_t row, int split, int col, float o0,
                                               float o1, float m, float l, bool stats_lane) {
  if (a.splits == 1) {
    const float inv = 1.0f / l;
    T* out = static_cast<T*>(a.out) + row * DH + col;
    out[0] = from_float<T>(o0 * inv);
    out[1] = from_float<T>(o1 * inv);
  } else {
    const int64_t slot = row * a.splits + split;
    *reinterpret_cast<float2*>(a.partial_o + slot * DH + col) = make_float2(o0, o1);
    if (stats_lane) *reinterpret_cast<float2*>(a.partial_ml + slot * 2) = make_float2(m, l);
  }
}

template <int DH>
constexpr size_t attention_smem_bytes() {
  // q_s [kMaxRows][DH] + k_s [kTile][DH + 4] + v_s [kTile][DH], float32.
  return sizeof(float) * (static_cast<size_t>(kMaxRows) * DH + kTile * (DH + 4) + kTile * DH);
}

// ---------------------------------------------------------------------------------------
// SIMT kernel: float32 everywhere; serves float32 and unaligned inputs.
template <typename T, int DH>
__global__ void __launch_bounds__(kAttnThreads)
    block_attention_kernel(const BlockAttentionArgs a, const int row_chunks, const bool aligned) {
  static_assert(DH % kWarpSize == 0 && DH % 8 == 0, "head dim");
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kVecPerRow = DH / kVec;
  constexpr int kKStride = DH + 4;  // float4-aligned rows; conflict-free float4 reads by lane
  constexpr int kPerLane = DH / kWarpSize;
  extern __shared__ float4 smem_raw[];
  float* q_s = reinterpret_cast<float*>(smem_raw);
  float* k_s = q_s + kMaxRows * DH;
  float* v_s = k_s + kTile * kKStride;

  const AttnTile tile = attention_tile(a, row_chunks);
  const int nrows = tile.nrows;
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;

  const T* q = static_cast<const T*>(a.q);
  const float qscale = a.scale * kLog2e;
  for (int e = tid; e < kMaxRows * DH; e += kAttnThreads) {
    const int rho = e / DH, d = e % DH;
    q_s[e] = rho < nrows ? to_float(q[tile.q_row(a, rho) * DH + d]) * qscale : 0.0f;
  }

  const int64_t kend = tile.key_end;
  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kPerLane];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) acc[i][c] = 0.0f;
  }
  __syncthreads();

  for (int64_t j0 = tile.key_begin; j0 < kend; j0 += kTile) {
    // K/V tile -> shared memory (float32), zeros past the split's end.
    for (int idx = tid; idx < kTile * kVecPerRow; idx += kAttnThreads) {
      const int jj = idx / kVecPerRow, dv = (idx % kVecPerRow) * kVec;
      const int64_t j = j0 + jj;
      float kv[kVec], vv[kVec];
      if (j < kend) {
        const T *kp, *vp;
        tile.kv_rows<T, DH>(a, j, kp, vp);
        load_vec<T, kVec>(kp + dv, kv, aligned);
        load_vec<T, kVec>(vp + dv, vv, aligned);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) kv[e] = vv[e] = 0.0f;
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        k_s[jj * kKStride + dv + e] = kv[e];
        v_s[jj * DH + dv + e] = vv[e];
      }
    }
    __syncthreads();

    // Scores: lane = key, each warp its rows (rows past nrows have q = 0 and are dropped).
    float s[kRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) s[i] = 0.0f;
#pragma unroll 4
    for (int d = 0; d < DH; d += 4) {
      const float4 kd = *reinterpret_cast<const float4*>(&k_s[lane * kKStride + d]);
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        const float4 qd = *reinterpret_cast<const float4*>(&q_s[(warp + i * kAttnWarps) * DH + d]);
        s[i] += qd.x * kd.x + qd.y * kd.y + qd.z * kd.z + qd.w * kd.w;
      }
    }
    const bool valid = j0 + lane < kend;  // lane 0 is always valid inside the loop
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const float sv = valid ? s[i] : -INFINITY;
      const float m_new = fmaxf(m[i], warp_max(sv));
      const float p = valid ? exp2f(sv - m_new) : 0.0f;
      const float corr = exp2f(m[i] - m_new);  // 0 while m[i] = -inf
      l[i] = l[i] * corr + warp_sum(p);
      m[i] = m_new;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) acc[i][c] *= corr;
      s[i] = p;
    }
    // Output: lane owns dims lane + 32c; p_j broadcast from lane j.
#pragma unroll 4
    for (int jj = 0; jj < kTile; ++jj) {
      float vv[kPerLane];
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) vv[c] = v_s[jj * DH + lane + c * kWarpSize];
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        const float pj = __shfl_sync(0xFFFFFFFFu, s[i], jj);
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) acc[i][c] += pj * vv[c];
      }
    }
    __syncthreads();  // the next tile overwrites k_s / v_s
  }

#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int rho = warp + i * kAttnWarps;
    if (rho >= nrows) continue;
    const int64_t row = tile.q_row(a, rho);
    if (a.splits == 1) {
      // keys >= γ >= 1, so l > 0.
      const float inv = 1.0f / l[i];
      T* out = static_cast<T*>(a.out) + row * DH;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) out[lane + c * kWarpSize] = from_float<T>(acc[i][c] * inv);
    } else {
      const int64_t slot = row * a.splits + tile.split;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) a.partial_o[slot * DH + lane + c * kWarpSize] = acc[i][c];
      if (lane == 0) {
        a.partial_ml[slot * 2] = m[i];
        a.partial_ml[slot * 2 + 1] = l[i];
      }
    }
  }
}

// One warp per output row: merges the splits' (max, sum, unnormalised output).
template <typename T>
__global__ void block_attention_combine_kernel(const float* __restrict__ partial_o,
                                               const float* __restrict__ partial_ml, T* __restrict__ out, int64_t rows,
                                               int splits, int64_t head_dim) {
  const int warps_per_block = blockDim.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / kWarpSize; row < rows;
       row += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    const float* ml = partial_ml + row * splits * 2;
    float mx = -INFINITY;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, ml[2 * s]);
    float den = 0.0f;
    for (int s = 0; s < splits; ++s) den += ml[2 * s] == -INFINITY ? 0.0f : exp2f(ml[2 * s] - mx) * ml[2 * s + 1];
    const float inv = 1.0f / den;
    for (int64_t d = lane; d < head_dim; d += kWarpSize) {
      float num = 0.0f;
      for (int s = 0; s < splits; ++s) {
        if (ml[2 * s] == -INFINITY) continue;
        num += exp2f(ml[2 * s] - mx) * partial_o[(row * splits + s) * head_dim + d];
      }
      out[row * head_dim + d] = from_float<T>(num * inv);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Legacy tensor-core kernel for bf16 / fp16 inputs (sm_80+, WMMA 16x16x16, float32
// accumulators): the same CTA decomposition, key ranges and online softmax as the SIMT
// kernel, with
//   S = Q K^T on tensor cores (inputs as stored, float32 accumulation) -> shared memory,
//   softmax statistics in float32 on CUDA cores, P = exp2(S - m) rounded to the input dtype
//   (as FlashAttention does), O = O * corr + P V on tensor cores, O kept in shared memory.
// A tile holds 64 keys; warp w owns S tiles (w / 2, 2 (w % 2) + {0, 1}) and a quarter of
// the O tiles. DSPARK_BLOCK_ATTENTION_KERNEL=legacy selects it.
constexpr int kMmaKeys = 64;

template <int DH>
struct MmaLayout {
  static constexpr int kLdQ = DH + 8;         // elements (16-bit); rows stay 32-byte aligned
  static constexpr int kLdS = kMmaKeys + 4;   // floats
  static constexpr int kLdP = kMmaKeys + 8;   // elements (16-bit)
  static constexpr int kLdO = DH + 4;         // floats
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = kQ + sizeof(uint16_t) * kMaxRows * kLdQ;
  static constexpr size_t kV = kK + sizeof(uint16_t) * kMmaKeys * kLdQ;
  static constexpr size_t kS = kV + sizeof(uint16_t) * kMmaKeys * kLdQ;
  static constexpr size_t kP = kS + sizeof(float) * kMaxRows * kLdS;
  static constexpr size_t kO = kP + sizeof(uint16_t) * kMaxRows * kLdP;
  static constexpr size_t kStats = kO + sizeof(float) * kMaxRows * kLdO;  // m, l [kMaxRows]
  static constexpr size_t kBytes = kStats + sizeof(float) * 2 * kMaxRows;
  static_assert(kK % 32 == 0 && kV % 32 == 0 && kS % 32 == 0 && kP % 32 == 0 && kO % 32 == 0, "wmma alignment");
};

// c += A B over KSTEPS k slices of 16: A row-major at `a` (slice k at a + 16 k), B in layout
// BLayout at `b` (slice k at b + k * b_step).
template <typename T, typename BLayout, int KSTEPS>
__device__ __forceinline__ void wmma_accumulate(nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>& c,
                                                const T* a, unsigned lda, const T* b, unsigned ldb, int b_step) {
  using namespace nvcuda;
#pragma unroll
  for (int k = 0; k < KSTEPS; ++k) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> fb;
    wmma::load_matrix_sync(fa, a + k * 16, lda);
    wmma::load_matrix_sync(fb, b + k * b_step, ldb);
    wmma::mma_sync(c, fa, fb, c);
  }
}

template <typename T, int DH>
__global__ void __launch_bounds__(kAttnThreads)
    block_attention_mma_kernel(const BlockAttentionArgs a, const int row_chunks) {
  using namespace nvcuda;
  using L = MmaLayout<DH>;
  constexpr int kVecPerRow = DH / 8;                          // 16-byte vectors per key row
  constexpr int kLoads = kMmaKeys * kVecPerRow / kAttnThreads;  // per thread, per matrix
  constexpr int kOTiles = 2 * (DH / 16);                       // 16x16 tiles of O [32, DH]
  constexpr int kOTilesPerWarp = kOTiles / kAttnWarps;
  static_assert(kLoads * kAttnThreads == kMmaKeys * kVecPerRow && kOTilesPerWarp * kAttnWarps == kOTiles, "tiling");
  extern __shared__ __align__(128) unsigned char mma_smem[];
  T* q_s = reinterpret_cast<T*>(mma_smem + L::kQ);
  T* k_s = reinterpret_cast<T*>(mma_smem + L::kK);
  T* v_s = reinterpret_cast<T*>(mma_smem + L::kV);
  float* s_s = reinterpret_cast<float*>(mma_smem + L::kS);
  T* p_s = reinterpret_cast<T*>(mma_smem + L::kP);
  float* o_s = reinterpret_cast<float*>(mma_smem + L::kO);
  float* m_s = reinterpret_cast<float*>(mma_smem + L::kStats);
  float* l_s = m_s + kMaxRows;

  const AttnTile tile = attention_tile(a, row_chunks);
  const int nrows = tile.nrows;
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;

  const T* q = static_cast<const T*>(a.q);
  for (int e = tid; e < kMaxRows * DH; e += kAttnThreads) {
    const int rho = e / DH, d = e % DH;
    q_s[rho * L::kLdQ + d] = rho < nrows ? q[tile.q_row(a, rho) * DH + d] : from_float<T>(0.0f);
  }
  for (int e = tid; e < kMaxRows * DH; e += kAttnThreads) o_s[(e / DH) * L::kLdO + e % DH] = 0.0f;
  if (tid < kMaxRows) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.0f;
  }

  const int64_t kend = tile.key_end;
  const float qscale = a.scale * kLog2e;
  __syncthreads();

  for (int64_t j0 = tile.key_begin; j0 < kend; j0 += kMmaKeys) {
    // K/V tile -> shared memory as stored (16-byte loads issued before the stores).
    uint4 kr[kLoads], vr[kLoads];
#pragma unroll
    for (int it = 0; it < kLoads; ++it) {
      const int idx = tid + it * kAttnThreads;
      const int jj = idx / kVecPerRow, dv = (idx % kVecPerRow) * 8;
      const int64_t j = j0 + jj;
      kr[it] = vr[it] = make_uint4(0u, 0u, 0u, 0u);  // zero V past the end: 0 * garbage could be NaN
      if (j < kend) {
        const T *kp, *vp;
        tile.kv_rows<T, DH>(a, j, kp, vp);
        kr[it] = __ldg(reinterpret_cast<const uint4*>(kp + dv));
        vr[it] = __ldg(reinterpret_cast<const uint4*>(vp + dv));
      }
    }
#pragma unroll
    for (int it = 0; it < kLoads; ++it) {
      const int idx = tid + it * kAttnThreads;
      const int jj = idx / kVecPerRow, dv = (idx % kVecPerRow) * 8;
      *reinterpret_cast<uint4*>(&k_s[jj * L::kLdQ + dv]) = kr[it];
      *reinterpret_cast<uint4*>(&v_s[jj * L::kLdQ + dv]) = vr[it];
    }
    __syncthreads();

    // S = Q K^T: warp w -> row tile w / 2, key tiles 2 (w % 2) and 2 (w % 2) + 1.
    {
      const int mt = warp / 2;
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const int nt = 2 * (warp % 2) + t;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
        wmma::fill_fragment(c, 0.0f);
        wmma_accumulate<T, wmma::col_major, DH / 16>(c, q_s + mt * 16 * L::kLdQ, L::kLdQ, k_s + nt * 16 * L::kLdQ,
                                                     L::kLdQ, 16);
        wmma::store_matrix_sync(s_s + mt * 16 * L::kLdS + nt * 16, c, L::kLdS, wmma::mem_row_major);
      }
    }
    __syncthreads();

    // Online softmax, warp w on rows 8w .. 8w+7, lane on keys lane and lane + 32; the warp
    // also rescales its rows of O.
    const bool valid0 = j0 + lane < kend, valid1 = j0 + lane + 32 < kend;
    for (int i = 0; i < kMaxRows / kAttnWarps; ++i) {
      const int row = warp * (kMaxRows / kAttnWarps) + i;
      const float s0 = valid0 ? s_s[row * L::kLdS + lane] * qscale : -INFINITY;
      const float s1 = valid1 ? s_s[row * L::kLdS + lane + 32] * qscale : -INFINITY;
      const float m_old = m_s[row];
      const float m_new = fmaxf(m_old, warp_max(fmaxf(s0, s1)));  // finite: key j0 is valid
      const T p0 = from_float<T>(valid0 ? exp2f(s0 - m_new) : 0.0f);
      const T p1 = from_float<T>(valid1 ? exp2f(s1 - m_new) : 0.0f);
      p_s[row * L::kLdP + lane] = p0;
      p_s[row * L::kLdP + lane + 32] = p1;
      const float corr = exp2f(m_old - m_new);  // 0 on the first tile
      const float psum = warp_sum(to_float(p0) + to_float(p1));  // the rounded P that multiplies V
      for (int d = lane; d < DH; d += kWarpSize) o_s[row * L::kLdO + d] *= corr;
      if (lane == 0) {
        m_s[row] = m_new;
        l_s[row] = l_s[row] * corr + psum;
      }
    }
    __syncthreads();

    // O += P V: warp w owns O tiles w * kOTilesPerWarp .. (row tile = t / (DH/16)).
#pragma unroll
    for (int t = 0; t < kOTilesPerWarp; ++t) {
      const int ot = warp * kOTilesPerWarp + t;
      const int mt = ot / (DH / 16), nt = ot % (DH / 16);
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      wmma::load_matrix_sync(c, o_s + mt * 16 * L::kLdO + nt * 16, L::kLdO, wmma::mem_row_major);
      wmma_accumulate<T, wmma::row_major, kMmaKeys / 16>(c, p_s + mt * 16 * L::kLdP, L::kLdP, v_s + nt * 16, L::kLdQ,
                                                         16 * L::kLdQ);
      wmma::store_matrix_sync(o_s + mt * 16 * L::kLdO + nt * 16, c, L::kLdO, wmma::mem_row_major);
    }
    __syncthreads();  // the next tile overwrites k_s, v_s, s_s, p_s
  }

  // Write out: rows < nrows, each warp its 8 rows, lanes on column pairs.
  for (int i = 0; i < kMaxRows / kAttnWarps; ++i) {
    const int rho = warp * (kMaxRows / kAttnWarps) + i;
    if (rho >= nrows) continue;
    const int64_t row = tile.q_row(a, rho);
    for (int col = 2 * lane; col < DH; col += 2 * kWarpSize)
      write_row_pair<T, DH>(a, row, tile.split, col, o_s[rho * L::kLdO + col], o_s[rho * L::kLdO + col + 1], m_s[rho],
                            l_s[rho], lane == 0);
  }
}

// ---------------------------------------------------------------------------------------
// Pipelined tensor-core kernel for aligned bf16 / fp16 inputs (the default).
//
// The CTA's key range is walked in tiles of kKeys keys. Warp w computes rows 16 (w % 2) ..
// + 15 of the CTA's 32 against keys kKeys/2 · (w / 2) .. of each tile, with its own running
// (m, l, O) in registers; the two warps of a row block merge their (m, l, O) once at the end
// through shared memory. Per tile and warp: S [16 x kKeys/2] = Q Kᵀ by mma (Q fragments kept
// in registers for Dh <= 128, else re-read from shared memory), the online softmax on the S
// accumulators (row statistics shared by the 4 lanes of a quad), P rounded to T (as
// FlashAttention does) and reused as the A fragment of O += P V without leaving registers.
// K/V tiles arrive by cp.async (16 bytes, zero-filled past the split's end) into one of two
// shared-memory stages while the other is consumed. Rows are padded by 16 bytes, so the 8 row
// addresses of every ldmatrix hit 8 different bank groups.
template <int DH>
struct PipeLayout {
  static constexpr int kKeys = DH == 256 ? 32 : 64;  // keys per tile (two stages fit twice per SM)
  static constexpr int kWarpKeys = kKeys / 2;         // keys per warp per tile
  static constexpr int kLd = DH + 8;                  // shared row stride in elements (16-bit)
  static constexpr bool kQInRegs = DH <= 128;         // else Q fragments are re-read per tile
  static constexpr int kChunks = DH / 8;              // 16-byte chunks per row
  static constexpr int kRowsPerPass = kAttnThreads / kChunks;
  static constexpr int kLoads = kKeys / kRowsPerPass;  // cp.async per thread per tile and matrix
  static constexpr int kMatBytes = kKeys * kLd * 2;
  static constexpr int kStageBytes = 2 * kMatBytes;  // K then V
  // Q [32][kLd]: its own region, or (Q in registers) staged in stage 1 before the first tile.
  static constexpr int kQOffset = kQInRegs ? kStageBytes : 2 * kStageBytes;
  static constexpr int kQBytes = kMaxRows * kLd * 2;
  static constexpr size_t kBytes = kQInRegs ? 2 * kStageBytes : 2 * kStageBytes + kQBytes;
  // The merge scratch (float, per row block and lane: O fragments, m[2], l[2]) reuses stage 0.
  static constexpr int kMergeFloats = DH / 2 + 4;
  // CTAs per SM the registers must allow: 4 at Dh = 64 (128 registers); 2 above (at Dh = 128 a
  // cap of 168 for 3 spilled; two CTAs keep 2 x 32 KB of K/V in flight per SM, enough to
  // cover HBM latency at 4.8 TB/s / 132 SMs).
  static constexpr int kMinBlocks = DH == 64 ? 4 : 2;
  static_assert(kQBytes <= kStageBytes && kRowsPerPass * kChunks == kAttnThreads && kLoads * kRowsPerPass == kKeys,
                "tiling");
  static_assert(2 * kMergeFloats * kWarpSize * 4 <= 2 * kStageBytes, "merge scratch fits the stages");
};

template <typename T, int DH>
__global__ void __launch_bounds__(kAttnThreads, PipeLayout<DH>::kMinBlocks)
    block_attention_pipelined_kernel(const BlockAttentionArgs a, const int row_chunks) {
  using L = PipeLayout<DH>;
  constexpr int kNT = L::kWarpKeys / 8;  // n8 tiles of S per warp
  constexpr int kQK = DH / 16;           // k steps of Q Kᵀ
  constexpr int kDT = DH / 8;            // n8 tiles of O
  extern __shared__ __align__(128) unsigned char pipe_smem[];
  const uint32_t smem = shared_address(pipe_smem);

  const AttnTile tile = attention_tile(a, row_chunks);
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int mt = warp & 1, kh = warp >> 1;  // row block, key half
  const int64_t len = tile.len, kend = tile.key_end;

  // This thread's 16-byte chunk of each K/V row it copies: chunk `chunk` of tile rows crow + i·kRowsPerPass.
  const int chunk = tid % L::kChunks, crow = tid / L::kChunks;
  const uint32_t copy_off = static_cast<uint32_t>((crow * L::kLd + chunk * 8) * 2);
  // Any tile: key by key (cache or block row, zero-fill past the split's end).
  auto issue_tile = [&](int64_t j0, int stage) {
    const uint32_t dst = smem + stage * L::kStageBytes + copy_off;
#pragma unroll
    for (int i = 0; i < L::kLoads; ++i) {
      const int64_t j = j0 + crow + i * L::kRowsPerPass;
      const T* kp = static_cast<const T*>(a.k_block);  // mapped even when nothing is read
      const T* vp = static_cast<const T*>(a.v_block);
      const bool valid = j < kend;
      if (valid) tile.kv_rows<T, DH>(a, j, kp, vp);
      cp_async_16(dst + i * L::kRowsPerPass * L::kLd * 2, kp + chunk * 8, valid);
      cp_async_16(dst + L::kMatBytes + i * L::kRowsPerPass * L::kLd * 2, vp + chunk * 8, valid);
    }
  };
  // A tile wholly inside the cache (the hot loop): strided rows from one base, no selects.
  const T* k_base = static_cast<const T*>(a.k_cache) + tile.r * a.k_stride_r + tile.h * a.k_stride_h +
                    crow * a.k_stride_l + chunk * 8;
  const T* v_base = static_cast<const T*>(a.v_cache) + tile.r * a.v_stride_r + tile.h * a.v_stride_h +
                    crow * a.v_stride_l + chunk * 8;
  const int64_t k_pass = L::kRowsPerPass * a.k_stride_l, v_pass = L::kRowsPerPass * a.v_stride_l;
  auto issue_cache_tile = [&](int64_t j0, int stage) {
    const uint32_t dst = smem + stage * L::kStageBytes + copy_off;
    const T* kp = k_base + j0 * a.k_stride_l;
    const T* vp = v_base + j0 * a.v_stride_l;
    // Pointers stepped pass by pass (not kp + i * k_pass: the compiler would keep all kLoads
    // offsets live across the loop, 32 registers at Dh = 128).
#pragma unroll
    for (int i = 0; i < L::kLoads; ++i) {
      cp_async_16(dst + i * L::kRowsPerPass * L::kLd * 2, kp, true);
      cp_async_16(dst + L::kMatBytes + i * L::kRowsPerPass * L::kLd * 2, vp, true);
      kp += k_pass;
      vp += v_pass;
    }
  };

  // The first tile is in flight while Q is staged (in stage 1, or its own region).
  issue_tile(tile.key_begin, 0);
  cp_async_commit();
  {
    T* q_s = reinterpret_cast<T*>(pipe_smem + L::kQOffset);
    const T* q = static_cast<const T*>(a.q);
    for (int rho = warp; rho < kMaxRows; rho += kAttnWarps) {
      const T* src = rho < tile.nrows ? q + tile.q_row(a, rho) * DH : nullptr;
      for (int d = lane; d < DH; d += kWarpSize) q_s[rho * L::kLd + d] = src ? src[d] : from_float<T>(0.0f);
    }
  }
  __syncthreads();

  // ldmatrix row addresses of this lane (PTX fragment layouts, see tensor_core.cuh):
  // Q (A, 16x16 at k step s): rows lane % 16, columns 8 (lane / 16) + 16 s.
  const uint32_t q_addr = smem + L::kQOffset + ((mt * 16 + (lane & 15)) * L::kLd + (lane >> 4) * 8) * 2;
  // K (B = Kᵀ, two n8 tiles of keys n, n+8 at k step s): key n + lane % 8 + 8 (lane / 16),
  // dims 16 s + 8 ((lane / 8) % 2): registers 0, 1 -> tile n, 2, 3 -> tile n + 8.
  const uint32_t k_addr = ((kh * L::kWarpKeys + (lane & 7) + ((lane >> 4) << 3)) * L::kLd + ((lane >> 3) & 1) * 8) * 2;
  // V (B, transposed load; keys 16 s .., dims n, n+8): key 16 s + lane % 8 + 8 ((lane / 8) % 2),
  // dims n + 8 (lane / 16): registers 0, 1 -> dim tile n, 2, 3 -> dim tile n + 8.
  const uint32_t v_addr = L::kMatBytes +
                          ((kh * L::kWarpKeys + (lane & 7) + ((lane >> 3) & 1) * 8) * L::kLd + (lane >> 4) * 8) * 2;

  uint32_t qf[L::kQInRegs ? kQK : 1][4];
  if constexpr (L::kQInRegs) {
#pragma unroll
    for (int s = 0; s < kQK; ++s) ldmatrix_x4<false>(q_addr + s * 32, qf[s]);
    __syncthreads();  // stage 1 (holding Q) is overwritten by the second tile
  }

  // Running state of this lane's two rows (quad row lane / 4 and lane / 4 + 8): max m (base 2,
  // scaled), this lane's share of the sum l (reduced over the quad at the end), O fragments.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[kDT][4];
#pragma unroll
  for (int t = 0; t < kDT; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
  const float qscale = a.scale * kLog2e;

  // One tile (already in shared memory stage `stage`, keys j0 ..). MASK: keys may reach kend.
  auto compute = [&](auto mask, int stage, int64_t j0) {
    const uint32_t kv = smem + stage * L::kStageBytes;
    float s[kNT][4];
#pragma unroll
    for (int t = 0; t < kNT; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kQK; ++ks) {
      uint32_t qa[4];
      if constexpr (L::kQInRegs) {
#pragma unroll
        for (int e = 0; e < 4; ++e) qa[e] = qf[ks][e];
      } else {
        ldmatrix_x4<false>(q_addr + ks * 32, qa);
      }
      mma_tile_pairs<T, false>(s, qa, kv + k_addr + ks * 32, 16 * L::kLd * 2);  // 16 keys per pair
    }
    // s[t][e]: row lane / 4 (+ 8 for e >= 2), key kWarpKeys kh + 8 t + 2 (lane % 4) + e % 2.
    float mx[2] = {-INFINITY, -INFINITY};
    const int64_t keys_left = kend - j0 - kh * L::kWarpKeys;  // keys of this warp below kend
#pragma unroll
    for (int t = 0; t < kNT; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = s[t][e] * qscale;
        if constexpr (decltype(mask)::value) {
          if (8 * t + 2 * (lane & 3) + (e & 1) >= keys_left) v = -INFINITY;
        }
        s[t][e] = v;
        mx[e >> 1] = fmaxf(mx[e >> 1], v);
      }
    }
    float m_use[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xFFFFFFFFu, mx[i], 1));
      mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xFFFFFFFFu, mx[i], 2));
      const float m_new = fmaxf(m[i], mx[i]);
      m_use[i] = m_new == -INFINITY ? 0.0f : m_new;  // no key yet: exp2(-inf - 0) = 0, never NaN
      const float corr = exp2f(m[i] - m_use[i]);     // 0 while m = -inf
      m[i] = m_new;
      l[i] *= corr;
#pragma unroll
      for (int t = 0; t < kDT; ++t) {
        o[t][2 * i] *= corr;
        o[t][2 * i + 1] *= corr;
      }
    }
    // P rounded to T, packed as the A fragments of P V: p[t][0] row lane / 4, p[t][1] row + 8,
    // keys 8 t + 2 (lane % 4) + {0, 1}. l sums the rounded values (those that multiply V).
    uint32_t p[kNT][2];
#pragma unroll
    for (int t = 0; t < kNT; ++t) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        p[t][i] = pack2<T>(exp2f(s[t][2 * i] - m_use[i]), exp2f(s[t][2 * i + 1] - m_use[i]));
        const float2 r = unpack2<T>(p[t][i]);
        l[i] += r.x + r.y;
      }
    }
#pragma unroll
    for (int ks = 0; ks < L::kWarpKeys / 16; ++ks) {
      const uint32_t pa[4] = {p[2 * ks][0], p[2 * ks][1], p[2 * ks + 1][0], p[2 * ks + 1][1]};
      mma_tile_pairs<T, true>(o, pa, kv + v_addr + ks * 16 * L::kLd * 2, 32);  // 16 dims per pair
    }
  };

  // Tiles whose successor lies wholly in the cache: the successor is copied by the strided
  // path while this one is multiplied; no key of this tile is masked (j0 + 2 kKeys <= kend).
  const int64_t cache_end = len < kend ? len : kend;
  int stage = 0;
  int64_t j0 = tile.key_begin;
  for (; j0 + 2 * L::kKeys <= cache_end; j0 += L::kKeys) {
    issue_cache_tile(j0 + L::kKeys, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    compute(std::false_type{}, stage, j0);
    __syncthreads();  // every warp is done with `stage` before it is refilled
    stage ^= 1;
  }
  // The rest: tiles that reach block keys or the split's end.
  for (; j0 < kend; j0 += L::kKeys) {
    if (j0 + L::kKeys < kend) issue_tile(j0 + L::kKeys, stage ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    compute(std::true_type{}, stage, j0);
    __syncthreads();
    stage ^= 1;
  }
  cp_async_wait<0>();  // an empty split issued its first tile but never waited for it
  __syncthreads();

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xFFFFFFFFu, l[i], 1);
    l[i] += __shfl_xor_sync(0xFFFFFFFFu, l[i], 2);
  }
  // Merge the two key halves of each row block: warp (mt, 1) hands its state to warp (mt, 0)
  // through stage 0, in fragment order (lane-major, so both sides touch consecutive words).
  float* merge = reinterpret_cast<float*>(pipe_smem) + mt * L::kMergeFloats * kWarpSize + lane;
  if (kh == 1) {
#pragma unroll
    for (int t = 0; t < kDT; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) merge[(4 * t + e) * kWarpSize] = o[t][e];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      merge[(4 * kDT + i) * kWarpSize] = m[i];
      merge[(4 * kDT + 2 + i) * kWarpSize] = l[i];
    }
  }
  __syncthreads();
  if (kh == 1) return;
  float c_self[2], c_other[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const float m_other = merge[(4 * kDT + i) * kWarpSize], l_other = merge[(4 * kDT + 2 + i) * kWarpSize];
    const float m_new = fmaxf(m[i], m_other);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;
    c_self[i] = exp2f(m[i] - m_use);
    c_other[i] = exp2f(m_other - m_use);
    l[i] = l[i] * c_self[i] + l_other * c_other[i];
    m[i] = m_new;
  }
#pragma unroll
  for (int t = 0; t < kDT; ++t)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[t][e] = o[t][e] * c_self[e >> 1] + merge[(4 * t + e) * kWarpSize] * c_other[e >> 1];

#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int rho = mt * 16 + (lane >> 2) + 8 * i;
    if (rho >= tile.nrows) continue;
    const int64_t row = tile.q_row(a, rho);
#pragma unroll
    for (int t = 0; t < kDT; ++t)
      write_row_pair<T, DH>(a, row, tile.split, 8 * t + 2 * (lane & 3), o[t][2 * i], o[t][2 * i + 1], m[i], l[i],
                            (lane & 3) == 0 && t == 0);
  }
}

// ---------------------------------------------------------------------------------------
// Kernel choice and launch configuration.

// DSPARK_BLOCK_ATTENTION_KERNEL: pipelined (default, also when unset or empty), legacy or
// simt. Read once per process (a function-local static: thread-safe, no getenv per call).
enum class KernelMode { kPipelined, kLegacy, kSimt };

KernelMode kernel_mode() {
  static const KernelMode mode = [] {
    const char* env = std::getenv("DSPARK_BLOCK_ATTENTION_KERNEL");
    if (env == nullptr || env[0] == '\0' || std::strcmp(env, "pipelined") == 0) return KernelMode::kPipelined;
    if (std::strcmp(env, "legacy") == 0) return KernelMode::kLegacy;
    if (std::strcmp(env, "simt") == 0) return KernelMode::kSimt;
    throw std::runtime_error(std::string("dspark::block_attention: DSPARK_BLOCK_ATTENTION_KERNEL must be "
                                         "pipelined, legacy or simt, got '") +
                             env + "'");
  }();
  return mode;
}

// The kernel that serves one call: tensor cores need aligned 16-bit inputs (16-byte rows).
enum class Variant { kSimt, kWmma, kPipelined };

Variant variant_for(DType dtype, bool aligned) {
  if (dtype == DType::kFloat32 || !aligned) return Variant::kSimt;
  switch (kernel_mode()) {
    case KernelMode::kLegacy:
      return Variant::kWmma;
    case KernelMode::kSimt:
      return Variant::kSimt;
    default:
      return Variant::kPipelined;
  }
}

// A kernel with its dynamic shared memory and the key tile its split sizes are planned for.
struct AttentionKernel {
  const void* fn;
  size_t smem;
  Variant variant;
};

// The launch configuration of one class of calls, (device, dtype, head_dim, variant): its
// kernel (with the shared-memory attribute set on that device), resident CTAs per SM and the
// device's SM count. attention_config computes it once per class.
struct AttentionConfig {
  AttentionKernel kernel;
  int resident_ctas;  // per SM, >= 1 (1 if the occupancy query fails)
  int sms;            // 108 if the query fails
};

template <typename T, int DH>
AttentionKernel attention_kernel(Variant v) {
  if constexpr (sizeof(T) == 2) {
    if (v == Variant::kPipelined)
      return {reinterpret_cast<const void*>(block_attention_pipelined_kernel<T, DH>), PipeLayout<DH>::kBytes, v};
    if (v == Variant::kWmma)
      return {reinterpret_cast<const void*>(block_attention_mma_kernel<T, DH>), MmaLayout<DH>::kBytes, v};
  }
  return {reinterpret_cast<const void*>(block_attention_kernel<T, DH>), attention_smem_bytes<DH>(), Variant::kSimt};
}

template <typename T, int DH>
cudaError_t make_attention_config(Variant v, int device, AttentionConfig* c) {
  c->kernel = attention_kernel<T, DH>(v);
  const AttentionKernel& k = c->kernel;
  const cudaError_t err = cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(k.smem));
  if (err != cudaSuccess) return err;
  c->resident_ctas = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&c->resident_ctas, k.fn, kAttnThreads, k.smem) != cudaSuccess ||
      c->resident_ctas < 1) {
    (void)cudaGetLastError();
    c->resident_ctas = 1;
  }
  c->sms = 0;
  if (cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || c->sms <= 0) {
    (void)cudaGetLastError();
    c->sms = 108;
  }
  return cudaSuccess;
}

int64_t row_chunks(const BlockAttentionArgs& a) {
  return (a.gamma * (a.q_heads / a.kv_heads) + kMaxRows - 1) / kMaxRows;
}

template <typename T, int DH>
cudaError_t run_block_attention(const BlockAttentionArgs& a, bool aligned, const AttentionKernel& k,
                                cudaStream_t stream) {
  const int64_t chunks = row_chunks(a);
  const int64_t blocks = a.requests * a.kv_heads * chunks * a.splits;
  if (blocks > 0x7FFFFFFF || a.splits < 1) return cudaErrorInvalidConfiguration;
  const auto grid = static_cast<unsigned>(blocks);
  if constexpr (sizeof(T) == 2) {
    if (k.variant == Variant::kPipelined)
      block_attention_pipelined_kernel<T, DH><<<grid, kAttnThreads, k.smem, stream>>>(a, static_cast<int>(chunks));
    if (k.variant == Variant::kWmma)
      block_attention_mma_kernel<T, DH><<<grid, kAttnThreads, k.smem, stream>>>(a, static_cast<int>(chunks));
  }
  if (k.variant == Variant::kSimt)
    block_attention_kernel<T, DH><<<grid, kAttnThreads, k.smem, stream>>>(a, static_cast<int>(chunks), aligned);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || a.splits == 1) return err;
  const int64_t rows = a.requests * a.gamma * a.q_heads;
  const int threads = 256;
  int64_t cblocks = (rows + threads / kWarpSize - 1) / (threads / kWarpSize);
  if (cblocks > (1 << 20)) cblocks = 1 << 20;
  block_attention_combine_kernel<T><<<static_cast<unsigned>(cblocks), threads, 0, stream>>>(
      a.partial_o, a.partial_ml, static_cast<T*>(a.out), rows, a.splits, DH);
  return cudaGetLastError();
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

bool inputs_aligned(const BlockAttentionArgs& a, DType dtype) {
  const int64_t elem = dtype == DType::kFloat32 ? 4 : 2;
  return aligned16(a.k_cache) && aligned16(a.v_cache) && aligned16(a.k_block) && aligned16(a.v_block) &&
         (a.k_stride_r * elem) % 16 == 0 && (a.k_stride_l * elem) % 16 == 0 && (a.k_stride_h * elem) % 16 == 0 &&
         (a.v_stride_r * elem) % 16 == 0 && (a.v_stride_l * elem) % 16 == 0 && (a.v_stride_h * elem) % 16 == 0;
}

// Calls f(T{}, std::integral_constant<int, DH>{}) for the call's dtype and head dim (64, 128, 256).
template <typename F>
cudaError_t dispatch_attention(DType dtype, int64_t head_dim, F&& f) {
  return DSPARK_DISPATCH_FLOAT(dtype, T, [&]() -> cudaError_t {
    switch (head_dim) {
      case 64:
        return f(T{}, std::integral_constant<int, 64>{});
      case 128:
        return f(T{}, std::integral_constant<int, 128>{});
      case 256:
        return f(T{}, std::integral_constant<int, 256>{});
      default:
        return cudaErrorInvalidValue;
    }
  });
}

// The configuration that serves `a` on `device`: computed on the first call of its class, then
// read from a cache (thread-safe, host only, no device sync).
cudaError_t attention_config(const BlockAttentionArgs& a, DType dtype, int device, AttentionConfig* c) {
  const Variant v = variant_for(dtype, inputs_aligned(a, dtype));
  const auto key = std::make_tuple(device, static_cast<int>(dtype), a.head_dim, static_cast<int>(v));
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int64_t, int>, AttentionConfig> configs;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = configs.find(key);
  if (it != configs.end()) {
    *c = it->second;
    return cudaSuccess;
  }
  const cudaError_t err = dispatch_attention(dtype, a.head_dim, [&](auto t, auto dh) {
    return make_attention_config<decltype(t), decltype(dh)::value>(v, device, c);
  });
  if (err == cudaSuccess) configs.emplace(key, *c);
  return err;
}

}  // namespace

bool block_attention_supports_head_dim(int64_t head_dim) {
  return head_dim == 64 || head_dim == 128 || head_dim == 256;
}

int block_attention_splits(const BlockAttentionArgs& a, DType dtype, int device) {
  if (a.requests <= 0 || a.gamma <= 0 || a.kv_heads <= 0 || a.q_heads <= 0) return 1;
  AttentionConfig c;
  if (attention_config(a, dtype, device, &c) != cudaSuccess) {
    (void)cudaGetLastError();
    return 1;  // the launch reports the error
  }
  const double slots = static_cast<double>(c.sms) * c.resident_ctas;
  const int64_t base = a.requests * a.kv_heads * row_chunks(a);
  // A split should keep at least 4 SIMT tiles (2 tensor-core tiles) of keys at full length.
  int64_t cap = (a.max_len + a.gamma + 4 * kTile - 1) / (4 * kTile);
  cap = cap > 64 ? 64 : (cap < 1 ? 1 : cap);
  // Time ~ (waves of CTAs) x (keys per CTA ~ 1/s), plus a small cost per split for the
  // partial outputs and the combine kernel; the smallest cost wins (ties: fewer splits).
  int best = 1;
  double best_cost = 0.0;
  for (int64_t s = 1; s <= cap; ++s) {
    const double waves = std::ceil(static_cast<double>(base * s) / slots);
    const double cost = waves / static_cast<double>(s) * (1.0 + 0.01 * static_cast<double>(s)) + (s > 1 ? 0.03 : 0.0);
    if (s == 1 || cost < best_cost) {
      best = static_cast<int>(s);
      best_cost = cost;
    }
  }
  return best;
}

cudaError_t launch_block_attention(const BlockAttentionArgs& a, DType dtype, cudaStream_t stream) {
  if (a.requests == 0 || a.gamma == 0 || a.q_heads == 0) return cudaSuccess;
  const bool aligned = inputs_aligned(a, dtype);
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  AttentionConfig c;
  err = attention_config(a, dtype, device, &c);
  if (err != cudaSuccess) return err;
  return dispatch_attention(dtype, a.head_dim, [&](auto t, auto dh) {
    return run_block_attention<decltype(t), decltype(dh)::value>(a, aligned, c.kernel, stream);
  });
}

}  // namespace dspark::cuda
