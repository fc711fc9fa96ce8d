# make install   create .venv, install torch and the build tools, build dspark_ops into it
# make test      install, then pytest (CPU always, CUDA when a GPU is present)
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

.PHONY: install test bench bench-full dev dev-cuda clean gpu-static device-lib

$(VENV)/.deps: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install "$(TORCH_SPEC)" numpy scipy pytest matplotlib safetensors transformers \
		"scikit-build-core>=0.10" "cmake>=3.26" ninja
	touch $@

install: $(DEPS)
	@if command -v nvcc >/dev/null 2>&1 || [ -x "$${CUDA_HOME:-/nonexistent}/bin/nvcc" ]; then \
		if [ "$${DSPARK_CPU_ONLY:-0}" = "1" ]; then echo "dspark_ops: DSPARK_CPU_ONLY=1: building the CPU kernels only."; \
		else echo "dspark_ops: nvcc found: building CPU and CUDA kernels for TORCH_CUDA_ARCH_LIST=$$TORCH_CUDA_ARCH_LIST"; fi; \
	else echo "dspark_ops: nvcc not found (set CUDA_HOME): building a CPU-only library."; fi
	$(PY) -m pip install --no-build-isolation --no-deps .

test: install
	$(PY) -P -m pytest tests

bench: install
	$(PY) bench/run.py

bench-full: install
	$(PY) bench/run.py --full

# Development: build dspark_ops/_C.so in place (no pip), then run the source tree with
#   PYTHONPATH=$$PWD $(PY) -P -m pytest tests/test_verify_chain.py
# `dev` builds the CPU kernels only (fast); `dev-cuda` adds the CUDA kernels.
DEV_CMAKE = PATH="$(abspath $(dir $(PY))):$$PATH" $(PY) -m cmake
dev: $(DEPS)
	$(DEV_CMAKE) -S . -B build/dev-cpu -G Ninja -DDSPARK_CPU_ONLY=ON -DPython_EXECUTABLE="$$(command -v $(PY))"
	$(DEV_CMAKE) --build build/dev-cpu
	cp build/dev-cpu/_C.so dspark_ops/_C.so

dev-cuda: $(DEPS)
	$(DEV_CMAKE) -S . -B build/dev-cuda -G Ninja -DDSPARK_CPU_ONLY=OFF -DPython_EXECUTABLE="$$(command -v $(PY))"
	$(DEV_CMAKE) --build build/dev-cuda
	cp build/dev-cuda/_C.so dspark_ops/_C.so

# Evidence about the CUDA kernels without a GPU (registers, spills, SASS loops, estimates):
# bench/results/gpu-static.{md,json}; fails if a kernel spills.
gpu-static: $(DEPS)
	$(PY) bench/gpu_static.py

# The op library for the lent GPU machine's torch (2.11.0+cu130, sm_90a), built here:
# device-lib/_C.so, which bench/gpu_session.sh loads instead of compiling there.
device-lib: $(DEPS)
	PY=$(PY) bash bench/device_lib.sh

clean:
	rm -rf build dspark_ops/_C.so
