#!/usr/bin/env bash
# Everything a session with a GPU should run, in one go (about 15 minutes on an H100):
# build into the machine's own Python (it has torch and no network), the CUDA tests,
# compute-sanitizer memcheck and racecheck on the kernel tests, and the full benchmark.
#
#   bash bench/gpu_session.sh [OUT_DIR]       # logs and JSON under OUT_DIR (default bench/results)
#
# Commit the JSON it writes under bench/results/ (the file name carries the GPU's name).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
mkdir -p "$out"
py="${PY:-python3}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}" MAX_JOBS="${MAX_JOBS:-16}" PYTHONUNBUFFERED=1

make install PY="$py" 2>&1 | tail -3 || exit 1
"$py" -P -m pytest -q tests 2>&1 | tee "$out/gpu-tests.log" | tail -15

# The sanitizers run the kernel tests on small shapes (the large-vocab and 2^31 tests are
# deselected: they are correct-or-crash tests that take minutes under instrumentation).
small='not 2_pow_31 and not large and not distribution and not acceptance_rate'
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" --error-exitcode 9 "$py" -P -m pytest -q -x \
    tests/test_verify_chain.py tests/test_verify_tree.py tests/test_markov_draft.py \
    tests/test_schedule_lengths.py tests/test_block_draft.py -k "cuda and ($small)" \
    > "$out/sanitizer-$tool.log" 2>&1
  echo "compute-sanitizer $tool: exit $? (log $out/sanitizer-$tool.log)"
done

"$py" -P bench/run.py --full --device cuda --out "$out" 2>&1 | tee "$out/bench-full.log" | tail -60
