// Plugin checks before any plugin code runs in Tamiyo; see policy_guard.h.
#include "agents/policy_guard.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "agents/process.h"
#include "core/error.h"
#include "tamiyo/plugin_policy.h"
#include "tamiyo/policy_factory.h"

namespace esper::agents {

namespace fs = std::filesystem;

std::string plugin_path_of(const std::string& spec) {
    // As tamiyo::make_policy splits it: PATH ends at ".so", an optional ":CONFIG" follows.
    const auto so = spec.find(".so");
    if (so == std::string::npos || !(so + 3 == spec.size() || spec[so + 3] == ':')) return {};
    return spec.substr(0, so + 3);
}

std::string probe_plugin(const fs::path& esper, const std::string& spec,
                         const WhileWaiting& while_waiting) {
    const std::string path = plugin_path_of(spec);
    tamiyo::check_plugin_file(path);
    static std::atomic<int> counter{0};
    const fs::path log =
        fs::temp_directory_path() / ("esper-plugin-probe-" + std::to_string(::getpid()) + "-" +
                                     std::to_string(counter++) + ".log");
    std::optional<int> status;
    std::vector<std::string> lines;
    {
        ChildProcess child("plugin-probe", {esper.string(), "tamiyo", "--probe-plugin", spec}, log);
        // Up to 20 s in slices, so the caller's heartbeat keeps going while the child works.
        for (int slice = 0; slice < 100 && !status; ++slice) {
            status = child.wait_for(std::chrono::milliseconds(200));
            if (!status && while_waiting) while_waiting();
        }
        if (!status) status = child.stop(std::chrono::milliseconds(500));
        lines = child.last_log_lines(20);
    }
    std::error_code ec;
    fs::remove(log, ec);
    for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
        auto j = nlohmann::json::parse(*it, nullptr, false);
        if (*status == 0 && j.is_object() && j.contains("name") && j["name"].is_string())
            return j["name"].get<std::string>();
    }
    std::string why = lines.empty() ? "no output" : lines.back();
    // The child's error line reads "esper tamiyo: error: PATH: reason".
    if (auto at = why.find("error: "); at != std::string::npos) why = why.substr(at + 7);
    ESPER_THROW(kInvalidInput, why.find(path) == 0 ? why : path + ": " + why,
                " (checked in a child process, exit status ", *status, ")");
}

int run_plugin_probe(const std::string& spec) {
    if (plugin_path_of(spec).empty())
        ESPER_THROW(kInvalidInput, "--probe-plugin '", spec, "': not a plugin (.so)");
    tamiyo::PolicyPtr p = tamiyo::make_policy(spec);
    std::printf("%s\n", nlohmann::json{{"name", p->name()}}.dump().c_str());
    std::fflush(stdout);
    return 0;
}

void check_plugin_dir(const std::vector<fs::path>& dirs, const std::string& path) {
    if (dirs.empty())
        ESPER_THROW(kInvalidInput, path,
                    ": live plugin loads are off (start esper tamiyo with --plugin-dir DIR)");
    std::error_code ec;
    const fs::path real = fs::weakly_canonical(fs::absolute(path), ec);
    for (const fs::path& d : dirs) {
        fs::path root = fs::weakly_canonical(fs::absolute(d), ec);
        if (root.filename().empty()) root = root.parent_path();  // "dir/" has an empty last part
        auto [r, p] = std::mismatch(root.begin(), root.end(), real.begin(), real.end());
        if (r == root.end() && p != real.end()) return;
    }
    ESPER_THROW(kInvalidInput, path, ": not inside a plugin directory of this controller (",
                dirs.size(), " allowed: --plugin-dir)");
}

tamiyo::PolicyPtr make_checked_policy(const fs::path& esper, const std::string& spec,
                                      const tamiyo::HeuristicConfig& heuristic,
                                      const WhileWaiting& while_waiting) {
    if (!plugin_path_of(spec).empty()) probe_plugin(esper, spec, while_waiting);
    return tamiyo::make_policy(spec, heuristic);
}

}  // namespace esper::agents
