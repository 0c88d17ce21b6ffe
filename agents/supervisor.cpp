// Supervisor, the launch structs and the ready-pipe protocol; see supervisor.h.
#include "agents/supervisor.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/log.h"

namespace esper::agents {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

Logger& supervisor_log() { return logger("agents.supervisor"); }

// One pipe end; closed once.
class Fd {
public:
    explicit Fd(int fd) : fd_(fd) {}
    ~Fd() { reset(); }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    int get() const { return fd_; }
    void reset() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }

private:
    int fd_;
};

// A ready line longer than this is not a ready line.
constexpr size_t kMaxReadyLineBytes = 64 * 1024;

Readiness parse_ready_line(const std::string& text) {
    Readiness r;
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
        r.status = ReadyStatus::kBadLine;
        r.detail = "wrote a ready line that is not a JSON object: " + text.substr(0, 200);
        return r;
    }
    r.status = ReadyStatus::kReady;
    r.line = std::move(j);
    return r;
}

// Reads the child's ready line from `fd` (the read end; the child holds the only write end).
Readiness wait_ready(ChildProcess& child, int fd, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    std::string buffer;
    bool eof = false;
    while (!eof) {
        if (auto nl = buffer.find('\n'); nl != std::string::npos)
            return parse_ready_line(buffer.substr(0, nl));
        if (buffer.size() > kMaxReadyLineBytes) {
            Readiness r;
            r.status = ReadyStatus::kBadLine;
            r.detail = "wrote more than " + std::to_string(kMaxReadyLineBytes) +
                       " bytes without a newline on its ready pipe";
            return r;
        }
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) {
            Readiness r;
            r.status = ReadyStatus::kTimedOut;
            r.detail = "was not ready within " + std::to_string(timeout.count()) + " ms";
            return r;
        }
        pollfd p{fd, POLLIN, 0};
        int rc = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 100)));
        if (rc < 0 && errno != EINTR)
            ESPER_THROW(kFailed, "poll on the ready pipe of ", child.name(), ": ",
                        std::strerror(errno));
        if (rc <= 0) continue;
        char chunk[4096];
        ssize_t n = ::read(fd, chunk, sizeof chunk);
        if (n > 0) {
            buffer.append(chunk, static_cast<size_t>(n));
        } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
            eof = true;  // every write end is closed: the child closed it or died
        }
    }
    if (auto nl = buffer.find('\n'); nl != std::string::npos)
        return parse_ready_line(buffer.substr(0, nl));
    Readiness r;
    // Closing the pipe without a line normally means the child is exiting; give it a moment.
    if (auto st = child.wait_for(std::chrono::milliseconds(2000))) {
        r.status = ReadyStatus::kExited;
        r.exit_status = st;
        r.detail = "exited (status " + std::to_string(*st) + ") before it was ready";
    } else {
        r.status = ReadyStatus::kBadLine;
        r.detail = buffer.empty()
                       ? "closed its ready pipe without writing a line"
                       : "closed its ready pipe after a partial line: " + buffer.substr(0, 200);
    }
    return r;
}

std::string log_tail(const ChildProcess& child, size_t lines) {
    std::string out = "; last lines of " + child.log_path().string() + ":";
    for (const std::string& l : child.last_log_lines(lines)) out += "\n  | " + l;
    return out;
}

std::string port_arg(int port) { return std::to_string(port); }

}  // namespace

// ---- the child's side ----

void write_ready_line(int fd, const nlohmann::json& line) {
    if (fd < 0) return;
    const std::string text = line.dump() + "\n";
    size_t done = 0;
    while (done < text.size()) {
        ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            ESPER_LOG_WARN(supervisor_log(), "ready fd=", fd,
                           " write failed: ", std::strerror(errno));
            break;
        }
        done += static_cast<size_t>(n);
    }
    ::close(fd);
}

// ---- launch structs ----

std::vector<std::string> BrokerLaunch::argv(const fs::path& esper) const {
    std::vector<std::string> a = {esper.string(),
                                  "broker",
                                  "--bind",
                                  bind,
                                  "--pub-port",
                                  port_arg(pub_port),
                                  "--sub-port",
                                  port_arg(sub_port),
                                  "--rpc-port",
                                  port_arg(rpc_port),
                                  "--agent-expiry-ms",
                                  std::to_string(agent_expiry_ms)};
    if (insecure) a.push_back("--insecure");
    if (!keys.empty()) a.insert(a.end(), {"--keys", keys.string()});
    return a;
}

std::optional<BusEndpoints> broker_endpoints(const nlohmann::json& ready_line) {
    BusEndpoints e;
    for (auto [key, field] : {std::pair{"pub", &e.pub}, {"sub", &e.sub}, {"rpc", &e.rpc}}) {
        auto it = ready_line.find(key);
        if (it == ready_line.end() || !it->is_string() || it->get<std::string>().empty())
            return std::nullopt;
        *field = it->get<std::string>();
    }
    return e;
}

