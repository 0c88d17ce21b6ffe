#include "core/log.h"

#include <cstdio>
#include <ctime>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "core/clock.h"

namespace esper {
namespace {

struct Registry {
    std::mutex mu;
    std::map<std::string, std::unique_ptr<Logger>, std::less<>> loggers;
    std::vector<std::pair<std::string, LogLevel>> rules;  // prefix -> level; "" is the default
    std::FILE* out = stderr;
};

Registry& registry() {
    static Registry* r = new Registry();  // never destroyed: loggers outlive static dtors
    return *r;
}

LogLevel parse_level(std::string_view s) {
    if (s == "trace") return LogLevel::kTrace;
    if (s == "debug") return LogLevel::kDebug;
    if (s == "info") return LogLevel::kInfo;
    if (s == "warn" || s == "warning") return LogLevel::kWarn;
    if (s == "error") return LogLevel::kError;
    if (s == "off") return LogLevel::kOff;
    ESPER_THROW(kInvalidInput, "ESPER_LOG: unknown level '", s,
                "' (expected trace, debug, info, warn, error, off)");
}

// Longest matching dotted prefix wins; "" (the default rule) matches everything.
LogLevel level_for(const Registry& r, std::string_view name) {
    LogLevel level = LogLevel::kInfo;
    size_t best = 0;
    bool matched = false;
    for (const auto& [prefix, lvl] : r.rules) {
        bool match = prefix.empty() || name == prefix ||
                     (name.size() > prefix.size() && name.substr(0, prefix.size()) == prefix &&
                      name[prefix.size()] == '.');
        if (match && (!matched || prefix.size() >= best)) {
            level = lvl;
            best = prefix.size();
            matched = true;
        }
    }
    return level;
}

}  // namespace

std::string_view log_level_name(LogLevel level) {
    switch (level) {
        case LogLevel::kTrace:
            return "TRACE";
        case LogLevel::kDebug:
            return "DEBUG";
        case LogLevel::kInfo:
            return "INFO";
        case LogLevel::kWarn:
            return "WARN";
        case LogLevel::kError:
            return "ERROR";
        case LogLevel::kOff:
            return "OFF";
    }
    return "?";
}

Logger::Logger(std::string name)
    : name_(std::move(name)), level_(static_cast<int>(LogLevel::kInfo)) {}

void Logger::write(LogLevel level, const char* file, int line, const std::string& text) {
    int64_t ns = wall_time_ns();
    std::time_t secs = static_cast<std::time_t>(ns / 1'000'000'000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    std::string where;
    if (level >= LogLevel::kWarn && file != nullptr) {
        std::string_view f(file);
        auto slash = f.rfind('/');
        if (slash != std::string_view::npos) f = f.substr(slash + 1);
        where = detail::concat(" (", f, ":", line, ")");
    }
    Registry& r = registry();
    std::lock_guard lock(r.mu);
    std::fprintf(r.out, "%s.%03dZ %s %s %s%s\n", stamp, static_cast<int>((ns / 1'000'000) % 1000),
                 log_level_name(level).data(), name_.c_str(), text.c_str(), where.c_str());
    std::fflush(r.out);
}

bool Logger::allow_rate(int per_second) {
    int64_t now_s = monotonic_ns() / 1'000'000'000;
    int64_t window = rate_window_s_.load();
    if (window != now_s && rate_window_s_.compare_exchange_strong(window, now_s)) {
        rate_count_.store(0);
    }
    if (rate_count_.fetch_add(1) < per_second) return true;
    suppressed_.fetch_add(1);
    return false;
}

Logger& logger(std::string_view name) {
    Registry& r = registry();
    std::lock_guard lock(r.mu);
    auto it = r.loggers.find(name);
    if (it != r.loggers.end()) return *it->second;
    auto lg = std::make_unique<Logger>(std::string(name));
    lg->set_level(level_for(r, name));
    Logger& ref = *lg;
    r.loggers.emplace(std::string(name), std::move(lg));
    return ref;
}

void set_log_levels(std::string_view spec) {
    std::vector<std::pair<std::string, LogLevel>> rules;
    size_t pos = 0;
    while (pos <= spec.size()) {
        size_t comma = spec.find(',', pos);
        if (comma == std::string_view::npos) comma = spec.size();
        std::string_view part = spec.substr(pos, comma - pos);
        if (!part.empty()) {
            size_t eq = part.find('=');
            if (eq == std::string_view::npos) {
                rules.emplace_back("", parse_level(part));
            } else {
                if (eq == 0)
                    ESPER_THROW(kInvalidInput, "ESPER_LOG: empty logger name in '", part, "'");
                rules.emplace_back(std::string(part.substr(0, eq)),
                                   parse_level(part.substr(eq + 1)));
            }
        }
        pos = comma + 1;
    }
    Registry& r = registry();
    std::lock_guard lock(r.mu);
    r.rules = std::move(rules);
    for (auto& [name, lg] : r.loggers) lg->set_level(level_for(r, name));
}

void set_log_file(std::FILE* file) {
    Registry& r = registry();
    std::lock_guard lock(r.mu);
    r.out = file != nullptr ? file : stderr;
}

}  // namespace esper
