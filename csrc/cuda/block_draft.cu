// CUDA kernels of the block-draft ops (SPEC §7). No torch headers: launchers take raw
// pointers (see block_draft.h). The arithmetic mirrors csrc/cpu/block_draft.cpp.
//
// block_attention is a decode-style split-KV attention. One CTA owns one (request, kv head,
// slice of up to 32 query rows, key split). Its query rows are the γ·(Hq/Hkv) queries that
// share the kv head (row ρ = t·G + g is block position t, query head h·G + g), so every K/V
// tile it loads from HBM serves all of them. Keys of request r are numbered
// 0 .. len + γ - 1: key j < len is cache slot j, key len + t is block key t (non-causal: all
// of them are visible to every block query). The keys are cut into `splits` equal ranges
// (split-K); each CTA runs an online softmax in float32 (base 2, the scale folded into q)
// over its range, and a combine kernel merges the per-split (max, sum, unnormalised output)
// when splits > 1. The number of splits depends on shapes only, and the key range of a split
// is computed on the device from cache_lens, so the launch never syncs with the host and can
// be captured in a CUDA graph.
#include <mma.h>

#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

#include "cuda/block_draft.h"
#include "cuda/common.cuh"
#include "dspark/rope.h"

namespace dspark::cuda {
namespace {

constexpr int kAttnThreads = 128;
constexpr int kAttnWarps = kAttnThreads / kWarpSize;
constexpr int kTile = 32;                            // keys per tile: one per lane for the scores
constexpr int kMaxRows = 32;                         // query rows per CTA
constexpr int kRowsPerWarp = kMaxRows / kAttnWarps;  // rows ρ = warp + i·kAttnWarps
constexpr float kLog2e = 1.4426950408889634f;

template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<T>(x));
}

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

// The work of one attention CTA (both kernels): request r, KV head h, local query rows
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

