// The secured bus with the real processes (DESIGN §16): a broker with --keys, Kasmina and Tamiyo
// with agent keys, and operators and observers as tools. An operator's command is applied and
// recorded as an operator's whatever issuedBy it claims; an observer may tap and ask for status
// but its commands and policy loads are forbidden and counted; unknown keys and clients without
// keys never get through the handshake. Plugins are refused outside --plugin-dir and validated
// without their code ever running in Tamiyo. Without keys a second process cannot take over
// kasmina/0. `esper run --secure` runs a whole job on keys.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "agents/keys.h"
#include "agents/supervisor.h"
#include "bus/rpc.h"
#include "tests/integration/fixtures.h"

using namespace esper;
using namespace esper::test;
namespace fs = std::filesystem;

namespace {

constexpr const char* kRunId = "sec";

std::string slow_config() {
    return "run: {seed: 5, epochs: 0, max_steps: 400000, telemetry_interval_steps: 10}\n"
           "data:\n"
           "  dataset: teacher\n"
           "  batch_size: 64\n"
           "  teacher: {train_samples: 4096, test_samples: 512, features: 16, classes: 4, hidden: "
           "32}\n"
           "model: {hidden: [32, 32], activation: gelu, seeds_per_layer: 4}\n"
           // A germinated seed trains for longer than any test runs, so a cancel always finds it
           // cancellable however loaded the machine is.
           "lifecycle: {training_steps: 200000, stabilization_steps: 10, evaluation_steps: 10,\n"
           "            fine_tuning_steps: 30, embargo_steps: 50, decision_timeout_steps: 60}\n"
           "tamiyo:\n"
           "  plateau: {patience_steps: 1000000, min_delta: 0.01}\n";
}

// A secured broker and run: keys in DIR/keys (all roles), one directory per tool role holding
// only broker.pub and that role's secret, as an operator's or observer's machine would.
struct SecureRun {
    fs::path dir = scratch_dir();
    fs::path keys = dir / "keys";
    fs::path run_dir = dir / "run";
    fs::path config = dir / "run.yaml";
    fs::path plugins = dir / "plugins";
    agents::Supervisor supervisor{dir};
    ChildProcess* broker = nullptr;
    std::unique_ptr<ChildProcess> kasmina, tamiyo;
    agents::BusEndpoints bus;
    int commands = 0;

    SecureRun() {
        agents::write_run_keys(keys);
        for (const char* role : {"operator", "observer"}) {
            fs::create_directories(dir / role);
            fs::copy_file(keys / "broker.pub", dir / role / "broker.pub");
            fs::copy_file(keys / (std::string(role) + ".secret"),
                          dir / role / (std::string(role) + ".secret"));
        }
        fs::create_directories(plugins);
        std::ofstream(config) << slow_config();
        agents::BrokerLaunch launch{
            .pub_port = 0, .sub_port = 0, .rpc_port = 0, .agent_expiry_ms = 2000, .keys = keys};
        auto started = supervisor.start_ready("broker", launch.argv(kEsper), milliseconds(10000));
        broker = &started.child;
        INFO(agents::describe_failure(started.child, started.readiness));
        REQUIRE(started.readiness.ok());
        bus = *agents::broker_endpoints(started.readiness.line);
    }
    ~SecureRun() {
        if (tamiyo) tamiyo->stop(milliseconds(3000));
        if (kasmina) kasmina->stop(milliseconds(5000));
        if (broker) broker->stop(milliseconds(3000));
        std::error_code ec;
        fs::remove_all(dir, ec);
    }
    void start_agents() {
        kasmina = std::make_unique<ChildProcess>(
            "kasmina",
            std::vector<std::string>{kEsper, "kasmina", "--config", config.string(), "--run-dir",
                                     run_dir.string(), "--run-id", kRunId, "--bus", bus.rpc,
                                     "--bus-pub", bus.pub, "--keys", keys.string()},
            dir / "kasmina.log");
        tamiyo = std::make_unique<ChildProcess>(
            "tamiyo",
            std::vector<std::string>{kEsper, "tamiyo", "--config", config.string(), "--run-id",
                                     kRunId, "--bus", bus.rpc, "--bus-pub", bus.pub, "--bus-sub",
                                     bus.sub, "--keys", keys.string(), "--plugin-dir",
                                     plugins.string()},
            dir / "tamiyo.log");
        INFO(file_text(dir / "kasmina.log"));
        REQUIRE(wait_until([&] { return tool("operator", {"status"}) == 0; }, 30));
    }
    // `esper ARGS --bus RPC --keys DIR/ROLE`; output in DIR/<tag>.log. A policy load of a plugin
    // waits for its probe child, which takes seconds on a loaded machine: more time for those.
    int tool(const std::string& role, std::vector<std::string> args, int timeout_ms = 500) {
        const std::string tag = "tool-" + std::to_string(++commands);
        args.insert(args.begin(), kEsper);
        args.insert(args.end(), {"--bus", bus.rpc, "--timeout-ms", std::to_string(timeout_ms)});
        if (!role.empty()) args.insert(args.end(), {"--keys", (dir / role).string()});
        return run_to_exit(args, dir / (tag + ".log"), 20000);
    }
    std::string last_tool_log() const {
        return file_text(dir / ("tool-" + std::to_string(commands) + ".log"));
    }
};

}  // namespace

