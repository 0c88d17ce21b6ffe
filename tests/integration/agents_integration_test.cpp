// Agents end to end: the real broker, Tamiyo and Kasmina processes on loopback with ephemeral
// ports, on a small teacher task whose lifecycle timers are short enough for seeds to move in
// seconds. Covers the heuristic growing the network, a rules policy injected into a live run (and
// an invalid one refused), duplicated and illegal commands, a controller killed and restarted,
// `esper run` stopping on SIGINT with a final checkpoint and a report, and Tamiyo serving status
// while a command to an executor that never answers is still being retried.
#include <signal.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "agents/supervisor.h"
#include "bus/pubsub.h"
#include "bus/rpc.h"
#include "tests/integration/fixtures.h"

using namespace esper;
using namespace esper::test;
namespace fs = std::filesystem;

namespace {

constexpr const char* kRunId = "it";

}  // namespace

TEST_CASE("under the heuristic a plateau leads to germination and a seed passes its gates",
          "[integration][agents]") {
    LiveRun run(teacher_config(200000, 50), kRunId);
    run.start_kasmina();
    run.start_tamiyo();
    // Germinated by the controller on a plateau, then approved at the TRAINING gate.
    bool grafted = wait_until(
        [&] {
            return run.has_event([](const nlohmann::json& e) {
                return e["to"] == "GRAFTING" && e["origin"] == "controller";
            });
        },
        60);
    INFO(file_text(run.dir / "tamiyo-1.log"));
    REQUIRE(grafted);
    CHECK(run.has_event([](const nlohmann::json& e) {
        return e["to"] == "GERMINATED" && e["origin"] == "controller" &&
               e["reason"].get<std::string>().find("plateau") != std::string::npos;
    }));
    CHECK(run.kasmina->running());
    CHECK(run.tamiyo->running());
}

TEST_CASE("a rules policy loaded into a live run takes effect; an invalid one is refused",
          "[integration][agents]") {
    LiveRun run(teacher_config(200000, 1000000), kRunId);  // the heuristic never sees a plateau
    run.start_kasmina();
    run.start_tamiyo();
    fs::path good = run.dir / "grow_now.yaml";
    std::ofstream(good)
        << "version: 1\nname: grow_now\nrules:\n"
           "  - name: seed-two\n"
           "    when: [\"seed.layer == 0\", \"seed.id == 2\", \"seed.stage == DORMANT\","
           " \"seed.germinations == 0\"]\n"
           "    action: germinate\n";
    fs::path bad = run.dir / "bad.yaml";
    std::ofstream(bad) << "version: 1\nname: bad\nrules:\n  - when: [\"seed.no_such_metric > 1\"]\n"
                          "    action: germinate\n";
    // Someone tapping events.policy sees the change announced.
    ChildProcess tap("tap",
                     {kEsper, "tap", "--bus", run.broker.sub, "events.policy.", "--count", "1",
                      "--timeout-ms", "20000"},
                     run.dir / "tap.log");
    std::this_thread::sleep_for(milliseconds(300));  // let the subscription reach the broker

    REQUIRE(run.esper({"policy", "load", good.string()}, "load-good") == 0);
    bool germinated = wait_until(
        [&] {
            return run.has_event([](const nlohmann::json& e) {
                return e["to"] == "GERMINATED" && e["layer"] == 0 && e["seed"] == 2 &&
                       e["reason"].get<std::string>().find("grow_now") != std::string::npos;
            });
        },
        30);
    CHECK(germinated);
    REQUIRE(tap.wait_for(milliseconds(20000)).value_or(-1) == 0);
    CHECK_THAT(file_text(run.dir / "tap.log"),
               Catch::Contains("grow_now") && Catch::Contains("policyChange"));

    CHECK(run.esper({"policy", "load", bad.string()}, "load-bad") == 1);
    CHECK_THAT(file_text(run.dir / "load-bad.log"), Catch::Contains("bad.yaml:4"));
    REQUIRE(run.esper({"policy", "show"}, "show") == 0);
    CHECK_THAT(file_text(run.dir / "show.log"), Catch::Contains("grow_now"));
    REQUIRE(run.esper({"policy", "rollback"}, "rollback") == 0);
    CHECK_THAT(file_text(run.dir / "rollback.log"), Catch::Contains("heuristic"));
}

