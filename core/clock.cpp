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
    // Floor divisions that cannot overflow: a time from the wire may be any int64 (UBSan caught
    // `wall_ns - 999999` overflowing at INT64_MIN + 1).
    const int64_t ms_total = wall_ns / 1000000 - (wall_ns % 1000000 < 0 ? 1 : 0);
    const std::time_t secs =
        static_cast<std::time_t>(ms_total / 1000 - (ms_total % 1000 < 0 ? 1 : 0));
    const int ms = static_cast<int>(ms_total - static_cast<int64_t>(secs) * 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char stamp[40];
    const size_t n = std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(stamp + n, sizeof stamp - n, ".%03dZ", ms);
    return stamp;
}

}  // namespace esper
