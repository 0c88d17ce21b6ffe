// `esper run`: the main job. Starts a broker, a Tamiyo controller and the Kasmina executor(s) as
// child processes on this machine, shows progress, and on the way out writes report.html and
// prints a summary table. SIGINT/SIGTERM stop the executors first (they write a final
// checkpoint), then the controller and the broker. A child that dies is reported with the last
// lines of its log (DIR/logs/<name>.log).
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
#include <optional>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/default_config.h"
#include "agents/process.h"
#include "agents/report.h"
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
            const int filled = static_cast<int>(kWidth * std::min<double>(1.0, double(step_) / double(total_)));
            char cells[kWidth + 1];
            for (int i = 0; i < kWidth; ++i) cells[i] = i < filled ? '#' : '.';
            cells[kWidth] = '\0';
            std::snprintf(bar, sizeof bar, "[%s] %3d%% ", cells, static_cast<int>(step_ * 100 / total_));
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

void report_death(ChildProcess& c, int status) {
    std::fprintf(stderr, "esper run: %s exited unexpectedly (status %d); last lines of %s:\n",
                 c.name().c_str(), status, c.log_path().c_str());
    for (const std::string& l : c.last_log_lines(15)) std::fprintf(stderr, "  | %s\n", l.c_str());
}

}  // namespace

