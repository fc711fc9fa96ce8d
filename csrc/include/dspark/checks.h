// Argument checks for the op bindings (host only, uses torch). Every failure raises a
// RuntimeError (c10::Error) whose message names the op, the argument and what was expected.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <string>

namespace dspark {

#define DSPARK_CHECK(cond, op, arg, ...) TORCH_CHECK((cond), op, ": argument '", arg, "' ", __VA_ARGS__)

inline std::string dtype_list(std::initializer_list<at::ScalarType> types) {
  std::string s;
  for (auto t : types) {
    if (!s.empty()) s += " or ";
    s += c10::toString(t);
  }
  return s;
}

inline void check_dtype(const at::Tensor& t, const char* op, const char* arg,
                        std::initializer_list<at::ScalarType> allowed) {
  bool ok = false;
  for (auto a : allowed) ok = ok || t.scalar_type() == a;
  DSPARK_CHECK(ok, op, arg, "must have dtype ", dtype_list(allowed), ", got ", t.scalar_type());
}

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* arg) {
  check_dtype(t, op, arg, {at::kFloat, at::kBFloat16, at::kHalf});
}

inline void check_dim(const at::Tensor& t, const char* op, const char* arg, int64_t dim) {
  DSPARK_CHECK(t.dim() == dim, op, arg, "must have ", dim, " dimensions, got shape ", t.sizes());
}

inline void check_size(const at::Tensor& t, const char* op, const char* arg, int64_t d, int64_t expected,
                       const char* what) {
  DSPARK_CHECK(t.size(d) == expected, op, arg, "must have size ", expected, " (", what, ") in dimension ", d,
               ", got shape ", t.sizes());
}

inline void check_device(const at::Tensor& t, const char* op, const char* arg, const at::Tensor& ref) {
  DSPARK_CHECK(t.device() == ref.device(), op, arg, "must be on ", ref.device(), " like the other arguments, got ",
               t.device());
}

// A tensor an op writes in place must not hold elements that share memory (an expand()ed
// view): parallel threads would write one location twice. Same rule as torch's own in-place
// ops (at::assert_no_internal_overlap); strided views whose overlap cannot be decided
// cheaply are accepted, as torch accepts them.
inline void check_no_internal_overlap(const at::Tensor& t, const char* op, const char* arg) {
  DSPARK_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, op, arg,
               "is written in place and must not have elements that share memory (e.g. an expand()ed "
               "tensor), got shape ",
               t.sizes(), " and strides ", t.strides());
}

// A tensor written in place must not share memory with another argument (torch's
// at::assert_no_overlap: partial or full overlap is an error).
inline void check_no_overlap(const at::Tensor& written, const char* op, const char* arg, const at::Tensor& other,
                             const char* other_arg) {
  const auto status = at::get_overlap_status(written, other);
  DSPARK_CHECK(status != at::MemOverlapStatus::Partial && status != at::MemOverlapStatus::Full, op, other_arg,
               "must not share memory with '", arg, "', which the op writes in place");
}

// A vector [n] of `dtype` on the reference device.
inline void check_vector(const at::Tensor& t, const char* op, const char* arg, at::ScalarType dtype, int64_t n,
                         const char* what, const at::Tensor& ref) {
  check_device(t, op, arg, ref);
  check_dtype(t, op, arg, {dtype});
  check_dim(t, op, arg, 1);
  check_size(t, op, arg, 0, n, what);
}

// An int64 vector [n] on the reference device.
inline void check_index_vector(const at::Tensor& t, const char* op, const char* arg, int64_t n, const char* what,
                               const at::Tensor& ref) {
  check_vector(t, op, arg, at::kLong, n, what, ref);
}

// A float32 vector [n] on the reference device.
inline void check_float_vector(const at::Tensor& t, const char* op, const char* arg, int64_t n, const char* what,
                               const at::Tensor& ref) {
  check_vector(t, op, arg, at::kFloat, n, what, ref);
}

// The per-request sampling arguments shared by the verify ops: temperature [R] float32,
// seed/offset [R] int64, eos_ids [E] int64 or None. Returns E.
inline int64_t check_sampling_args(const char* op, const at::Tensor& temperature, const at::Tensor& seed,
                                   const at::Tensor& offset, const std::optional<at::Tensor>& eos_ids, int64_t requests,
                                   const at::Tensor& ref) {
  check_float_vector(temperature, op, "temperature", requests, "R", ref);
  check_index_vector(seed, op, "seed", requests, "R", ref);
  check_index_vector(offset, op, "offset", requests, "R", ref);
  if (!eos_ids) return 0;
  check_device(*eos_ids, op, "eos_ids", ref);
  check_dtype(*eos_ids, op, "eos_ids", {at::kLong});
  check_dim(*eos_ids, op, "eos_ids", 1);
  return eos_ids->size(0);
}

// Value checks on CUDA tensors cost a host sync; they run only when DSPARK_CHECK=1 (SPEC §2).
inline bool value_checks_enabled(const at::Tensor& t) {
  if (t.device().is_cpu()) return true;
  static const bool enabled = [] {
    const char* env = std::getenv("DSPARK_CHECK");
    return env != nullptr && std::string(env) == "1";
  }();
  return enabled;
}

}  // namespace dspark
