# DSPARK_SANITIZE=ON: AddressSanitizer + UBSan on our own code (`make sanitize`). Torch and
# Python stay uninstrumented, so the test run preloads libasan. vptr is off: it checks dynamic
# types against torch's uninstrumented RTTI across library boundaries and reports false
# positives there; every other UBSan check (signed overflow, shifts, bounds, alignment, ...)
# is on and fatal. -O1 (after the build type's flags, so it wins) is AddressSanitizer's
# recommended level; -O2's inlining makes the instrumented template-heavy kernels very slow to
# compile on a small CI machine.
function(dspark_enable_sanitizers target)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    message(FATAL_ERROR "DSPARK_SANITIZE needs GCC or Clang")
  endif()
  set(flags -fsanitize=address,undefined -fno-sanitize=vptr -fno-sanitize-recover=undefined
            -fno-omit-frame-pointer -g -O1)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${flags}>)
  target_link_options(${target} PRIVATE -fsanitize=address,undefined)
endfunction()
