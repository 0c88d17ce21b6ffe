// Child processes for `esper run` and the launch scripts' local mode: spawn with stdout/stderr
// sent to a log file (and optionally one more descriptor passed down, e.g. a ready pipe), poll
// for exit without blocking, stop with SIGTERM then SIGKILL after a grace period, and show the
// last lines of a child's log when it dies.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace esper::agents {

class ChildProcess {
public:
    // The descriptor number under which the child receives `inherited_fd`.
    static constexpr int kInheritedFd = 3;

    // Starts argv[0] (a path) with argv, extra environment entries ("K=V") added to ours, and
    // stdout+stderr appended to `log_path`. `inherited_fd` >= 0: a descriptor of ours that the
    // child gets as kInheritedFd (every other descriptor of ours stays closed in the child).
    // Throws esper::Error when the spawn fails.
    ChildProcess(std::string name, std::vector<std::string> argv, std::filesystem::path log_path,
                 std::vector<std::string> extra_env = {}, int inherited_fd = -1);
    ~ChildProcess();  // stops the child if it still runs
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;

    const std::string& name() const { return name_; }
    pid_t pid() const { return pid_; }
    const std::filesystem::path& log_path() const { return log_path_; }

    // Non-blocking: the exit status once the child has exited (128+signal for a signal).
    std::optional<int> poll();
    bool running() { return !poll().has_value(); }
    // Sends `sig` if the child runs.
    void signal(int sig);
    // SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status.
    int stop(std::chrono::milliseconds grace = std::chrono::milliseconds(5000));
    // Blocks until exit or timeout; the status if it exited.
    std::optional<int> wait_for(std::chrono::milliseconds timeout);
    // The last `n` lines of the child's log.
    std::vector<std::string> last_log_lines(size_t n) const;

private:
    std::string name_;
    std::filesystem::path log_path_;
    pid_t pid_ = -1;
    std::optional<int> status_;
};

// The directory holding the running executable (for finding sibling binaries).
std::filesystem::path self_exe_dir();

}  // namespace esper::agents
