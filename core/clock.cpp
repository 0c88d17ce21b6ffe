#include "core/clock.h"

#include <chrono>
#include <cstdio>
#include <ctime>

namespace esper {

int64_t monotonic_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

int64_t wall_time_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string utc_iso8601(int64_t wall_ns) {
    const int64_t ms_total = wall_ns >= 0 ? wall_ns / 1000000 : (wall_ns - 999999) / 1000000;
    const std::time_t secs =
        static_cast<std::time_t>(ms_total >= 0 ? ms_total / 1000 : (ms_total - 999) / 1000);
    const int ms = static_cast<int>(ms_total - static_cast<int64_t>(secs) * 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char stamp[40];
    const size_t n = std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(stamp + n, sizeof stamp - n, ".%03dZ", ms);
    return stamp;
}

}  // namespace esper