TEST_CASE("a duplicated command is applied once and an illegal one is rejected with the reason",
          "[integration][agents]") {
    LiveRun run(teacher_config(200000, 1000000), kRunId);
    run.start_kasmina();
    zmq::context_t ctx;
    bus::RpcClient client(
        ctx, {.endpoint = run.broker.rpc, .sender = "operator/test", .timeout_ms = 2000});
    // Tap layer 1's seed telemetry: the executor publishes each seed's germination prices.
    ChildProcess tap("tap", {kEsper, "tap", "--bus", run.broker.sub, "telemetry.seeds.it.1"},
                     run.dir / "tap-seeds.log");
    auto seed3 = [&] {
        std::vector<nlohmann::json> records;
        for (const auto& line : json_lines(run.dir / "tap-seeds.log"))
            for (const auto& r : line["payload"]["seeds"])
                if (r["seed"] == 3) records.push_back(r);
        return records;
    };
    REQUIRE(wait_until([&] { return !seed3().empty(); }, 20));
    const nlohmann::json dormant = seed3().back();
    auto germinate = [](schema::Envelope::Payload::Builder p) {
        auto c = p.initCommand();
        c.setCommandId("dup-1");
        c.setIssuedBy("operator");
        c.setReason("duplicate test");
        auto g = c.initGerminate();
        g.setLayer(1);
        g.setSeed(3);
    };
    bus::RpcReply first = client.request("kasmina/0", "dup-1", germinate);
    bus::RpcReply second = client.request("kasmina/0", "dup-1", germinate);
    REQUIRE(first.ok());
    REQUIRE(second.ok());
    CHECK(first.reply->envelope().getPayload().getCommandAck().getOutcome() ==
          schema::CommandOutcome::APPLIED);
    CHECK(second.reply->envelope().getPayload().getCommandAck().getOutcome() ==
          schema::CommandOutcome::APPLIED);
    std::this_thread::sleep_for(milliseconds(500));
    int germinations = 0;
    for (const auto& e : run.events())
        if (e["to"] == "GERMINATED" && e["layer"] == 1 && e["seed"] == 3) ++germinations;
    CHECK(germinations == 1);
    // The price published before the germination is what the blueprint then has (the kind of
    // this command is residual_mlp, index 0), so Tamiyo's budget charges what Kasmina counts.
    // Without a controller the seed is culled at its TRAINING gate within ~100 steps: look at
    // every record the tap caught, not only the newest.
    REQUIRE(dormant["germinationParams"].size() == 6);  // one per blueprint kind
    const int64_t price = dormant["germinationParams"][0].get<int64_t>();
    CHECK(price > 0);
    // The transformer's widening kinds cannot germinate on an MLP's chunk seed layer.
    for (int k = 3; k < 6; ++k) CHECK(dormant["germinationParams"][k].get<int64_t>() == -1);
    auto held = [&] {
        std::vector<int64_t> counts;
        for (const auto& r : seed3())
            if (r["blueprintParams"].get<int64_t>() > 0) counts.push_back(r["blueprintParams"]);
        return counts;
    };
    REQUIRE(wait_until([&] { return !held().empty(); }, 20));
    for (int64_t n : held()) CHECK(n == price);
    CHECK(seed3().back()["germinationParams"] == dormant["germinationParams"]);
    tap.stop(milliseconds(2000));

    CHECK(run.esper({"ctl", "transition", "0", "1", "FOSSILIZED"}, "illegal") == 1);
    CHECK_THAT(file_text(run.dir / "illegal.log"),
               Catch::Contains("invalid transition DORMANT→FOSSILIZED"));
    CHECK(run.esper({"ctl", "cull", "0", "99"}, "unknown-seed") == 1);
    CHECK_THAT(file_text(run.dir / "unknown-seed.log"), Catch::Contains("seed 99"));
    CHECK(run.kasmina->running());
}

TEST_CASE(
    "killing Tamiyo leaves Kasmina training, waiting seeds get the safe default, and a "
    "restarted Tamiyo resumes control",
    "[integration][agents]") {
    LiveRun run(teacher_config(200000, 50), kRunId);
    run.start_kasmina();
    std::ofstream(run.dir / "hold.yaml")
        << "version: 1\nname: hold\nrules:\n"
           "  - when: [\"seed.stage == TRAINING\"]\n    action: deny\n";
    run.start_tamiyo((run.dir / "hold.yaml").string());  // never approves: seeds wait at gates
    run.tamiyo->signal(SIGKILL);
    REQUIRE(run.tamiyo->wait_for(milliseconds(5000)));
    const int64_t before = run.steps_done();
    REQUIRE(run.esper({"ctl", "germinate", "0", "1"}, "germinate") == 0);
    // No controller: the seed waits at the TRAINING gate until decision_timeout_steps, then the
    // executor applies the safe default (cull) on its own.
    bool timed_out = wait_until(
        [&] {
            return run.has_event([](const nlohmann::json& e) {
                return e["seed"] == 1 && e["to"] == "CULLED" && e["origin"] == "auto" &&
                       e["reason"].get<std::string>().find("decision timeout") != std::string::npos;
            });
        },
        30);
    CHECK(timed_out);
    CHECK(run.steps_done() > before + 50);  // training went on without a controller
    CHECK(run.kasmina->running());

    // A new controller rebuilds its view from the bus and takes over (plateau → germination).
    run.start_tamiyo();
    bool resumed = wait_until(
        [&] {
            return run.has_event(
                [](const nlohmann::json& e) { return e["origin"] == "controller"; });
        },
        60);
    CHECK(resumed);
}