int run_main(int argc, char** argv) {
    cli::Parser p("esper run",
                  "Run the main job on this machine: a broker, the Tamiyo controller and a Kasmina\n"
                  "executor, training the given config (default: the embedded Fashion-MNIST config)\n"
                  "while the controller grows the network.");
    auto& config = p.option("config", "FILE", "run config (YAML)", "embedded fashion_mnist.yaml");
    auto& run_dir_opt = p.option("run-dir", "DIR", "run directory", "runs/<id>");
    auto& epochs = p.option("epochs", "N", "override run.epochs");
    auto& max_steps = p.option("max-steps", "N", "override run.max_steps (stop after N steps)");
    auto& port_base = p.option("bus-port-base", "N", "broker ports N (pub), N+1 (sub), N+2 (rpc); 0 = ephemeral", "5555");
    auto& policy = p.option("policy", "FILE|heuristic", "controller policy (default: the config's tamiyo.policy, else heuristic)");
    auto& seed = p.option("seed", "N", "override run.seed");
    auto& ranks_opt = p.option("ranks", "N", "data-parallel executors on this machine (GPU per rank over NCCL when there are N, else CPU: Gloo)", "1");
    p.epilog("Watch a run with the `esper tap` command it prints; change its policy with\n"
             "`esper policy load FILE --bus tcp://127.0.0.1:<N+2>`.");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (!p.positional().empty()) return p.usage_error("unexpected argument '" + p.positional()[0] + "'");
    int64_t base = port_base.as_int();
    const int64_t ranks = ranks_opt.as_int();
    if (ranks < 1 || ranks > 64) return p.usage_error("--ranks must be in 1..64");
    if (base < 0 || base > 65533) return p.usage_error("--bus-port-base must be in 0..65533");

    std::string run_id = new_run_id();
    fs::path run_dir = run_dir_opt.given() ? fs::path(run_dir_opt.str()) : fs::path("runs") / run_id;
    if (run_dir_opt.given()) run_id = run_dir.filename().string();
    fs::create_directories(run_dir / "logs");
    fs::path config_path;
    if (config.given()) {
        config_path = fs::absolute(config.str());
        if (!fs::exists(config_path)) ESPER_THROW(kInvalidInput, "config file not found: ", config.str());
    } else {
        config_path = fs::absolute(run_dir / "config.input.yaml");
        std::ofstream(config_path) << kDefaultConfigYaml;
    }

    fs::path exe = self_exe_dir() / "esper";
    std::string host = "127.0.0.1";
    auto port = [base](int64_t offset) { return std::to_string(base == 0 ? 0 : base + offset); };

    // Validate the config (and the policy) before anything starts, with the same loaders the
    // executor and the controller use.
    std::vector<std::vector<std::string>> checks = {
        {exe.string(), "kasmina", "--check-config", "--config", config_path.string()},
        {exe.string(), "tamiyo", "--check-config", "--config", config_path.string()}};
    if (policy.given()) checks[1].insert(checks[1].end(), {"--policy", policy.str()});
    for (const auto& check : checks) {
        ChildProcess c("config-check", check, run_dir / "logs" / ("check-" + check[1] + ".log"));
        int st = c.wait_for(std::chrono::seconds(60)).value_or(-1);
        if (st != 0) {  // the loaders print one line naming file:line: field: reason
            for (const std::string& l : c.last_log_lines(1)) std::fprintf(stderr, "%s\n", l.c_str());
            return st == 2 ? cli::kExitUsage : 1;
        }
    }

    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);

    auto broker = std::make_unique<ChildProcess>(
        "broker",
        std::vector<std::string>{exe.string(), "broker", "--bind", host, "--pub-port", port(0),
                                 "--sub-port", port(1), "--rpc-port", port(2)},
        run_dir / "logs" / "broker.log");
    // The broker prints "broker pub=… sub=… rpc=…" once it has bound (ports resolved when 0).
    std::string pub_ep, sub_ep, rpc_ep;
    for (Stopwatch sw; pub_ep.empty(); std::this_thread::sleep_for(std::chrono::milliseconds(20))) {
        if (auto st = broker->poll()) {
            report_death(*broker, *st);
            return 1;
        }
        if (sw.elapsed_s() > 10) {
            report_death(*broker, -1);
            return 1;
        }
        for (const std::string& line : broker->last_log_lines(50)) {
            std::istringstream in(line);
            std::string word, p1, p2, p3;
            if (in >> word >> p1 >> p2 >> p3 && word == "broker" && p1.rfind("pub=", 0) == 0 &&
                p2.rfind("sub=", 0) == 0 && p3.rfind("rpc=", 0) == 0) {
                pub_ep = p1.substr(4), sub_ep = p2.substr(4), rpc_ep = p3.substr(4);
            }
        }
    }
    std::printf("esper run %s\n  run dir   %s\n  config    %s\n  bus       pub %s  sub %s  rpc %s\n",
                run_id.c_str(), run_dir.c_str(), config_path.c_str(), pub_ep.c_str(), sub_ep.c_str(),
                rpc_ep.c_str());
    std::printf("  watch it: %s tap --bus %s telemetry.run.%s events.\n", exe.c_str(), sub_ep.c_str(),
                run_id.c_str());
    std::printf("  steer it: %s policy load FILE --bus %s\n", exe.c_str(), rpc_ep.c_str());
    std::fflush(stdout);

    std::vector<std::string> targs = {exe.string(), "tamiyo", "--bus-pub", pub_ep, "--bus-sub", sub_ep,
                                      "--bus", rpc_ep, "--run-id", run_id, "--config", config_path.string()};
    if (policy.given()) targs.insert(targs.end(), {"--policy", policy.str()});
    auto tamiyo = std::make_unique<ChildProcess>("tamiyo", targs, run_dir / "logs" / "tamiyo.log");
    std::vector<std::string> kargs = {exe.string(), "kasmina", "--config", config_path.string(),
                                      "--run-dir", run_dir.string(), "--run-id", run_id,
                                      "--bus-pub", pub_ep, "--bus-sub", sub_ep, "--bus", rpc_ep};
    if (epochs.given()) kargs.insert(kargs.end(), {"--epochs", epochs.str()});
    if (max_steps.given()) kargs.insert(kargs.end(), {"--max-steps", max_steps.str()});
    if (seed.given()) kargs.insert(kargs.end(), {"--seed", seed.str()});
    // --ranks N: rank 0 serves commands and writes the run directory, ranks 1..N-1 train on
    // their shards; they meet through a FileKvStore in RUN_DIR/rendezvous (docs/distributed.md).
    // Each rank gets LOCAL_RANK = its rank: with the CUDA backend and at least N devices, rank r
    // trains on GPU r and the device gradients are averaged over NCCL; otherwise CPU with Gloo.
    if (ranks > 1) kargs.insert(kargs.end(), {"--world", std::to_string(ranks), "--rank", "0"});
    const std::vector<std::string> env0 =
        ranks > 1 ? std::vector<std::string>{"LOCAL_RANK=0"} : std::vector<std::string>{};
    auto kasmina = std::make_unique<ChildProcess>("kasmina", kargs,
                                                  run_dir / "logs" / "kasmina-0.log", env0);
    std::vector<std::unique_ptr<ChildProcess>> peers;
    for (int64_t r = 1; r < ranks; ++r) {
        std::vector<std::string> a = kargs;
        a.back() = std::to_string(r);  // "--rank" is the last flag
        const std::string name = "kasmina-" + std::to_string(r);
        peers.push_back(
            std::make_unique<ChildProcess>(name, a, run_dir / "logs" / (name + ".log"),
                                           std::vector<std::string>{"LOCAL_RANK=" +
                                                                    std::to_string(r)}));
    }

    Progress progress(run_dir / "metrics.jsonl", ::isatty(STDOUT_FILENO) != 0);
    int exit_code = 0;
    bool stopping = false;
    Stopwatch stop_clock;
    while (true) {
        progress.poll();
        if (int sig = g_signal.exchange(0); sig != 0) {
            if (!stopping) {
                progress.finish();
                std::printf("esper run: %s received, stopping (final checkpoint)...\n",
                            sig == SIGINT ? "SIGINT" : "SIGTERM");
                std::fflush(stdout);
                kasmina->signal(SIGTERM);
                for (auto& peer : peers) peer->signal(SIGTERM);
                stopping = true;
                stop_clock.reset();
                exit_code = sig == SIGINT ? 130 : 0;
            } else {
                kasmina->signal(SIGKILL);  // a second signal: no more waiting
            }
        }
        if (auto st = kasmina->poll()) {
            if (*st != 0 && !stopping) {
                progress.finish();
                report_death(*kasmina, *st);
                exit_code = 1;
            }
            break;
        }
        if (stopping && stop_clock.elapsed_s() > 30) {
            std::fprintf(stderr, "esper run: executor did not stop within 30 s; killing it\n");
            kasmina->stop(std::chrono::milliseconds(100));
            break;
        }
        for (auto& peer : peers) {
            if (auto st = peer->poll(); st && *st != 0 && !stopping) {
                progress.finish();
                report_death(*peer, *st);
                kasmina->signal(SIGTERM);  // it would fail at its next collective anyway
                stopping = true;
                stop_clock.reset();
                exit_code = 1;
            }
        }
        for (ChildProcess* c : {broker.get(), tamiyo.get()}) {
            if (auto st = c->poll(); st && !stopping) {
                progress.finish();
                report_death(*c, *st);
                if (c == broker.get()) {  // without a broker nothing can be steered: stop
                    kasmina->signal(SIGTERM);
                    stopping = true;
                    stop_clock.reset();
                    exit_code = 1;
                }
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    for (auto& peer : peers) {
        std::optional<int> st = peer->wait_for(std::chrono::seconds(30));
        if (!st) st = peer->stop(std::chrono::milliseconds(3000));
        if (*st != 0 && exit_code == 0) {
            report_death(*peer, *st);
            exit_code = 1;
        }
    }
    progress.poll();
    progress.finish();
    tamiyo->stop(std::chrono::milliseconds(3000));
    broker->stop(std::chrono::milliseconds(3000));

    fs::path report = write_report(run_dir);
    std::printf("\n%s\n  report    %s\n  events    %s\n  metrics   %s\n",
                format_summary(summarize_run(run_dir)).c_str(), report.c_str(),
                (run_dir / "events.jsonl").c_str(), (run_dir / "metrics.jsonl").c_str());
    return exit_code;
}

}  // namespace esper::agents
