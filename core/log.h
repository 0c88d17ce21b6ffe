// Named loggers with per-logger levels: `Logger& log = esper::logger("kasmina.seed");`
// `ESPER_LOG_INFO(log, "seed=", 17, " stage=", "training->grafting");` prints one line
//   2026-11-22T05:40:01.123Z INFO kasmina.seed seed=17 stage=training->grafting
// Levels come from a spec such as "bus=debug,kasmina=info,warn" (a bare level is the default);
// only agents/ reads ESPER_LOG and calls set_log_levels(). A logger inherits the level of its
// longest configured dotted prefix. Warnings and errors carry file:line. Loggers are the one
// accepted global.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include "core/error.h"

namespace esper {

enum class LogLevel : int { kTrace = 0, kDebug = 1, kInfo = 2, kWarn = 3, kError = 4, kOff = 5 };

std::string_view log_level_name(LogLevel level);

class Logger {
public:
    explicit Logger(std::string name);
    const std::string& name() const { return name_; }
    bool enabled(LogLevel level) const {
        return static_cast<int>(level) >= level_.load(std::memory_order_relaxed);
    }
    void set_level(LogLevel level) {
        level_.store(static_cast<int>(level), std::memory_order_relaxed);
    }
    void write(LogLevel level, const char* file, int line, const std::string& text);
    // Returns false when more than `per_second` lines were written by this logger in the
    // current second (for rate-limiting repeated warnings); counts what was suppressed.
    bool allow_rate(int per_second);
    uint64_t suppressed() const { return suppressed_.load(); }

private:
    std::string name_;
    std::atomic<int> level_;
    std::atomic<int64_t> rate_window_s_{0};
    std::atomic<int> rate_count_{0};
    std::atomic<uint64_t> suppressed_{0};
};

// Returns the logger with this name, creating it with the configured level on first use.
Logger& logger(std::string_view name);

// Parses "name=level,name=level,level"; throws Error(kInvalidInput) naming the bad part.
void set_log_levels(std::string_view spec);

// Redirects output (default stderr). Used by tests and by agents that log to a file.
void set_log_file(std::FILE* file);

}  // namespace esper

#define ESPER_LOG_AT(lg, lvl, ...)                                                          \
    do {                                                                                    \
        ::esper::Logger& esper_lg_ = (lg);                                                  \
        if (esper_lg_.enabled(lvl))                                                         \
            esper_lg_.write(lvl, __FILE__, __LINE__, ::esper::detail::concat(__VA_ARGS__)); \
    } while (0)
#define ESPER_LOG_DEBUG(lg, ...) ESPER_LOG_AT(lg, ::esper::LogLevel::kDebug, __VA_ARGS__)
#define ESPER_LOG_INFO(lg, ...) ESPER_LOG_AT(lg, ::esper::LogLevel::kInfo, __VA_ARGS__)
#define ESPER_LOG_WARN(lg, ...) ESPER_LOG_AT(lg, ::esper::LogLevel::kWarn, __VA_ARGS__)
#define ESPER_LOG_ERROR(lg, ...) ESPER_LOG_AT(lg, ::esper::LogLevel::kError, __VA_ARGS__)
// Rate-limited warning: at most `per_s` lines per second per logger.
#define ESPER_LOG_WARN_RATE(lg, per_s, ...)                                               \
    do {                                                                                  \
        ::esper::Logger& esper_lgr_ = (lg);                                               \
        if (esper_lgr_.enabled(::esper::LogLevel::kWarn) && esper_lgr_.allow_rate(per_s)) \
            esper_lgr_.write(::esper::LogLevel::kWarn, __FILE__, __LINE__,                \
                             ::esper::detail::concat(__VA_ARGS__));                       \
    } while (0)