template <int DH>
constexpr size_t attention_smem_bytes() {
  // q_s [kMaxRows][DH] + k_s [kTile][DH + 4] + v_s [kTile][DH], float32.
  return sizeof(float) * (static_cast<size_t>(kMaxRows) * DH + kTile * (DH + 4) + kTile * DH);
}

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
  const int64_t r = tile.r, h = tile.h;
  const int nrows = tile.nrows, split = tile.split, splits = a.splits;
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;

  auto q_row = [&](int rho) { return tile.q_row(a, rho); };

  const T* q = static_cast<const T*>(a.q);
  const float qscale = a.scale * kLog2e;
  for (int e = tid; e < kMaxRows * DH; e += kAttnThreads) {
    const int rho = e / DH, d = e % DH;
    q_s[e] = rho < nrows ? to_float(q[q_row(rho) * DH + d]) * qscale : 0.0f;
  }

  const int64_t len = tile.len, kbeg = tile.key_begin, kend = tile.key_end;

  const T* k_cache = static_cast<const T*>(a.k_cache);
  const T* v_cache = static_cast<const T*>(a.v_cache);
  const T* k_block = static_cast<const T*>(a.k_block);
  const T* v_block = static_cast<const T*>(a.v_block);

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kPerLane];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) acc[i][c] = 0.0f;
  }
  __syncthreads();

  for (int64_t j0 = kbeg; j0 < kend; j0 += kTile) {
    // K/V tile -> shared memory (float32), zeros past the split's end.
    for (int idx = tid; idx < kTile * kVecPerRow; idx += kAttnThreads) {
      const int jj = idx / kVecPerRow, dv = (idx % kVecPerRow) * kVec;
      const int64_t j = j0 + jj;
      float kv[kVec], vv[kVec];
      if (j < kend) {
        const T *kp, *vp;
        if (j < len) {
          kp = k_cache + r * a.k_stride_r + j * a.k_stride_l + h * a.k_stride_h;
          vp = v_cache + r * a.v_stride_r + j * a.v_stride_l + h * a.v_stride_h;
        } else {
          const int64_t off = ((r * a.gamma + (j - len)) * a.kv_heads + h) * DH;
          kp = k_block + off;
          vp = v_block + off;
        }
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
    const int64_t row = q_row(rho);
    if (splits == 1) {
      // keys >= γ >= 1, so l > 0.
      const float inv = 1.0f / l[i];
      T* out = static_cast<T*>(a.out) + row * DH;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) out[lane + c * kWarpSize] = from_float<T>(acc[i][c] * inv);
    } else {
      const int64_t slot = row * splits + split;
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
                                               const float* __restrict__ partial_ml, T* __restrict__ out,
                                               int64_t rows, int splits, int64_t head_dim) {
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

// The tensor-core kernel serves aligned 16-bit inputs unless DSPARK_BLOCK_ATTENTION_SIMT=1.
bool use_tensor_cores(bool aligned) {
  const char* env = std::getenv("DSPARK_BLOCK_ATTENTION_SIMT");
  return aligned && !(env != nullptr && env[0] == '1');
}

// ---------------------------------------------------------------------------------------
// Tensor-core variant for bf16 / fp16 inputs (sm_80+, WMMA 16x16x16, float32 accumulators):
// the same CTA decomposition, key ranges and online softmax as the kernel above, with
//   S = Q K^T on tensor cores (inputs as stored, float32 accumulation) -> shared memory,
//   softmax statistics in float32 on CUDA cores, P = exp2(S - m) rounded to the input dtype
//   (as FlashAttention does), O = O * corr + P V on tensor cores, O kept in shared memory.
// A tile holds 64 keys; warp w owns S tiles (w / 2, 2 (w % 2) + {0, 1}) and a quarter of
// the O tiles. Used for aligned bf16/fp16 inputs; DSPARK_BLOCK_ATTENTION_SIMT=1 forces the
// CUDA-core kernel above.
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
  const int64_t r = tile.r, h = tile.h;
  const int nrows = tile.nrows, split = tile.split, splits = a.splits;
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;

  auto q_row = [&](int rho) { return tile.q_row(a, rho); };

  const T* q = static_cast<const T*>(a.q);
  for (int e = tid; e < kMaxRows * DH; e += kAttnThreads) {
    const int rho = e / DH, d = e % DH;
    q_s[rho * L::kLdQ + d] = rho < nrows ? q[q_row(rho) * DH + d] : from_float<T>(0.0f);
  }
  for (int e = tid; e < kMaxRows * DH; e += kAttnThreads) o_s[(e / DH) * L::kLdO + e % DH] = 0.0f;
  if (tid < kMaxRows) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.0f;
  }

  const int64_t len = tile.len, kbeg = tile.key_begin, kend = tile.key_end;
  const T* k_cache = static_cast<const T*>(a.k_cache);
  const T* v_cache = static_cast<const T*>(a.v_cache);
  const T* k_block = static_cast<const T*>(a.k_block);
  const T* v_block = static_cast<const T*>(a.v_block);
  const float qscale = a.scale * kLog2e;
  __syncthreads();

  for (int64_t j0 = kbeg; j0 < kend; j0 += kMmaKeys) {
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
        if (j < len) {
          kp = k_cache + r * a.k_stride_r + j * a.k_stride_l + h * a.k_stride_h;
          vp = v_cache + r * a.v_stride_r + j * a.v_stride_l + h * a.v_stride_h;
        } else {
          const int64_t off = ((r * a.gamma + (j - len)) * a.kv_heads + h) * DH;
          kp = k_block + off;
          vp = v_block + off;
        }
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
#pragma unroll
        for (int k = 0; k < DH / 16; ++k) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qa;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kb;
          wmma::load_matrix_sync(qa, q_s + mt * 16 * L::kLdQ + k * 16, L::kLdQ);
          wmma::load_matrix_sync(kb, k_s + nt * 16 * L::kLdQ + k * 16, L::kLdQ);
          wmma::mma_sync(c, qa, kb, c);
        }
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
      const int tile = warp * kOTilesPerWarp + t;
      const int mt = tile / (DH / 16), nt = tile % (DH / 16);
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      wmma::load_matrix_sync(c, o_s + mt * 16 * L::kLdO + nt * 16, L::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int k = 0; k < kMmaKeys / 16; ++k) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vb;
        wmma::load_matrix_sync(pa, p_s + mt * 16 * L::kLdP + k * 16, L::kLdP);
        wmma::load_matrix_sync(vb, v_s + k * 16 * L::kLdQ + nt * 16, L::kLdQ);
        wmma::mma_sync(c, pa, vb, c);
      }
      wmma::store_matrix_sync(o_s + mt * 16 * L::kLdO + nt * 16, c, L::kLdO, wmma::mem_row_major);
    }
    __syncthreads();  // the next tile overwrites k_s, v_s, s_s, p_s
  }

  // Write out: rows < nrows, each warp its 8 rows, lanes across Dh.
  for (int i = 0; i < kMaxRows / kAttnWarps; ++i) {
    const int rho = warp * (kMaxRows / kAttnWarps) + i;
    if (rho >= nrows) continue;
    const int64_t row = q_row(rho);
    if (splits == 1) {
      const float inv = 1.0f / l_s[rho];
      T* out = static_cast<T*>(a.out) + row * DH;
      for (int d = lane; d < DH; d += kWarpSize) out[d] = from_float<T>(o_s[rho * L::kLdO + d] * inv);
    } else {
      const int64_t slot = row * splits + split;
      for (int d = lane; d < DH; d += kWarpSize) a.partial_o[slot * DH + d] = o_s[rho * L::kLdO + d];
      if (lane == 0) {
        a.partial_ml[slot * 2] = m_s[rho];
        a.partial_ml[slot * 2 + 1] = l_s[rho];
      }
    }
  }
}

