// Bug checks: ESPER_ASSERT for our own invariants, ESPER_REQUIRE for a caller's preconditions.
// Both print the expression, file:line and the context values, then abort: an agent is a process
// and its launcher restarts it. Never use them on bus input or user files (throw esper::Error).
// ESPER_CUDA_CHECK / ESPER_NCCL_CHECK live in core/cuda_check.h so host-only code stays CUDA-free.
#pragma once

#include "core/error.h"

namespace esper::detail {
[[noreturn]] void check_failed(const char* macro, const char* expr, const char* file, int line,
                               const std::string& context);
}  // namespace esper::detail

#define ESPER_ASSERT(cond, ...)                                                                    \
    do {                                                                                           \
        if (!(cond)) [[unlikely]]                                                                  \
            ::esper::detail::check_failed("ESPER_ASSERT", #cond, __FILE__, __LINE__,               \
                                          ::esper::detail::concat("" __VA_OPT__(, ) __VA_ARGS__)); \
    } while (0)

#define ESPER_REQUIRE(cond, ...)                                                                   \
    do {                                                                                           \
        if (!(cond)) [[unlikely]]                                                                  \
            ::esper::detail::check_failed("ESPER_REQUIRE", #cond, __FILE__, __LINE__,              \
                                          ::esper::detail::concat("" __VA_OPT__(, ) __VA_ARGS__)); \
    } while (0)