TEST_CASE("esper run stops on SIGINT within seconds with a final checkpoint and a report",
          "[integration][agents]") {
    fs::path dir = scratch_dir();
    std::ofstream(dir / "run.yaml") << teacher_config(200000, 50);
    ChildProcess run("esper-run",
                     {kEsper, "run", "--config", (dir / "run.yaml").string(), "--run-dir",
                      (dir / "run").string(), "--bus-port-base", "0"},
                     dir / "run.log");
    REQUIRE(wait_until(
        [&] {
            int64_t step = 0;
            for (const auto& m : json_lines(dir / "run" / "metrics.jsonl"))
                step = m.value("step", step);
            return step >= 300;
        },
        60));
    run.signal(SIGINT);
    auto status = run.wait_for(milliseconds(15000));
    INFO(file_text(dir / "run.log"));
    REQUIRE(status);
    CHECK(*status == 130);
    CHECK(fs::exists(dir / "run" / "report.html"));
    bool checkpoint = false;
    for (const auto& entry : fs::directory_iterator(dir / "run" / "checkpoints"))
        checkpoint = checkpoint || fs::exists(entry.path() / "manifest.bin");
    CHECK(checkpoint);
    CHECK_THAT(file_text(dir / "run.log"), Catch::Contains("run summary"));
    std::error_code ec;
    fs::remove_all(dir, ec);
}

TEST_CASE("esper run refuses an invalid config or policy before anything starts",
          "[integration][agents]") {
    fs::path dir = scratch_dir();
    std::ofstream(dir / "bad_kasmina.yaml") << "model:\n  hidden: [64, x]\n";
    std::ofstream(dir / "bad_tamiyo.yaml") << "tamiyo:\n  plateau: {patience_steps: -3}\n";
    struct Case {
        std::vector<std::string> args;
        std::string expect;
    };
    const std::vector<Case> cases = {
        {{"--config", (dir / "bad_kasmina.yaml").string()}, "bad_kasmina.yaml:2: model.hidden[1]"},
        {{"--config", (dir / "bad_tamiyo.yaml").string()},
         "bad_tamiyo.yaml:2: tamiyo.plateau.patience_steps"},
        {{"--policy", (dir / "missing.yaml").string()}, "missing.yaml"},
    };
    int n = 0;
    for (const Case& c : cases) {
        fs::path run_dir = dir / ("run" + std::to_string(n++));
        std::vector<std::string> argv{
            kEsper, "run", "--run-dir", run_dir.string(), "--bus-port-base", "0"};
        argv.insert(argv.end(), c.args.begin(), c.args.end());
        fs::path log = dir / ("out" + std::to_string(n) + ".log");
        CHECK(run_to_exit(argv, log, 30000) == 1);
        CHECK_THAT(file_text(log), Catch::Contains(c.expect));
        CHECK_FALSE(fs::exists(run_dir / "logs" / "broker.log"));  // nothing was started
    }
    std::error_code ec;
    fs::remove_all(dir, ec);
}

TEST_CASE("the executor publishes its effective config on config.<run> at startup",
          "[integration][agents]") {
    LiveRun run(teacher_config(200000, 1000000), kRunId);
    ChildProcess tap("tap",
                     {kEsper, "tap", "--bus", run.broker.sub, "config.", "--count", "1",
                      "--timeout-ms", "20000"},
                     run.dir / "tap.log");
    std::this_thread::sleep_for(milliseconds(300));  // let the subscription reach the broker
    run.start_kasmina();
    REQUIRE(tap.wait_for(milliseconds(20000)).value_or(-1) == 0);
    const std::string text = file_text(run.dir / "tap.log");
    INFO(text);
    const nlohmann::json line = nlohmann::json::parse(text.substr(0, text.find('\n')));
    CHECK(line["topic"] == "config.it");
    CHECK_THAT(text, Catch::Contains("runConfig") && Catch::Contains("seeds_per_layer: 4") &&
                         Catch::Contains("\"batchSize\":64") && Catch::Contains("\"width\":32"));
}

