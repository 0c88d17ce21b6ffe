// `esper`: one binary, git-style subcommands. Dispatches argv[1] to the subcommand's main.
// Exit codes: 0 success, 1 runtime failure (one-line reason on stderr), 2 usage error.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "agents/cli.h"
#include "agents/commands.h"
#include "core/error.h"

namespace {

struct Command {
    const char* name;
    const char* summary;
    int (*main)(int, char**);
};

constexpr Command kCommands[] = {
    {"run", "run the main job: broker + Tamiyo + Kasmina on this machine", esper::agents::run_main},
    {"kasmina", "run the Kasmina executor (--standalone: train from a config)",
     esper::agents::kasmina_main},
    {"broker", "run the message broker (pub/sub + request/reply)", esper::agents::broker_main},
    {"tap", "print bus messages as JSON lines", esper::agents::tap_main},
    {"pub", "publish one message from JSON", esper::agents::pub_main},
    {"tamiyo", "run the Tamiyo controller (policies, commands)", esper::agents::tamiyo_main},
    {"policy", "load, show, list or roll back the policy of a live run",
     esper::agents::policy_main},
    {"ctl", "send an operator lifecycle command to a live run", esper::agents::ctl_main},
    {"status", "show the state of a live run", esper::agents::status_main},
    {"keygen", "write CURVE key pairs for a secured bus", esper::agents::keygen_main},
    {"dash", "serve the live dashboard, /metrics and /api over HTTP", esper::agents::dash_main},
    {"report", "write a run directory's report.html and print its summary",
     esper::agents::report_main},
    {"generate", "sample text from a transformer checkpoint", esper::agents::generate_main},
    {"version", "print the version and build configuration", esper::agents::version_main},
};

void print_help(std::FILE* out) {
    std::fprintf(out,
                 "usage: esper <command> [options]\n\n"
                 "Esper trains neural networks that grow while they train.\n\ncommands:\n");
    for (const Command& c : kCommands) std::fprintf(out, "  %-10s %s\n", c.name, c.summary);
    std::fprintf(out, "\nRun 'esper <command> --help' for the options of one command.\n");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        print_help(stderr);
        return esper::cli::kExitUsage;
    }
    std::string name = argv[1];
    if (name == "--help" || name == "-h" || name == "help") {
        print_help(stdout);
        return 0;
    }
    if (name == "--version") name = "version";
    for (const Command& c : kCommands) {
        if (name != c.name) continue;
        std::string full = std::string("esper ") + c.name;
        argv[1] = full.data();
        try {
            return c.main(argc - 1, argv + 1);
        } catch (const esper::cli::UsageError& e) {
            std::fprintf(stderr, "%s: %s\nTry '%s --help'.\n", full.c_str(), e.what(),
                         full.c_str());
            return esper::cli::kExitUsage;
        } catch (const esper::Error& e) {
            std::fprintf(stderr, "%s: error: %s\n", full.c_str(), e.what());
            return 1;
        } catch (const std::exception& e) {
            std::fprintf(stderr, "%s: error: %s\n", full.c_str(), e.what());
            return 1;
        }
    }
    std::vector<std::string> names;
    for (const Command& c : kCommands) names.emplace_back(c.name);
    const std::vector<std::string> close = esper::cli::closest_matches(name, names);
    if (!close.empty())
        std::fprintf(stderr, "esper: unknown command '%s'; did you mean '%s'?\n\n", name.c_str(),
                     close[0].c_str());
    else
        std::fprintf(stderr, "esper: unknown command '%s'\n\n", name.c_str());
    print_help(stderr);
    return esper::cli::kExitUsage;
}
