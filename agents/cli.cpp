#include "agents/cli.h"

#include <fmt/format.h>

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

Option& Parser::flag(const std::string& name, const std::string& help) {
    Option& o = options_.emplace_back();
    o.name = name;
    o.help = help;
    o.is_flag = true;
    return o;
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
        if (o == nullptr) return usage_error("unknown option '--" + name + "'");
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
        o->seen = true;
        o->values.push_back(value);
    }
    return -1;
}

}  // namespace esper::cli
