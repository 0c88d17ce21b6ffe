// Policy plugins are code, so Tamiyo never runs a plugin's code before it has been checked, and
// never runs code just to refuse or validate it. For a plugin spec (PATH.so[:CONFIG]):
//   1. a live load (`esper policy load`) needs a path inside a --plugin-dir (the operator role is
//      checked on the request, agents/tamiyo_main.cpp);
//   2. the file's ELF symbols are checked without loading it (tamiyo::check_plugin_file);
//   3. its ABI version and init run in a throw-away child, `esper tamiyo --probe-plugin SPEC`;
//   4. only then is it loaded into Tamiyo.
// `esper tamiyo --check-config --policy X.so` stops after 3.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "tamiyo/heuristic_policy.h"
#include "tamiyo/policy.h"

namespace esper::agents {

// PATH of "PATH.so[:CONFIG]", or "" when `spec` names no plugin.
std::string plugin_path_of(const std::string& spec);

// Called every ~200 ms while a probe child runs (a controller keeps its bus heartbeat going, so
// a slow probe does not make the broker forget it).
using WhileWaiting = std::function<void()>;

// Steps 2 and 3: returns the plugin's display name; throws Error(kInvalidInput) with the
// child's reason. `esper` is this binary (the probe runs `esper tamiyo --probe-plugin SPEC`).
std::string probe_plugin(const std::filesystem::path& esper, const std::string& spec,
                         const WhileWaiting& while_waiting = {});

// The child's side of step 3: loads SPEC, prints {"name":…} on stdout; 0, or 1 with the reason
// on stderr.
int run_plugin_probe(const std::string& spec);

// Step 1: throws Error(kInvalidInput) unless `path` (symlinks resolved) lies inside one of
// `dirs`; with no dirs, live plugin loads are off.
void check_plugin_dir(const std::vector<std::filesystem::path>& dirs, const std::string& path);

// make_policy with steps 2-4 for plugins.
tamiyo::PolicyPtr make_checked_policy(const std::filesystem::path& esper, const std::string& spec,
                                      const tamiyo::HeuristicConfig& heuristic = {},
                                      const WhileWaiting& while_waiting = {});

}  // namespace esper::agents
