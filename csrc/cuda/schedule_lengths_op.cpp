// CUDA binding of dspark::schedule_lengths: checks (shared with the CPU), allocation, one
// launch on the current stream. No host sync: the outputs stay on the device.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/schedule_lengths_args.h"
#include "cuda/launch_check.h"
#include "cuda/schedule_lengths.h"

namespace dspark::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> schedule_lengths(
    const at::Tensor& confidence, const at::Tensor& sps, int64_t mode, int64_t budget,
    const std::optional<at::Tensor>& max_lengths) {
  constexpr const char* op = "dspark::schedule_lengths";
  const ScheduleSizes z = check_schedule_lengths_args(confidence, sps, mode, budget, max_lengths);
  DSPARK_CHECK(z.requests * z.gamma <= kScheduleMaxCudaCandidates, op, "confidence",
               "must have R*γ <= ", kScheduleMaxCudaCandidates,
               " entries on CUDA (the schedule runs in one thread block), got shape ", confidence.sizes());
  const c10::cuda::CUDAGuard guard(confidence.device());
  const auto conf = confidence.contiguous();
  const auto table = sps.contiguous();
  const auto caps = max_lengths ? std::optional<at::Tensor>(max_lengths->contiguous()) : std::nullopt;
  auto lengths = at::empty({z.requests}, confidence.options().dtype(at::kLong));
  auto admitted = at::empty({}, confidence.options().dtype(at::kLong));
  auto expected = at::empty({}, confidence.options());
  auto throughput = at::empty({}, confidence.options());
  DSPARK_CUDA_CHECK(launch_schedule_lengths(
      conf.data_ptr<float>(), table.data_ptr<float>(), caps ? caps->data_ptr<int64_t>() : nullptr, z.requests, z.gamma,
      mode, budget, lengths.data_ptr<int64_t>(), admitted.data_ptr<int64_t>(), expected.data_ptr<float>(),
      throughput.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return {lengths, admitted, expected, throughput};
}

}  // namespace

TORCH_LIBRARY_IMPL(dspark, CUDA, m) { m.impl("schedule_lengths", &schedule_lengths); }

}  // namespace dspark::cuda
