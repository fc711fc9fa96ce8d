// available_sms (cuda/device_sms.h): the device's SM count, lowered to the SM resource of a green
// context where there is one. Through the runtime's driver entry points (no link against
// libcuda); a driver without them (before CUDA 12.4, which has no green contexts) keeps the
// device count.
#include "cuda/device_sms.h"

#include <cuda.h>

#include <map>
#include <mutex>
#include <utility>

namespace dspark::cuda {
namespace {

using StreamGreenCtx = CUresult (*)(CUstream, CUgreenCtx*);
using GreenCtxResource = CUresult (*)(CUgreenCtx, CUdevResource*, CUdevResourceType);
using CurrentCtx = CUresult (*)(CUcontext*);
using CtxResource = CUresult (*)(CUcontext, CUdevResource*, CUdevResourceType);

// The driver function `name` as of CUDA 12.4, or nullptr.
template <typename F>
F driver_entry(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found{};
  if (cudaGetDriverEntryPointByVersion(name, &fn, 12040, cudaEnableDefault, &found) != cudaSuccess ||
      found != cudaDriverEntryPointSuccess)
    fn = nullptr;
  cudaGetLastError();  // a missing entry point is not an error of the caller's op
  return reinterpret_cast<F>(fn);
}

struct Entries {
  StreamGreenCtx stream_green = driver_entry<StreamGreenCtx>("cuStreamGetGreenCtx");
  GreenCtxResource green_resource = driver_entry<GreenCtxResource>("cuGreenCtxGetDevResource");
  CurrentCtx current = driver_entry<CurrentCtx>("cuCtxGetCurrent");
  CtxResource ctx_resource = driver_entry<CtxResource>("cuCtxGetDevResource");
};

}  // namespace

int available_sms(int device, cudaStream_t stream, cudaError_t* err) {
  int sms = 0;
  if ((*err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess) return 0;
  static const Entries e;
  auto lower_to = [&sms](const CUdevResource& r) {
    if (r.sm.smCount > 0 && static_cast<int>(r.sm.smCount) < sms) sms = static_cast<int>(r.sm.smCount);
  };
  CUdevResource res{};
  // The stream's green context: a kernel on a green-context stream runs on its SMs whatever
  // context is current. (The NULL stream reports the current context's.) Asked outside stream
  // capture only and remembered per stream: no driver query of the stream runs while it is
  // being captured (graph captures follow a warm-up call in every engine).
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, int> by_stream;  // SMs of the stream's green context
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess) {  // e.g. the legacy stream while
    cudaGetLastError();                                          // another thread captures:
    capture = cudaStreamCaptureStatusActive;                     // query nothing of the stream
  }
  const auto key = std::make_pair(device, stream);
  if (capture == cudaStreamCaptureStatusNone) {
    CUgreenCtx green = nullptr;
    int stream_sms = sms;
    if (e.stream_green && e.green_resource && e.stream_green(stream, &green) == CUDA_SUCCESS && green != nullptr &&
        e.green_resource(green, &res, CU_DEV_RESOURCE_TYPE_SM) == CUDA_SUCCESS && res.sm.smCount > 0)
      stream_sms = static_cast<int>(res.sm.smCount);
    const std::lock_guard<std::mutex> lock(mutex);
    by_stream[key] = stream_sms;
  }
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = by_stream.find(key);
    if (it != by_stream.end() && it->second < sms) sms = it->second;
  }
  // The current context (a green context made current, e.g. with cuCtxFromGreenCtx): the smaller
  // count is the safe one when the two disagree.
  CUcontext ctx = nullptr;
  if (e.current && e.ctx_resource && e.current(&ctx) == CUDA_SUCCESS && ctx != nullptr &&
      e.ctx_resource(ctx, &res, CU_DEV_RESOURCE_TYPE_SM) == CUDA_SUCCESS)
    lower_to(res);
  return sms;
}

}  // namespace dspark::cuda
