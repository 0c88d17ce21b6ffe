// `esper keygen`: writes CURVE key pairs for a secured bus (agents/keys.h, docs/bus.md):
// DIR/NAME.pub (public, for the broker's allowlist) and DIR/NAME.secret (mode 0600). --all
// writes the set one run needs: broker, agent, operator and observer.
#include <cstdio>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/keys.h"

namespace esper::agents {

int keygen_main(int argc, char** argv) {
    cli::Parser p("esper keygen",
                  "Write a CURVE key pair for the bus: NAME.pub (give it to the broker's\n"
                  "allowlist) and NAME.secret (mode 0600; keep it on the machine that uses it).");
    auto& out = p.option("out", "DIR", "directory to write into (created 0700 if missing)");
    auto& role = p.option("role", "ROLE",
                          "observer (subscribe, status), operator (commands, policies), agent "
                          "(Kasmina, Tamiyo) or broker (the broker's own pair)",
                          "operator");
    auto& name = p.option("name", "NAME", "file name of the pair (default: the role)");
    auto& all = p.flag("all", "write broker, agent, operator and observer pairs (one run's set)");
    auto& force = p.flag("force", "replace existing files");
    p.epilog(
        "examples:\n"
        "  esper keygen --out keys --all                 # a run's keys in keys/\n"
        "  esper keygen --out keys --role operator --name alice\n"
        "  esper broker --keys keys                      # keys/*.pub is the allowlist\n"
        "  esper ctl --keys keys cull 0 3                # keys/broker.pub + an operator key");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (!p.positional().empty())
        return p.usage_error("unexpected argument '" + p.positional()[0] + "'");
    if (!out.given()) return p.usage_error("--out DIR is required");
    if (all.on() && (role.given() || name.given()))
        return p.usage_error("--all writes every role; drop --role/--name");
    if (all.on()) {
        write_run_keys(out.str(), force.on());
        std::printf("wrote broker, agent, operator and observer key pairs in %s\n",
                    out.str().c_str());
        return 0;
    }
    for (const auto& path :
         write_key_pair(out.str(), name.given() ? name.str() : role.str(), role.str(), force.on()))
        std::printf("%s\n", path.c_str());
    return 0;
}

}  // namespace esper::agents
