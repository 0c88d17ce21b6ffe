// esper::Error: the one exception type, for logistics failures (bad config, lost peer, missing
// file, CUDA/NCCL errors). Bugs abort through ESPER_ASSERT/ESPER_REQUIRE instead (core/check.h);
// expected outcomes are return values. Only agents/ catches.
#pragma once

#include <exception>
#include <sstream>
#include <string>
#include <string_view>

namespace esper {

enum class ErrorKind {
    kFailed,         // the operation failed; retrying the same input will fail again
    kOverloaded,     // resources exhausted; back off and retry
    kDisconnected,   // a peer or device went away; reconnect and redo
    kUnimplemented,  // the request names something this build does not support
    kInvalidInput,   // user input (config, file, flag) is wrong; the message names it
    kIntegrity,      // data failed a hash/version/format check (checkpoints, frames)
};

std::string_view error_kind_name(ErrorKind kind);

class Error : public std::exception {
public:
    Error(ErrorKind kind, std::string message, const char* file = nullptr, int line = 0);

    ErrorKind kind() const noexcept { return kind_; }
    const std::string& message() const noexcept { return message_; }
    const char* file() const noexcept { return file_; }
    int line() const noexcept { return line_; }
    const char* what() const noexcept override { return what_.c_str(); }

private:
    ErrorKind kind_;
    std::string message_;
    const char* file_;
    int line_;
    std::string what_;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
    std::ostringstream os;
    (os << ... << args);
    return os.str();
}
}  // namespace detail

}  // namespace esper

// ESPER_THROW(kind, ctx...): throw esper::Error with file:line and the concatenated context.
#define ESPER_THROW(kind, ...)                                                                     \
    throw ::esper::Error(::esper::ErrorKind::kind, ::esper::detail::concat(__VA_ARGS__), __FILE__, \
                         __LINE__)

// ESPER_CHECK_INPUT(cond, ctx...): a check of user input that throws kInvalidInput.
#define ESPER_CHECK_INPUT(cond, ...)                          \
    do {                                                      \
        if (!(cond)) ESPER_THROW(kInvalidInput, __VA_ARGS__); \
    } while (0)
