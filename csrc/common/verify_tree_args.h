// Argument checks of dspark::tree_metadata and dspark::verify_tree shared by the CPU and CUDA
// bindings (SPEC §5). Shape/dtype/device checks always run; the value checks (node counts,
// parents before children, rows summing to N) run on CPU tensors always and on CUDA tensors
// only with DSPARK_CHECK=1, because they need a host sync.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/verify_q_args.h"
#include "dspark/checks.h"

namespace dspark {

// Tree nodes index the Philox `position` field, which keeps 16 bits: M <= 65536.
constexpr int64_t kMaxTreeNodes = int64_t{1} << 16;

struct TreeSizes {
  int64_t requests;  // R
  int64_t width;     // M, the columns of parents / tree_tokens
  int64_t vocab;     // V (verify_tree only)
  int64_t rows;      // N = Σ num_nodes[r] (verify_tree only)
  int64_t num_eos;   // E (0 without eos_ids)
  DraftQ q;          // how q is given (verify_tree only)
  bool filters;      // any of top_k / top_p / min_p given (verify_tree only)
};

// Value checks of a tree batch on host copies: num_nodes in [0, M], parents[r, 0] = -1 and
// 0 <= parents[r, i] < i for 1 <= i < n_r (entries at i >= n_r are ignored).
// Returns Σ num_nodes.
inline int64_t check_tree_values(const char* op, const at::Tensor& parents_any, const at::Tensor& num_nodes_any) {
  const auto parents = parents_any.cpu().contiguous();
  const auto num_nodes = num_nodes_any.cpu().contiguous();
  const int64_t R = parents.size(0), M = parents.size(1);
  const int64_t* pp = parents.data_ptr<int64_t>();
  const int64_t* np = num_nodes.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t n = np[r];
    DSPARK_CHECK(n >= 0 && n <= M, op, "num_nodes", "must lie in [0, M=", M, "] (M = parents.size(1)), got ", n,
                 " for request ", r);
    total += n;
    const int64_t* pr = pp + r * M;
    if (n >= 1)
      DSPARK_CHECK(pr[0] == -1, op, "parents", "must have parents[r, 0] = -1 (node 0 is the root), got ", pr[0],
                   " for request ", r);
    for (int64_t i = 1; i < n; ++i)
      DSPARK_CHECK(pr[i] >= 0 && pr[i] < i, op, "parents",
                   "must list nodes in topological order (0 <= parents[r, i] < i), got parents[", r, ", ", i,
                   "] = ", pr[i]);
  }
  return total;
}

// parents [R, M] and num_nodes [R]; `rows_of` names where R comes from. parents is checked in
// full before num_nodes, so that a parents of the wrong shape is blamed on parents.
inline void check_tree_layout(const char* op, const at::Tensor& parents, const at::Tensor& num_nodes, int64_t requests,
                              int64_t width, const char* rows_of, const at::Tensor& ref) {
  check_device(parents, op, "parents", ref);
  check_dtype(parents, op, "parents", {at::kLong});
  check_dim(parents, op, "parents", 2);
  check_size(parents, op, "parents", 0, requests, rows_of);
  if (width >= 0) check_size(parents, op, "parents", 1, width, "M, the columns of tree_tokens");
  DSPARK_CHECK(parents.size(1) <= kMaxTreeNodes, op, "parents", "must have at most ", kMaxTreeNodes,
               " columns (tree nodes), got shape ", parents.sizes());
  check_index_vector(num_nodes, op, "num_nodes", requests, rows_of, ref);
}

// parents [R, M], num_nodes [R], prefix_lens [R] (all int64).
inline TreeSizes check_tree_metadata_args(const at::Tensor& parents, const at::Tensor& num_nodes,
                                          const at::Tensor& prefix_lens) {
  constexpr const char* op = "dspark::tree_metadata";
  check_dim(parents, op, "parents", 2);
  TreeSizes s{parents.size(0), parents.size(1), 0, 0, 0, DraftQ{}, false};
  check_tree_layout(op, parents, num_nodes, s.requests, -1, "R, the rows of parents", parents);
  check_index_vector(prefix_lens, op, "prefix_lens", s.requests, "R, the rows of parents", parents);
  if (value_checks_enabled(parents) && s.requests > 0) {
    s.rows = check_tree_values(op, parents, num_nodes);
    // positions = prefix_lens + depth with depth < M: bounded so that the sum cannot overflow.
    const auto pre = prefix_lens.cpu();
    const int64_t lo = pre.min().item<int64_t>(), hi = pre.max().item<int64_t>();
    DSPARK_CHECK(lo >= 0 && hi <= INT64_MAX - s.width, op, "prefix_lens",
                 "must be in [0, 2^63 - 1 - M = ", INT64_MAX - s.width,
                 "] (positions = prefix_lens + depth must fit in int64), got values in [", lo, ", ", hi, "]");
  }
  return s;
}

