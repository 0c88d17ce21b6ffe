// Clocks: monotonic_ns() for durations and timeouts (never goes back), wall_time_ns() for
// timestamps that leave the process (envelope sent_at_ns, log lines), Stopwatch for spans.
#pragma once

#include <cstdint>
#include <string>

namespace esper {

int64_t monotonic_ns();
int64_t wall_time_ns();
// A wall time as ISO 8601 UTC with milliseconds, "2025-01-31T12:34:56.789Z" (the "time" of every
// JSON line Esper writes: metrics.jsonl, events.jsonl, `esper tap`).
std::string utc_iso8601(int64_t wall_ns);

class Stopwatch {
public:
    Stopwatch() : start_ns_(monotonic_ns()) {}
    void reset() { start_ns_ = monotonic_ns(); }
    int64_t elapsed_ns() const { return monotonic_ns() - start_ns_; }
    double elapsed_s() const { return static_cast<double>(elapsed_ns()) * 1e-9; }

private:
    int64_t start_ns_;
};

}  // namespace esper
