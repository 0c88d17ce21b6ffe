# Warning and sanitizer flags shared by every esper target: call esper_target_defaults(tgt).
set(ESPER_CXX_WARNINGS -Wall -Wextra)
if(ESPER_WERROR)
  list(APPEND ESPER_CXX_WARNINGS -Werror)
endif()
set(ESPER_SANITIZERS "")
if(ESPER_SANITIZE_ADDRESS)
  list(APPEND ESPER_SANITIZERS address)
endif()
if(ESPER_SANITIZE_UNDEFINED)
  list(APPEND ESPER_SANITIZERS undefined)
endif()
if(ESPER_SANITIZE_THREAD)
  list(APPEND ESPER_SANITIZERS thread)
endif()

# ESPER_FUZZ: every target carries libFuzzer's coverage instrumentation (the harnesses in
# tests/fuzz link the fuzzer itself); clang only.
if(ESPER_FUZZ AND NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "esper: ESPER_FUZZ needs clang (CXX=clang++)")
endif()

function(esper_target_defaults tgt)
  target_compile_options(${tgt} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:${ESPER_CXX_WARNINGS}>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra --default-stream=per-thread>)
  if(ESPER_WERROR)
    target_compile_options(${tgt} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings>)
  endif()
  if(ESPER_SANITIZERS)
    list(JOIN ESPER_SANITIZERS "," san)
    target_compile_options(${tgt} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${san} -fno-omit-frame-pointer>)
    target_link_options(${tgt} PRIVATE -fsanitize=${san})
    if(ESPER_SANITIZE_UNDEFINED)
      # Undefined behaviour fails the test that hit it, instead of a line in its log.
      target_compile_options(${tgt} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=undefined>)
      target_link_options(${tgt} PRIVATE -fno-sanitize-recover=undefined)
    endif()
  endif()
  if(ESPER_FUZZ)
    target_compile_options(${tgt} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=fuzzer-no-link>)
  endif()
endfunction()

# esper_add_library(<folder> SOURCES...): builds esper_<folder>, ALIAS esper::<folder>.
function(esper_add_library folder)
  add_library(esper_${folder} ${ARGN})
  add_library(esper::${folder} ALIAS esper_${folder})
  target_include_directories(esper_${folder} PUBLIC $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>)
  esper_target_defaults(esper_${folder})
endfunction()