// The arguments of one verify_tree call in schema order (references to the caller's).
struct VerifyTreeArgs {
  const at::Tensor& target_logits;                // [N, V]
  const at::Tensor& tree_tokens;                  // [R, M] int64
  const at::Tensor& parents;                      // [R, M] int64
  const at::Tensor& num_nodes;                    // [R] int64
  const at::Tensor& temperature;                  // [R] float32
  const at::Tensor& seed;                         // [R] int64
  const at::Tensor& offset;                       // [R] int64
  const std::optional<at::Tensor>& draft_logits;  // [N, V] or [N, K]
  const std::optional<at::Tensor>& eos_ids;       // [E] int64
  const std::optional<at::Tensor>& top_k;         // [R] int64
  const std::optional<at::Tensor>& top_p;         // [R] float32
  const std::optional<at::Tensor>& min_p;         // [R] float32
  const std::optional<at::Tensor>& draft_probs;   // [N, V] or [N, K] float32
  const std::optional<at::Tensor>& draft_ids;     // [N, K] int64
};

// target_logits [N, V]; tree_tokens, parents [R, M] int64; num_nodes, seed, offset [R] int64;
// temperature [R] float32; draft_logits [N, V] or None; eos_ids [E] or None; top_k [R] int64,
// top_p / min_p [R] float32 or None; draft_probs [N, V] float32 or None; draft_ids [N, K] int64
// or None (then draft_logits / draft_probs are [N, K]).
inline TreeSizes check_verify_tree_args(const VerifyTreeArgs& a) {
  const auto& [target_logits, tree_tokens, parents, num_nodes, temperature, seed, offset, draft_logits, eos_ids, top_k,
               top_p, min_p, draft_probs, draft_ids] = a;
  constexpr const char* op = "dspark::verify_tree";
  check_verify_layout(op, target_logits, tree_tokens, "tree_tokens");
  TreeSizes s{
      tree_tokens.size(0), tree_tokens.size(1), target_logits.size(1), target_logits.size(0), 0, DraftQ{}, false};
  check_tree_layout(op, parents, num_nodes, s.requests, s.width, "R, the rows of tree_tokens", target_logits);
  s.num_eos = check_sampling_args(op, temperature, seed, offset, eos_ids, s.requests, target_logits);
  s.q = check_draft_q(op, draft_logits, draft_probs, draft_ids, {{s.rows, "N, the rows of target_logits"}}, s.vocab,
                      target_logits);
  s.filters = check_filter_args(op, top_k, top_p, min_p, s.requests, target_logits);
  if (value_checks_enabled(num_nodes)) {
    const int64_t total = s.requests > 0 ? check_tree_values(op, parents, num_nodes) : 0;
    DSPARK_CHECK(total == s.rows, op, "target_logits", "must have Σ num_nodes = ", total,
                 " rows (one per tree node), got ", s.rows);
  }
  return s;
}

// The registered verify_tree, one for both devices: the schema's argument list, the shared
// checks, then the device's kernel Kernel(args, sizes).
template <auto Kernel>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> verify_tree_op(
    const at::Tensor& target_logits, const at::Tensor& tree_tokens, const at::Tensor& parents,
    const at::Tensor& num_nodes, const at::Tensor& temperature, const at::Tensor& seed, const at::Tensor& offset,
    const std::optional<at::Tensor>& draft_logits, const std::optional<at::Tensor>& eos_ids,
    const std::optional<at::Tensor>& top_k, const std::optional<at::Tensor>& top_p,
    const std::optional<at::Tensor>& min_p, const std::optional<at::Tensor>& draft_probs,
    const std::optional<at::Tensor>& draft_ids) {
  const VerifyTreeArgs a{target_logits, tree_tokens, parents, num_nodes, temperature, seed,        offset,
                         draft_logits,  eos_ids,     top_k,   top_p,     min_p,       draft_probs, draft_ids};
  return Kernel(a, check_verify_tree_args(a));
}

// Registers the tree family with one device's kernels: tree_metadata as it is, verify_tree
// through verify_tree_op.
template <auto TreeMetadata, auto VerifyTree>
void register_tree_ops(torch::Library& m) {
  m.impl("tree_metadata", TreeMetadata);
  m.impl("verify_tree", &verify_tree_op<VerifyTree>);
}

}  // namespace dspark