TEST_CASE(
    "on a secured bus roles decide: operators command, observers watch, strangers never "
    "connect",
    "[integration][security]") {
    SecureRun run;
    run.start_agents();

    SECTION("an operator's cull is applied and recorded as the operator's, whatever it claims") {
        REQUIRE(run.tool("operator", {"ctl", "germinate", "0", "1"}) == 0);
        // A client that writes issuedBy "tamiyo" into its command: the origin comes from its key.
        zmq::context_t ctx;
        bus::RpcClient client(ctx, {.endpoint = run.bus.rpc,
                                    .sender = "tamiyo",
                                    .timeout_ms = 1000,
                                    .max_attempts = 3,
                                    .security = agents::client_security(run.dir / "operator",
                                                                        {bus::Role::kOperator})});
        auto r = client.request("kasmina/0", "forged-1", [](schema::Envelope::Payload::Builder p) {
            auto c = p.initCommand();
            c.setCommandId("forged-1");
            c.setIssuedBy("tamiyo");
            c.setReason("pretending to be the controller");
            c.initCancel().setSeed(1);
        });
        REQUIRE(r.ok());
        INFO(r.reply->envelope().getPayload().getCommandAck().getReason().cStr());
        REQUIRE(r.reply->envelope().getPayload().getCommandAck().getOutcome() ==
                schema::CommandOutcome::APPLIED);
        REQUIRE(wait_until(
            [&] {
                for (const auto& e : json_lines(run.run_dir / "events.jsonl"))
                    if (e.value("to", "") == "CANCELLED") return true;
                return false;
            },
            10));
        int commanded = 0;  // the transitions the two commands caused (others are automatic)
        for (const auto& e : json_lines(run.run_dir / "events.jsonl"))
            if (e.value("to", "") == "GERMINATED" || e.value("to", "") == "CANCELLED") {
                ++commanded;
                CHECK(e["origin"] == "operator");
            }
        CHECK(commanded == 2);
    }
    SECTION("an observer may tap and ask for status; its command and policy load are forbidden") {
        ChildProcess tap(
            "tap",
            {kEsper, "tap", "--bus", run.bus.sub, "--keys", (run.dir / "observer").string(),
             "--count", "1", "--timeout-ms", "10000", "telemetry.run."},
            run.dir / "tap.log");
        CHECK(tap.wait_for(milliseconds(15000)).value_or(-1) == 0);
        CHECK_THAT(file_text(run.dir / "tap.log"), Catch::Contains("\"type\":\"runStatus\""));
        CHECK(run.tool("observer", {"status"}) == 0);
        CHECK(run.tool("observer", {"ctl", "germinate", "1", "2"}) == 1);
        CHECK_THAT(run.last_tool_log(), Catch::Contains("forbidden: commands need an operator"));
        std::ofstream(run.dir / "p.yaml") << "rules: []\n";
        CHECK(run.tool("observer", {"policy", "load", (run.dir / "p.yaml").string()}) == 1);
        CHECK_THAT(run.last_tool_log(),
                   Catch::Contains("forbidden: policy changes need an operator"));
        CHECK_THAT(file_text(run.dir / "kasmina.log"), Catch::Contains("forbidden_total=1"));
        for (const auto& e : json_lines(run.run_dir / "events.jsonl")) CHECK(e["layer"] != 1);
    }
    SECTION("an unknown key and a client without keys are refused at the handshake and counted") {
        fs::path stranger = run.dir / "stranger";
        agents::write_key_pair(stranger, "operator", "operator");
        fs::copy_file(run.keys / "broker.pub", stranger / "broker.pub");
        CHECK(run.tool("stranger", {"ctl", "cull", "0", "0"}) == 1);
        CHECK_THAT(run.last_tool_log(), Catch::Contains("no answer from kasmina/0"));
        CHECK(run.tool("", {"ctl", "cull", "0", "0"}) == 1);
        run.broker->stop(milliseconds(3000));  // its last line counts the refusals
        const std::string log = file_text(run.broker->log_path());
        CHECK_THAT(log, Catch::Contains("key not in the allowlist"));
        CHECK_THAT(log, !Catch::Contains("auth_denied=0 "));
        CHECK_THAT(log, !Catch::Contains("handshake_failed=0 "));
        run.broker = nullptr;
    }
    SECTION("a readable secret key is refused before the agent starts") {
        fs::copy(run.keys, run.dir / "loose", fs::copy_options::recursive);
        ::chmod((run.dir / "loose" / "agent.secret").c_str(), 0644);
        ChildProcess k("loose",
                       {kEsper, "kasmina", "--config", run.config.string(), "--run-dir",
                        (run.dir / "loose-run").string(), "--bus", run.bus.rpc, "--bus-pub",
                        run.bus.pub, "--keys", (run.dir / "loose").string()},
                       run.dir / "loose.log");
        CHECK(k.wait_for(milliseconds(20000)).value_or(-1) == 1);
        CHECK_THAT(file_text(run.dir / "loose.log"), Catch::Contains("chmod 600"));
    }
}

