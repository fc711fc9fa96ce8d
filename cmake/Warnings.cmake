# Warnings that catch real mistakes in kernel code without drowning in torch's headers.
function(dspark_set_warnings target)
  target_compile_options(${target} PRIVATE
    # -Wmaybe-uninitialized: GCC 12 false positives on std::optional<at::Tensor>.
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-maybe-uninitialized>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall>)
endfunction()
