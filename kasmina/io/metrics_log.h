// The run's metrics.jsonl writer: one JSON object per line, appended and flushed as it happens.
// A train line after every optimizer step {"step","epoch","split":"train","loss","lr",
// "samples_per_s","host_params","blueprint_params","total_steps"} and a test line after every
// evaluation {"step","epoch","split":"test","loss","accuracy"} (text data adds "bits_per_byte" and
// "perplexity"); readers (`esper run`'s report, tests) key on "split". A non-finite number (a NaN
// loss) is written as null. Every line ends with "schema" (kRunFileSchemaVersion) and "time" (wall
// clock, ISO 8601 UTC). "epoch" is the epoch of the step's batch (0-based) on both splits: a test
// line takes the epoch of the train line of its step.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

namespace esper::kasmina {

// The layout version of metrics.jsonl and events.jsonl lines ("schema" on every line).
constexpr int kRunFileSchemaVersion = 1;

struct TrainMetrics {
    int64_t step = 0;   // optimizer steps done
    int64_t epoch = 0;  // epoch the batch came from (0-based)
    double loss = 0.0;
    double lr = 0.0;
    double samples_per_s = 0.0;
    int64_t host_params = 0;
    int64_t blueprint_params = 0;
    int64_t total_steps = 0;
    double flops = 0.0;  // training FLOPs of this step, all ranks (host + live blueprints)
};

struct TestMetrics {
    int64_t step = 0;
    int64_t epoch = 0;
    double loss = 0.0;
    double accuracy = 0.0;
    std::optional<double> bits_per_byte, perplexity;  // text data only
};

class MetricsLog {
public:
    // Opens `path` for appending; throws esper::Error(kFailed) naming the path on failure.
    explicit MetricsLog(const std::filesystem::path& path);
    MetricsLog(const MetricsLog&) = delete;
    MetricsLog& operator=(const MetricsLog&) = delete;

    // Each appends one line and flushes; throws esper::Error(kFailed) on a write error.
    void write(const TrainMetrics& m);
    void write(const TestMetrics& m);

private:
    void write_line(const std::string& line);

    std::filesystem::path path_;
    std::ofstream out_;
    int64_t last_train_step_ = -1, last_train_epoch_ = 0;
};

}  // namespace esper::kasmina
