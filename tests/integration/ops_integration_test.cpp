// The operator's path end to end with the real binary (owner: ops): `esper run` refusing bad
// flags and a used run directory before anything starts, test metrics reaching the controller
// (a rule on run.test_accuracy fires), `esper tap --until-end`, `esper run --dash` serving the
// run, `esper status` as a table within 2 s, `esper policy check` and `policy load lib.so:CONFIG`
// on a live run, a killed controller restarted with its policy (and a run that loses it for good
// exiting non-zero), and `esper run --resume` continuing a stopped run.
#include <signal.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <thread>

#include "tests/integration/fixtures.h"

using namespace esper;
using namespace esper::test;
namespace fs = std::filesystem;

namespace {

// Teacher task, 4 seeds per layer, lifecycle minimums of tens of steps, an evaluation every 50
// steps (so test metrics are published often).
std::string fast_config(int64_t max_steps) {
    return "run: {seed: 5, epochs: 0, max_steps: " + std::to_string(max_steps) +
           ", telemetry_interval_steps: 10, eval_every_steps: 50, checkpoint_every_steps: 250}\n"
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
           "  plateau: {patience_steps: 1000000, min_delta: 0.01}\n";
}

// The pid of this run's controller (its command line names the run directory).
pid_t controller_pid(const fs::path& run_dir) {
    for (const auto& entry : fs::directory_iterator("/proc")) {
        const std::string name = entry.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::string cmd = file_text(entry.path() / "cmdline");
        for (char& c : cmd)
            if (c == '\0') c = ' ';
        if (cmd.find(" tamiyo ") != std::string::npos &&
            cmd.find(run_dir.string() + " ") != std::string::npos)
            return static_cast<pid_t>(std::stol(name));
    }
    return -1;
}

}  // namespace

TEST_CASE("esper run refuses bad flags and a used run directory before anything starts",
          "[integration][ops]") {
    fs::path dir = scratch_dir();
    const double startup = esper_startup_s(dir / "version.log");
    Stopwatch sw;
    CHECK(run_to_exit({kEsper, "run", "--epochs", "abc", "--run-dir", (dir / "a").string()},
                      dir / "abc.log") == 2);
    CHECK(sw.elapsed_s() < 2.0 + startup);
    CHECK_THAT(file_text(dir / "abc.log"), Catch::Contains("--epochs: expected an integer"));
    CHECK_FALSE(fs::exists(dir / "a"));
    CHECK(run_to_exit({kEsper, "run", "--max-step", "5"}, dir / "typo.log") == 2);
    CHECK_THAT(file_text(dir / "typo.log"), Catch::Contains("did you mean '--max-steps'"));
    CHECK(run_to_exit({kEsper, "stauts"}, dir / "cmd.log") == 2);
    CHECK_THAT(file_text(dir / "cmd.log"), Catch::Contains("did you mean 'status'"));

    // A run directory that holds a run: refused unless --overwrite (or --resume).
    fs::create_directories(dir / "used");
    std::ofstream(dir / "used" / "metrics.jsonl") << R"({"step":999,"split":"train"})"
                                                  << "\n";
    std::ofstream(dir / "run.yaml") << fast_config(120);
    std::vector<std::string> argv{kEsper,
                                  "run",
                                  "--config",
                                  (dir / "run.yaml").string(),
                                  "--run-dir",
                                  (dir / "used").string(),
                                  "--bus-port-base",
                                  "0"};
    CHECK(run_to_exit(argv, dir / "used.log") == 2);
    CHECK_THAT(file_text(dir / "used.log"),
               Catch::Contains("already holds a run") && Catch::Contains("--overwrite"));
    CHECK_FALSE(fs::exists(dir / "used" / "logs"));
    argv.push_back("--overwrite");
    CHECK(run_to_exit(argv, dir / "overwrite.log", 60000) == 0);
    const auto lines = json_lines(dir / "used" / "metrics.jsonl");
    REQUIRE_FALSE(lines.empty());
    CHECK(lines.front()["step"] == 1);  // the old run is gone
    CHECK(lines.front()["schema"] == 1);
    CHECK(lines.front()["time"].get<std::string>().back() == 'Z');
    std::error_code ec;
    fs::remove_all(dir, ec);
}

