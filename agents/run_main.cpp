// `esper run`: the main job. Starts a broker, a Tamiyo controller and the Kasmina executor(s) (and
// with --dash the dashboard) as child processes on this machine (agents/supervisor.h: endpoints
// and readiness through ready pipes), shows progress, and on the way out writes report.html and
// prints a summary table. Everything a run needs is checked before anything starts (flags, the
// config and the policy, a run directory that already holds a run). A controller or dashboard
// that dies is restarted (bounded; the controller continues from the policy it persisted in the
// run dir) and the restart is announced on the bus; one lost for good makes the run exit non-zero
// while training goes on. --resume DIR continues a stopped run from its newest checkpoint.
// DIR/run.json says how the run ended and why; esper run also records the run's policy changes,
// annotations and end into DIR/events.jsonl. SIGINT/SIGTERM stop the executors first (final
// checkpoint), then the others. A child that dies is reported with the last lines of its log.
#include <fmt/format.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
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
#include "agents/tool_json.h"
#include "bus/pubsub.h"
#include "core/clock.h"
#include "core/error.h"
#include "kernels/vocabulary.h"
#include "schemas/telemetry.capnp.h"

namespace esper::agents {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::atomic<int> g_signal{0};
extern "C" void on_signal(int sig) { g_signal.store(sig); }

constexpr int kMaxRestarts = 3;  // per restartable child (controller, dashboard)

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

void report(const std::string& what) { std::fprintf(stderr, "esper run: %s\n", what.c_str()); }

// Follows DIR/metrics.jsonl and DIR/events.jsonl as they grow and renders progress: step, loss,
// test accuracy, samples/s, ETA and the seeds that are active or fossilized.
class Progress {
public:
    Progress(fs::path run_dir, bool tty) : dir_(std::move(run_dir)), tty_(tty) {}