// How long a tool waits for a live plugin load (the controller probes it in a child first).
constexpr int kProbeMs = 8000;

TEST_CASE("a plugin is refused or validated without its code running in Tamiyo",
          "[integration][security]") {
    SecureRun run;
    run.start_agents();
    const std::string marker = (run.dir / "marker").string();
    ::setenv("ESPER_EVIL_MARKER", marker.c_str(), 1);  // inherited by the children below
    const fs::path evil = esper::testing::test_library("libesper_test_policy_evil.so");
    const fs::path evil_v2 = esper::testing::test_library("libesper_test_policy_evil_v2.so");
    const fs::path example = esper::testing::test_library("libesper_example_policy.so");

    // --check-config: the symbols from the file; a complete library's version in a child.
    CHECK(run_to_exit({kEsper, "tamiyo", "--check-config", "--policy", evil.string()},
                      run.dir / "check-evil.log") == 1);
    CHECK_THAT(file_text(run.dir / "check-evil.log"), Catch::Contains("missing symbol"));
    CHECK_FALSE(fs::exists(marker));
    ChildProcess check("check", {kEsper, "tamiyo", "--check-config", "--policy", evil_v2.string()},
                       run.dir / "check-v2.log");
    const pid_t checker = check.pid();
    CHECK(check.wait_for(milliseconds(20000)).value_or(-1) == 1);
    CHECK_THAT(file_text(run.dir / "check-v2.log"), Catch::Contains("ABI version 2"));
    REQUIRE(fs::exists(marker));  // it ran, but in the throw-away child, never in the checker
    CHECK(std::stoi(file_text(marker)) != checker);
    fs::remove(marker);
    CHECK(run_to_exit({kEsper, "tamiyo", "--check-config", "--policy", example.string()},
                      run.dir / "check-example.log") == 0);
    CHECK_THAT(file_text(run.dir / "check-example.log"), Catch::Contains("example_plugin"));
    // `esper policy check` (the operator's offline check) validates the same way.
    ChildProcess pcheck("pcheck", {kEsper, "policy", "check", evil_v2.string()},
                        run.dir / "pcheck-v2.log");
    const pid_t pchecker = pcheck.pid();
    CHECK(pcheck.wait_for(milliseconds(20000)).value_or(-1) == 1);
    CHECK_THAT(file_text(run.dir / "pcheck-v2.log"), Catch::Contains("ABI version 2"));
    REQUIRE(fs::exists(marker));
    CHECK(std::stoi(file_text(marker)) != pchecker);
    fs::remove(marker);
    CHECK(run_to_exit({kEsper, "policy", "check", example.string()},
                      run.dir / "pcheck-example.log") == 0);
    CHECK_THAT(file_text(run.dir / "pcheck-example.log"), Catch::Contains("example_plugin"));

    // Live loads: outside --plugin-dir refused before anything else; inside, checked first.
    CHECK(run.tool("operator", {"policy", "load", evil_v2.string()}) == 1);
    CHECK_THAT(run.last_tool_log(), Catch::Contains("not inside a plugin directory"));
    CHECK_FALSE(fs::exists(marker));
    fs::copy_file(evil, run.plugins / "evil.so");
    fs::copy_file(evil_v2, run.plugins / "evil_v2.so");
    fs::copy_file(example, run.plugins / "example.so");
    CHECK(run.tool("operator", {"policy", "load", (run.plugins / "evil.so").string()}, kProbeMs) ==
          1);
    CHECK_FALSE(fs::exists(marker));
    CHECK(run.tool("operator", {"policy", "load", (run.plugins / "evil_v2.so").string()},
                   kProbeMs) == 1);
    CHECK_THAT(run.last_tool_log(), Catch::Contains("ABI version 2"));
    if (fs::exists(marker)) CHECK(std::stoi(file_text(marker)) != run.tamiyo->pid());
    // A probe child slower (3 s) than the broker's agent expiry (2 s): Tamiyo heartbeats while it
    // waits, so its refusal reaches the tool and the controller stays registered for what follows.
    fs::copy_file(esper::testing::test_library("libesper_test_policy_slow.so"),
                  run.plugins / "slow.so");
    ChildProcess slow("slow-load",
                      {kEsper, "policy", "load", (run.plugins / "slow.so").string(), "--bus",
                       run.bus.rpc, "--timeout-ms", std::to_string(kProbeMs + 3000), "--keys",
                       (run.dir / "operator").string()},
                      run.dir / "slow-load.log");
    std::this_thread::sleep_for(milliseconds(2500));  // past the expiry, inside the probe
    CHECK(run.tool("operator", {"policy", "show"}, kProbeMs) == 0);
    CHECK_THAT(run.last_tool_log(), !Catch::Contains("unknown agent"));
    CHECK(slow.wait_for(milliseconds(kProbeMs + 5000)).value_or(-1) == 1);
    CHECK_THAT(file_text(run.dir / "slow-load.log"), Catch::Contains("ABI version 2"));
    CHECK(run.tool("observer", {"policy", "load", (run.plugins / "example.so").string()},
                   kProbeMs) == 1);
    CHECK_THAT(run.last_tool_log(), Catch::Contains("forbidden"));
    CHECK(run.tool("operator", {"policy", "load", (run.plugins / "example.so").string()},
                   kProbeMs) == 0);
    CHECK_THAT(run.last_tool_log(), Catch::Contains("example_plugin"));
    CHECK(run.tamiyo->running());
    ::unsetenv("ESPER_EVIL_MARKER");
}

