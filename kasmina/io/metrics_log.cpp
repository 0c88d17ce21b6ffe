// metrics.jsonl (see metrics_log.h). Keys keep the order readers have always seen
// (nlohmann::ordered_json); numbers are printed by nlohmann-json (shortest round-trip form).
#include "kasmina/io/metrics_log.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/error.h"

namespace esper::kasmina {

namespace {

using Json = nlohmann::ordered_json;

Json number_or_null(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

// schema and time close every line (last, so readers of the older fields see no change).
std::string finish(Json j) {
    j["schema"] = kRunFileSchemaVersion;
    j["time"] = utc_iso8601(wall_time_ns());
    return j.dump();
}

}  // namespace

MetricsLog::MetricsLog(const std::filesystem::path& path)
    : path_(path), out_(path, std::ios::out | std::ios::app) {
    if (!out_) ESPER_THROW(kFailed, path_.string(), ": cannot open: ", std::strerror(errno));
}

void MetricsLog::write(const TrainMetrics& m) {
    Json j;
    j["step"] = m.step;
    j["epoch"] = m.epoch;
    j["split"] = "train";
    j["loss"] = number_or_null(m.loss);
    j["lr"] = number_or_null(m.lr);
    j["samples_per_s"] = number_or_null(m.samples_per_s);
    j["host_params"] = m.host_params;
    j["blueprint_params"] = m.blueprint_params;
    j["total_steps"] = m.total_steps;
    j["flops"] = number_or_null(m.flops);
    last_train_step_ = m.step;
    last_train_epoch_ = m.epoch;
    write_line(finish(std::move(j)));
}

void MetricsLog::write(const TestMetrics& m) {
    Json j;
    j["step"] = m.step;
    // The trainer counts an evaluation at an epoch's end as the next epoch; one step, one epoch.
    j["epoch"] = m.step == last_train_step_ ? last_train_epoch_ : m.epoch;
    j["split"] = "test";
    j["loss"] = number_or_null(m.loss);
    j["accuracy"] = number_or_null(m.accuracy);
    if (m.bits_per_byte) j["bits_per_byte"] = number_or_null(*m.bits_per_byte);
    if (m.perplexity) j["perplexity"] = number_or_null(*m.perplexity);
    write_line(finish(std::move(j)));
}

void MetricsLog::write_line(const std::string& line) {
    out_ << line << '\n';
    out_.flush();
    if (!out_) ESPER_THROW(kFailed, path_.string(), ": write failed");
}

}  // namespace esper::kasmina
