// Tests of the agent-side helpers: the flag parser, the run report/summary, child processes.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <string>

#include "agents/cli.h"
#include "agents/process.h"
#include "agents/report.h"
#include "core/error.h"

namespace fs = std::filesystem;

namespace {
fs::path temp_dir(const std::string& tag) {
    fs::path p =
        fs::temp_directory_path() / ("esper_agents_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(p);
    fs::create_directories(p);
    return p;
}
int parse(esper::cli::Parser& p, std::vector<std::string> args) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    return p.parse(static_cast<int>(argv.size()), argv.data());
}
}  // namespace

TEST_CASE("the flag parser accepts both value forms and repeats", "[agents][cli]") {
    esper::cli::Parser p("esper test", "test");
    auto& port = p.option("port", "N", "a port", "5555");
    auto& g = p.option("germinate", "SPEC", "germinations", "", true);
    auto& insecure = p.flag("insecure", "allow");
    REQUIRE(parse(p, {"esper test", "--port=7000", "--germinate", "0:1:lowrank@5", "--germinate",
                      "1:2:scale_shift@9", "--insecure", "extra"}) == -1);
    CHECK(port.as_int() == 7000);
    CHECK(g.values.size() == 2);
    CHECK(insecure.on());
    CHECK(p.positional() == std::vector<std::string>{"extra"});
}

TEST_CASE("the flag parser reports usage errors with exit code 2", "[agents][cli]") {
    esper::cli::Parser p("esper test", "test");
    p.option("port", "N", "a port", "5555");
    CHECK(parse(p, {"esper test", "--nope"}) == esper::cli::kExitUsage);
    esper::cli::Parser q("esper test", "test");
    q.option("port", "N", "a port", "5555");
    CHECK(parse(q, {"esper test", "--port"}) == esper::cli::kExitUsage);
    esper::cli::Parser r("esper test", "test");
    auto& port = r.option("port", "N", "a port", "5555");
    REQUIRE(parse(r, {"esper test", "--port", "12x"}) == -1);
    CHECK_THROWS_AS(port.as_int(), esper::cli::UsageError);
    CHECK_THAT(r.help_text(), Catch::Contains("--port N") && Catch::Contains("(default: 5555)"));
}

TEST_CASE("the run summary and report are derived from metrics and events", "[agents][report]") {
    fs::path dir = temp_dir("report");
    {
        std::ofstream m(dir / "metrics.jsonl");
        m << R"({"step":10,"epoch":0,"split":"train","loss":2.0,"lr":0.1,"samples_per_s":100,"host_params":1000,"blueprint_params":0})"
             "\n";
        m << "this line is not json\n";
        m << R"({"step":20,"epoch":0,"split":"train","loss":1.5,"lr":0.1,"samples_per_s":100,"host_params":1000,"blueprint_params":64})"
             "\n";
        m << R"({"step":20,"epoch":0,"split":"test","loss":1.6,"accuracy":0.71})"
             "\n";
        std::ofstream e(dir / "events.jsonl");
        e << R"({"step":11,"layer":0,"seed":3,"from":"DORMANT","to":"GERMINATED","reason":"plateau","origin":"controller"})"
             "\n";
        e << R"({"step":12,"layer":0,"seed":3,"from":"GERMINATED","to":"TRAINING","reason":"slot free","origin":"auto"})"
             "\n";
        e << R"({"step":12,"layer":1,"seed":0,"from":"DORMANT","to":"GERMINATED","reason":"<b>x</b>","origin":"operator"})"
             "\n";
        e << R"({"step":15,"layer":1,"seed":0,"from":"GERMINATED","to":"CANCELLED","reason":"op","origin":"operator"})"
             "\n";
    }
    esper::agents::RunSummary s = esper::agents::summarize_run(dir);
    CHECK(s.last_step == 20);
    REQUIRE(s.test_accuracy);
    CHECK(*s.test_accuracy == Approx(0.71));
    CHECK(s.blueprint_params.value_or(-1) == 64);
    CHECK(s.transitions_into[1] == 2);  // germinated twice
    CHECK(s.seeds_in_stage[2] == 1);    // one TRAINING
    CHECK(s.seeds_in_stage[9] == 1);    // one CANCELLED
    CHECK(s.seeds_in_stage[1] == 0);
    CHECK(s.malformed_lines == 1);
    CHECK_THAT(esper::agents::format_summary(s),
               Catch::Contains("  into GERMINATED       2\n") && Catch::Contains("TRAINING=1"));

    fs::path out = esper::agents::write_report(dir);
    std::ifstream in(out);
    std::string html((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK_THAT(html, Catch::StartsWith("<!DOCTYPE html>"));
    CHECK_THAT(html, Catch::Contains("<svg") && Catch::Contains("polyline"));
    CHECK_THAT(html, Catch::Contains("&lt;b&gt;x&lt;/b&gt;"));  // reasons are escaped
    CHECK_THAT(html, !Catch::Contains("<script"));              // self-contained, no scripts
    fs::remove_all(dir);
}

TEST_CASE("a child process logs, exits and is stopped with a grace period", "[agents][process]") {
    fs::path dir = temp_dir("proc");
    {
        esper::agents::ChildProcess c("echo", {"/bin/sh", "-c", "echo one; echo two; exit 3"},
                                      dir / "echo.log");
        auto st = c.wait_for(std::chrono::seconds(10));
        REQUIRE(st);
        CHECK(*st == 3);
        CHECK(c.last_log_lines(1) == std::vector<std::string>{"two"});
    }
    {
        esper::agents::ChildProcess c("sleeper", {"/bin/sleep", "30"}, dir / "sleep.log");
        CHECK(c.running());
        int st = c.stop(std::chrono::milliseconds(2000));
        CHECK(st == 128 + SIGTERM);
    }
    CHECK_THROWS_AS(esper::agents::ChildProcess("missing", {"/nonexistent/bin"}, dir / "m.log"),
                    esper::Error);
    fs::remove_all(dir);
}
