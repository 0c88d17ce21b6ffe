// The run's events.jsonl writer: one JSON object per lifecycle event,
// {"step","layer","seed","from","to","reason","origin","kind":"transition","schema","time"},
// flushed after every line so a crash never loses an acknowledged transition. `esper run` appends
// the run's other events to the same file ("kind": "policy", "annotation", "run").
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "kasmina/lifecycle/events.h"

namespace esper::kasmina {

// The event as one JSON line (no trailing newline).
std::string event_to_json(const LifecycleEvent& e);

class EventLog final : public EventSink {
public:
    // Opens `path` for appending; throws esper::Error(kFailed) naming the path on failure.
    explicit EventLog(const std::string& path);
    ~EventLog() override;
    EventLog(const EventLog&) = delete;
    EventLog& operator=(const EventLog&) = delete;

    // Appends one line and flushes; throws esper::Error(kFailed) on a write error.
    void write(const LifecycleEvent& e) override;
    const std::string& path() const { return path_; }
    int64_t lines_written() const { return lines_; }

private:
    std::string path_;
    std::FILE* file_ = nullptr;
    int64_t lines_ = 0;
};

}  // namespace esper::kasmina
