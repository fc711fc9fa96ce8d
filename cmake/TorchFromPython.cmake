# Ask the Python that runs the build where its torch lives, instead of find_package(Torch):
# Torch's CMake config goes through the old FindCUDA and breaks on partial toolkits.
# Sets DSPARK_TORCH_INCLUDE_DIRS, DSPARK_TORCH_LIBRARY_DIR, DSPARK_TORCH_CXX11_ABI and
# DSPARK_TORCH_CUDA_VERSION (empty for a CPU build of torch).
# DSPARK_TORCH_ROOT (a torch package folder, e.g. unpacked from a wheel) builds against that
# torch's headers and libraries without importing it: `make device-lib` uses it to build, on
# this machine, a library for the GPU machine's torch.
if(DSPARK_TORCH_ROOT)
  file(STRINGS "${DSPARK_TORCH_ROOT}/version.py" _dspark_version_lines REGEX "^(__version__|cuda)")
  string(REGEX MATCH "__version__ = '([^']*)'" _m "${_dspark_version_lines}")
  set(DSPARK_TORCH_VERSION "${CMAKE_MATCH_1}")
  string(REGEX MATCH "cuda: [^=]*= '([^']*)'" _m "${_dspark_version_lines}")
  set(DSPARK_TORCH_CUDA_VERSION "${CMAKE_MATCH_1}")
  set(DSPARK_TORCH_INCLUDE_DIRS "${DSPARK_TORCH_ROOT}/include" "${DSPARK_TORCH_ROOT}/include/torch/csrc/api/include")
  set(DSPARK_TORCH_LIBRARY_DIR "${DSPARK_TORCH_ROOT}/lib")
  set(DSPARK_TORCH_CXX11_ABI 1)   # every torch wheel since 2.7 uses the C++11 ABI
  message(STATUS "dspark_ops: torch ${DSPARK_TORCH_VERSION} (CUDA '${DSPARK_TORCH_CUDA_VERSION}') from DSPARK_TORCH_ROOT=${DSPARK_TORCH_ROOT}")
  return()
endif()
find_package(Python COMPONENTS Interpreter REQUIRED)
execute_process(
  COMMAND ${Python_EXECUTABLE} -c [=[
import os, torch
root = os.path.dirname(torch.__file__)
print(os.path.join(root, "include") + ";" + os.path.join(root, "include", "torch", "csrc", "api", "include"))
print(os.path.join(root, "lib"))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(torch.version.cuda or "")
print(torch.__version__)
]=]
  OUTPUT_VARIABLE _dspark_torch_out
  RESULT_VARIABLE _dspark_torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _dspark_torch_rc EQUAL 0)
  message(FATAL_ERROR "dspark_ops: cannot import torch with ${Python_EXECUTABLE}. "
                      "Install torch first and build with --no-build-isolation.")
endif()
string(REPLACE "\n" ";" _dspark_torch_lines "${_dspark_torch_out}")
list(GET _dspark_torch_lines 0 _inc0)
list(GET _dspark_torch_lines 1 _inc1)
list(GET _dspark_torch_lines 2 DSPARK_TORCH_LIBRARY_DIR)
list(GET _dspark_torch_lines 3 DSPARK_TORCH_CXX11_ABI)
list(LENGTH _dspark_torch_lines _n)
set(DSPARK_TORCH_CUDA_VERSION "")
if(_n EQUAL 6)
  list(GET _dspark_torch_lines 4 DSPARK_TORCH_CUDA_VERSION)
  list(GET _dspark_torch_lines 5 DSPARK_TORCH_VERSION)
else()
  list(GET _dspark_torch_lines 4 DSPARK_TORCH_VERSION)
endif()
set(DSPARK_TORCH_INCLUDE_DIRS ${_inc0} ${_inc1})
message(STATUS "dspark_ops: torch ${DSPARK_TORCH_VERSION} (CUDA '${DSPARK_TORCH_CUDA_VERSION}') at ${DSPARK_TORCH_LIBRARY_DIR}")
