#include "agents/cli.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <optional>
#include <stdexcept>

namespace esper::cli {

int64_t Option::as_int() const {
    const std::string& s = str();
    try {
        size_t used = 0;
        long long v = std::stoll(s, &used, 10);
        if (used != s.size()) throw std::invalid_argument(s);
        return v;
    } catch (const std::exception&) {
        throw UsageError("--" + name + ": expected an integer, got '" + s + "'");
    }
}

double Option::as_double() const {
    const std::string& s = str();
    try {
        size_t used = 0;
        double v = std::stod(s, &used);
        if (used != s.size()) throw std::invalid_argument(s);
        return v;
    } catch (const std::exception&) {
        throw UsageError("--" + name + ": expected a number, got '" + s + "'");
    }
}

Parser::Parser(std::string command, std::string summary, std::string positional_usage)
    : command_(std::move(command)),
      summary_(std::move(summary)),
      positional_usage_(std::move(positional_usage)) {
    flag("help", "show this help and exit");
}

Option& Parser::option(const std::string& name, const std::string& metavar, const std::string& help,
                       const std::string& default_value, bool repeatable) {
    Option& o = options_.emplace_back();
    o.name = name;
    o.metavar = metavar;
    o.help = help;
    o.default_value = default_value;
    o.repeatable = repeatable;
    return o;
}

Option& Parser::endpoint(const std::string& name, const std::string& metavar,
                         const std::string& help, const std::string& default_value) {
    Option& o = option(name, metavar, help, default_value);
    o.is_endpoint = true;
    return o;
}

Option& Parser::flag(const std::string& name, const std::string& help) {
    Option& o = options_.emplace_back();
    o.name = name;
    o.help = help;
    o.is_flag = true;
    return o;
}

std::string normalize_endpoint(const std::string& value, const std::string& option) {
    const auto scheme = value.find("://");
    if (scheme != std::string::npos) {
        const std::string transport = value.substr(0, scheme);
        if (transport == "tcp" || transport == "ipc" || transport == "inproc") return value;
        throw UsageError(fmt::format("--{}: unsupported transport '{}://' (use tcp://HOST:PORT)",
                                     option, transport));
    }
    const bool digits =
        !value.empty() && value.find_first_not_of("0123456789") == std::string::npos;
    if (digits) return "tcp://127.0.0.1:" + value;
    const auto colon = value.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == value.size() ||
        value.find_first_not_of("0123456789", colon + 1) != std::string::npos)
        throw UsageError(
            fmt::format("--{}: '{}' is not an endpoint (expected tcp://HOST:PORT)", option, value));
    return "tcp://" + value;
}

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); ++j)
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

std::string did_you_mean(const std::vector<std::string>& matches, const std::string& prefix) {
    if (matches.empty()) return "";
    std::string out = "; did you mean ";
    for (size_t i = 0; i < matches.size() && i < 3; ++i)
        out += (i ? " or '" : "'") + prefix + matches[i] + "'";
    return out + "?";
}

}  // namespace

std::vector<std::string> closest_matches(const std::string& word,
                                         const std::vector<std::string>& candidates) {
    const size_t limit = std::max<size_t>(2, word.size() / 3);
    std::vector<std::pair<size_t, std::string>> scored;
    for (const std::string& c : candidates) {
        size_t d = edit_distance(word, c);
        // A prefix of a candidate ("--epoch" for "--epochs") counts as close.
        if (c.rfind(word, 0) == 0 && word.size() >= 3) d = std::min<size_t>(d, 1);
        if (d <= limit) scored.emplace_back(d, c);
    }
    std::stable_sort(scored.begin(), scored.end(),
                     [](const auto& x, const auto& y) { return x.first < y.first; });
    std::vector<std::string> out;
    for (auto& [d, c] : scored) out.push_back(std::move(c));
    return out;
}

Option* Parser::find(const std::string& name) {
    for (Option& o : options_)
        if (o.name == name) return &o;
    return nullptr;
}

std::string Parser::help_text() const {
    std::string out = fmt::format("usage: {} [options]", command_);
    if (!positional_usage_.empty()) out += " " + positional_usage_;
    out += fmt::format("\n\n{}\n\noptions:\n", summary_);
    for (const Option& o : options_) {
        // The option column is 30 wide (at least one space before the help).
        const std::string left = "  --" + o.name + (o.is_flag ? "" : " " + o.metavar);
        out += fmt::format("{:<29} {}", left, o.help);
        if (!o.default_value.empty()) out += fmt::format(" (default: {})", o.default_value);
        if (o.repeatable) out += " (repeatable)";
        out += "\n";
    }
    if (!epilog_.empty()) out += fmt::format("\n{}\n", epilog_);
    return out;
}

int Parser::usage_error(const std::string& message) const {
    fmt::print(stderr, "{}: {}\nTry '{} --help'.\n", command_, message, command_);
    return kExitUsage;
}

int Parser::parse(int argc, char** argv) {
    bool only_positional = false;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (only_positional || arg.size() < 2 || arg.rfind("--", 0) != 0) {
            if (!only_positional && arg.size() >= 2 && arg[0] == '-' && arg[1] != '-' &&
                !std::isdigit(static_cast<unsigned char>(arg[1]))) {
                if (arg == "-h") {
                    std::fputs(help_text().c_str(), stdout);
                    return 0;
                }
                return usage_error("unknown option '" + arg + "'");
            }
            positional_.push_back(arg);
            continue;
        }
        if (arg == "--") {
            only_positional = true;
            continue;
        }
        std::string name = arg.substr(2);
        std::optional<std::string> inline_value;
        if (auto eq = name.find('='); eq != std::string::npos) {
            inline_value = name.substr(eq + 1);
            name = name.substr(0, eq);
        }
        Option* o = find(name);
        if (o == nullptr) {
            std::vector<std::string> names;
            for (const Option& known : options_) names.push_back(known.name);
            return usage_error("unknown option '--" + name + "'" +
                               did_you_mean(closest_matches(name, names), "--"));
        }
        if (o->is_flag) {
            if (inline_value) return usage_error("--" + name + " takes no value");
            o->seen = true;
            if (name == "help") {
                std::fputs(help_text().c_str(), stdout);
                return 0;
            }
            continue;
        }
        std::string value;
        if (inline_value) {
            value = *inline_value;
        } else {
            if (i + 1 >= argc)
                return usage_error("--" + name + " needs a value (" + o->metavar + ")");
            value = argv[++i];
        }
        if (o->seen && !o->repeatable) return usage_error("--" + name + " given twice");
        if (o->is_endpoint) {
            try {
                value = normalize_endpoint(value, name);
            } catch (const UsageError& e) {
                return usage_error(e.what());
            }
        }
        o->seen = true;
        o->values.push_back(value);
    }
    return -1;
}

}  // namespace esper::cli
