// Checks of the optional arguments shared by dspark::verify_chain and dspark::verify_tree:
// the engine filters top_k / top_p / min_p (SPEC §9) and the draft distribution q given as
// draft_logits or draft_probs, dense or sparse through draft_ids (SPEC §9, §10).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "dspark/checks.h"
#include "dspark/filters.h"

namespace dspark {

// How q is given to a verify op.
struct DraftQ {
  const at::Tensor* values = nullptr;  // draft_logits or draft_probs, or nullptr (one-hot q)
  bool probs = false;                  // values are probabilities (draft_probs)
  bool sparse = false;                 // values hold the K entries listed in draft_ids
  int64_t width = 0;                   // entries per row: V dense, K sparse
};

// top_k [R] int64, top_p [R] float32 in (0, 1], min_p [R] float32 in [0, 1] (each optional).
// Returns whether any filter is given.
inline bool check_filter_args(const char* op, const std::optional<at::Tensor>& top_k,
                              const std::optional<at::Tensor>& top_p, const std::optional<at::Tensor>& min_p,
                              int64_t requests, const at::Tensor& ref) {
  if (top_k) check_index_vector(*top_k, op, "top_k", requests, "R", ref);
  if (top_p) {
    check_float_vector(*top_p, op, "top_p", requests, "R", ref);
    if (value_checks_enabled(*top_p) && requests > 0) {
      const auto bad = top_p->le(0).logical_or_(top_p->gt(1)).logical_or_(top_p->isnan()).any();
      DSPARK_CHECK(!bad.item<bool>(), op, "top_p", "must lie in (0, 1] (1: off), got ", top_p->cpu());
    }
  }
  if (min_p) {
    check_float_vector(*min_p, op, "min_p", requests, "R", ref);
    if (value_checks_enabled(*min_p) && requests > 0) {
      const auto bad = min_p->lt(0).logical_or_(min_p->gt(1)).logical_or_(min_p->isnan()).any();
      DSPARK_CHECK(!bad.item<bool>(), op, "min_p", "must lie in [0, 1] (0: off), got ", min_p->cpu());
    }
  }
  return top_k || top_p || min_p;
}

// draft_ids [..., K] values: -1 (padding) or an id in [0, V), no id twice in a row.
inline void check_draft_id_values(const char* op, const at::Tensor& draft_ids, int64_t vocab) {
  const auto ids = draft_ids.cpu().contiguous();
  const int64_t K = ids.size(-1), rows = K > 0 ? ids.numel() / K : 0;
  const int64_t* p = ids.data_ptr<int64_t>();
  std::vector<int64_t> row;
  for (int64_t i = 0; i < rows; ++i) {
    row.clear();
    for (int64_t j = 0; j < K; ++j) {
      const int64_t v = p[i * K + j];
      DSPARK_CHECK(v == -1 || (v >= 0 && v < vocab), op, "draft_ids", "must hold -1 (padding) or ids in [0, V=", vocab,
                   "), got ", v, " in row ", i);
      if (v >= 0) row.push_back(v);
    }
    std::sort(row.begin(), row.end());
    const auto dup = std::adjacent_find(row.begin(), row.end());
    DSPARK_CHECK(dup == row.end(), op, "draft_ids", "must not repeat an id within a row, got ",
                 dup == row.end() ? 0 : *dup, " twice in row ", i);
  }
}

// draft_logits / draft_probs (at most one) of shape leading + [V], or leading + [K] with
// draft_ids [leading..., K] int64. leading: the expected leading sizes and what they are.
inline DraftQ check_draft_q(const char* op, const std::optional<at::Tensor>& draft_logits,
                            const std::optional<at::Tensor>& draft_probs, const std::optional<at::Tensor>& draft_ids,
                            const std::vector<std::pair<int64_t, const char*>>& leading, int64_t vocab,
                            const at::Tensor& ref) {
  DSPARK_CHECK(!(draft_logits && draft_probs), op, "draft_probs",
               "must be None when draft_logits is given (q comes from one of them)");
  DraftQ q;
  q.probs = draft_probs.has_value();
  q.values = draft_logits ? &*draft_logits : draft_probs ? &*draft_probs : nullptr;
  const char* name = q.probs ? "draft_probs" : "draft_logits";
  const int64_t dims = static_cast<int64_t>(leading.size()) + 1;
  if (draft_ids) {
    DSPARK_CHECK(q.values != nullptr, op, "draft_ids", "needs draft_logits or draft_probs (the K listed entries)");
    const auto& ids = *draft_ids;
    check_device(ids, op, "draft_ids", ref);
    check_dtype(ids, op, "draft_ids", {at::kLong});
    check_dim(ids, op, "draft_ids", dims);
    for (int64_t d = 0; d < dims - 1; ++d) check_size(ids, op, "draft_ids", d, leading[d].first, leading[d].second);
    DSPARK_CHECK(ids.size(-1) >= 1 && ids.size(-1) <= vocab, op, "draft_ids", "must list between 1 and V=", vocab,
                 " ids per row, got shape ", ids.sizes());
    q.sparse = true;
    if (value_checks_enabled(ids)) check_draft_id_values(op, ids, vocab);
  }
  if (!q.values) return q;
  const auto& t = *q.values;
  check_device(t, op, name, ref);
  if (q.probs) {
    check_dtype(t, op, name, {at::kFloat});
  } else {
    check_float_dtype(t, op, name);
  }
  check_dim(t, op, name, dims);
  for (int64_t d = 0; d < dims - 1; ++d) check_size(t, op, name, d, leading[d].first, leading[d].second);
  q.width = q.sparse ? draft_ids->size(-1) : vocab;
  check_size(t, op, name, dims - 1, q.width,
             q.sparse ? "K, the columns of draft_ids" : "V, the columns of target_logits");
  return q;
}

// The layout both verify ops start from: target_logits [N, V] of a float dtype with
// 1 <= V < 2^32 (ids fit in 32 bits), and the drafted tokens [R, W] int64 on its device.
inline void check_verify_layout(const char* op, const at::Tensor& target_logits, const at::Tensor& tokens,
                                const char* tokens_name) {
  check_float_dtype(target_logits, op, "target_logits");
  check_dim(target_logits, op, "target_logits", 2);
  check_device(tokens, op, tokens_name, target_logits);
  check_dtype(tokens, op, tokens_name, {at::kLong});
  check_dim(tokens, op, tokens_name, 2);
  const int64_t vocab = target_logits.size(1);
  DSPARK_CHECK(vocab > 0 && vocab < (int64_t{1} << 32), op, "target_logits",
               "must have a vocabulary size in [1, 2^32), got ", vocab);
}

// Helpers of the bindings for optional tensors.
inline std::optional<at::Tensor> contiguous_or_none(const std::optional<at::Tensor>& t) {
  return t ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

template <typename T>
T* data_or_null(const std::optional<at::Tensor>& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

}  // namespace dspark
