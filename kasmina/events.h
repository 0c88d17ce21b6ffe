// Lifecycle events and the run's events.jsonl writer: one JSON object per line,
// {"step","layer","seed","from","to","reason","origin"}, flushed after every line so a crash
// never loses an acknowledged transition.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "kasmina/lifecycle.h"

namespace esper::kasmina {

struct LifecycleEvent {
    int64_t step = 0;
    int32_t layer = 0;
    int32_t seed = 0;
    SeedStage from = SeedStage::kDormant;
    SeedStage to = SeedStage::kDormant;
    std::string reason;
    TransitionOrigin origin = TransitionOrigin::kAuto;
    bool operator==(const LifecycleEvent&) const = default;
};

// The event as one JSON line (no trailing newline).
std::string event_to_json(const LifecycleEvent& e);

class EventLog {
public:
    // Opens `path` for appending; throws esper::Error(kFailed) naming the path on failure.
    explicit EventLog(const std::string& path);
    ~EventLog();
    EventLog(const EventLog&) = delete;
    EventLog& operator=(const EventLog&) = delete;

    // Appends one line and flushes; throws esper::Error(kFailed) on a write error.
    void write(const LifecycleEvent& e);
    const std::string& path() const { return path_; }
    int64_t lines_written() const { return lines_; }

private:
    std::string path_;
    std::FILE* file_ = nullptr;
    int64_t lines_ = 0;
};

}  // namespace esper::kasmina