std::vector<std::string> TamiyoLaunch::argv(const fs::path& esper) const {
    std::vector<std::string> a = {esper.string(), "tamiyo", "--bus-pub", bus.pub,    "--bus-sub",
                                  bus.sub,        "--bus",  bus.rpc,     "--run-id", run_id};
    if (!config.empty()) a.insert(a.end(), {"--config", config.string()});
    if (!policy.empty()) a.insert(a.end(), {"--policy", policy});
    if (!keys.empty()) a.insert(a.end(), {"--keys", keys.string()});
    if (!run_dir.empty()) a.insert(a.end(), {"--run-dir", run_dir.string()});
    for (const auto& d : plugin_dirs) a.insert(a.end(), {"--plugin-dir", d.string()});
    return a;
}

std::vector<std::string> DashLaunch::argv(const fs::path& esper) const {
    std::vector<std::string> a = {esper.string(), "dash",  "--bus", bus.sub,  "--bus-rpc",
                                  bus.rpc,        "--run", run_id,  "--http", http};
    if (!keys.empty()) a.insert(a.end(), {"--keys", keys.string()});
    return a;
}

std::vector<std::string> KasminaLaunch::argv(const fs::path& esper) const {
    std::vector<std::string> a = {esper.string(), "kasmina",        "--config",  config.string(),
                                  "--run-dir",    run_dir.string(), "--run-id",  run_id,
                                  "--bus-pub",    bus.pub,          "--bus-sub", bus.sub,
                                  "--bus",        bus.rpc};
    if (!epochs.empty()) a.insert(a.end(), {"--epochs", epochs});
    if (!max_steps.empty()) a.insert(a.end(), {"--max-steps", max_steps});
    if (!seed.empty()) a.insert(a.end(), {"--seed", seed});
    if (!resume.empty()) a.insert(a.end(), {"--resume", resume.string()});
    if (world > 1)
        a.insert(a.end(), {"--world", std::to_string(world), "--rank", std::to_string(rank)});
    if (!keys.empty()) a.insert(a.end(), {"--keys", keys.string()});
    return a;
}

std::vector<std::string> KasminaLaunch::env() const {
    // With the CUDA backend and enough devices, rank r trains on GPU r.
    if (world > 1) return {"LOCAL_RANK=" + std::to_string(rank)};
    return {};
}

// ---- supervisor ----

std::string_view ready_status_name(ReadyStatus status) {
    switch (status) {
        case ReadyStatus::kReady:
            return "ready";
        case ReadyStatus::kExited:
            return "exited";
        case ReadyStatus::kTimedOut:
            return "timed_out";
        case ReadyStatus::kBadLine:
            return "bad_line";
    }
    return "unknown";
}

Supervisor::Supervisor(fs::path log_dir) : log_dir_(std::move(log_dir)) {}

ChildProcess& Supervisor::start(const std::string& name, std::vector<std::string> argv,
                                std::vector<std::string> env) {
    children_.push_back(std::make_unique<ChildProcess>(name, std::move(argv),
                                                       log_dir_ / (name + ".log"), std::move(env)));
    return *children_.back();
}

Supervisor::Started Supervisor::start_ready(const std::string& name, std::vector<std::string> argv,
                                            std::chrono::milliseconds timeout,
                                            std::vector<std::string> env) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0)
        ESPER_THROW(kFailed, "cannot create the ready pipe of ", name, ": ", std::strerror(errno));
    Fd read_end(fds[0]), write_end(fds[1]);
    argv.insert(argv.end(), {"--ready-fd", std::to_string(ChildProcess::kInheritedFd)});
    children_.push_back(std::make_unique<ChildProcess>(
        name, std::move(argv), log_dir_ / (name + ".log"), std::move(env), write_end.get()));
    ChildProcess& child = *children_.back();
    write_end.reset();  // the child holds the only write end now: EOF when it closes or dies
    Readiness r = wait_ready(child, read_end.get(), timeout);
    if (r.ok()) ESPER_LOG_DEBUG(supervisor_log(), "child=", name, " ready line=", r.line.dump());
    return {child, std::move(r)};
}

std::string describe_failure(ChildProcess& child, const Readiness& readiness, size_t lines) {
    return child.name() + " " + readiness.detail + log_tail(child, lines);
}

std::string describe_exit(ChildProcess& child, int status, size_t lines) {
    return child.name() + " exited unexpectedly (status " + std::to_string(status) + ")" +
           log_tail(child, lines);
}

}  // namespace esper::agents
