// CUDA kernel of dspark::markov_draft (SPEC §3): the whole block of γ positions in ONE
// cooperative launch. The grid (all blocks co-resident, sized by occupancy) alternates two
// phases per position k, separated by grid-wide barriers:
//
//   A(k)  one block per request (request q -> block q mod grid): merge the per-block partial
//         statistics of position k-1 into x_{k-1} and log q_{k-1}(x_{k-1}) (written to the
//         outputs), gather e_k = w1[x_{k-1}], run the head (vanilla / gated / RNN) into the
//         [R, r] head-vector scratch, and the confidence c_k.
//   B(k)  every block owns V-tiles of 32 vocabulary rows: it stages the w2 tile in shared
//         memory ONCE per position, then for every request (32 per pass, 4 per warp) computes
//         L = U_k + w2_tile · P_q,
//         rounds it to the storage dtype, writes draft_logits, and folds the rounded value
//         into that request's softmax max/sum and Gumbel-max race (argmax for greedy), kept
//         as one partial per (block, request).
//
// w2 is therefore read once per position for the whole batch; nothing float32 of size
// [R, γ, V] is ever written. Every dot product of a request runs in one fixed order inside
// the kernel (no cuBLAS pre-pass whose algorithm could change with R), so a request's results
// never depend on its batch. Mirrors csrc/cpu/markov_draft.cpp, whose tests validate the
// algorithm; cross-block data is read with __ldcg (L2) after the barriers.
//
// Resident w2 (when it fits): each block always owns the same tiles (tile = block + i·grid), so
// when a block's tiles fit in its shared memory they are staged at position 1 and reused at
// positions 2..γ: HBM sees w2 once per round instead of γ times (V·r ≤ ~ (SMs · 200 KB) / 2
// bytes in bf16, e.g. V = 32000, r = 256). Otherwise one tile slot is re-staged per tile.
//
// Left for later: tensor cores for the [R, r] x [r, V] product (here CUDA-core FMAs from
// shared memory, four requests per w2 value), and double-buffered (cp.async) tile staging.
#include <cooperative_groups.h>

#include "common/markov_draft_kinds.h"
#include "cuda/common.cuh"
#include "cuda/markov_draft.h"
#include "cuda/markov_head.cuh"

namespace cg = cooperative_groups;