// The kernel that serves (T, DH, tensor cores or not), with its dynamic shared memory.
struct AttentionKernel {
  const void* fn;
  size_t smem;
  bool mma;
};

// The launch configuration of one class of calls, (device, dtype, head_dim, tensor cores or
// not): its kernel (with the shared-memory attribute set on that device), resident CTAs per
// SM and the device's SM count. attention_config computes it once per class.
struct AttentionConfig {
  AttentionKernel kernel;
  int resident_ctas;  // per SM, >= 1 (1 if the occupancy query fails)
  int sms;            // 108 if the query fails
};

template <typename T, int DH>
cudaError_t make_attention_config(bool mma, int device, AttentionConfig* c) {
  AttentionKernel& k = c->kernel;
  k.mma = false;
  if constexpr (sizeof(T) == 2) {
    if (mma) {
      k.fn = reinterpret_cast<const void*>(block_attention_mma_kernel<T, DH>);
      k.smem = MmaLayout<DH>::kBytes;
      k.mma = true;
    }
  }
  if (!k.mma) {
    k.fn = reinterpret_cast<const void*>(block_attention_kernel<T, DH>);
    k.smem = attention_smem_bytes<DH>();
  }
  const cudaError_t err =
      cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(k.smem));
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
  if (k.mma) {
    if constexpr (sizeof(T) == 2)
      block_attention_mma_kernel<T, DH><<<static_cast<unsigned>(blocks), kAttnThreads, k.smem, stream>>>(
          a, static_cast<int>(chunks));
  } else {
    block_attention_kernel<T, DH><<<static_cast<unsigned>(blocks), kAttnThreads, k.smem, stream>>>(
        a, static_cast<int>(chunks), aligned);
  }
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

// ---------------------------------------------------------------------------------------
// rms_norm, qk_norm_rope, append_context_kv

template <typename T>
__global__ void rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ weight, T* __restrict__ out,
                                int64_t rows, int64_t dim, float eps) {
  __shared__ float scratch[kWarpSize];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + row * dim;
    float ss = 0.0f;
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      const float v = to_float(xr[d]);
      ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float rs = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x)
      out[row * dim + d] = from_float<T>(to_float(weight[d]) * round_to<T>(to_float(xr[d]) * rs));
  }
}

// y = RoPE(RMSNorm(x) * w) at `position` for one head row, by one warp (dspark/rope.h).
template <typename T>
__device__ __forceinline__ void warp_norm_rope(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                               int64_t dh, int64_t position, float eps, float theta, int lane) {
  float ss = 0.0f;
  for (int64_t d = lane; d < dh; d += kWarpSize) {
    const float v = to_float(x[d]);
    ss += v * v;
  }
  ss = warp_sum(ss);
  const float rs = 1.0f / sqrtf(ss / static_cast<float>(dh) + eps);
  const int64_t half = dh / 2;
  for (int64_t i = lane; i < half; i += kWarpSize) {
    const float a = round_to<T>(to_float(w[i]) * round_to<T>(to_float(x[i]) * rs));
    const float b = round_to<T>(to_float(w[i + half]) * round_to<T>(to_float(x[i + half]) * rs));
    const float angle = rope_angle(position, i, dh, theta);
    const float c = round_to<T>(cosf(angle)), s = round_to<T>(sinf(angle));
    y[i] = from_float<T>(round_to<T>(a * c) - round_to<T>(b * s));
    y[i + half] = from_float<T>(round_to<T>(b * c) + round_to<T>(a * s));
  }
}

