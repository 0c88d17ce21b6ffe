// events.jsonl: one line per lifecycle transition (nlohmann-json), flushed immediately.
#include "kasmina/io/event_log.h"

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/clock.h"
#include "core/error.h"
#include "kasmina/io/metrics_log.h"

namespace esper::kasmina {

std::string event_to_json(const LifecycleEvent& e) {
    // Key order as documented (ordered_json); UTF-8 such as "→" in reasons passes through.
    const nlohmann::ordered_json line = {{"step", e.step},
                                         {"layer", e.layer},
                                         {"seed", e.seed},
                                         {"from", stage_name(e.from)},
                                         {"to", stage_name(e.to)},
                                         {"reason", e.reason},
                                         {"origin", origin_name(e.origin)},
                                         {"kind", "transition"},
                                         {"schema", kRunFileSchemaVersion},
                                         {"time", utc_iso8601(wall_time_ns())}};
    // Replace, not throw, on invalid UTF-8: a reason is text from anywhere (a peer's command).
    return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

EventLog::EventLog(const std::string& path) : path_(path) {
    file_ = std::fopen(path.c_str(), "ab");
    if (!file_) ESPER_THROW(kFailed, path, ": cannot open the event log: ", std::strerror(errno));
}

EventLog::~EventLog() {
    if (file_) std::fclose(file_);
}

void EventLog::write(const LifecycleEvent& e) {
    const std::string line = event_to_json(e) + "\n";
    if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
        ESPER_THROW(kFailed, path_, ": cannot write the event log: ", std::strerror(errno));
    }
    ++lines_;
}

}  // namespace esper::kasmina