TEST_CASE(
    "test metrics reach the controller, tap --until-end stops at the run's end, and "
    "esper run --dash serves the run",
    "[integration][ops]") {
    fs::path dir = scratch_dir();
    std::ofstream(dir / "on_test.yaml")
        << "version: 1\nname: on_test\nrules:\n"
           "  - name: grow-when-tested\n"
           "    when: [\"run.test_accuracy > 0.05\", \"seed.layer == 0\", \"seed.id == 1\",\n"
           "           \"seed.stage == DORMANT\", \"seed.germinations == 0\"]\n"
           "    action: germinate\n";
    EsperRun run(fast_config(2500), {"--policy", (dir / "on_test.yaml").string(), "--dash", "0"});
    ChildProcess tap(
        "tap", {kEsper, "tap", "--bus", run.sub, "--until-end", "--run", "run", "telemetry.run."},
        run.dir / "tap.log");
    // The dashboard answers while the run trains.
    const std::regex url("dashboard (http://\\S+)/");
    std::smatch m;
    std::string banner;
    REQUIRE(wait_until(
        [&] {
            banner = file_text(run.log);
            return std::regex_search(banner, m, url);
        },
        20));
    const std::string status_url = m[1].str() + "/api/status";
    CHECK(run_to_exit({"/usr/bin/python3", "-c",
                       "import sys, urllib.request; "
                       "sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())",
                       status_url},
                      run.dir / "status.json") == 0);
    CHECK(nlohmann::json::parse(file_text(run.dir / "status.json"))["run"] == "run");

    auto rc = run.wait(90);
    INFO(file_text(run.log));
    REQUIRE(rc);
    CHECK(*rc == 0);
    bool fired = false;
    for (const auto& e : json_lines(run.run_dir / "events.jsonl"))
        fired =
            fired || (e.value("to", "") == "GERMINATED" && e["seed"] == 1 &&
                      e["reason"].get<std::string>().find("grow-when-tested") != std::string::npos);
    CHECK(fired);
    // tap saw the run's end on the lossless channel and exited by itself.
    auto tap_rc = tap.wait_for(milliseconds(10000));
    INFO(file_text(run.dir / "tap.log"));
    REQUIRE(tap_rc);
    CHECK(*tap_rc == 0);
    CHECK_THAT(file_text(run.dir / "tap.log"), Catch::Contains("run run ended"));
    // The run's end and its policy are in events.jsonl; run.json says it finished.
    const std::string events = file_text(run.run_dir / "events.jsonl");
    CHECK_THAT(events,
               Catch::Contains(R"("kind":"policy")") && Catch::Contains(R"("state":"finished")"));
    CHECK(nlohmann::json::parse(file_text(run.run_dir / "run.json"))["state"] == "finished");
    std::error_code ec;
    fs::remove_all(dir, ec);
}

TEST_CASE("esper status prints a labelled table, or fails within 2 s when nothing answers",
          "[integration][ops]") {
    fs::path dir = scratch_dir();
    const double startup = esper_startup_s(dir / "version.log");
    Stopwatch sw;
    CHECK(run_to_exit({kEsper, "status", "--bus", "127.0.0.1:9"}, dir / "none.log") == 1);
    CHECK(sw.elapsed_s() < 2.0 + startup);
    CHECK_THAT(file_text(dir / "none.log"), Catch::Contains("no answer"));

    // A live run loads plugins only from a --plugin-dir (DESIGN §16).
    EsperRun run(fast_config(400000),
                 {"--plugin-dir", fs::path(ESPER_EXAMPLE_PLUGIN).parent_path().string()});
    REQUIRE(wait_until([&] { return last_train_step(run.run_dir) > 50; }, 30));
    REQUIRE(run.esper({"status", "--bus", run.rpc}, "status") == 0);
    const std::string table = file_text(run.dir / "status.log");
    INFO(table);
    CHECK_THAT(table, Catch::Contains("  step ") && Catch::Contains("  train loss ") &&
                          Catch::Contains("  seeds ") && Catch::Contains("  controller ") &&
                          Catch::Contains("policy=heuristic"));
    REQUIRE(run.esper({"status", "--json", "--bus", run.rpc}, "status-json") == 0);
    const auto j = nlohmann::json::parse(file_text(run.dir / "status-json.log"));
    CHECK(j["executor"]["reply"]["step"].get<int64_t>() > 0);
    CHECK(j["controller"]["agent"] == "tamiyo");

    // policy check works offline; policy load lib.so:CONFIG works on the live run.
    std::ofstream(run.dir / "bad.yaml") << "version: 1\nname: bad\nrules:\n"
                                           "  - when: [\"seed.no_such_metric > 1\"]\n"
                                           "    action: germinate\n";
    CHECK(run.esper({"policy", "check", (run.dir / "bad.yaml").string()}, "check-bad") == 1);
    CHECK_THAT(file_text(run.dir / "check-bad.log"), Catch::Contains("bad.yaml:4"));
    CHECK(run.esper({"policy", "check", "heuristic"}, "check-h") == 0);
    CHECK_THAT(file_text(run.dir / "check-h.log"), Catch::Contains("cull if contribution <="));
    const std::string plugin = std::string(ESPER_EXAMPLE_PLUGIN) + ":training_steps=50";
    REQUIRE(run.esper({"policy", "load", plugin, "--bus", run.rpc}, "load-plugin") == 0);
    REQUIRE(run.esper({"policy", "show", "--bus", run.rpc}, "show") == 0);
    CHECK_THAT(file_text(run.dir / "show.log"), Catch::Contains("plugin"));
    std::error_code ec;
    fs::remove_all(dir, ec);
}

