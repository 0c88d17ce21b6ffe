// A small flag parser shared by every `esper <subcommand>`: declare flags, parse, and get
// `--help` text and usage errors (exit code 2) for free. Flags take `--name value` or
// `--name=value`; repeated flags accumulate; bare words are positional arguments.
//
//   cli::Parser p("esper broker", "Run the message broker.");
//   auto& bind = p.option("bind", "ADDR", "address to bind", "127.0.0.1");
//   auto& insecure = p.flag("insecure", "allow a non-loopback bind without keys");
//   if (int rc = p.parse(argc, argv); rc >= 0) return rc;   // --help or a usage error
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

namespace esper::cli {

constexpr int kExitUsage = 2;

struct Option {
    std::string name;
    std::string metavar;  // empty for boolean flags
    std::string help;
    std::string default_value;
    bool repeatable = false;
    bool is_flag = false;
    bool is_endpoint = false;  // values normalised by normalize_endpoint()
    bool seen = false;
    std::vector<std::string> values;

    // The last given value, or the default.
    const std::string& str() const { return values.empty() ? default_value : values.back(); }
    bool given() const { return seen; }
    bool on() const { return seen; }  // boolean flags
    int64_t as_int() const;           // throws UsageError on a non-integer
    double as_double() const;
};

class UsageError : public std::exception {
public:
    explicit UsageError(std::string m) : message_(std::move(m)) {}
    const char* what() const noexcept override { return message_.c_str(); }

private:
    std::string message_;
};

// "tcp://HOST:PORT" as given; "HOST:PORT" and "PORT" (loopback) get "tcp://"; ipc:// and inproc://
// pass. Anything else throws UsageError saying what is expected.
std::string normalize_endpoint(const std::string& value, const std::string& option);

// The candidates closest to `word` by edit distance (at most a third of its length, at least 2),
// best first: the "did you mean" of unknown subcommands and flags.
std::vector<std::string> closest_matches(const std::string& word,
                                         const std::vector<std::string>& candidates);

class Parser {
public:
    Parser(std::string command, std::string summary, std::string positional_usage = "");
    Option& option(const std::string& name, const std::string& metavar, const std::string& help,
                   const std::string& default_value = "", bool repeatable = false);
    Option& flag(const std::string& name, const std::string& help);
    // A bus endpoint: "tcp://HOST:PORT", also accepted as "HOST:PORT" or "PORT" (127.0.0.1).
    Option& endpoint(const std::string& name, const std::string& metavar, const std::string& help,
                     const std::string& default_value = "");
    // Adds free text printed after the flag list (examples, notes).
    void epilog(std::string text) { epilog_ = std::move(text); }

    // Parses argv[1..argc). Returns -1 to continue, 0 after printing --help, or kExitUsage after
    // printing a usage error to stderr.
    int parse(int argc, char** argv);
    const std::vector<std::string>& positional() const { return positional_; }
    std::string help_text() const;
    // Prints "COMMAND: message" and a hint to stderr; returns kExitUsage.
    int usage_error(const std::string& message) const;

private:
    Option* find(const std::string& name);
    std::string command_, summary_, positional_usage_, epilog_;
    std::deque<Option> options_;  // deque: references stay valid as options are added
    std::vector<std::string> positional_;
    bool allow_positional_ = true;
};

}  // namespace esper::cli
