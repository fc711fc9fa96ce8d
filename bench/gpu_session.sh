#!/usr/bin/env bash
# The one-call GPU proof for a lent GPU machine (H100/H200, bare: torch, no network), sized to
# finish in about 8 minutes: load (or build) the library, run the CUDA tests, compute-sanitizer
# memcheck / racecheck / synccheck on the kernel tests, and the full benchmark.
#
#   bash bench/device_lib.sh                    # HERE, first: builds device-lib/_C.so (no device time)
#   bash bench/gpu_session.sh "$OUT"             # THERE, with device-lib carried along
#
# Every stage has its own time limit, so the script always ends and always leaves its logs.
# It writes at most 8 files to OUT (the device tool returns no more): summary.txt, build.log
# (only when it had to build), tests.log, sanitizer.log, bench.log, and the benchmark's
# <device>-<gpu>-full.json and .png. Commit the JSON, the plot and the logs under
# bench/results/. Stage limits (seconds) can be changed with LIMIT_BUILD, LIMIT_TESTS (the
# kernel test files), LIMIT_TESTS_REST (the other CUDA tests), LIMIT_SANITIZER (each of the
# three tools), LIMIT_BENCH. Defaults: 140 + 50 + 3 x 40 + 140 s, under 8 minutes in all with
# the library load and the sanitizer's collection.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
mkdir -p "$out"
py="${PY:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-16}"
summary="$out/summary.txt"
: > "$summary"

# stage NAME LIMIT LOG COMMAND...: runs COMMAND under `timeout`, appends its output to LOG and
# one line (exit status, seconds) to the summary. Exit status 124 means it hit LIMIT.
stage() {
  local name=$1 limit=$2 log=$3 start rc
  shift 3
  start=$(date +%s)
  echo "=== $name ($*)" >> "$log"
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  echo "$name: exit $rc in $(( $(date +%s) - start )) s (limit $limit s)" | tee -a "$summary"
  return $rc
}

{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  git rev-parse --short HEAD 2>/dev/null; } >> "$summary" 2>&1

# 1. The library: the one built here for this torch (bench/device_lib.sh), else build there.
torch_version=$("$py" -c "import torch; print(torch.__version__)")
loads() { "$py" -c "import dspark_ops, sys; sys.exit(0 if dspark_ops.has_cuda_kernels() else 1)"; }
if [ -f device-lib/_C.so ] && [ "$(cat device-lib/_C.torch_version 2>/dev/null)" = "$torch_version" ] \
   && cp device-lib/_C.so device-lib/_C.torch_version dspark_ops/ && loads 2>> "$summary"; then
  echo "library: prebuilt device-lib/_C.so for torch $torch_version" | tee -a "$summary"
else
  echo "library: building here (no usable device-lib/_C.so for torch $torch_version)" | tee -a "$summary"
  stage build "${LIMIT_BUILD:-300}" "$out/build.log" make dev-cuda PY="$py" MAX_JOBS="$MAX_JOBS" || exit 1
  loads || { echo "library: built but has no CUDA kernels" | tee -a "$summary"; exit 1; }
fi

# 2. The CUDA tests (the CPU ones run in CI); -x off: every failure is worth seeing. `-k cuda`
#    selects tests on the "cuda" device parameter, in a *_cuda.py file, or marked requires_cuda
#    (tests/conftest.py gives those the `cuda` marker, which -k matches).
#    Two stages: the kernel files, then the rest (torch.compile-heavy: test_every_op,
#    test_drafter, ...), each with its own limit, so that the compile tests can never eat the
#    kernels' time (pytest orders a file named beside its folder by the folder's order, hence
#    --ignore rather than one command).
kernel_tests="tests/test_verify_chain_kernels.py tests/test_verify_chain.py tests/test_verify_tree_cuda.py
  tests/test_verify_tree.py tests/test_markov_draft.py tests/test_markov_draft_filters.py
  tests/test_markov_draft_topk.py tests/test_block_draft_cuda.py tests/test_block_draft.py
  tests/test_schedule_lengths.py tests/test_rng.py"