TEST_CASE("without keys a second process cannot take kasmina/0 over and forge its acks",
          "[integration][security]") {
    BrokerProcess broker;
    std::ofstream(broker.dir / "run.yaml") << slow_config();
    ChildProcess kasmina("kasmina",
                         {kEsper, "kasmina", "--config", (broker.dir / "run.yaml").string(),
                          "--run-dir", (broker.dir / "run").string(), "--run-id", kRunId, "--bus",
                          broker.rpc, "--bus-pub", broker.pub},
                         broker.dir / "kasmina.log");
    zmq::context_t ctx;
    bus::RpcClient ping(ctx, {.endpoint = broker.rpc, .sender = "t", .max_attempts = 1});
    REQUIRE(wait_until(
        [&] {
            return ping
                .request("kasmina/0", "", [](auto p) { p.initControlRequest().setPing("x"); })
                .ok();
        },
        30));
    bus::RpcWorker rogue(ctx, {.endpoint = broker.rpc, .name = "kasmina/0", .heartbeat_ms = 50});
    int forged = 0;
    auto forge = [&](schema::Envelope::Reader, schema::Envelope::Payload::Builder rep) {
        ++forged;
        rep.initCommandAck().setOutcome(schema::CommandOutcome::APPLIED);
    };
    for (int i = 0; i < 100 && rogue.stats().refused == 0; ++i) rogue.poll(10, forge);
    CHECK(rogue.stats().refused >= 1);
    // The real executor still answers: a cull of a dormant seed is rejected, not "applied".
    ChildProcess ctl("ctl", {kEsper, "ctl", "cull", "0", "0", "--bus", broker.rpc},
                     broker.dir / "ctl.log");
    std::optional<int> rc;
    for (int i = 0; i < 1000 && !rc; ++i) {
        rogue.poll(5, forge);
        rc = ctl.poll();
    }
    CHECK(rc.value_or(-1) == 1);
    CHECK_THAT(file_text(broker.dir / "ctl.log"), Catch::Contains("rejected"));
    CHECK(forged == 0);
}

