// The `plugin` policy: a shared library implementing the C ABI of tamiyo/esper_policy_v1.h,
// loaded with dlopen (RTLD_LOCAL). Loading refuses, with Error(kInvalidInput) naming the file,
// a library that cannot be opened, lacks a symbol, reports another ABI version, or whose init
// fails. decide() converts the view to the C records; a negative return or an out-of-range
// decision field throws, so the controller disables the plugin.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "tamiyo/esper_policy_v1.h"
#include "tamiyo/policy.h"

namespace esper::tamiyo {

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