# shellcheck disable=SC2086
stage tests "${LIMIT_TESTS:-140}" "$out/tests.log" "$py" -P -m pytest -q -rfE -k cuda $kernel_tests
# shellcheck disable=SC2086,SC2046
stage tests-rest "${LIMIT_TESTS_REST:-50}" "$out/tests.log" "$py" -P -m pytest -q -rfE -k cuda tests \
  $(printf ' --ignore=%s' $kernel_tests)

# 3. compute-sanitizer on a few cheap tests per CUDA kernel, in-process and at small shapes
#    (V <= 20011, a few hundred rows at most, one 4100-key attention context), so that each
#    tool fits its limit: every default kernel (verify_tree split, tree_metadata, verify_chain,
#    markov_draft dense and top-K with and without filters, block_attention tensor-core and
#    fp32, the block_draft helpers, schedule_lengths, random_bits, the vocab-parallel
#    verify_sharded phases). Not the legacy kernels (they run in child processes) nor the
#    large-vocabulary, 2^31 and statistical tests. Names are matched as substrings: the summary
#    records how many tests the selection found, which must equal the names listed (one each).
sanitize_files="tests/test_verify_tree_cuda.py tests/test_verify_tree.py tests/test_verify_chain_kernels.py
  tests/test_verify_chain.py tests/test_markov_draft.py tests/test_markov_draft_topk.py
  tests/test_markov_draft_filters.py tests/test_block_draft.py tests/test_schedule_lengths.py tests/test_rng.py
  tests/test_distributed.py"
sanitize_tests=(
  "test_sparse_cuda_matches_cpu[29-6-9-False-False]" "test_sparse_cuda_matches_cpu[1000-1-12-False-True]"
  test_sparse_out_of_range_ids_read_as_padding test_sparse_repeated_ids_stay_in_bounds test_split_sparse_graph_replay
  "test_matches_reference[cuda-True-True]" test_cuda_misaligned_rows test_cuda_unchecked_bad_tree
  "test_unaligned_rows_are_batch_invariant[7]" "test_cuda_agrees_with_cpu[1001-dtype0]" test_cuda_rows_past_the_end
  "test_matches_reference[cuda-gated-he-dtype1]" "test_matches_reference[cuda-rnn-h-dtype0]"
  "test_batch_invariance[cuda-20-7]" "test_matches_reference[7-gated-he-dtype1-cuda]"
  "test_matches_reference[300-rnn-he-dtype0-cuda]" "test_cuda_dense_filters_agree_with_cpu[gated-he-filters1]"
  "test_cuda_block_attention_agrees_with_cpu[1-4100-64-dtype1]"
  "test_cuda_block_attention_agrees_with_cpu[64-96-128-dtype2]" "test_cuda_helpers_agree_with_cpu[dtype1]"
  test_cuda_block_attention_clamps test_cuda_append_skips_slots "test_cuda_matches_cpu[5-16]"
  test_cuda_draws_the_same_bits_as_cpu "test_threaded_ranks_on_cuda_match_single_device[0]")
printf -v small ' or %s' "${sanitize_tests[@]}"
small="cuda and (${small# or })"
# shellcheck disable=SC2086
echo "sanitizer selection (${#sanitize_tests[@]} names): $("$py" -P -m pytest -q --collect-only \
  $sanitize_files -k "$small" 2>&1 | tail -1)" | tee -a "$summary"
for tool in memcheck racecheck synccheck; do
  # shellcheck disable=SC2086
  stage "sanitizer-$tool" "${LIMIT_SANITIZER:-40}" "$out/sanitizer.log" \
    compute-sanitizer --tool "$tool" --error-exitcode 9 "$py" -P -m pytest -q -x $sanitize_files -k "$small"
done

# 4. The full benchmark; it saves its JSON after every case, so a time limit loses nothing.
stage bench "${LIMIT_BENCH:-140}" "$out/bench.log" \
  "$py" -P bench/run.py --full --device cuda --out "$out" --max-seconds $(( ${LIMIT_BENCH:-140} - 30 ))
tail -40 "$out/bench.log"
cat "$summary"
