// `esper run`: the main job. Starts a broker, a Tamiyo controller and the Kasmina executor(s) as
// child processes on this machine (agents/supervisor.h: the broker's endpoints and Tamiyo's
// registration come through ready pipes), shows progress, and on the way out writes report.html
// and prints a summary table. SIGINT/SIGTERM stop the executors first (they write a final
// checkpoint), then the controller and the broker. A child that dies, or never gets ready, is
// reported with the last lines of its log (DIR/logs/<name>.log).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/default_config.h"
#include "agents/keys.h"
#include "agents/process.h"
#include "agents/report.h"
#include "agents/supervisor.h"
#include "core/clock.h"
#include "core/error.h"

namespace esper::agents {
namespace {

namespace fs = std::filesystem;

std::atomic<int> g_signal{0};
extern "C" void on_signal(int sig) { g_signal.store(sig); }

std::string new_run_id() {
    std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", &tm);
    std::random_device rd;
    char suffix[8];
    std::snprintf(suffix, sizeof suffix, "-%04x", rd() & 0xffff);
    return std::string(buf) + suffix;
}

// Follows DIR/metrics.jsonl as it grows and renders progress.
class Progress {
public:
    Progress(fs::path metrics, bool tty) : path_(std::move(metrics)), tty_(tty) {}

    void poll() {
        std::ifstream in(path_);
        if (!in) return;
        in.seekg(offset_);
        std::string line;
        while (std::getline(in, line)) {
            if (in.eof()) break;  // a partial line: read it next time
            offset_ += static_cast<std::streamoff>(line.size() + 1);
            auto j = nlohmann::json::parse(line, nullptr, false);
            if (j.is_discarded() || !j.is_object()) continue;
            std::string split = j.value("split", "");
            if (split == "train") {
                step_ = j.value("step", step_);
                epoch_ = j.value("epoch", epoch_);
                loss_ = j.value("loss", loss_);
                rate_ = j.value("samples_per_s", rate_);
                total_ = j.value("total_steps", total_);
            } else if (split == "test") {
                acc_ = j.value("accuracy", acc_);
                if (!tty_) print_line();
            }
        }
        if (tty_) {
            draw_bar();
        } else if (step_ >= 0 && last_print_.elapsed_s() > 10) {
            print_line();
        }
    }
    void finish() {
        if (tty_ && drawn_) std::fputc('\n', stdout);
        std::fflush(stdout);
    }

private:
    std::string status() const {
        char buf[200];
        std::snprintf(buf, sizeof buf, "epoch %ld step %ld loss %.4f test acc %s %.0f samples/s",
                      static_cast<long>(epoch_), static_cast<long>(step_), loss_,
                      std::isnan(acc_) ? "-" : std::to_string(acc_).substr(0, 6).c_str(), rate_);
        return buf;
    }
    void print_line() {
        if (step_ < 0) return;
        std::printf("[run] %s\n", status().c_str());
        std::fflush(stdout);
        last_print_.reset();
    }
    void draw_bar() {
        if (step_ < 0) return;
        char bar[64] = "";
        if (total_ > 0) {
            constexpr int kWidth = 30;
            const int filled =
                static_cast<int>(kWidth * std::min<double>(1.0, double(step_) / double(total_)));
            char cells[kWidth + 1];
            for (int i = 0; i < kWidth; ++i) cells[i] = i < filled ? '#' : '.';
            cells[kWidth] = '\0';
            std::snprintf(bar, sizeof bar, "[%s] %3d%% ", cells,
                          static_cast<int>(step_ * 100 / total_));
        }
        std::printf("\r\033[K%s%s", bar, status().c_str());
        std::fflush(stdout);
        drawn_ = true;
    }

