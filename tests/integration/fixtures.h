// Fixtures shared by the integration and fault-injection tests: the real `esper` binary, scratch
// directories, JSON line files, a broker child process on ephemeral loopback ports whose endpoints
// come through its ready pipe (agents/supervisor.h), a live run of separate broker, executor and
// controller processes (LiveRun), and a whole `esper run` (EsperRun).
#pragma once

#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
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

inline std::string file_text(const std::filesystem::path& p) {
    std::ifstream in(p);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
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

// Seconds the esper binary takes to start and exit (`esper --version`) on this machine now: a
// test that bounds how fast a command fails adds it, so a loaded machine's process start-up (the
// binary maps the CUDA libraries) is not mistaken for the command's own delay.
inline double esper_startup_s(const std::filesystem::path& log) {
    Stopwatch sw;
    REQUIRE(run_to_exit({kEsper, "--version"}, log) == 0);
    return sw.elapsed_s();
}

// Polls `pred` every 20 ms until it holds or `timeout_s` passes.
inline bool wait_until(const std::function<bool()>& pred, double timeout_s) {
    for (Stopwatch sw; sw.elapsed_s() < timeout_s; std::this_thread::sleep_for(milliseconds(20)))
        if (pred()) return true;
    return pred();
}

// The last training step a run directory's metrics.jsonl records (0 before the first).
inline int64_t last_train_step(const std::filesystem::path& run_dir) {
    int64_t step = 0;
    for (const auto& m : json_lines(run_dir / "metrics.jsonl"))
        if (m.value("split", "") == "train") step = m.value("step", step);
    return step;
}

// Teacher task, 4 seeds per layer, lifecycle minimums of tens of steps so that seeds move in
// seconds, gates by the controller; a plateau of `plateau_patience` steps makes it germinate.
inline std::string teacher_config(int64_t max_steps, int64_t plateau_patience) {
    return "run: {seed: 5, epochs: 0, max_steps: " + std::to_string(max_steps) +
           ", telemetry_interval_steps: 10}\n"
           "data:\n"
           "  dataset: teacher\n"
           "  batch_size: 64\n"
           "  teacher: {train_samples: 4096, test_samples: 512, features: 16, classes: 4, hidden: "
           "32}\n"
           "model: {hidden: [32, 32], activation: gelu, seeds_per_layer: 4}\n"
           "optimizer: {kind: sgd, lr: 0.05, momentum: 0.9}\n"
           "lifecycle: {training_steps: 30, stabilization_steps: 10, evaluation_steps: 10,\n"
           "            fine_tuning_steps: 30, embargo_steps: 50, decision_timeout_steps: 60,\n"
           "            grafting: {strategy: linear, ramp_steps: 10}}\n"
           "tamiyo:\n"
           "  decision_interval_steps: 10\n"
           "  plateau: {patience_steps: " +
           std::to_string(plateau_patience) +
           ", min_delta: 0.01}\n"
           "  heuristic: {training_patience_steps: 200, cull_contribution: -1.0}\n";
}

// A broker plus a run's executor and controller as separate processes (what `esper run` starts),
// so that a test can reach each one: forge its input, kill it, restart it.
struct LiveRun {
    BrokerProcess broker;
    std::filesystem::path dir = broker.dir;
    std::filesystem::path run_dir = dir / "run";
    std::filesystem::path config = dir / "run.yaml";
    std::string run_id;
    std::unique_ptr<ChildProcess> kasmina, tamiyo;
    int tamiyo_starts = 0;

    LiveRun(const std::string& config_text, std::string id) : run_id(std::move(id)) {
        std::ofstream(config) << config_text;
    }
    ~LiveRun() {
        if (tamiyo) tamiyo->stop(milliseconds(3000));
        if (kasmina) kasmina->stop(milliseconds(5000));
    }

    // Returns once the executor has logged its first training step.
    void start_kasmina() {
        kasmina = std::make_unique<ChildProcess>(
            "kasmina",
            std::vector<std::string>{kEsper, "kasmina", "--config", config.string(), "--run-dir",
                                     run_dir.string(), "--run-id", run_id, "--bus", broker.rpc,
                                     "--bus-pub", broker.pub},
            dir / "kasmina.log");
        REQUIRE(wait_until([&] { return steps_done() > 0; }, 30));
    }
    // Logs to tamiyo-N.log (N counts the starts); returns once it answers a control request.
    void start_tamiyo(const std::string& policy = "") {
        std::vector<std::string> argv{kEsper,      "tamiyo",   "--config",  config.string(),
                                      "--run-id",  run_id,     "--bus",     broker.rpc,
                                      "--bus-pub", broker.pub, "--bus-sub", broker.sub};
        if (!policy.empty()) argv.insert(argv.end(), {"--policy", policy});
        tamiyo = std::make_unique<ChildProcess>(
            "tamiyo", argv, dir / ("tamiyo-" + std::to_string(++tamiyo_starts) + ".log"));
        REQUIRE(wait_until(
            [&] {
                return esper({"policy", "show", "--timeout-ms", "300"}) == 0;
            },
            20));
    }
    // `esper ARGS --bus RPC`, its output in DIR/TAG.log; the exit code.
    int esper(std::vector<std::string> args, const std::string& tag = "cmd") {
        args.insert(args.begin(), kEsper);
        args.insert(args.end(), {"--bus", broker.rpc});
        return run_to_exit(args, dir / (tag + ".log"), 20000);
    }
    // `esper status --json` (both agents and the broker's heartbeat): its output.
    std::string status() {
        const int rc = run_to_exit({kEsper, "status", "--json", "--bus", broker.rpc, "--bus-sub",
                                    broker.sub, "--timeout-ms", "2000"},
                                   dir / "status.log", 20000);
        CHECK(rc == 0);
        return file_text(dir / "status.log");
    }
    std::vector<nlohmann::json> events() const { return json_lines(run_dir / "events.jsonl"); }
    int64_t steps_done() const { return last_train_step(run_dir); }
    bool has_event(const std::function<bool(const nlohmann::json&)>& pred) const {
        for (const auto& e : events())
            if (pred(e)) return true;
        return false;
    }
    int controller_germinations() const {
        int n = 0;
        for (const auto& e : events())
            if (e["to"] == "GERMINATED" && e["origin"] == "controller") ++n;
        return n;
    }
};

// `esper run` in a scratch directory on ephemeral ports (--bus-port-base 0), its output in
// DIR/run.log; the bus endpoints come from its banner. The directory is left for the test to
// inspect (and remove).
struct EsperRun {
    std::filesystem::path dir = scratch_dir();
    std::filesystem::path run_dir = dir / "run";
    std::filesystem::path log = dir / "run.log";
    std::unique_ptr<ChildProcess> proc;
    std::string pub, sub, rpc;

    struct Resume {  // `esper run --resume RUN_DIR`, its output in LOG
        std::filesystem::path run_dir, log;
    };

    // A new run of CONFIG_TEXT (written to DIR/run.yaml) with EXTRA flags.
    explicit EsperRun(const std::string& config_text, const std::vector<std::string>& extra = {}) {
        std::ofstream(dir / "run.yaml") << config_text;
        start({kEsper, "run", "--config", (dir / "run.yaml").string(), "--run-dir",
               run_dir.string(), "--bus-port-base", "0"},
              extra);
    }
    explicit EsperRun(const Resume& resume) : run_dir(resume.run_dir), log(resume.log) {
        start({kEsper, "run", "--resume", run_dir.string(), "--bus-port-base", "0"}, {});
    }
    ~EsperRun() {
        if (proc) proc->stop(milliseconds(15000));
    }
    // Returns once the banner names the bus and the steering command.
    void start(std::vector<std::string> argv, const std::vector<std::string>& extra) {
        argv.insert(argv.end(), extra.begin(), extra.end());
        proc = std::make_unique<ChildProcess>("esper-run", argv, log);
        const std::regex bus("bus +pub (\\S+) +sub (\\S+) +rpc (\\S+)");
        REQUIRE(wait_until(
            [&] {
                std::smatch m;
                const std::string text = file_text(log);
                if (!std::regex_search(text, m, bus)) return false;
                pub = m[1], sub = m[2], rpc = m[3];
                return text.find("steer it:") != std::string::npos;
            },
            60));
    }
    // `esper ARGS`, its output in DIR/TAG.log; the exit code.
    int esper(std::vector<std::string> args, const std::string& tag) {
        args.insert(args.begin(), kEsper);
        return run_to_exit(args, dir / (tag + ".log"), 20000);
    }
    std::optional<int> wait(int seconds) { return proc->wait_for(milliseconds(seconds * 1000)); }
};

}  // namespace esper::test
