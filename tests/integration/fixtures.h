// Fixtures shared by the integration tests: the real `esper` binary, scratch directories, JSON
// line files, and a broker child process on ephemeral loopback ports whose endpoints come
// through its ready pipe (agents/supervisor.h), as in `esper run`.
#pragma once

#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "agents/process.h"
#include "agents/supervisor.h"
#include "core/clock.h"
#include "tests/support/paths.h"

namespace esper::test {

using esper::agents::ChildProcess;
using std::chrono::milliseconds;

// The binary under test: $ESPER_BIN, else the esper next to this test binary.
inline const std::string kEsper = esper::testing::esper_binary();

inline std::filesystem::path scratch_dir() {
    static int n = 0;  // one process per test case under ctest
    auto dir = std::filesystem::temp_directory_path() /
               ("esper-it-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
    std::filesystem::create_directories(dir);
    return dir;
}

inline std::vector<std::string> read_lines(const std::filesystem::path& path) {
    std::vector<std::string> lines;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

inline std::vector<nlohmann::json> json_lines(const std::filesystem::path& path) {
    std::vector<nlohmann::json> out;
    for (const auto& line : read_lines(path)) {
        if (line.empty() || line[0] != '{') continue;
        auto j = nlohmann::json::parse(line, nullptr, false);  // a line being written is skipped
        if (!j.is_discarded()) out.push_back(std::move(j));
    }
    return out;
}

// A broker child process on ephemeral ports; endpoints from its ready line.
struct BrokerProcess {
    std::filesystem::path dir = scratch_dir();
    esper::agents::Supervisor supervisor{dir};
    ChildProcess* child = nullptr;
    std::string pub, sub, rpc;

    BrokerProcess() {
        esper::agents::BrokerLaunch launch{
            .pub_port = 0, .sub_port = 0, .rpc_port = 0, .agent_expiry_ms = 2000};
        auto started = supervisor.start_ready("broker", launch.argv(kEsper), milliseconds(10000));
        child = &started.child;
        INFO(esper::agents::describe_failure(started.child, started.readiness));
        REQUIRE(started.readiness.ok());
        auto endpoints = esper::agents::broker_endpoints(started.readiness.line);
        REQUIRE(endpoints);
        pub = endpoints->pub;
        sub = endpoints->sub;
        rpc = endpoints->rpc;
    }
    ~BrokerProcess() {
        if (child) child->stop(milliseconds(3000));
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
    }
};

inline int run_to_exit(const std::vector<std::string>& argv, const std::filesystem::path& log,
                       int timeout_ms = 10000) {
    ChildProcess p("cmd", argv, log);
    auto rc = p.wait_for(milliseconds(timeout_ms));
    REQUIRE(rc.has_value());
    return *rc;
}

// Polls `pred` every 20 ms until it holds or `timeout_s` passes.
inline bool wait_until(const std::function<bool()>& pred, double timeout_s) {
    for (Stopwatch sw; sw.elapsed_s() < timeout_s; std::this_thread::sleep_for(milliseconds(20)))
        if (pred()) return true;
    return pred();
}

}  // namespace esper::test
