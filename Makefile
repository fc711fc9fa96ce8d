# make install   create .venv, install torch and the build tools, build dspark_ops into it
# make test      install, then pytest (CPU always, CUDA when a GPU is present)
# make lint      ruff check (Python) and clang-format --dry-run -Werror (C++/CUDA); CI runs it
# make format    apply ruff --fix and clang-format to the sources
# make bench     install, then the microbenchmark table (JSON + plot under bench/results/)
#
# Into an existing Python that already has torch (a GPU box without network, say):
#   make test PY=python3      # builds with that interpreter, no venv, nothing downloaded
# Environment: CUDA_HOME (toolkit with nvcc), TORCH_CUDA_ARCH_LIST (default "8.0;9.0a"),
# MAX_JOBS (parallel compile jobs), DSPARK_CPU_ONLY=1 (skip the CUDA kernels).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch>=2.4
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0a
export CMAKE_BUILD_PARALLEL_LEVEL := $(MAX_JOBS)

ifdef PY
DEPS :=
else
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps
endif

# Versions of the linters, pinned so that every machine formats alike.
LINT_SPEC ?= ruff==0.17.5 clang-format==23.1.3
# C++/CUDA sources checked by clang-format (the Python files are ruff's, from pyproject.toml).
CXX_SOURCES := $(sort $(wildcard csrc/*.cpp csrc/*/*.h csrc/*/*.cpp csrc/*/*.cu csrc/*/*.cuh csrc/include/dspark/*.h))
# The venv's tools (cmake, ninja, clang-format) first; with PY=python3, those on the PATH.
TOOLS_PATH = PATH="$(abspath $(dir $(PY))):$$PATH"

.PHONY: install test lint format bench bench-full dev dev-cuda sanitize clean gpu-static device-lib

$(VENV)/.deps: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)" numpy scipy pytest matplotlib safetensors transformers tqdm \
		"scikit-build-core>=0.10" "cmake>=3.26" ninja $(LINT_SPEC)
	touch $@

# CMake alone decides and says whether the CUDA kernels are built (cmake/CudaSetup.cmake): its
# "dspark_ops:" lines are shown from the full build log, which stays in build/pip-install.log.
install: $(DEPS)
	@mkdir -p build
	$(PY) -m pip install --no-build-isolation --no-deps -v . > build/pip-install.log 2>&1 || \
		{ cat build/pip-install.log; exit 1; }
	@grep -h "dspark_ops:" build/pip-install.log | sed 's/^ *//' | sort -u

test: install
	$(PY) -P -m pytest tests

lint: $(DEPS)
	$(PY) -m ruff check .
	$(TOOLS_PATH) clang-format --dry-run -Werror $(CXX_SOURCES)

format: $(DEPS)
	$(PY) -m ruff check --fix .
	$(TOOLS_PATH) clang-format -i $(CXX_SOURCES)

bench: install
	$(PY) bench/run.py

bench-full: install
	$(PY) bench/run.py --full

# Development: build dspark_ops/_C.so in place (no pip), then run the source tree with
#   PYTHONPATH=$$PWD $(PY) -P -m pytest tests/test_verify_chain.py
# `dev` builds the CPU kernels only (fast); `dev-cuda` adds the CUDA kernels.
DEV_CMAKE = $(TOOLS_PATH) $(PY) -m cmake
dev: $(DEPS)
	$(DEV_CMAKE) -S . -B build/dev-cpu -G Ninja -DDSPARK_CPU_ONLY=ON -DPython_EXECUTABLE="$$(command -v $(PY))"
	$(DEV_CMAKE) --build build/dev-cpu
	cp build/dev-cpu/_C.so build/dev-cpu/_C.torch_version dspark_ops/

dev-cuda: $(DEPS)
	$(DEV_CMAKE) -S . -B build/dev-cuda -G Ninja -DDSPARK_CPU_ONLY=OFF -DPython_EXECUTABLE="$$(command -v $(PY))"
	$(DEV_CMAKE) --build build/dev-cuda
	cp build/dev-cuda/_C.so build/dev-cuda/_C.torch_version dspark_ops/

# `sanitize`: the CPU kernels built with AddressSanitizer + UBSan at -O1 (build/sanitize, option
# DSPARK_SANITIZE; -O2's inlining made the instrumented build too slow for a 2-core CI), then
# pytest against that library: a copy of the package in
# build/sanitize/pkg holds the instrumented _C.so, so the in-place build is untouched. Python
# and torch are not instrumented, hence libasan is preloaded, with libstdc++ beside it: without
# it ASan's __cxa_throw interceptor finds no real __cxa_throw and aborts at the first C++
# exception (every argument check throws one). Any UBSan report is fatal.
#   make sanitize PY=/path/to/python SANITIZE_TESTS="tests/test_bad_inputs.py tests/test_verify_tree.py"
SANITIZE_TESTS ?= tests
SANITIZE_DIR := build/sanitize
sanitize: $(DEPS)
	$(DEV_CMAKE) -S . -B $(SANITIZE_DIR) -G Ninja -DDSPARK_CPU_ONLY=ON -DDSPARK_SANITIZE=ON \
		-DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython_EXECUTABLE="$$(command -v $(PY))"
	$(DEV_CMAKE) --build $(SANITIZE_DIR)
	rm -rf $(SANITIZE_DIR)/pkg && mkdir -p $(SANITIZE_DIR)/pkg
	cp -r dspark_ops $(SANITIZE_DIR)/pkg/ && cp $(SANITIZE_DIR)/_C.so $(SANITIZE_DIR)/pkg/dspark_ops/_C.so
	LD_PRELOAD="$$($(CXX) -print-file-name=libasan.so) $$($(CXX) -print-file-name=libstdc++.so.6)" \
	ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	PYTHONPATH="$(abspath $(SANITIZE_DIR)/pkg)" $(PY) -P -m pytest -q -p no:cacheprovider $(SANITIZE_TESTS)

# Evidence about the CUDA kernels without a GPU (registers, spills, SASS loops, estimates):
# bench/results/gpu-static.{md,json}; fails if a kernel spills.
gpu-static: $(DEPS)
	$(PY) bench/gpu_static.py

# The op library for the lent GPU machine's torch (2.11.0+cu130, sm_90a), built here:
# device-lib/_C.so, which bench/gpu_session.sh loads instead of compiling there.
device-lib: $(DEPS)
	PY=$(PY) bash bench/device_lib.sh

clean:
	rm -rf build dspark_ops/_C.so dspark_ops/_C.torch_version
