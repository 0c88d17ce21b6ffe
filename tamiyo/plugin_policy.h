// The `plugin` policy: a shared library implementing the C ABI of tamiyo/esper_policy_v1.h,
// loaded with dlopen (RTLD_LOCAL). A plugin is code: before dlopen runs any of it (constructors
// run at load), check_plugin_file() reads the file's ELF headers and dynamic symbol table and
// refuses anything but a shared library for this machine exporting the four functions. Loading
// refuses, with Error(kInvalidInput) naming the file, a library that fails that check, cannot be
// opened, reports another ABI version, or whose init fails. decide() converts the view to the C
// records; a negative return or an out-of-range decision field throws, so the controller disables
// the plugin.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tamiyo/esper_policy_v1.h"
#include "tamiyo/policy.h"

namespace esper::tamiyo {

// The esper_policy_v1 functions a plugin must export.
inline constexpr const char* kPluginSymbols[] = {"esper_policy_abi_version", "esper_policy_init",
                                                 "esper_policy_decide", "esper_policy_destroy"};

// Checks `path` without loading it: a regular file, an ELF shared object of this machine's
// class and architecture, whose dynamic symbol table defines every kPluginSymbols function.
// Throws Error(kInvalidInput) naming the file and what is wrong ("missing symbol 'X'").
void check_plugin_file(const std::string& path);

class PluginPolicy final : public Policy {
public:
    // `config` is passed to the plugin's init (may be empty).
    static std::unique_ptr<PluginPolicy> load(const std::string& path,
                                              const std::string& config = {});
    ~PluginPolicy() override;
    PluginPolicy(const PluginPolicy&) = delete;
    PluginPolicy& operator=(const PluginPolicy&) = delete;

    std::string name() const override { return name_; }
    std::string kind() const override { return "plugin"; }
    std::string source() const override { return path_; }
    std::vector<Decision> decide(const View& view, uint64_t step) override;

    // Upper bound on decisions accepted from one decide() call.
    static constexpr uint32_t kMaxDecisions = 4096;

private:
    PluginPolicy() = default;

    std::string path_;
    std::string name_;
    void* handle_ = nullptr;
    void* state_ = nullptr;
    esper_policy_decide_fn decide_ = nullptr;
    esper_policy_destroy_fn destroy_ = nullptr;
    std::vector<esper_policy_seed_v1> seeds_;
    std::vector<esper_policy_decision_v1> out_;
};

}  // namespace esper::tamiyo