namespace dspark::cuda {
namespace {

using markov::head_step;
using markov::kThreads;
using markov::kWarps;

constexpr int kTileV = kWarpSize;             // vocabulary rows per tile: one per lane
constexpr int kReqPerWarp = 4;                // requests per warp: each w2 value read from
                                              // shared memory feeds four FMAs
constexpr int kReqChunk = kWarps * kReqPerWarp;  // requests per pass over a tile (32)

// Shared memory layout: [w2 tile slots, T][scratch, float]. A staged w2 row is padded by one
// 32-bit word so lanes reading column j of 32 different rows hit 32 different banks.
template <typename T>
__host__ __device__ inline int64_t staged_stride(int64_t rank) {
  return rank + static_cast<int64_t>(4 / sizeof(T));  // elements of T per staged row
}
template <typename T>
__host__ __device__ inline int64_t tile_slot_bytes(int64_t rank) {
  return (kTileV * staged_stride<T>(rank) * static_cast<int64_t>(sizeof(T)) + 15) / 16 * 16;
}
// Scratch: phase B's head vectors of a request chunk, or phase A's [e_k ; s_{k-1} ; e_k].
__host__ __device__ inline int64_t scratch_bytes(int64_t rank) {
  const int64_t b = kReqChunk * rank, a = 3 * rank;
  return (a > b ? a : b) * static_cast<int64_t>(sizeof(float));
}

// Phase A, first half: merge the partials of position k (1-based) for request q; writes
// tokens[q, k-1] and token_logprob[q, k-1]; returns x_k to every thread of the block.
template <typename T>
__device__ int64_t finish_position(const MarkovDraftParams& p, int64_t q, int64_t k, int64_t* x_shared,
                                   unsigned char* red) {
  const int nb = gridDim.x;
  const int64_t R = p.requests;
  SoftmaxStats st;
  uint64_t key = 0;
  for (int j = threadIdx.x; j < nb; j += blockDim.x) {
    SoftmaxStats o;
    o.max = __ldcg(p.part_max + j * R + q);
    o.sum = __ldcg(p.part_sum + j * R + q);
    st.merge(o);
    const uint64_t kj = __ldcg(p.part_key + j * R + q);
    key = kj > key ? kj : key;
  }
  st = block_merge(st, reinterpret_cast<SoftmaxStats*>(red));
  key = block_max_u64(key, reinterpret_cast<uint64_t*>(red));
  if (threadIdx.x == 0) {
    int64_t x = race_index(key);
    x = x < 0 ? 0 : (x >= p.vocab ? p.vocab - 1 : x);
    const float temp = p.temperature[q], inv_t = inverse_temperature(temp);
    float logprob = 0.0f;
    if (!is_greedy(temp)) {
      const T* row = static_cast<const T*>(p.draft_logits) + (q * p.gamma + k - 1) * p.vocab;
      const float xt = scaled_logit(to_float(__ldcg(row + x)), inv_t);
      logprob = (st.sum > 0.0f && xt > -INFINITY) ? (xt - st.max) - logf(st.sum) : -INFINITY;
    }
    p.tokens[q * p.gamma + k - 1] = x;
    p.token_logprob[q * p.gamma + k - 1] = logprob;
    *x_shared = x;
  }
  __syncthreads();
  const int64_t x = *x_shared;
  __syncthreads();
  return x;
}

// Four consecutive staged w2 values as float (p 4-byte aligned for the 16-bit types: rows
// start on 32-bit words and j is a multiple of 4).
__device__ __forceinline__ void load4(const float* p, float* w) {
  w[0] = p[0];
  w[1] = p[1];
  w[2] = p[2];
  w[3] = p[3];
}
__device__ __forceinline__ void load4(const __nv_bfloat16* p, float* w) {
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p + 2));
  w[0] = a.x, w[1] = a.y, w[2] = b.x, w[3] = b.y;
}
__device__ __forceinline__ void load4(const __half* p, float* w) {
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(p));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(p + 2));
  w[0] = a.x, w[1] = a.y, w[2] = b.x, w[3] = b.y;
}

constexpr int kStageBatch = 4;  // 16-byte loads in flight per thread while staging

// Copies a [rows, r] tile of w2 (global, row-major) into shared memory rows of
// staged_stride<T>(r) elements. 16-byte loads, kStageBatch in flight per thread, when rows are
// 16-byte multiples and the source is aligned; element copies otherwise.
template <typename T>
__device__ __forceinline__ void stage_tile(const T* src, T* dst, int64_t rows, int64_t r) {
  const int64_t row_bytes = r * static_cast<int64_t>(sizeof(T));
  if (row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0) {
    const int64_t per_row = row_bytes / 16, total = rows * per_row;
    const int64_t stride_words = staged_stride<T>(r) * static_cast<int64_t>(sizeof(T)) / 4;
    const uint4* s4 = reinterpret_cast<const uint4*>(src);
    uint32_t* d = reinterpret_cast<uint32_t*>(dst);
    for (int64_t base = threadIdx.x; base < total; base += kStageBatch * static_cast<int64_t>(blockDim.x)) {
      uint4 buf[kStageBatch];
#pragma unroll
      for (int u = 0; u < kStageBatch; ++u) {
        const int64_t c = base + u * static_cast<int64_t>(blockDim.x);
        if (c < total) buf[u] = __ldg(s4 + c);
      }
#pragma unroll
      for (int u = 0; u < kStageBatch; ++u) {
        const int64_t c = base + u * static_cast<int64_t>(blockDim.x);
        if (c < total) {
          const int64_t row = c / per_row, col = c - row * per_row;
          uint32_t* w = d + row * stride_words + col * 4;  // rows padded by one word: 4-byte stores
          w[0] = buf[u].x;
          w[1] = buf[u].y;
          w[2] = buf[u].z;
          w[3] = buf[u].w;
        }
      }
    }
  } else {
    const int64_t stride = staged_stride<T>(r);
    for (int64_t idx = threadIdx.x; idx < rows * r; idx += blockDim.x) {
      const int64_t row = idx / r, col = idx - row * r;
      dst[row * stride + col] = src[idx];
    }
  }
}

