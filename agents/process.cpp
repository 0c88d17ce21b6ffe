#include "agents/process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <thread>

#include "core/error.h"

extern char** environ;

namespace esper::agents {

ChildProcess::ChildProcess(std::string name, std::vector<std::string> argv,
                           std::filesystem::path log_path, std::vector<std::string> extra_env,
                           int inherited_fd)
    : name_(std::move(name)), log_path_(std::move(log_path)) {
    if (argv.empty()) ESPER_THROW(kInvalidInput, "spawn ", name_, ": empty argv");
    std::filesystem::create_directories(log_path_.parent_path());
    int fd = ::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        ESPER_THROW(kFailed, "cannot open log ", log_path_.string(), ": ", std::strerror(errno));

    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
        std::string kv = *e;
        auto key = kv.substr(0, kv.find('=') + 1);
        bool overridden = false;
        for (const std::string& x : extra_env)
            if (x.rfind(key, 0) == 0) overridden = true;
        if (!overridden) env.push_back(std::move(kv));
    }
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> cargv, cenv;
    for (std::string& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    for (std::string& e : env) cenv.push_back(e.data());
    cenv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fd, STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, fd, STDERR_FILENO);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    // dup2 clears close-on-exec on the copy; it runs last, so a log fd that happened to be
    // number 3 has already been copied to 1 and 2. A source that is already number 3 is moved
    // out of the way first (dup2 onto itself would keep its close-on-exec flag).
    int passed_fd = -1;
    if (inherited_fd >= 0) {
        passed_fd = ::fcntl(inherited_fd, F_DUPFD_CLOEXEC, kInheritedFd + 1);
        if (passed_fd < 0) {
            posix_spawn_file_actions_destroy(&actions);
            ::close(fd);
            ESPER_THROW(kFailed, "spawn ", name_, ": cannot pass descriptor ", inherited_fd, ": ",
                        std::strerror(errno));
        }
        posix_spawn_file_actions_adddup2(&actions, passed_fd, kInheritedFd);
    }
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    // The child gets default signal handling and an empty mask, whatever the parent blocks.
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int rc = posix_spawn(&pid_, cargv[0], &actions, &attr, cargv.data(), cenv.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    ::close(fd);
    if (passed_fd >= 0) ::close(passed_fd);
    if (rc != 0)
        ESPER_THROW(kFailed, "cannot start ", name_, " (", argv[0], "): ", std::strerror(rc));
}

ChildProcess::~ChildProcess() {
    if (pid_ > 0 && !status_) stop(std::chrono::milliseconds(2000));
}

std::optional<int> ChildProcess::poll() {
    if (status_ || pid_ <= 0) return status_;
    int st = 0;
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return status_;
}

void ChildProcess::signal(int sig) {
    if (pid_ > 0 && !poll()) ::kill(pid_, sig);
}

std::optional<int> ChildProcess::wait_for(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!poll()) {
        if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return status_;
}

int ChildProcess::stop(std::chrono::milliseconds grace) {
    if (auto st = poll()) return *st;
    signal(SIGTERM);
    if (auto st = wait_for(grace)) return *st;
    signal(SIGKILL);
    auto st = wait_for(std::chrono::milliseconds(5000));
    return st.value_or(137);
}

std::vector<std::string> ChildProcess::last_log_lines(size_t n) const {
    std::ifstream in(log_path_);
    std::deque<std::string> lines;
    std::string line;
    while (std::getline(in, line)) {
        lines.push_back(line);
        if (lines.size() > n) lines.pop_front();
    }
    return {lines.begin(), lines.end()};
}

std::filesystem::path self_exe_dir() {
    std::error_code ec;
    auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::filesystem::current_path() : p.parent_path();
}

}  // namespace esper::agents
