// Where tests find what they need at run time, never through a path baked in at build time (a
// bundle copied to a GPU node has no source tree): an environment variable first, then a path
// relative to the running test binary. The build tree and a bundle (scripts/bundle.sh) share the
// layout bin/<test>, bin/esper, lib/<plugins>, share/esper/{examples,bench,schemas}.
//   ESPER_BIN            the esper binary the integration/fault tests start (default bin/esper)
//   ESPER_TEST_DATA_DIR  the directory holding examples/, bench/quality/, schemas/
//   ESPER_TEST_LIB_DIR   the directory holding the test policy plugins (default lib/)
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

namespace esper::testing {

// The directory of the running executable (bin/).
inline std::filesystem::path self_dir() {
    std::error_code ec;
    const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::filesystem::current_path() : exe.parent_path();
}

inline std::filesystem::path from_env_or(const char* var, const std::filesystem::path& fallback) {
    const char* v = std::getenv(var);
    return v != nullptr && *v != '\0' ? std::filesystem::path(v) : fallback;
}

// The esper binary under test.
inline std::string esper_binary() {
    return from_env_or("ESPER_BIN", self_dir() / "esper").string();
}

// A file of the test data (`rel` as in the source tree, e.g. "examples/fashion_mnist.yaml").
inline std::string test_data(std::string_view rel) {
    return (from_env_or("ESPER_TEST_DATA_DIR", self_dir().parent_path() / "share" / "esper") / rel)
        .string();
}

// A shared library built for the tests (e.g. a policy plugin), by file name.
inline std::string test_library(std::string_view name) {
    return (from_env_or("ESPER_TEST_LIB_DIR", self_dir().parent_path() / "lib") / name).string();
}

// A fresh scratch directory for one test (under $TMPDIR), e.g. for files a test writes.
inline std::filesystem::path scratch_dir(std::string_view tag) {
    static int n = 0;
    auto dir = std::filesystem::temp_directory_path() /
               (std::string("esper-") + std::string(tag) + "-" + std::to_string(::getpid()) + "-" +
                std::to_string(n++));
    std::filesystem::create_directories(dir);
    return dir;
}

}  // namespace esper::testing
