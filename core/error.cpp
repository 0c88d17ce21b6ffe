#include "core/error.h"

namespace esper {

std::string_view error_kind_name(ErrorKind kind) {
    switch (kind) {
        case ErrorKind::kFailed:
            return "failed";
        case ErrorKind::kOverloaded:
            return "overloaded";
        case ErrorKind::kDisconnected:
            return "disconnected";
        case ErrorKind::kUnimplemented:
            return "unimplemented";
        case ErrorKind::kInvalidInput:
            return "invalid input";
        case ErrorKind::kIntegrity:
            return "integrity";
    }
    return "unknown";
}

Error::Error(ErrorKind kind, std::string message, const char* file, int line)
    : kind_(kind), message_(std::move(message)), file_(file), line_(line) {
    what_ = message_;
}

}  // namespace esper