    void poll() {
        follow(dir_ / "metrics.jsonl", metrics_offset_, [this](const json& j) { on_metric(j); });
        follow(dir_ / "events.jsonl", events_offset_, [this](const json& j) { on_event(j); });
        if (tty_) {
            draw_bar();
        } else if (step_ >= 0 && last_print_.elapsed_s() > 10) {
            print_line();
        }
    }
    void finish() {
        if (tty_ && drawn_) std::fputc('\n', stdout);
        drawn_ = false;
        std::fflush(stdout);
    }
    int64_t step() const { return step_; }

private:
    template <typename F>
    static void follow(const fs::path& path, std::streamoff& offset, F&& on_line) {
        std::ifstream in(path);
        if (!in) return;
        in.seekg(offset);
        std::string line;
        while (std::getline(in, line)) {
            if (in.eof()) break;  // a partial line: read it next time
            offset += static_cast<std::streamoff>(line.size() + 1);
            auto j = json::parse(line, nullptr, false);
            if (!j.is_discarded() && j.is_object()) on_line(j);
        }
    }
    void on_metric(const json& j) {
        const std::string split = j.value("split", "");
        auto number = [&](const char* k, double fallback) {
            auto it = j.find(k);
            return it != j.end() && it->is_number() ? it->get<double>() : fallback;
        };
        if (split == "train") {
            step_ = j.value("step", step_);
            epoch_ = j.value("epoch", epoch_);
            loss_ = number("loss", loss_);
            rate_ = number("samples_per_s", rate_);
            total_ = j.value("total_steps", total_);
            if (first_step_ < 0) {
                first_step_ = step_;
                first_clock_.reset();
            }
        } else if (split == "test") {
            acc_ = number("accuracy", acc_);
            bpb_ = number("bits_per_byte", bpb_);  // text runs: validation bits per byte
            if (!tty_) print_line();
        }
    }
    void on_event(const json& e) {
        if (!e.contains("to")) return;
        const auto key = std::make_pair(e.value("layer", -1), e.value("seed", -1));
        const auto to = e["to"].is_string() ? parse_stage(e["to"].get<std::string>())
                                            : std::optional<SeedStage>();
        if (!to) return;
        stage_of_[key] = static_cast<int>(*to);
    }
    std::string status() const {
        int active = 0, fossilized = 0;
        for (const auto& [key, stage] : stage_of_) {
            active += stage >= 1 && stage <= 6 ? 1 : 0;
            fossilized += stage == 7 ? 1 : 0;
        }
        std::string eta = "-";
        const double secs = first_clock_.elapsed_s();
        if (total_ > 0 && first_step_ >= 0 && step_ > first_step_ && secs > 1) {
            const double left = double(total_ - step_) * secs / double(step_ - first_step_);
            const long s = std::lround(std::max(0.0, left));
            eta = s >= 60 ? std::to_string(s / 60) + "m" + std::to_string(s % 60) + "s"
                          : std::to_string(s) + "s";
        }
        // A language model is judged by validation bits per byte, a classifier by test accuracy.
        const bool text = !std::isnan(bpb_);
        const double quality = text ? bpb_ : acc_;
        char buf[256];
        std::snprintf(buf, sizeof buf,
                      "epoch %ld step %ld loss %.4f %s %s %.0f samples/s ETA %s seeds %d "
                      "active %d fossilized",
                      static_cast<long>(epoch_), static_cast<long>(step_), loss_,
                      text ? "val bpb" : "test acc",
                      std::isnan(quality) ? "-" : std::to_string(quality).substr(0, 6).c_str(),
                      rate_, eta.c_str(), active, fossilized);
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
            constexpr int kWidth = 24;
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

    fs::path dir_;
    bool tty_;
    std::streamoff metrics_offset_ = 0, events_offset_ = 0;
    int64_t step_ = -1, epoch_ = 0, total_ = 0, first_step_ = -1;
    double loss_ = NAN, acc_ = NAN, bpb_ = NAN, rate_ = 0;
    std::map<std::pair<int, int>, int> stage_of_;
    Stopwatch last_print_, first_clock_;
    bool drawn_ = false;
};

// What `esper run` was asked to do.
struct RunPlan {
    std::string run_id;
    fs::path run_dir, config_path, exe;
    int64_t port_base = 5555;  // 0 = ephemeral
    int ranks = 1;
    std::string policy, epochs, max_steps, seed;  // empty: not given
    std::optional<int> dash_port;
    fs::path resume_checkpoint;         // --resume: the newest complete checkpoint
    int resumes = 0;                    // how often this run was resumed before
    std::string started;                // wall clock of the first start
    fs::path keys;                      // --secure: RUN_DIR/keys, else empty
    std::vector<fs::path> plugin_dirs;  // --plugin-dir: live plugin loads only from these
};

// The children of a run; the supervisor owns them. A restartable child is started again (up to
// kMaxRestarts times) when it dies; `lost` once it is gone for good.
struct Restartable {
    std::string name;
    std::vector<std::string> argv;
    std::chrono::milliseconds ready_timeout{30000};
    ChildProcess* child = nullptr;
    int restarts = 0;
    bool lost = false;
    json ready_line{};  // the last start's
};
struct RunChildren {
    ChildProcess* broker = nullptr;
    ChildProcess* kasmina = nullptr;   // rank 0: serves commands, writes the run directory
    std::vector<ChildProcess*> peers;  // ranks 1..N-1
    Restartable tamiyo, dash;
};

// ---- before anything starts ----

bool holds_a_run(const fs::path& dir) {
    for (const char* f : {"metrics.jsonl", "events.jsonl", "checkpoints", "run.json"})
        if (fs::exists(dir / f)) return true;
    return false;
}

// The newest checkpoint with a manifest (a complete one: written to a temp dir, then renamed).
std::optional<fs::path> newest_checkpoint(const fs::path& run_dir) {
    std::optional<fs::path> best;
    long long best_step = -1;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(run_dir / "checkpoints", ec)) {
        const std::string name = entry.path().filename().string();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
        if (!fs::exists(entry.path() / "manifest.bin")) continue;
        const long long step = std::stoll(name);
        if (step > best_step) best_step = step, best = entry.path();
    }
    return best;
}

json read_run_json(const fs::path& dir) {
    std::ifstream in(dir / "run.json");
    json j = json::parse(in, nullptr, false);
    return j.is_object() ? j : json::object();
}

void write_run_json(const fs::path& dir, const json& j) {
    const fs::path tmp = dir / "run.json.tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << j.dump(1) << "\n";
        if (!out) ESPER_THROW(kFailed, "cannot write ", tmp.string());
    }
    fs::rename(tmp, dir / "run.json");
}