// Copies n floats of the head-vector scratch (written by other blocks before the barrier;
// read through L2 with __ldcg) into shared memory.
__device__ __forceinline__ void load_head_vectors(const float* src, float* dst, int64_t n) {
  if (n % 4 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0) {
    const float4* s4 = reinterpret_cast<const float4*>(src);
    float4* d4 = reinterpret_cast<float4*>(dst);
    const int64_t n4 = n / 4;
    for (int64_t base = threadIdx.x; base < n4; base += kStageBatch * static_cast<int64_t>(blockDim.x)) {
      float4 buf[kStageBatch];
#pragma unroll
      for (int u = 0; u < kStageBatch; ++u) {
        const int64_t c = base + u * static_cast<int64_t>(blockDim.x);
        if (c < n4) buf[u] = __ldcg(s4 + c);
      }
#pragma unroll
      for (int u = 0; u < kStageBatch; ++u) {
        const int64_t c = base + u * static_cast<int64_t>(blockDim.x);
        if (c < n4) d4[c] = buf[u];
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = __ldcg(src + i);
  }
}

// Phase B at position k: this block's V-tiles against every request.
template <typename T>
__device__ void logits_step(const MarkovDraftParams& p, int64_t k, unsigned char* smem_raw) {
  const int64_t R = p.requests, V = p.vocab, r = p.rank, G = p.gamma;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t stride = staged_stride<T>(r);
  const int64_t slots = p.resident_tiles > 0 ? p.resident_tiles : 1;
  T* slot0 = reinterpret_cast<T*>(smem_raw);                                    // [slots][kTileV, stride]
  float* ps = reinterpret_cast<float*>(smem_raw + slots * tile_slot_bytes<T>(r));  // [kReqChunk, r]
  const T* w2 = static_cast<const T*>(p.w2);
  const T* U = static_cast<const T*>(p.base_logits);
  T* out = static_cast<T*>(p.draft_logits);
  const int64_t tiles = (V + kTileV - 1) / kTileV;
  int64_t local = 0;  // this block's tile counter: the tile's slot in resident mode
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x, ++local) {
    const bool first = tile == static_cast<int64_t>(blockIdx.x);
    const int64_t v0 = tile * kTileV;
    const int64_t rows = V - v0 < kTileV ? V - v0 : kTileV;
    T* w2s = p.resident_tiles > 0
                 ? reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(slot0) + local * tile_slot_bytes<T>(r))
                 : slot0;
    if (p.resident_tiles == 0 || k == 1) {  // block-uniform
      __syncthreads();  // streaming: the previous tile's readers are done with the slot
      stage_tile(w2 + v0 * r, w2s, rows, r);
    }
    for (int64_t c0 = 0; c0 < R; c0 += kReqChunk) {
      const int64_t nreq = R - c0 < kReqChunk ? R - c0 : kReqChunk;
      if (R > kReqChunk || first) {  // with one chunk, ps keeps its requests across tiles
        __syncthreads();             // previous chunk's readers are done with ps
        load_head_vectors(p.head_vector + c0 * r, ps, nreq * r);
      }
      __syncthreads();  // ps and the staged tile are visible to every warp
      const int64_t local0 = static_cast<int64_t>(warp) * kReqPerWarp;  // this warp's first request
      if (local0 >= nreq) continue;                                      // warp-uniform
      const int64_t v = v0 + lane;
      const bool valid = lane < rows;
      // Dot products w2[v] . P_q for the warp's four requests (rows of ps past nreq hold
      // stale values; their results are never used). Each output is one sequential fmaf
      // chain over j, whatever the batch: batch-invariant.
      float acc[kReqPerWarp] = {};
      if (valid) {
        const T* wrow = w2s + lane * stride;
        const float* prow = ps + local0 * r;
        int64_t j = 0;
        if (r % 4 == 0) {  // four columns per step: paired w2 loads, 16-byte broadcast P loads
          for (; j < r; j += 4) {
            float w[4];
            load4(wrow + j, w);
#pragma unroll
            for (int i = 0; i < kReqPerWarp; ++i) {
              const float4 pv = *reinterpret_cast<const float4*>(prow + i * r + j);
              acc[i] = fmaf(w[0], pv.x, acc[i]);  // same j order as the scalar loop
              acc[i] = fmaf(w[1], pv.y, acc[i]);
              acc[i] = fmaf(w[2], pv.z, acc[i]);
              acc[i] = fmaf(w[3], pv.w, acc[i]);
            }
          }
        }
        for (; j < r; ++j) {
          const float w = to_float(wrow[j]);
#pragma unroll
          for (int i = 0; i < kReqPerWarp; ++i) acc[i] = fmaf(w, prow[i * r + j], acc[i]);
        }
      }
#pragma unroll
      for (int i = 0; i < kReqPerWarp; ++i) {
        if (local0 + i >= nreq) break;  // warp-uniform
        const int64_t q = c0 + local0 + i;
        const float temp = p.temperature[q], inv_t = inverse_temperature(temp);
        const bool greedy = is_greedy(temp);
        SoftmaxStats st;
        Race race;
        if (valid) {
          const int64_t o = (q * G + k - 1) * V + v;
          const T rounded = from_float<T>(to_float(U[o]) + acc[i]);
          out[o] = rounded;
          const float lr = to_float(rounded);
          if (greedy) {
            race.add(lr, 0.0f, v);  // argmax of the rounded logits: NaN/-inf never win, ties -> lowest
          } else {
            const float x = scaled_logit(lr, inv_t);
            st.add(x);
            race.add(x,
                     gumbel_from_bits(random_bits(p.seed[q], p.offset[q], Purpose::kDraftSample,
                                                  static_cast<uint32_t>(k), static_cast<uint64_t>(v))),
                     v);
          }
        }
        if (!greedy) st = warp_merge(st);  // `greedy` is uniform over the warp (one request)
        const uint64_t key = warp_max_u64(race.best);
        if (lane == 0) {
          const int64_t slot = static_cast<int64_t>(blockIdx.x) * R + q;  // only this warp touches it
          if (first) {
            p.part_max[slot] = st.max;
            p.part_sum[slot] = st.sum;
            p.part_key[slot] = key;
          } else {
            SoftmaxStats old;
            old.max = p.part_max[slot];
            old.sum = p.part_sum[slot];
            old.merge(st);
            p.part_max[slot] = old.max;
            p.part_sum[slot] = old.sum;
            const unsigned long long prev = p.part_key[slot];
            p.part_key[slot] = key > prev ? key : prev;
          }
        }
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 2) markov_draft_kernel(MarkovDraftParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ __align__(16) unsigned char red[kWarps * 16];  // block reductions (raw: no ctors)
  __shared__ int64_t x_shared;
  cg::grid_group grid = cg::this_grid();
  const int64_t R = p.requests, G = p.gamma;
  for (int64_t k = 1; k <= G + 1; ++k) {
    for (int64_t q = blockIdx.x; q < R; q += gridDim.x) {
      int64_t prev;
      if (k == 1) {
        prev = p.anchor[q];
        prev = prev < 0 ? 0 : (prev >= p.vocab ? p.vocab - 1 : prev);  // SPEC §2: never read out of bounds
      } else {
        prev = finish_position<T>(p, q, k - 1, &x_shared, red);
      }
      // Phase A's scratch lies after the w2 slots: resident tiles survive it.
      const int64_t slots = p.resident_tiles > 0 ? p.resident_tiles : 1;
      if (k <= G) head_step<T>(p, q, k, prev, reinterpret_cast<float*>(smem + slots * tile_slot_bytes<T>(p.rank)));
    }
    if (k > G) break;
    __threadfence();
    grid.sync();
    logits_step<T>(p, k, smem);
    __threadfence();
    grid.sync();
  }
}

}  // namespace

MarkovDraftLaunch plan_markov_draft(DType dtype, int64_t vocab, int64_t rank, int device, bool allow_resident,
                                    cudaError_t* err) {
  return DSPARK_DISPATCH_FLOAT(dtype, T, [&]() -> MarkovDraftLaunch {
    MarkovDraftLaunch plan;
    int sms = 0, optin = 0, per_sm_bytes = 0;
    if ((*err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess) return plan;
    if ((*err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device)) != cudaSuccess)
      return plan;
    if ((*err = cudaDeviceGetAttribute(&per_sm_bytes, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device)) !=
        cudaSuccess)
      return plan;
    // Allow up to the opt-in maximum; each launch asks only for what it needs. The cap on
    // DYNAMIC shared memory is the opt-in maximum minus the kernel's static shared memory
    // (`red`, `x_shared`: 144 bytes): asking for the full opt-in value fails with
    // cudaErrorInvalidValue (dynamic + static may not exceed the opt-in maximum), which made
    // every call fail.
    cudaFuncAttributes attr{};
    if ((*err = cudaFuncGetAttributes(&attr, markov_draft_kernel<T>)) != cudaSuccess) return plan;
    const int64_t max_dynamic = static_cast<int64_t>(optin) - static_cast<int64_t>(attr.sharedSizeBytes);
    if (max_dynamic <= 0) {
      *err = cudaErrorInvalidConfiguration;
      return plan;
    }
    if ((*err = cudaFuncSetAttribute(markov_draft_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(max_dynamic))) != cudaSuccess)
      return plan;
    const int64_t tiles = (vocab + kTileV - 1) / kTileV;
    const int64_t slot = tile_slot_bytes<T>(rank), scratch = scratch_bytes(rank);
    auto fits = [&](size_t smem, int64_t want_per_sm, int64_t* blocks) {
      int per_sm = 0;
      *err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, markov_draft_kernel<T>, kThreads, smem);
      if (*err != cudaSuccess || per_sm < want_per_sm || per_sm <= 0) return false;
      const int64_t resident = static_cast<int64_t>(sms) * (want_per_sm > 0 ? want_per_sm : per_sm);
      *blocks = tiles < resident ? tiles : resident;
      return true;
    };
    if (allow_resident) {
      for (int64_t per_sm = 2; per_sm >= 1; --per_sm) {
        const int64_t blocks = tiles < sms * per_sm ? tiles : sms * per_sm;
        const int64_t share = (tiles + blocks - 1) / blocks;  // tiles per block
        const int64_t smem = share * slot + scratch;
        const int64_t budget = per_sm_bytes / per_sm - 2048;  // leave room for static smem / reserve
        int64_t got = 0;
        if (smem <= max_dynamic && smem <= budget && fits(static_cast<size_t>(smem), per_sm, &got) && got == blocks) {
          plan.blocks = static_cast<int>(blocks);
          plan.smem = static_cast<size_t>(smem);
          plan.resident_tiles = static_cast<int>(share);
          return plan;
        }
        if (*err != cudaSuccess) return plan;
      }
    }
    const size_t smem = static_cast<size_t>(slot + scratch);
    int64_t blocks = 0;
    if (static_cast<int64_t>(smem) > max_dynamic || !fits(smem, 0, &blocks)) {
      if (*err == cudaSuccess) *err = cudaErrorInvalidConfiguration;  // rank too large for shared memory
      return plan;
    }
    plan.blocks = static_cast<int>(blocks);
    plan.smem = smem;
    return plan;
  });
}

cudaError_t launch_markov_draft(const MarkovDraftParams& params, const MarkovDraftLaunch& launch, cudaStream_t stream) {
  if (params.requests == 0 || params.gamma == 0 || launch.blocks <= 0) return cudaSuccess;
  return DSPARK_DISPATCH_FLOAT(params.dtype, T, [&]() -> cudaError_t {
    MarkovDraftParams p = params;
    p.resident_tiles = launch.resident_tiles;
    void* args[] = {&p};
    return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(markov_draft_kernel<T>), dim3(launch.blocks),
                                       dim3(kThreads), args, launch.smem, stream);
  });
}

}  // namespace dspark::cuda
