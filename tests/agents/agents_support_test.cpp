// Tests of the agent-side helpers: the flag parser, the run report/summary, child processes.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "agents/cli.h"
#include "agents/process.h"
#include "agents/report.h"
#include "core/error.h"
#include "tests/support/paths.h"

namespace fs = std::filesystem;
using esper::testing::scratch_dir;

namespace {
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
    fs::path dir = scratch_dir("report");
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
    // The dashboard's charts, inlined with their data: nothing is fetched from anywhere.
    CHECK_THAT(html, Catch::Contains("id=\"esper-data\"") && Catch::Contains("uPlot") &&
                         Catch::Contains("EsperCharts"));
    CHECK_THAT(html, !Catch::Contains("src=") && !Catch::Contains("href=\"http"));
    CHECK_THAT(html, Catch::Contains("&lt;b&gt;x&lt;/b&gt;"));  // reasons are escaped
    fs::remove_all(dir);
}

namespace {

// The JSON the report's charts are drawn from.
nlohmann::json report_data(const std::string& html) {
    const std::string open = "<script id=\"esper-data\" type=\"application/json\">";
    const size_t a = html.find(open) + open.size();
    return nlohmann::json::parse(html.substr(a, html.find("</script>", a) - a));
}

}  // namespace

TEST_CASE("a one-epoch run's report shows its single test point on a sane axis",
          "[agents][report]") {
    fs::path dir = scratch_dir("report1");
    {
        std::ofstream m(dir / "metrics.jsonl");
        for (int step = 1; step <= 468; ++step)
            m << R"({"step":)" << step
              << R"(,"epoch":0,"split":"train","loss":1.0,"total_steps":468,"host_params":10})"
              << "\n";
        m << R"({"step":468,"epoch":0,"split":"test","loss":0.8,"accuracy":0.79})"
          << "\n";
    }
    const nlohmann::json d = report_data(esper::agents::render_report(dir));
    REQUIRE(d["test"].size() == 1);
    CHECK(d["test"][0]["step"] == 468);
    CHECK(d["test"][0]["accuracy"] == Approx(0.79));
    CHECK(d["max_step"] == 468);  // the step axis runs 0..468, ticks at round steps
    fs::remove_all(dir);
}

TEST_CASE("a resumed or repeated run never gives negative seed counts or doubled steps",
          "[agents][report]") {
    fs::path dir = scratch_dir("report2");
    {
        std::ofstream m(dir / "metrics.jsonl");
        for (int step : {1, 2, 3, 4, 3, 4, 5})  // resumed from the checkpoint at step 2
            m << R"({"step":)" << step << R"(,"epoch":0,"split":"train","loss":)" << step << "}\n";
        std::ofstream e(dir / "events.jsonl");
        // The file starts mid-life (a seed already TRAINING), and a cull repeats after a resume.
        e << R"({"step":3,"layer":0,"seed":1,"from":"TRAINING","to":"CULLED","origin":"auto"})"
             "\n";
        e << R"({"step":4,"layer":0,"seed":1,"from":"TRAINING","to":"CULLED","origin":"auto"})"
             "\n";
    }
    const nlohmann::json d = report_data(esper::agents::render_report(dir));
    std::vector<double> steps;
    for (const auto& p : d["train"]) steps.push_back(p["step"].get<double>());
    CHECK(steps == std::vector<double>{1, 2, 3, 4, 5});
    CHECK(d["train"][2]["loss"] == 3);  // the newer line of step 3
    for (const auto& [step, counts] :
         d["stage_counts"].get<std::vector<std::pair<double, std::vector<int>>>>())
        for (int c : counts) CHECK(c >= 0);
    const esper::agents::RunSummary s = esper::agents::summarize_run(dir);
    for (int c : s.seeds_in_stage) CHECK(c >= 0);
    fs::remove_all(dir);
}

TEST_CASE("a failed run's report says it failed and why, with policy changes and annotations",
          "[agents][report]") {
    fs::path dir = scratch_dir("report3");
    {
        std::ofstream(dir / "run.json")
            << R"x({"state":"failed","reason":"kasmina-0 exited unexpectedly (status 134)",)x"
               R"("started":"2025-01-31T12:00:00.000Z","ended":"2025-01-31T12:05:00.000Z"})";
        std::ofstream e(dir / "events.jsonl");
        e << R"({"kind":"policy","step":50,"action":"loaded","name":"grow_now","reason":"esper policy load","time":"2025-01-31T12:01:00.000Z"})"
             "\n";
        e << R"({"kind":"annotation","step":60,"label":"note","text":"lr drop"})"
             "\n";
    }
    const std::string html = esper::agents::render_report(dir);
    CHECK_THAT(html, Catch::Contains("This run failed.") &&
                         Catch::Contains("kasmina-0 exited unexpectedly (status 134)"));
    CHECK_THAT(html, Catch::Contains("policy loaded: grow_now") &&
                         Catch::Contains("[note] lr drop") &&
                         Catch::Contains("2025-01-31 12:01:00 UTC"));
    const nlohmann::json d = report_data(html);
    REQUIRE(d["events"].size() == 2);  // marks on the charts' step axis
    CHECK(d["events"][0]["kind"] == "policy");
    CHECK(d["events"][0]["step"] == 50);
    CHECK_THAT(esper::agents::format_summary(esper::agents::summarize_run(dir)),
               Catch::Contains("ended                 failed: kasmina-0 exited"));
    fs::remove_all(dir);
}

TEST_CASE("a text run's report and summary carry its validation bits per byte",
          "[agents][report]") {
    fs::path dir = scratch_dir("report_bpb");
    {
        std::ofstream m(dir / "metrics.jsonl");
        m << R"({"step":1,"epoch":0,"split":"train","loss":3.0,"total_steps":2})"
          << "\n";
        m << R"({"step":1,"epoch":0,"split":"test","loss":2.0,"accuracy":0.3,)"
             R"("bits_per_byte":2.885,"perplexity":7.39})"
          << "\n";
        m << R"({"step":2,"epoch":0,"split":"train","loss":2.5,"total_steps":2})"
          << "\n";
        m << R"({"step":2,"epoch":0,"split":"test","loss":1.5,"accuracy":0.4,)"
             R"("bits_per_byte":2.164,"perplexity":4.48})"
          << "\n";
    }
    const std::string html = esper::agents::render_report(dir);
    const nlohmann::json d = report_data(html);
    REQUIRE(d["test"].size() == 2);
    CHECK(d["test"][0]["bits_per_byte"] == Approx(2.885));
    CHECK(d["test"][1]["bits_per_byte"] == Approx(2.164));
    CHECK_THAT(html, Catch::Contains("final validation bits per byte"));
    const esper::agents::RunSummary s = esper::agents::summarize_run(dir);
    REQUIRE(s.test_bits_per_byte);
    CHECK(*s.test_bits_per_byte == Approx(2.164));
    CHECK_THAT(esper::agents::format_summary(s), Catch::Contains("test bits per byte    2.164"));
    fs::remove_all(dir);
}

TEST_CASE("a child process logs, exits and is stopped with a grace period", "[agents][process]") {
    fs::path dir = scratch_dir("proc");
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
