// metrics.jsonl lines: the fields readers use (agents/report.cpp, agents/run_main.cpp), in their
// order, numbers in shortest round-trip form, non-finite values as null, appended across opens.
#include "kasmina/io/metrics_log.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace esper::kasmina;

namespace {

std::vector<std::string> read_lines(const fs::path& p) {
    std::ifstream in(p);
    std::vector<std::string> out;
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
}

}  // namespace

TEST_CASE("metrics lines carry the train and test fields, null for a NaN loss, appended",
          "[kasmina][io]") {
    const fs::path dir =
        fs::temp_directory_path() / ("esper_metrics_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    const fs::path path = dir / "metrics.jsonl";
    {
        MetricsLog log(path);
        log.write(TrainMetrics{1, 0, 1.25, 0.05, 1000.5, 6532, 0, 60, 1.5e9});
        log.write(TrainMetrics{2, 0, std::nan(""), 0.05, 900.0, 6532, 76, 60});
    }
    MetricsLog(path).write(TestMetrics{2, 0, 0.75, 0.5, std::nullopt, std::nullopt});
    const std::vector<std::string> lines = read_lines(path);
    REQUIRE(lines.size() == 3);
    CHECK(lines[0].rfind("{\"step\":1,\"epoch\":0,\"split\":\"train\",\"loss\":1.25,\"lr\":0.05,"
                         "\"samples_per_s\":1000.5,\"host_params\":6532,\"blueprint_params\":0,"
                         "\"total_steps\":60,\"flops\":1500000000.0,\"schema\":1,\"time\":\"20",
                         0) == 0);
    const nlohmann::json nan_line = nlohmann::json::parse(lines[1]);
    CHECK(nan_line["loss"].is_null());
    CHECK(nan_line["blueprint_params"] == 76);
    CHECK(lines[2].rfind("{\"step\":2,\"epoch\":0,\"split\":\"test\",\"loss\":0.75,"
                         "\"accuracy\":0.5,\"schema\":1,\"time\":",
                         0) == 0);
    const nlohmann::json test_line = nlohmann::json::parse(lines[2]);
    CHECK(test_line["time"].get<std::string>().size() ==
          std::string("2025-01-31T12:34:56.789Z").size());
    fs::remove_all(dir);
}

TEST_CASE("a metrics log that cannot be opened is an error naming the path", "[kasmina][io]") {
    const fs::path bad = fs::temp_directory_path() / "esper_no_such_dir_for_metrics" / "m.jsonl";
    fs::remove_all(bad.parent_path());
    CHECK_THROWS_WITH(MetricsLog(bad), Catch::Contains("esper_no_such_dir_for_metrics"));
}

TEST_CASE("a test line at a step has the epoch of that step's train line", "[kasmina][io]") {
    const fs::path dir =
        fs::temp_directory_path() / ("esper_metrics_epoch_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    {
        MetricsLog log(dir / "metrics.jsonl");
        log.write(TrainMetrics{32, 0, 1.0, 0.05, 100.0, 10, 0, 64});
        log.write(TestMetrics{32, 1, 0.9, 0.6, {}, {}});  // the trainer counts it as the next epoch
        log.write(TestMetrics{40, 1, 0.8, 0.7, {}, {}});  // no train line at 40: its own epoch
    }
    const std::vector<std::string> lines = read_lines(dir / "metrics.jsonl");
    REQUIRE(lines.size() == 3);
    CHECK(nlohmann::json::parse(lines[1])["epoch"] == 0);
    CHECK(nlohmann::json::parse(lines[2])["epoch"] == 1);
    fs::remove_all(dir);
}