    fs::path path_;
    bool tty_;
    std::streamoff offset_ = 0;
    int64_t step_ = -1, epoch_ = 0, total_ = 0;
    double loss_ = NAN, acc_ = NAN, rate_ = 0;
    Stopwatch last_print_;
    bool drawn_ = false;
};

void report(const std::string& what) { std::fprintf(stderr, "esper run: %s\n", what.c_str()); }

// What `esper run` was asked to do.
struct RunPlan {
    std::string run_id;
    fs::path run_dir, config_path, exe;
    int64_t port_base = 5555;  // 0 = ephemeral
    int ranks = 1;
    std::string policy, epochs, max_steps, seed;  // empty: not given
    fs::path keys;                                // --secure: RUN_DIR/keys, else empty
};

// The children of a run; the supervisor owns them.
struct RunChildren {
    ChildProcess* broker = nullptr;
    ChildProcess* tamiyo = nullptr;
    ChildProcess* kasmina = nullptr;   // rank 0: serves commands, writes the run directory
    std::vector<ChildProcess*> peers;  // ranks 1..N-1
};

// Writes the embedded config into the run directory when none was given.
fs::path resolve_config(const cli::Option& config, const fs::path& run_dir) {
    if (config.given()) {
        fs::path path = fs::absolute(config.str());
        if (!fs::exists(path)) ESPER_THROW(kInvalidInput, "config file not found: ", config.str());
        return path;
    }
    fs::path path = fs::absolute(run_dir / "config.input.yaml");
    std::ofstream(path) << kDefaultConfigYaml;
    return path;
}

// Validates the config (and the policy) before anything starts, with the same loaders the
// executor and the controller use. Returns 0, or the exit code of `esper run`.
int check_config(const RunPlan& plan) {
    std::vector<std::vector<std::string>> checks = {
        {plan.exe.string(), "kasmina", "--check-config", "--config", plan.config_path.string()},
        {plan.exe.string(), "tamiyo", "--check-config", "--config", plan.config_path.string()}};
    if (!plan.policy.empty()) checks[1].insert(checks[1].end(), {"--policy", plan.policy});
    for (const auto& check : checks) {
        ChildProcess c("config-check", check,
                       plan.run_dir / "logs" / ("check-" + check[1] + ".log"));
        int st = c.wait_for(std::chrono::seconds(60)).value_or(-1);
        if (st != 0) {  // the loaders print one line naming file:line: field: reason
            for (const std::string& l : c.last_log_lines(1))
                std::fprintf(stderr, "%s\n", l.c_str());
            return st == 2 ? cli::kExitUsage : 1;
        }
    }
    return 0;
}

void install_signal_handlers() {
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

void print_banner(const RunPlan& plan, const BusEndpoints& bus) {
    std::printf(
        "esper run %s\n  run dir   %s\n  config    %s\n  bus       pub %s  sub %s  rpc %s\n",
        plan.run_id.c_str(), plan.run_dir.c_str(), plan.config_path.c_str(), bus.pub.c_str(),
        bus.sub.c_str(), bus.rpc.c_str());
    const std::string keys = plan.keys.empty() ? "" : " --keys " + plan.keys.string();
    std::printf("  watch it: %s tap --bus %s%s telemetry.run.%s events.\n", plan.exe.c_str(),
                bus.sub.c_str(), keys.c_str(), plan.run_id.c_str());
    std::printf("  steer it: %s policy load FILE --bus %s%s\n", plan.exe.c_str(), bus.rpc.c_str(),
                keys.c_str());
    std::fflush(stdout);
}

// The broker, then Tamiyo (each waited for through its ready pipe), then the executors. Fills
// `bus` with the broker's endpoints. False (reported) when the broker or Tamiyo did not get ready.
bool start_children(Supervisor& supervisor, const RunPlan& plan, RunChildren& children,
                    BusEndpoints& bus) {
    BrokerLaunch broker;
    auto port = [&](int offset) {
        return plan.port_base == 0 ? 0 : static_cast<int>(plan.port_base + offset);
    };
    broker.pub_port = port(0);
    broker.sub_port = port(1);
    broker.rpc_port = port(2);
    broker.keys = plan.keys;
    auto b = supervisor.start_ready("broker", broker.argv(plan.exe), std::chrono::seconds(10));
    children.broker = &b.child;
    std::optional<BusEndpoints> endpoints;
    if (b.readiness.ok()) endpoints = broker_endpoints(b.readiness.line);
    if (!endpoints) {
        if (b.readiness.ok())
            b.readiness.detail =
                "wrote a ready line without pub/sub/rpc: " + b.readiness.line.dump();
        report(describe_failure(b.child, b.readiness));
        return false;
    }
    bus = *endpoints;
    print_banner(plan, bus);

    TamiyoLaunch tamiyo{.bus = bus,
                        .run_id = plan.run_id,
                        .config = plan.config_path,
                        .policy = plan.policy,
                        .keys = plan.keys};
    auto t = supervisor.start_ready("tamiyo", tamiyo.argv(plan.exe), std::chrono::seconds(30));
    children.tamiyo = &t.child;
    if (!t.readiness.ok()) {
        report(describe_failure(t.child, t.readiness));
        return false;
    }

    // --ranks N: rank 0 serves commands and writes the run directory, ranks 1..N-1 train on
    // their shards; they meet through a FileKvStore in RUN_DIR/rendezvous (docs/distributed.md).
    // Each rank gets LOCAL_RANK = its rank: with the CUDA backend and at least N devices, rank r
    // trains on GPU r and the device gradients are averaged over NCCL; otherwise CPU with Gloo.
    KasminaLaunch kasmina{.bus = bus,
                          .run_id = plan.run_id,
                          .config = plan.config_path,
                          .run_dir = plan.run_dir,
                          .epochs = plan.epochs,
                          .max_steps = plan.max_steps,
                          .seed = plan.seed,
                          .world = plan.ranks,
                          .keys = plan.keys};
    children.kasmina = &supervisor.start("kasmina-0", kasmina.argv(plan.exe), kasmina.env());
    for (int r = 1; r < plan.ranks; ++r) {
        kasmina.rank = r;
        children.peers.push_back(&supervisor.start("kasmina-" + std::to_string(r),
                                                   kasmina.argv(plan.exe), kasmina.env()));
    }
    return true;
}

// Stops the executors once (a final checkpoint each), then waits for them.
struct Shutdown {
    bool stopping = false;
    int exit_code = 0;
    Stopwatch clock;

    void begin(RunChildren& children, int code) {
        if (stopping) return;
        children.kasmina->signal(SIGTERM);
        for (ChildProcess* peer : children.peers) peer->signal(SIGTERM);
        stopping = true;
        clock.reset();
        exit_code = code;
    }
};

// One look at signals and children. True when the run is over (rank 0 has exited).
bool supervise_once(RunChildren& children, Progress& progress, Shutdown& shutdown) {
    progress.poll();
    if (int sig = g_signal.exchange(0); sig != 0) {
        if (!shutdown.stopping) {
            progress.finish();
            std::printf("esper run: %s received, stopping (final checkpoint)...\n",
                        sig == SIGINT ? "SIGINT" : "SIGTERM");
            std::fflush(stdout);
            shutdown.begin(children, sig == SIGINT ? 130 : 0);
        } else {
            children.kasmina->signal(SIGKILL);  // a second signal: no more waiting
        }
    }
    if (auto st = children.kasmina->poll()) {
        if (*st != 0 && !shutdown.stopping) {
            progress.finish();
            report(describe_exit(*children.kasmina, *st));
            shutdown.exit_code = 1;
        }
        return true;
    }
    if (shutdown.stopping && shutdown.clock.elapsed_s() > 30) {
        std::fprintf(stderr, "esper run: executor did not stop within 30 s; killing it\n");
        children.kasmina->stop(std::chrono::milliseconds(100));
        return true;
    }
    for (ChildProcess* peer : children.peers) {
        if (auto st = peer->poll(); st && *st != 0 && !shutdown.stopping) {
            progress.finish();
            report(describe_exit(*peer, *st));
            shutdown.begin(children, 1);  // rank 0 would fail at its next collective anyway
        }
    }
    for (ChildProcess* c : {children.broker, children.tamiyo}) {
        if (auto st = c->poll(); st && !shutdown.stopping) {
            progress.finish();
            report(describe_exit(*c, *st));
            // Without a broker nothing can be steered: stop. Without Tamiyo, training goes on.
            if (c == children.broker) shutdown.begin(children, 1);
        }
    }
    return false;
}

// Waits for the other ranks, stops the controller and the broker, writes the report.
int finish_run(const RunPlan& plan, RunChildren& children, Progress& progress, int exit_code) {
    for (ChildProcess* peer : children.peers) {
        std::optional<int> st = peer->wait_for(std::chrono::seconds(30));
        if (!st) st = peer->stop(std::chrono::milliseconds(3000));
        if (*st != 0 && exit_code == 0) {
            report(describe_exit(*peer, *st));
            exit_code = 1;
        }
    }
    progress.poll();
    progress.finish();
    children.tamiyo->stop(std::chrono::milliseconds(3000));
    children.broker->stop(std::chrono::milliseconds(3000));

    fs::path report_path = write_report(plan.run_dir);
    std::printf("\n%s\n  report    %s\n  events    %s\n  metrics   %s\n",
                format_summary(summarize_run(plan.run_dir)).c_str(), report_path.c_str(),
                (plan.run_dir / "events.jsonl").c_str(), (plan.run_dir / "metrics.jsonl").c_str());
    return exit_code;
}

}  // namespace

int run_main(int argc, char** argv) {
    cli::Parser p(
        "esper run",
        "Run the main job on this machine: a broker, the Tamiyo controller and a Kasmina\n"
        "executor, training the given config (default: the embedded Fashion-MNIST config)\n"
        "while the controller grows the network.");
    auto& config = p.option("config", "FILE", "run config (YAML)", "embedded fashion_mnist.yaml");
    auto& run_dir_opt = p.option("run-dir", "DIR", "run directory", "runs/<id>");
    auto& epochs = p.option("epochs", "N", "override run.epochs");
    auto& max_steps = p.option("max-steps", "N", "override run.max_steps (stop after N steps)");
    auto& port_base = p.option("bus-port-base", "N",
                               "broker ports N (pub), N+1 (sub), N+2 (rpc); 0 = ephemeral", "5555");
    auto& policy =
        p.option("policy", "FILE|heuristic",
                 "controller policy (default: the config's tamiyo.policy, else heuristic)");
    auto& seed = p.option("seed", "N", "override run.seed");
    auto& ranks_opt = p.option("ranks", "N",
                               "data-parallel executors on this machine (GPU per rank over NCCL "
                               "when there are N, else CPU: Gloo)",
                               "1");
    auto& secure = p.flag("secure",
                          "CURVE on the bus: make a key set in RUN_DIR/keys (esper keygen --all) "
                          "and give every process its key; tools then need --keys RUN_DIR/keys");
    p.epilog(
        "Watch a run with the `esper tap` command it prints; change its policy with\n"
        "`esper policy load FILE --bus tcp://127.0.0.1:<N+2>`.");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (!p.positional().empty())
        return p.usage_error("unexpected argument '" + p.positional()[0] + "'");
    RunPlan plan;
    plan.port_base = port_base.as_int();
    const int64_t ranks = ranks_opt.as_int();
    if (ranks < 1 || ranks > 64) return p.usage_error("--ranks must be in 1..64");
    if (plan.port_base < 0 || plan.port_base > 65533)
        return p.usage_error("--bus-port-base must be in 0..65533");
    plan.ranks = static_cast<int>(ranks);
    plan.run_id = new_run_id();
    plan.run_dir =
        run_dir_opt.given() ? fs::path(run_dir_opt.str()) : fs::path("runs") / plan.run_id;
    if (run_dir_opt.given()) plan.run_id = plan.run_dir.filename().string();
    fs::create_directories(plan.run_dir / "logs");
    plan.config_path = resolve_config(config, plan.run_dir);
    plan.exe = self_exe_dir() / "esper";
    if (policy.given()) plan.policy = policy.str();
    if (epochs.given()) plan.epochs = epochs.str();
    if (max_steps.given()) plan.max_steps = max_steps.str();
    if (seed.given()) plan.seed = seed.str();
    if (secure.on()) {
        plan.keys = fs::absolute(plan.run_dir / "keys");
        write_run_keys(plan.keys);
    }
    if (int rc = check_config(plan); rc != 0) return rc;

    install_signal_handlers();
    Supervisor supervisor(plan.run_dir / "logs");
    RunChildren children;
    BusEndpoints bus;
    if (!start_children(supervisor, plan, children, bus)) return 1;
    Progress progress(plan.run_dir / "metrics.jsonl", ::isatty(STDOUT_FILENO) != 0);
    Shutdown shutdown;
    while (!supervise_once(children, progress, shutdown))
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    return finish_run(plan, children, progress, shutdown.exit_code);
}

}  // namespace esper::agents