template <typename T>
__global__ void qk_norm_rope_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ qw,
                                    const T* __restrict__ kw, const int64_t* __restrict__ positions,
                                    T* __restrict__ q_out, T* __restrict__ k_out, int64_t tokens, int64_t hq,
                                    int64_t hk, int64_t dh, float eps, float theta) {
  const int warps_per_block = blockDim.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t rows = tokens * (hq + hk);
  for (int64_t wi = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / kWarpSize; wi < rows;
       wi += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    const int64_t n = wi / (hq + hk), h = wi % (hq + hk);
    if (h < hq)
      warp_norm_rope(q + (n * hq + h) * dh, qw, q_out + (n * hq + h) * dh, dh, positions[n], eps, theta, lane);
    else
      warp_norm_rope(k + (n * hk + h - hq) * dh, kw, k_out + (n * hk + h - hq) * dh, dh, positions[n], eps, theta,
                     lane);
  }
}

template <typename T>
__global__ void append_context_kv_kernel(const AppendContextArgs a) {
  const int warps_per_block = blockDim.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int64_t rows = a.requests * a.chunk * a.kv_heads;
  T* k_cache = static_cast<T*>(a.k_cache);
  T* v_cache = static_cast<T*>(a.v_cache);
  const T* k_new = static_cast<const T*>(a.k_new);
  const T* v_new = static_cast<const T*>(a.v_new);
  const T* kw = static_cast<const T*>(a.k_norm_weight);
  for (int64_t wi = static_cast<int64_t>(blockIdx.x) * warps_per_block + threadIdx.x / kWarpSize; wi < rows;
       wi += static_cast<int64_t>(gridDim.x) * warps_per_block) {
    const int64_t r = wi / (a.chunk * a.kv_heads), rem = wi % (a.chunk * a.kv_heads);
    const int64_t i = rem / a.kv_heads, h = rem % a.kv_heads;
    const int64_t slot = a.start[r] + i;
    // Padding entries and slots outside the cache are skipped (uniform per warp).
    if (i >= a.num_new[r] || slot < 0 || slot >= a.max_len) continue;
    const int64_t src = ((r * a.chunk + i) * a.kv_heads + h) * a.head_dim;
    warp_norm_rope(k_new + src, kw, k_cache + r * a.k_stride_r + slot * a.k_stride_l + h * a.k_stride_h, a.head_dim,
                   slot, a.eps, a.theta, lane);
    T* vdst = v_cache + r * a.v_stride_r + slot * a.v_stride_l + h * a.v_stride_h;
    for (int64_t d = lane; d < a.head_dim; d += kWarpSize) vdst[d] = v_new[src + d];
  }
}

unsigned warp_grid(int64_t warps, int threads) {
  const int64_t per_block = threads / kWarpSize;
  int64_t blocks = (warps + per_block - 1) / per_block;
  if (blocks > (1 << 20)) blocks = 1 << 20;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}

}  // namespace

bool block_attention_supports_head_dim(int64_t head_dim) {
  return head_dim == 64 || head_dim == 128 || head_dim == 256;
}

