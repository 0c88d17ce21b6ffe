#include "core/check.h"

#include <cstdio>
#include <cstdlib>

namespace esper::detail {

void check_failed(const char* macro, const char* expr, const char* file, int line,
                  const std::string& context) {
    std::fprintf(stderr, "%s:%d: %s(%s) failed%s%s\n", file, line, macro, expr,
                 context.empty() ? "" : ": ", context.c_str());
    std::fflush(stderr);
    std::abort();
}

}  // namespace esper::detail
