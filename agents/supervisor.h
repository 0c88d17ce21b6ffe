// A small supervisor for `esper run` (and tests): starts agent processes with argv built from a
// launch struct, and learns their endpoints and readiness through a ready pipe, never from log
// text. A child started with `--ready-fd N` inherits the write end of a pipe as descriptor N,
// writes one JSON line when it is ready and closes it: the broker {"pub":…,"sub":…,"rpc":…} once
// bound, Tamiyo {"agent":"tamiyo"} once registered. The supervisor waits with a timeout and
// reports a child that died or never got ready with the last lines of its log.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agents/process.h"

namespace esper::agents {

// ---- the child's side of the ready pipe ----

// Writes `line` and a newline to `fd`, then closes it. A failed write (the supervisor is gone) is
// logged, never fatal. fd < 0 (no --ready-fd given): does nothing.
void write_ready_line(int fd, const nlohmann::json& line);

// ---- what to start ----

struct BusEndpoints {
    std::string pub{}, sub{}, rpc{};
};

struct BrokerLaunch {
    std::string bind = "127.0.0.1";
    int pub_port = 5555;  // 0 = ephemeral (the ready line tells the bound port)
    int sub_port = 5556;
    int rpc_port = 5557;
    int agent_expiry_ms = 3000;
    bool insecure = false;         // needed for a non-loopback bind without keys
    std::filesystem::path keys{};  // --keys: CURVE, DIR/*.pub the allowlist (agents/keys.h)

    std::vector<std::string> argv(const std::filesystem::path& esper) const;
};

// The endpoints in the broker's ready line; nullopt when one is missing or not a string.
std::optional<BusEndpoints> broker_endpoints(const nlohmann::json& ready_line);

struct TamiyoLaunch {
    BusEndpoints bus{};
    std::string run_id{};
    std::filesystem::path config{};   // empty: tamiyo's defaults
    std::string policy{};             // empty: the config's tamiyo.policy
    std::filesystem::path run_dir{};  // non-empty: the policy stack persists there (restarts)
    std::filesystem::path keys{};     // --keys: an agent key and broker.pub
    std::vector<std::filesystem::path> plugin_dirs{};  // live plugin loads only from these

    std::vector<std::string> argv(const std::filesystem::path& esper) const;
};

// `esper dash` for a run: ready line {"http": URL, "port": N} once it serves.
struct DashLaunch {
    BusEndpoints bus{};
    std::string run_id{};
    std::string http = "127.0.0.1:8080";
    std::filesystem::path keys{};  // --keys: broker.pub and a secret key

    std::vector<std::string> argv(const std::filesystem::path& esper) const;
};

struct KasminaLaunch {
    BusEndpoints bus{};
    std::string run_id{};
    std::filesystem::path config{}, run_dir{};
    std::string epochs{}, max_steps{}, seed{};  // overrides; empty: the config's
    std::filesystem::path resume{};             // a checkpoint to continue from
    int world = 1;                              // > 1: --world/--rank and LOCAL_RANK = rank
    int rank = 0;
    std::filesystem::path keys{};  // --keys: an agent key and broker.pub

    std::vector<std::string> argv(const std::filesystem::path& esper) const;
    std::vector<std::string> env() const;
};

// ---- the supervisor ----

enum class ReadyStatus { kReady, kExited, kTimedOut, kBadLine };
std::string_view ready_status_name(ReadyStatus status);

struct Readiness {
    ReadyStatus status = ReadyStatus::kTimedOut;
    nlohmann::json line;             // the ready line (kReady)
    std::optional<int> exit_status;  // kExited
    std::string detail;              // kBadLine: what was wrong with the line
    bool ok() const { return status == ReadyStatus::kReady; }
};

class Supervisor {
public:
    // Children's logs go to log_dir/<name>.log.
    explicit Supervisor(std::filesystem::path log_dir);
    Supervisor(const Supervisor&) = delete;
    Supervisor& operator=(const Supervisor&) = delete;

    // Starts a child that does not report readiness. The supervisor owns it (a child still
    // running when the supervisor is destroyed is stopped).
    ChildProcess& start(const std::string& name, std::vector<std::string> argv,
                        std::vector<std::string> env = {});

    struct Started {
        ChildProcess& child;
        Readiness readiness;
    };
    // Starts a child with `--ready-fd N` appended to argv and waits up to `timeout` for its ready
    // line. A child that is not ready is left as it is (dead, or running): the caller decides.
    Started start_ready(const std::string& name, std::vector<std::string> argv,
                        std::chrono::milliseconds timeout, std::vector<std::string> env = {});

    const std::filesystem::path& log_dir() const { return log_dir_; }

private:
    std::filesystem::path log_dir_;
    std::vector<std::unique_ptr<ChildProcess>> children_;
};

// The report of a child that did not get ready, or that died: one line saying what happened,
// then the last `lines` lines of its log, each indented with "  | ".
std::string describe_failure(ChildProcess& child, const Readiness& readiness, size_t lines = 15);
std::string describe_exit(ChildProcess& child, int status, size_t lines = 15);

}  // namespace esper::agents
