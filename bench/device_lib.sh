#!/usr/bin/env bash
# Build, on this machine, the op library for the lent GPU machine (torch 2.11.0+cu130, sm_90a),
# so that the GPU session spends no device time compiling. The library has no Python bindings,
# so it only needs torch's headers and libraries: they come from the torch wheel, unpacked, not
# installed (any Python here will do).
#
#   bash bench/device_lib.sh            # -> device-lib/_C.so (+ _C.torch_version), ignored by git
#
# bench/gpu_session.sh uses device-lib/ when the GPU machine's torch is the version it was
# built for, and builds there otherwise. Environment: DEVICE_TORCH (default 2.11.0),
# TORCH_CUDA_ARCH_LIST (default 9.0a), PY (default python3), MAX_JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${DEVICE_TORCH:-2.11.0}"
py="${PY:-python3}"
root="build/torch-$version"
if [ ! -f "$root/torch/version.py" ]; then
  mkdir -p "$root/wheel"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$root/wheel" "torch==$version"
  unzip -q -o "$root"/wheel/torch-*.whl 'torch/version.py' 'torch/include/*' 'torch/lib/*' -d "$root"
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"
"$py" -m cmake -S . -B build/device -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DDSPARK_TORCH_ROOT="$PWD/$root/torch" > build/device-configure.log
"$py" -m cmake --build build/device -j "${MAX_JOBS:-2}"
mkdir -p device-lib
cp build/device/_C.so device-lib/_C.so
grep -o "__version__ = '[^']*'" "$root/torch/version.py" | cut -d"'" -f2 > device-lib/_C.torch_version
echo "device-lib/_C.so built for torch $(cat device-lib/_C.torch_version), TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST ($(du -h device-lib/_C.so | cut -f1))"