TEST_CASE(
    "Tamiyo answers a status request while a command to an unresponsive kasmina/0 is "
    "pending",
    "[integration][agents]") {
    BrokerProcess broker;
    // kasmina/0 takes every command and never answers (its replies are all "lost").
    zmq::context_t ctx;
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> commands{0};
    std::thread executor([&] {
        bus::RpcWorker worker(ctx, {.endpoint = broker.rpc,
                                    .name = "kasmina/0",
                                    .heartbeat_ms = 200,
                                    .drop_first_replies = 1 << 30});
        while (!stop) {
            worker.poll(20, [](schema::Envelope::Reader, schema::Envelope::Payload::Builder rep) {
                rep.initCommandAck().setOutcome(schema::CommandOutcome::APPLIED);
            });
            commands = worker.stats().requests;
        }
    });
    struct Join {
        std::atomic<bool>& stop;
        std::thread& thread;
        ~Join() {
            stop = true;
            thread.join();
        }
    } join{stop, executor};

    // Tamiyo germinates every dormant seed it sees; started through its ready pipe.
    std::ofstream(broker.dir / "grow.yaml")
        << "version: 1\nname: grow\nrules:\n"
           "  - when: [\"seed.stage == DORMANT\"]\n    action: germinate\n";
    std::ofstream(broker.dir / "tamiyo.yaml") << "tamiyo:\n  decision_interval_steps: 10\n";
    agents::TamiyoLaunch launch{.bus = {broker.pub, broker.sub, broker.rpc},
                                .run_id = kRunId,
                                .config = broker.dir / "tamiyo.yaml",
                                .policy = (broker.dir / "grow.yaml").string()};
    auto tamiyo = broker.supervisor.start_ready("tamiyo", launch.argv(kEsper), milliseconds(20000));
    INFO(agents::describe_failure(tamiyo.child, tamiyo.readiness));
    REQUIRE(tamiyo.readiness.ok());
    CHECK(tamiyo.readiness.line == nlohmann::json{{"agent", "tamiyo"}});

    // Play the executor's telemetry (one dormant seed) until Tamiyo sends a command.
    bus::Publisher telemetry(ctx, {.endpoint = broker.pub,
                                   .sender = "kasmina/0",
                                   .run_id = kRunId,
                                   .reliability = bus::Reliability::kControl});
    uint64_t step = 0;
    const bool sent = wait_until(
        [&] {
            step += 10;
            // The run's shape, as the executor announces it: Tamiyo believes nothing before it.
            telemetry.publish(std::string("config.") + kRunId,
                              [&](schema::Envelope::Payload::Builder p) {
                                  auto rc = p.initRunConfig();
                                  rc.setRunId(kRunId);
                                  rc.setSteps(1000000);
                                  auto l = rc.initLayers(1)[0];
                                  l.setWidth(8);
                                  l.setSeeds(1);
                              });
            telemetry.publish(std::string("telemetry.seeds.") + kRunId + ".0",
                              [&](schema::Envelope::Payload::Builder p) {
                                  auto b = p.initSeedTelemetry();
                                  b.setLayer(0);
                                  b.setStepEnd(step);
                                  auto s = b.initSeeds(1)[0];
                                  s.setSeed(0);
                                  s.setStage(schema::SeedStage::DORMANT);
                                  s.setChunkWidth(8);
                                  // The executor's price of each kind (Tamiyo never germinates
                                  // a seed without one).
                                  auto prices = s.initGerminationParams(3);
                                  for (unsigned k = 0; k < 3; ++k) prices.set(k, 100);
                              });
            telemetry.publish(
                std::string("telemetry.run.") + kRunId,
                [&](schema::Envelope::Payload::Builder p) { p.initRunStatus().setStep(step); });
            return commands > 0;
        },
        20);
    INFO(file_text(broker.dir / "tamiyo.log"));
    REQUIRE(sent);

    // Tamiyo keeps retrying that command for over a second (4 attempts of 300 ms); a status
    // request in the meantime is answered, with the command still pending. (A Tamiyo blocked in
    // its send could answer only after giving up on the command: no reply within 1 s, or
    // pending=0.)
    bus::RpcClient client(
        ctx, {.endpoint = broker.rpc, .sender = "test", .timeout_ms = 1000, .max_attempts = 1});
    bus::RpcReply r = client.request("tamiyo", "", [](schema::Envelope::Payload::Builder p) {
        p.initControlRequest().setStatus();
    });
    REQUIRE(r.ok());
    auto status = r.reply->envelope().getPayload().getControlReply().getStatus();
    CHECK_THAT(std::string(status.getBackend().cStr()), Catch::Contains("pending=1"));
    // The command was retried with its key, and Tamiyo gave up on it without dying.
    CHECK(wait_until([&] { return commands >= 4; }, 10));
    CHECK(wait_until(
        [&] {
            return file_text(broker.dir / "tamiyo.log").find("outcome=no reply") !=
                   std::string::npos;
        },
        10));
    CHECK(tamiyo.child.running());
}