TEST_CASE(
    "a killed controller is restarted with its policy and a run that loses it for good exits "
    "non-zero",
    "[integration][ops]") {
    fs::path dir = scratch_dir();
    std::ofstream(dir / "hold.yaml") << "version: 1\nname: hold\nrules:\n"
                                        "  - when: [\"seed.stage == TRAINING\"]\n"
                                        "    action: deny\n";
    EsperRun run(fast_config(400000), {"--policy", (dir / "hold.yaml").string()});
    // The policy in force changes at runtime; a restarted controller must come back with it.
    std::ofstream(run.dir / "grow.yaml") << "version: 1\nname: grow_now\nrules:\n"
                                            "  - when: [\"seed.stage == DORMANT\"]\n"
                                            "    action: deny\n";
    REQUIRE(run.esper({"policy", "load", (run.dir / "grow.yaml").string(), "--bus", run.rpc},
                      "load") == 0);
    for (int kill = 1; kill <= 4; ++kill) {
        const pid_t pid = controller_pid(run.run_dir);
        REQUIRE(pid > 0);
        ::kill(pid, SIGKILL);
        const std::string expect = kill <= 3 ? "restarted (" + std::to_string(kill) + " of 3)"
                                             : std::string("lost for good");
        INFO(file_text(run.log));
        REQUIRE(
            wait_until([&] { return file_text(run.log).find(expect) != std::string::npos; }, 30));
        if (kill == 1) {
            REQUIRE(wait_until(
                [&] {
                    return run.esper({"policy", "show", "--bus", run.rpc}, "show") == 0;
                },
                10));
            CHECK_THAT(file_text(run.dir / "show.log"), Catch::Contains("grow_now"));
            REQUIRE(run.esper({"policy", "history", "--bus", run.rpc}, "history") == 0);
            CHECK_THAT(file_text(run.dir / "history.log"), Catch::Contains("hold"));
        }
    }
    const int64_t step = last_train_step(run.run_dir);
    REQUIRE(wait_until([&] { return last_train_step(run.run_dir) > step + 50; }, 20));
    run.proc->signal(SIGTERM);  // training went on; now end the run
    auto rc = run.wait(30);
    REQUIRE(rc);
    CHECK(*rc == 1);
    const auto j = nlohmann::json::parse(file_text(run.run_dir / "run.json"));
    CHECK(j["state"] == "failed");
    CHECK_THAT(j["reason"].get<std::string>(), Catch::Contains("tamiyo"));
    CHECK(j["controller_restarts"] == 3);
    CHECK_THAT(file_text(run.run_dir / "events.jsonl"),
               Catch::Contains("restarted (1 of 3)") && Catch::Contains("lost for good"));
    std::error_code ec;
    fs::remove_all(dir, ec);
}

TEST_CASE("esper run --resume continues a stopped run to its end", "[integration][ops]") {
    fs::path dir;
    fs::path run_dir;
    {
        EsperRun run(fast_config(3000));
        dir = run.dir;
        run_dir = run.run_dir;
        REQUIRE(wait_until([&] { return last_train_step(run.run_dir) >= 300; }, 30));
        run.proc->signal(SIGINT);
        auto rc = run.wait(30);
        REQUIRE(rc);
        CHECK(*rc == 130);
        CHECK(nlohmann::json::parse(file_text(run_dir / "run.json"))["state"] == "stopped");
        CHECK_THAT(file_text(run.log), Catch::Contains("run --resume"));
    }
    const int64_t stopped_at = last_train_step(run_dir);
    REQUIRE(stopped_at < 3000);
    EsperRun resumed(EsperRun::Resume{run_dir, dir / "resume.log"});
    auto rc = resumed.wait(120);
    INFO(file_text(dir / "resume.log"));
    REQUIRE(rc);
    CHECK(*rc == 0);
    CHECK(last_train_step(run_dir) == 3000);
    const auto j = nlohmann::json::parse(file_text(run_dir / "run.json"));
    CHECK(j["state"] == "finished");
    CHECK(j["resumes"] == 1);
    CHECK_THAT(file_text(dir / "resume.log"), Catch::Contains("(resumed)"));
    std::error_code ec;
    fs::remove_all(dir, ec);
}