namespace {

bool inputs_aligned(const BlockAttentionArgs& a, DType dtype) {
  const int64_t elem = dtype == DType::kFloat32 ? 4 : 2;
  return aligned16(a.k_cache) && aligned16(a.v_cache) && aligned16(a.k_block) && aligned16(a.v_block) &&
         (a.k_stride_r * elem) % 16 == 0 && (a.k_stride_l * elem) % 16 == 0 && (a.k_stride_h * elem) % 16 == 0 &&
         (a.v_stride_r * elem) % 16 == 0 && (a.v_stride_l * elem) % 16 == 0 && (a.v_stride_h * elem) % 16 == 0;
}

// The configuration that serves `a` on `device`: computed on the first call of its class, then
// read from a cache (thread-safe). DSPARK_BLOCK_ATTENTION_SIMT is still read per call, so the
// choice between the two kernels follows the environment as before.
cudaError_t attention_config(const BlockAttentionArgs& a, DType dtype, int device, AttentionConfig* c) {
  const bool mma = dtype != DType::kFloat32 && use_tensor_cores(inputs_aligned(a, dtype));
  const auto key = std::make_tuple(device, static_cast<int>(dtype), a.head_dim, mma);
  static std::mutex mutex;
  static std::map<std::tuple<int, int, int64_t, bool>, AttentionConfig> configs;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto it = configs.find(key);
  if (it != configs.end()) {
    *c = it->second;
    return cudaSuccess;
  }
  const cudaError_t err = DSPARK_DISPATCH_FLOAT(dtype, T, [&]() -> cudaError_t {
    switch (a.head_dim) {
      case 64:
        return make_attention_config<T, 64>(mma, device, c);
      case 128:
        return make_attention_config<T, 128>(mma, device, c);
      case 256:
        return make_attention_config<T, 256>(mma, device, c);
      default:
        return cudaErrorInvalidValue;
    }
  });
  if (err == cudaSuccess) configs.emplace(key, *c);
  return err;
}

}  // namespace

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
  return DSPARK_DISPATCH_FLOAT(dtype, T, [&]() -> cudaError_t {
    switch (a.head_dim) {
      case 64:
        return run_block_attention<T, 64>(a, aligned, c.kernel, stream);
      case 128:
        return run_block_attention<T, 128>(a, aligned, c.kernel, stream);
      case 256:
        return run_block_attention<T, 256>(a, aligned, c.kernel, stream);
      default:
        return cudaErrorInvalidValue;
    }
  });
}

cudaError_t launch_rms_norm(const void* x, const void* weight, void* out, int64_t rows, int64_t dim, float eps,
                            DType dtype, cudaStream_t stream) {
  if (rows == 0 || dim == 0) return cudaSuccess;
  const int threads = dim >= 1024 ? 256 : (dim >= 256 ? 128 : 64);
  const unsigned blocks = static_cast<unsigned>(rows < 65535 ? rows : 65535);
  return DSPARK_DISPATCH_FLOAT(dtype, T, [&]() -> cudaError_t {
    rms_norm_kernel<T><<<blocks, threads, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(weight),
                                                       static_cast<T*>(out), rows, dim, eps);
    return cudaGetLastError();
  });
}

cudaError_t launch_qk_norm_rope(const void* q, const void* k, const void* q_norm_weight, const void* k_norm_weight,
                                const int64_t* positions, void* q_out, void* k_out, int64_t tokens, int64_t q_heads,
                                int64_t kv_heads, int64_t head_dim, float eps, float theta, DType dtype,
                                cudaStream_t stream) {
  const int64_t rows = tokens * (q_heads + kv_heads);
  if (rows == 0 || head_dim == 0) return cudaSuccess;
  const int threads = 256;
  return DSPARK_DISPATCH_FLOAT(dtype, T, [&]() -> cudaError_t {
    qk_norm_rope_kernel<T><<<warp_grid(rows, threads), threads, 0, stream>>>(
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(q_norm_weight),
        static_cast<const T*>(k_norm_weight), positions, static_cast<T*>(q_out), static_cast<T*>(k_out), tokens,
        q_heads, kv_heads, head_dim, eps, theta);
    return cudaGetLastError();
  });
}

cudaError_t launch_append_context_kv(const AppendContextArgs& a, DType dtype, cudaStream_t stream) {
  const int64_t rows = a.requests * a.chunk * a.kv_heads;
  if (rows == 0 || a.head_dim == 0) return cudaSuccess;
  const int threads = 256;
  return DSPARK_DISPATCH_FLOAT(dtype, T, [&]() -> cudaError_t {
    append_context_kv_kernel<T><<<warp_grid(rows, threads), threads, 0, stream>>>(a);
    return cudaGetLastError();
  });
}

}  // namespace dspark::cuda