// Validates the config (and the policy) with the loaders the executor and the controller use.
// Logs go to `log_dir` (a scratch directory: nothing is created in the run dir before this
// passes). Returns 0, or the exit code of `esper run`.
int check_config(const RunPlan& plan, const fs::path& log_dir) {
    std::vector<std::vector<std::string>> checks = {
        {plan.exe.string(), "kasmina", "--check-config", "--config", plan.config_path.string()},
        {plan.exe.string(), "tamiyo", "--check-config", "--config", plan.config_path.string()}};
    for (auto [flag, value] : {std::pair{"--epochs", &plan.epochs},
                               {"--max-steps", &plan.max_steps},
                               {"--seed", &plan.seed}})
        if (!value->empty()) checks[0].insert(checks[0].end(), {flag, *value});
    if (!plan.policy.empty()) checks[1].insert(checks[1].end(), {"--policy", plan.policy});
    for (const auto& check : checks) {
        ChildProcess c("config-check", check, log_dir / ("check-" + check[1] + ".log"));
        int st = c.wait_for(std::chrono::seconds(60)).value_or(-1);
        if (st != 0) {  // the loaders print one line naming file:line: field: reason
            for (const std::string& l : c.last_log_lines(2))
                if (l.find("error") != std::string::npos || l.find(':') != std::string::npos)
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

// ---- the run's own bus presence: recording events, announcing restarts and failures ----

// Subscribes to the run's policy changes, annotations and end, and appends them to events.jsonl
// (kasmina writes the lifecycle transitions there), so the report and anyone reading the file
// see them. It also publishes what only the supervisor knows: restarts (as annotations) and a
// run that failed (its last status, state failed, on events.run.<run>).
// --secure: the supervisor's own sockets hold the run's agent key (it publishes annotations).
bus::ClientSecurity run_security(const RunPlan& plan) {
    return plan.keys.empty() ? bus::ClientSecurity{}
                             : client_security(plan.keys, {bus::Role::kAgent});
}

class RunRecorder {
public:
    RunRecorder(const RunPlan& plan, const BusEndpoints& bus)
        : run_id_(plan.run_id),
          path_(plan.run_dir / "events.jsonl"),
          sub_(ctx_,
               {.endpoint = bus.sub,
                .prefixes = {"events.policy." + plan.run_id, "events.annotations." + plan.run_id,
                             "events.run." + plan.run_id},
                .security = run_security(plan)}),
          pub_(ctx_, {.endpoint = bus.pub,
                      .sender = "esper-run",
                      .run_id = plan.run_id,
                      .reliability = bus::Reliability::kControl,
                      .control_send_timeout_ms = 500,
                      .security = run_security(plan)}) {}

    void poll() {
        while (auto m = sub_.try_receive()) {
            try {
                record(*m);
            } catch (const std::exception& e) {
                report(std::string("could not record an event: ") + e.what());
            }
        }
    }
    void annotate(const std::string& kind, const std::string& text, int64_t step) {
        pub_.publish("events.annotations." + run_id_, [&](schema::Envelope::Payload::Builder p) {
            auto a = p.initAnnotation();
            a.setKind(kind);
            a.setText(text);
            a.setStep(static_cast<uint64_t>(std::max<int64_t>(0, step)));
        });
    }
    void failed(const std::string& reason, int64_t step) {
        pub_.publish("events.run." + run_id_, [&](schema::Envelope::Payload::Builder p) {
            auto s = p.initRunStatus();
            s.setStep(static_cast<uint64_t>(std::max<int64_t>(0, step)));
            s.setState(schema::RunState::FAILED);
            s.setStateReason(reason);
        });
    }

private:
    void record(const bus::Message& m) {
        const json payload = json::parse(payload_to_json(m.envelope()), nullptr, false);
        auto p = m.envelope().getPayload();
        json line = json::object();
        if (p.isPolicyChange()) {
            line = {{"step", payload.value("step", 0)},
                    {"kind", "policy"},
                    {"action", payload.value("action", "")},
                    {"name", payload.value("name", "")},
                    {"policy_kind", payload.value("kind", "")},
                    {"previous", payload.value("previous", "")},
                    {"reason", payload.value("reason", "")}};
        } else if (p.isAnnotation()) {
            line = {{"step", payload.value("step", 0)},
                    {"kind", "annotation"},
                    {"label", payload.value("kind", "")},
                    {"text", payload.value("text", "")},
                    {"sender", m.envelope().getSender().cStr()}};
        } else if (p.isRunStatus() && p.getRunStatus().getState() != schema::RunState::TRAINING) {
            line = {{"step", payload.value("step", 0)},
                    {"kind", "run"},
                    {"state", payload.value("state", "")},
                    {"reason", payload.value("stateReason", "")}};
        } else {
            return;
        }
        line["schema"] = 1;
        line["time"] = utc_iso8601(m.envelope().getSentAtNs());
        const std::string text = line.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
        // One write per line on an O_APPEND file: lines of the executor's writer never interleave.
        std::FILE* f = std::fopen(path_.c_str(), "ab");
        if (!f) ESPER_THROW(kFailed, "cannot open ", path_.string());
        const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
        if (std::fclose(f) != 0 || !ok) ESPER_THROW(kFailed, "cannot write ", path_.string());
    }

    std::string run_id_;
    fs::path path_;
    zmq::context_t ctx_;
    bus::Subscriber sub_;
    bus::Publisher pub_;
};

// ---- starting ----

bool start_restartable(Supervisor& supervisor, Restartable& r, std::string& why) {
    auto started = supervisor.start_ready(r.name, r.argv, r.ready_timeout);
    r.child = &started.child;
    if (started.readiness.ok()) {
        r.ready_line = started.readiness.line;
        return true;
    }
    why = describe_failure(started.child, started.readiness);
    r.child->stop(std::chrono::milliseconds(1000));
    return false;
}

void print_watch_hints(const RunPlan& plan, const BusEndpoints& bus) {
    const std::string keys = plan.keys.empty() ? "" : " --keys " + plan.keys.string();
    std::printf("  watch it: %s tap --bus %s%s telemetry.run.%s events.\n", plan.exe.c_str(),
                bus.sub.c_str(), keys.c_str(), plan.run_id.c_str());
    std::printf("  steer it: %s policy load FILE --bus %s%s\n", plan.exe.c_str(), bus.rpc.c_str(),
                keys.c_str());
    std::printf("  status:   %s status --bus %s%s\n", plan.exe.c_str(), bus.rpc.c_str(),
                keys.c_str());
    std::fflush(stdout);
}

// The broker, then Tamiyo (each waited for through its ready pipe), then the executors and the
// dashboard. Fills `bus`. False (reported, `why` set) when something did not get ready.
bool start_children(Supervisor& supervisor, const RunPlan& plan, RunChildren& children,
                    BusEndpoints& bus, std::unique_ptr<RunRecorder>& recorder, std::string& why) {
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
        why = describe_failure(b.child, b.readiness);
        return false;
    }
    bus = *endpoints;
    std::printf(
        "esper run %s%s\n  run dir   %s\n  config    %s\n  bus       pub %s  sub %s  rpc %s\n",
        plan.run_id.c_str(), plan.resume_checkpoint.empty() ? "" : " (resumed)",
        plan.run_dir.c_str(), plan.config_path.c_str(), bus.pub.c_str(), bus.sub.c_str(),
        bus.rpc.c_str());
    std::fflush(stdout);
    recorder = std::make_unique<RunRecorder>(plan, bus);  // before Tamiyo announces its policy

    TamiyoLaunch tamiyo{.bus = bus,
                        .run_id = plan.run_id,
                        .config = plan.config_path,
                        .policy = plan.policy,
                        .run_dir = plan.run_dir,
                        .keys = plan.keys,
                        .plugin_dirs = plan.plugin_dirs};
    children.tamiyo = Restartable{.name = "tamiyo", .argv = tamiyo.argv(plan.exe)};
    if (!start_restartable(supervisor, children.tamiyo, why)) return false;
    // Only now does `esper policy load` find the controller.
    print_watch_hints(plan, bus);

    // --ranks N: rank 0 serves commands and writes the run directory, ranks 1..N-1 train on
    // their shards; they meet through the broker's kv service (docs/distributed.md). Each rank
    // gets LOCAL_RANK = its rank: with the CUDA backend and at least N devices, rank r trains on
    // GPU r and the device gradients are averaged over NCCL; otherwise CPU with Gloo.
    KasminaLaunch kasmina{.bus = bus,
                          .run_id = plan.run_id,
                          .config = plan.config_path,
                          .run_dir = plan.run_dir,
                          .epochs = plan.epochs,
                          .max_steps = plan.max_steps,
                          .seed = plan.seed,
                          .resume = plan.resume_checkpoint,
                          .world = plan.ranks,
                          .keys = plan.keys};
    children.kasmina = &supervisor.start("kasmina-0", kasmina.argv(plan.exe), kasmina.env());
    for (int r = 1; r < plan.ranks; ++r) {
        kasmina.rank = r;
        children.peers.push_back(&supervisor.start("kasmina-" + std::to_string(r),
                                                   kasmina.argv(plan.exe), kasmina.env()));
    }
    if (plan.dash_port) {
        DashLaunch dash{.bus = bus,
                        .run_id = plan.run_id,
                        .http = "127.0.0.1:" + std::to_string(*plan.dash_port),
                        .keys = plan.keys};
        children.dash = Restartable{.name = "dash", .argv = dash.argv(plan.exe)};
        if (!start_restartable(supervisor, children.dash, why)) return false;
        std::printf("  dashboard %s\n",
                    children.dash.ready_line.value("http", std::string("?")).c_str());
        std::fflush(stdout);
    }
    return true;
}

// ---- supervising ----

// Stops the executors once (a final checkpoint each), then waits for them.
struct Shutdown {
    bool stopping = false;
    int exit_code = 0;
    std::string reason;  // why the run failed or stopped
    Stopwatch clock;

    void begin(RunChildren& children, int code, std::string why) {
        if (stopping) return;
        children.kasmina->signal(SIGTERM);
        for (ChildProcess* peer : children.peers) peer->signal(SIGTERM);
        stopping = true;
        clock.reset();
        exit_code = code;
        reason = std::move(why);
    }
};

struct Supervised {
    Supervisor& supervisor;
    RunChildren& children;
    Progress& progress;
    RunRecorder& recorder;
    Shutdown& shutdown;
};

// A dead controller or dashboard: started again (bounded), announced as an annotation; once
// kMaxRestarts are used up it is lost for good and the run will exit non-zero.
void restart_if_dead(Supervised& s, Restartable& r, const char* role) {
    if (r.child == nullptr || r.lost || s.shutdown.stopping) return;
    auto st = r.child->poll();
    if (!st) return;
    s.progress.finish();
    report(describe_exit(*r.child, *st, 8));
    while (r.restarts < kMaxRestarts) {
        ++r.restarts;
        std::string why;
        if (start_restartable(s.supervisor, r, why)) {
            const std::string text = fmt::format(
                "{} {} restarted ({} of {}) after it exited "
                "with status {}",
                role, r.name, r.restarts, kMaxRestarts, *st);
            report(text);
            s.recorder.annotate("supervisor", text, s.progress.step());
            return;
        }
        report(fmt::format("restarting {} failed ({} of {}): {}", r.name, r.restarts, kMaxRestarts,
                           why));
    }
    r.lost = true;
    const std::string text =
        fmt::format("{} {} lost for good after {} restarts; training goes on without it", role,
                    r.name, kMaxRestarts);
    report(text);
    s.recorder.annotate("supervisor", text, s.progress.step());
}

// One look at signals and children. True when the run is over (rank 0 has exited).
bool supervise_once(Supervised& s) {
    RunChildren& children = s.children;
    s.progress.poll();
    s.recorder.poll();
    if (int sig = g_signal.exchange(0); sig != 0) {
        if (!s.shutdown.stopping) {
            s.progress.finish();
            std::printf("esper run: %s received, stopping (final checkpoint)...\n",
                        sig == SIGINT ? "SIGINT" : "SIGTERM");
            std::fflush(stdout);
            s.shutdown.begin(children, sig == SIGINT ? 130 : 0,
                             sig == SIGINT ? "stopped by SIGINT" : "stopped by SIGTERM");
        } else {
            children.kasmina->signal(SIGKILL);  // a second signal: no more waiting
        }
    }
    if (auto st = children.kasmina->poll()) {
        if (*st != 0 && !s.shutdown.stopping) {
            s.progress.finish();
            report(describe_exit(*children.kasmina, *st));
            s.shutdown.exit_code = 1;
            s.shutdown.reason = fmt::format("kasmina-0 exited unexpectedly (status {})", *st);
            s.recorder.failed(s.shutdown.reason, s.progress.step());
        }
        return true;
    }
    if (s.shutdown.stopping && s.shutdown.clock.elapsed_s() > 30) {
        std::fprintf(stderr, "esper run: executor did not stop within 30 s; killing it\n");
        children.kasmina->stop(std::chrono::milliseconds(100));
        return true;
    }
    for (ChildProcess* peer : children.peers) {
        if (auto st = peer->poll(); st && *st != 0 && !s.shutdown.stopping) {
            s.progress.finish();
            report(describe_exit(*peer, *st));
            const std::string why =
                fmt::format("{} exited unexpectedly (status {})", peer->name(), *st);
            s.recorder.failed(why, s.progress.step());
            s.shutdown.begin(children, 1, why);  // rank 0 would fail at its next collective anyway
        }
    }
    if (auto st = children.broker->poll(); st && !s.shutdown.stopping) {
        s.progress.finish();
        report(describe_exit(*children.broker, *st));
        // Without a broker nothing can be steered or watched: stop.
        s.shutdown.begin(children, 1, fmt::format("the broker exited (status {})", *st));
    }
    restart_if_dead(s, children.tamiyo, "controller");
    restart_if_dead(s, children.dash, "dashboard");
    return false;
}

// Waits for the other ranks, stops the rest, writes run.json and the report. Returns the exit
// code: non-zero when the executor failed, a rank failed, or a child was lost for good.
int finish_run(const RunPlan& plan, RunChildren& children, Progress& progress,
               RunRecorder& recorder, Shutdown& shutdown, const Stopwatch& clock) {
    int exit_code = shutdown.exit_code;
    for (ChildProcess* peer : children.peers) {
        std::optional<int> st = peer->wait_for(std::chrono::seconds(30));
        if (!st) st = peer->stop(std::chrono::milliseconds(3000));
        if (*st != 0 && exit_code == 0) {
            report(describe_exit(*peer, *st));
            exit_code = 1;
            shutdown.reason = fmt::format("{} exited with status {}", peer->name(), *st);
        }
    }
    std::string lost;
    for (const Restartable* r : {&children.tamiyo, &children.dash})
        if (r->lost) lost += (lost.empty() ? "" : ", ") + r->name;
    if (!lost.empty() && (exit_code == 0 || exit_code == 130)) {
        exit_code = exit_code == 0 ? 1 : exit_code;
        shutdown.reason = fmt::format("lost for good after {} restarts: {}", kMaxRestarts, lost) +
                          (shutdown.reason.empty() ? "" : "; " + shutdown.reason);
    }
    progress.poll();
    progress.finish();
    if (exit_code != 0 && exit_code != 130 && !lost.empty())
        recorder.failed(shutdown.reason, progress.step());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the recorder's last events
    recorder.poll();
    if (children.dash.child) children.dash.child->stop(std::chrono::milliseconds(3000));
    if (children.tamiyo.child) children.tamiyo.child->stop(std::chrono::milliseconds(3000));
    children.broker->stop(std::chrono::milliseconds(3000));

    json run = read_run_json(plan.run_dir);
    const std::string state = exit_code == 0     ? "finished"
                              : exit_code == 130 ? "stopped"
                              : shutdown.stopping && shutdown.reason.rfind("stopped", 0) == 0
                                  ? "stopped"
                                  : "failed";
    run["state"] = state;
    run["reason"] = state == "finished" ? "all planned steps done" : shutdown.reason;
    run["exit_code"] = exit_code;
    run["ended"] = utc_iso8601(wall_time_ns());
    run["duration_s"] = run.value("duration_s", 0.0) + clock.elapsed_s();
    run["controller_restarts"] = run.value("controller_restarts", 0) + children.tamiyo.restarts;
    run["last_step"] = progress.step();
    write_run_json(plan.run_dir, run);

    fs::path report_path = write_report(plan.run_dir);
    std::printf("\n%s\n  report    %s\n  events    %s\n  metrics   %s\n",
                format_summary(summarize_run(plan.run_dir)).c_str(), report_path.c_str(),
                (plan.run_dir / "events.jsonl").c_str(), (plan.run_dir / "metrics.jsonl").c_str());
    if (state == "stopped" || state == "failed")
        std::printf("  resume    %s run --resume %s\n", plan.exe.c_str(), plan.run_dir.c_str());
    if (exit_code != 0 && exit_code != 130) report("run " + state + ": " + shutdown.reason);
    return exit_code;
}

// A scratch directory for what happens before the run directory exists (config checks).
struct ScratchDir {
    fs::path path;
    ScratchDir() {
        std::string tmpl = (fs::temp_directory_path() / "esper-run-XXXXXX").string();
        if (::mkdtemp(tmpl.data()) == nullptr) ESPER_THROW(kFailed, "cannot create ", tmpl);
        path = tmpl;
    }
    ~ScratchDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

int64_t checked_int(const cli::Option& o, int64_t min, int64_t max) {
    const int64_t v = o.as_int();  // a non-integer throws the usage error
    if (v < min || v > max)
        throw cli::UsageError(fmt::format("--{} must be in {}..{}, got {}", o.name, min, max, v));
    return v;
}

}  // namespace

int run_main(int argc, char** argv) {
    cli::Parser p(
        "esper run",
        "Run the main job on this machine: a broker, the Tamiyo controller and a Kasmina\n"
        "executor, training the given config (default: the embedded Fashion-MNIST config)\n"
        "while the controller grows the network.");
    auto& config = p.option("config", "FILE", "run config (YAML)", "embedded fashion_mnist.yaml");
    auto& run_dir_opt =
        p.option("run-dir", "DIR", "run directory (must not hold a run)", "runs/<id>");
    auto& resume = p.option("resume", "DIR",
                            "continue the stopped run in DIR from its newest checkpoint "
                            "(same config, policy and bus ports)");
    auto& overwrite = p.flag("overwrite", "replace the run that --run-dir already holds");
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
    auto& plugin_dirs = p.option("plugin-dir", "DIR",
                                 "allow `esper policy load` of plugins inside DIR on this run "
                                 "(default: none, live plugin loads are refused)",
                                 "", true);
    auto& dash = p.option("dash", "PORT",
                          "also serve the live dashboard on http://127.0.0.1:PORT/ (esper dash)");
    p.epilog(
        "Watch a run with the `esper tap` command it prints or with --dash; change its policy\n"
        "with `esper policy load FILE --bus tcp://127.0.0.1:<N+2>`. DIR/run.json says how a run\n"
        "ended; a stopped run continues with `esper run --resume DIR`.");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (!p.positional().empty())
        return p.usage_error("unexpected argument '" + p.positional()[0] + "'");

    // Every flag is checked before anything is created or started.
    RunPlan plan;
    plan.port_base = checked_int(port_base, 0, 65533);
    plan.ranks = static_cast<int>(checked_int(ranks_opt, 1, 64));
    if (epochs.given()) plan.epochs = std::to_string(checked_int(epochs, 1, 1'000'000));
    if (max_steps.given())
        plan.max_steps = std::to_string(checked_int(max_steps, 1, int64_t(1) << 40));
    if (epochs.given() && max_steps.given())
        return p.usage_error("--epochs and --max-steps are mutually exclusive");
    if (seed.given()) plan.seed = std::to_string(checked_int(seed, 0, int64_t(1) << 62));
    if (dash.given()) plan.dash_port = static_cast<int>(checked_int(dash, 0, 65535));
    if (policy.given()) plan.policy = policy.str();
    for (const std::string& d : plugin_dirs.values) {
        if (!fs::is_directory(d)) return p.usage_error("--plugin-dir " + d + ": not a directory");
        plan.plugin_dirs.push_back(fs::absolute(d));
    }
    if (resume.given() && (run_dir_opt.given() || config.given() || overwrite.on()))
        return p.usage_error("--resume DIR takes the run's own directory and config");
    plan.exe = self_exe_dir() / "esper";
    ScratchDir scratch;
    json previous = json::object();
    if (resume.given()) {
        plan.run_dir = resume.str();
        if (!fs::is_directory(plan.run_dir))
            ESPER_THROW(kInvalidInput, "--resume ", plan.run_dir.string(), ": no such directory");
        previous = read_run_json(plan.run_dir);
        if (previous.value("state", "") == "finished")
            ESPER_THROW(kInvalidInput, plan.run_dir.string(),
                        ": the run finished; nothing to resume (raise --max-steps/--epochs to "
                        "train further)");
        auto ckpt = newest_checkpoint(plan.run_dir);
        if (!ckpt) ESPER_THROW(kInvalidInput, plan.run_dir.string(), ": no checkpoint to resume");
        plan.resume_checkpoint = fs::absolute(*ckpt);
        plan.run_id = previous.value("run_id", plan.run_dir.filename().string());
        const json opts = previous.value("options", json::object());
        plan.config_path = opts.value("config", (plan.run_dir / "config.input.yaml").string());
        if (!fs::exists(plan.config_path))
            ESPER_THROW(kInvalidInput, plan.config_path.string(),
                        ": the run's config is gone; cannot resume");
        if (plan.policy.empty()) plan.policy = opts.value("policy", "");
        if (plan.epochs.empty() && plan.max_steps.empty()) {
            plan.epochs = opts.value("epochs", "");
            plan.max_steps = opts.value("max_steps", "");
        }
        if (plan.seed.empty()) plan.seed = opts.value("seed", "");
        if (!ranks_opt.given()) plan.ranks = opts.value("ranks", 1);
        plan.resumes = previous.value("resumes", 0) + 1;
    } else {
        plan.run_id = new_run_id();
        plan.run_dir =
            run_dir_opt.given() ? fs::path(run_dir_opt.str()) : fs::path("runs") / plan.run_id;
        if (run_dir_opt.given()) plan.run_id = plan.run_dir.filename().string();
        if (holds_a_run(plan.run_dir) && !overwrite.on())
            return p.usage_error(plan.run_dir.string() +
                                 " already holds a run; continue it with --resume " +
                                 plan.run_dir.string() + " or replace it with --overwrite");
        if (config.given()) {
            plan.config_path = fs::absolute(config.str());
            if (!fs::exists(plan.config_path))
                ESPER_THROW(kInvalidInput, "config file not found: ", config.str());
        } else {
            plan.config_path = scratch.path / "config.input.yaml";
            std::ofstream(plan.config_path) << kDefaultConfigYaml;
        }
    }
    if (int rc = check_config(plan, scratch.path); rc != 0) return rc;

    // ---- from here on the run exists ----
    if (overwrite.on() && fs::exists(plan.run_dir)) fs::remove_all(plan.run_dir);
    fs::create_directories(plan.run_dir / "logs");
    plan.run_dir = fs::absolute(plan.run_dir);
    if (!config.given() && !resume.given()) {
        fs::copy_file(plan.config_path, plan.run_dir / "config.input.yaml",
                      fs::copy_options::overwrite_existing);
        plan.config_path = plan.run_dir / "config.input.yaml";
    }
    json run = previous;
    run["schema"] = 1;
    run["run_id"] = plan.run_id;
    run["state"] = "training";
    run.erase("reason");
    if (!run.contains("started")) run["started"] = utc_iso8601(wall_time_ns());
    run["options"] = {
        {"config", plan.config_path.string()}, {"policy", plan.policy}, {"epochs", plan.epochs},
        {"max_steps", plan.max_steps},         {"seed", plan.seed},     {"ranks", plan.ranks}};
    if (!plan.resume_checkpoint.empty()) {
        run["resumes"] = plan.resumes;
        run["resumed_from"] = plan.resume_checkpoint.string();
    }
    // --secure (or a resumed secure run): the run's key set in RUN_DIR/keys, made once.
    if (secure.on() || previous.value("options", json::object()).value("secure", false)) {
        plan.keys = plan.run_dir / "keys";
        if (!fs::exists(plan.keys / "broker.secret")) write_run_keys(plan.keys);
        run["options"]["secure"] = true;
    }
    write_run_json(plan.run_dir, run);

    install_signal_handlers();
    Stopwatch clock;
    Supervisor supervisor(plan.run_dir / "logs");
    RunChildren children;
    BusEndpoints bus;
    std::unique_ptr<RunRecorder> recorder;
    std::string why;
    if (!start_children(supervisor, plan, children, bus, recorder, why)) {
        report(why);
        run["state"] = "failed";
        run["reason"] = why.substr(0, why.find(';'));
        run["ended"] = utc_iso8601(wall_time_ns());
        write_run_json(plan.run_dir, run);
        if (children.kasmina) children.kasmina->stop(std::chrono::milliseconds(10000));
        return 1;
    }
    Progress progress(plan.run_dir, ::isatty(STDOUT_FILENO) != 0);
    Shutdown shutdown;
    Supervised s{supervisor, children, progress, *recorder, shutdown};
    while (!supervise_once(s)) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    return finish_run(plan, children, progress, *recorder, shutdown, clock);
}

}  // namespace esper::agents