TEST_CASE("esper run --secure runs a whole job on keys", "[integration][security]") {
    fs::path dir = scratch_dir();
    std::ofstream(dir / "run.yaml") << "run: {seed: 5, epochs: 0, max_steps: 300, "
                                       "telemetry_interval_steps: 10}\n"
                                       "data:\n  dataset: teacher\n  batch_size: 64\n"
                                       "  teacher: {train_samples: 2048, test_samples: 256, "
                                       "features: 16, classes: 4, hidden: 32}\n"
                                       "model: {hidden: [32, 32], seeds_per_layer: 4}\n";
    // With --dash: the dashboard and esper run's own event recorder are bus clients too.
    const int rc =
        run_to_exit({kEsper, "run", "--secure", "--config", (dir / "run.yaml").string(),
                     "--run-dir", (dir / "r").string(), "--bus-port-base", "0", "--dash", "0"},
                    dir / "run.log", 120000);
    INFO(file_text(dir / "run.log"));
    CHECK(rc == 0);
    CHECK(fs::exists(dir / "r" / "keys" / "operator.secret"));
    CHECK_THAT(file_text(dir / "run.log"),
               Catch::Contains("--keys " + (dir / "r" / "keys").string()));
    const std::string broker_log = file_text(dir / "r" / "logs" / "broker.log");
    CHECK_THAT(broker_log, Catch::Contains("security=curve"));
    // Every process of the run got through the handshake on its key.
    CHECK_THAT(broker_log, Catch::Contains(" auth_denied=0 handshake_failed=0 "));
    CHECK(fs::exists(dir / "r" / "report.html"));
    std::error_code ec;
    fs::remove_all(dir, ec);
}
