// events.jsonl: one line per lifecycle transition, flushed immediately.
#include "kasmina/io/event_log.h"

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace esper::kasmina {

namespace {
void append_json_string(std::string& out, std::string_view s) {
    out += '"';
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        switch (ch) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += ch;  // UTF-8 (e.g. "→") passes through
                }
        }
    }
    out += '"';
}
}  // namespace

std::string event_to_json(const LifecycleEvent& e) {
    std::string out = "{\"step\":" + std::to_string(e.step) +
                      ",\"layer\":" + std::to_string(e.layer) +
                      ",\"seed\":" + std::to_string(e.seed) + ",\"from\":";
    append_json_string(out, stage_name(e.from));
    out += ",\"to\":";
    append_json_string(out, stage_name(e.to));
    out += ",\"reason\":";
    append_json_string(out, e.reason);
    out += ",\"origin\":";
    append_json_string(out, origin_name(e.origin));
    out += '}';
    return out;
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
