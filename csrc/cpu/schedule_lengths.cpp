// CPU kernel of dspark::schedule_lengths (SPEC §6, Algorithm 1 of the paper). One pass on one
// thread (R*γ is a few thousand at most): survival products, a sort of the candidate keys,
// then the chunked prefix sums and the walk defined in dspark/schedule.h, which the CUDA
// kernel reproduces bit for bit.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <functional>
#include <optional>
#include <tuple>
#include <vector>

#include "common/schedule_lengths_args.h"
#include "dspark/schedule.h"

namespace dspark::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> schedule_lengths(
    const at::Tensor& confidence, const at::Tensor& sps, int64_t mode, int64_t budget,
    const std::optional<at::Tensor>& max_lengths) {
  const ScheduleSizes z = check_schedule_lengths_args(confidence, sps, mode, budget, max_lengths);
  const int64_t R = z.requests, gamma = z.gamma;
  const auto conf = confidence.contiguous();
  const auto table = sps.contiguous();
  const auto caps = max_lengths ? std::optional<at::Tensor>(max_lengths->contiguous()) : std::nullopt;
  const float* c = conf.data_ptr<float>();  // [R, γ]
  const float* S = table.data_ptr<float>();  // [S]
  const int64_t* cap = caps ? caps->data_ptr<int64_t>() : nullptr;  // [R]

  // Candidate keys (dspark/schedule.h): a desc, j asc, r asc after a descending sort.
  std::vector<uint64_t> keys;
  keys.reserve(static_cast<size_t>(R * gamma));
  for (int64_t r = 0; r < R; ++r) {
    const int64_t limit = cap ? std::clamp<int64_t>(cap[r], 0, gamma) : gamma;
    float a = 1.0f;
    for (int64_t j = 1; j <= limit; ++j) {
      a = j == 1 ? schedule_clamp_confidence(c[r * gamma])
                 : schedule_mul(a, schedule_clamp_confidence(c[r * gamma + j - 1]));
      if (!(a > 0.0f)) break;  // every later survival is 0 too
      keys.push_back(schedule_key(a, static_cast<uint32_t>((j - 1) * R + r)));
    }
  }
  std::sort(keys.begin(), keys.end(), std::greater<uint64_t>());
  const int64_t K = static_cast<int64_t>(keys.size());

  // Chunked prefix sums P_i and Theta_i.
  const int64_t nchunks = (K + kScheduleChunk - 1) / kScheduleChunk;
  std::vector<float> local(static_cast<size_t>(K)), scan(static_cast<size_t>(nchunks)), prev;
  for (int64_t t = 0; t < nchunks; ++t) {
    float s = 0.0f;
    for (int64_t i = t * kScheduleChunk; i < std::min(K, (t + 1) * kScheduleChunk); ++i) {
      const float a = schedule_key_survival(keys[i]);
      s = i == t * kScheduleChunk ? a : schedule_add(s, a);
      local[i] = s;
    }
    scan[t] = s;
  }
  for (int64_t d = 1; d < nchunks; d <<= 1) {
    prev = scan;
    for (int64_t t = d; t < nchunks; ++t) scan[t] = schedule_add(prev[t], prev[t - d]);
  }
  const float Rf = static_cast<float>(R);
  const float theta_init = schedule_mul(Rf, S[R]);
  std::vector<float> tau(static_cast<size_t>(K)), theta(static_cast<size_t>(K));
  for (int64_t i = 0; i < K; ++i) {
    const int64_t t = i / kScheduleChunk;
    const float E = t == 0 ? 0.0f : scan[t - 1];
    tau[i] = schedule_add(Rf, schedule_add(E, local[i]));
    theta[i] = schedule_mul(tau[i], S[R + i + 1]);
  }

  // The kept prefix.
  int64_t n = 0;
  if (mode == kScheduleCausal) {
    n = K;
    float best = theta_init;
    for (int64_t i = 0; i < K; ++i) {
      if (!(theta[i] > best)) {
        n = i;
        break;
      }
      best = theta[i];
    }
  } else if (mode == kScheduleGlobal) {
    float best = theta_init;
    for (int64_t i = 0; i < K; ++i)
      if (theta[i] > best) best = theta[i], n = i + 1;
  } else {
    n = std::min(budget, K);
  }

  auto lengths = at::zeros({R}, confidence.options().dtype(at::kLong));
  int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t slot = schedule_key_slot(keys[i]);
    const int64_t r = slot % R, j = slot / R + 1;
    len[r] = std::max(len[r], j);
  }
  auto admitted = at::full({}, n, confidence.options().dtype(at::kLong));
  auto expected = at::full({}, n == 0 ? Rf : tau[n - 1], confidence.options());
  auto throughput = at::full({}, n == 0 ? theta_init : theta[n - 1], confidence.options());
  return {lengths, admitted, expected, throughput};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CPU, m) { m.impl("schedule_lengths", &schedule_lengths); }

}  // namespace dspark::cpu
