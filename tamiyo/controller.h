// The decision loop: decide(view, step) runs the active policy, checks each proposal against the
// view (the seed exists and is in a stage where the action makes sense, one decision per seed, no
// command still pending for it), applies the budgets, and records every proposal with its
// outcome. Policies are swapped only between decisions (load/rollback), with a timestamped
// history. The controller is the containment boundary for policies: one that throws or overruns
// its time budget is disabled and the previous one restored, with the reason recorded. Overruns
// are detected when decide() returns (the output is discarded); a policy is never preempted.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tamiyo/budget.h"
#include "tamiyo/decision.h"
#include "tamiyo/policy.h"
#include "tamiyo/view.h"

namespace esper::tamiyo {

struct ControllerConfig {
    BudgetConfig budget;
    double policy_time_budget_ms = 100.0;  // a decide() call longer than this disables the policy
    uint64_t pending_timeout_steps = 200;  // a sent command the view has not confirmed by then is
                                           // forgotten (the seed may be decided on again)
    size_t journal_size = 4096;            // decision records kept
    // After the executor rejects a germination of kind K in layer L (typically: K's arena is
    // full), no germination of K in L is proposed for this many steps, doubled on each further
    // rejection up to 16x; lifted early when a seed of that kind in that layer frees its slot.
    uint64_t rejection_backoff_steps = 200;
};

struct DecisionRecord {
    uint64_t step = 0;
    int64_t wall_ns = 0;
    Decision decision;
    bool accepted = false;
    std::string refusal;  // why it was refused (budget, cooldown, sanity)
};

enum class PolicyAction : uint8_t { kLoad = 0, kRollback = 1, kDisabled = 2, kFailed = 3 };
std::string_view policy_action_name(PolicyAction a);  // load | rollback | disabled | failed

struct PolicyHistoryEntry {
    int64_t wall_ns = 0;
    uint64_t step = 0;  // the newest step the view had seen
    PolicyAction action = PolicyAction::kLoad;
    std::string name;  // the policy now active after the action
    std::string kind;
    std::string source;
    std::string affected;  // the policy loaded / rolled back / disabled
    std::string reason;
};

class Controller {
public:
    Controller(ControllerConfig config, PolicyPtr initial);

    // Makes `policy` active; the current one is kept underneath for rollback().
    void load(PolicyPtr policy, std::string reason = "loaded", uint64_t step = 0);
    // Restores the previous policy; throws Error(kInvalidInput) when there is none.
    void rollback(std::string reason = "rollback", uint64_t step = 0);

    const Policy& active() const { return *stack_.back(); }
    size_t depth() const { return stack_.size(); }
    const std::vector<PolicyHistoryEntry>& history() const { return history_; }
    const std::deque<DecisionRecord>& journal() const { return journal_; }
    const ControllerConfig& config() const { return config_; }

    // Runs one decision round. Returns the accepted decisions (policy and to_stage filled in);
    // deny decisions are accepted and returned too but need no command.
    std::vector<Decision> decide(const View& view, uint64_t step);

    // Commands sent and not yet visible in the view, keyed by (layer, seed).
    size_t pending_count() const { return pending_.size(); }
    // The agent calls this when the executor rejected a command, so the seed can be decided on
    // again at once (instead of after pending_timeout_steps).
    void forget_pending(uint32_t layer, uint32_t seed) { pending_.erase({layer, seed}); }
    // The executor's answer to a germination: a rejection backs off germinations of its kind in
    // its layer (see ControllerConfig::rejection_backoff_steps); an applied one clears that.
    void germination_answered(const Decision& d, bool applied, const View& view, uint64_t step);
    size_t backoffs() const { return backoff_.size(); }

private:
    struct Pending {
        SeedStage from = SeedStage::kDormant;
        uint64_t step = 0;
        int64_t blueprint_params = 0;
        bool germinate = false;
    };
    void disable_active(std::string reason, uint64_t step);
    void record(uint64_t step, const Decision& d, bool accepted, std::string refusal);
    std::optional<std::string> sanity(Decision& d, const View& view) const;
    void expire_pending(const View& view, uint64_t step);
    std::optional<std::string> backed_off(const Decision& d, const View& view, uint64_t step);

    struct Backoff {
        uint64_t until_step = 0;
        uint64_t steps = 0;       // the current back-off length (doubles)
        uint32_t held_slots = 0;  // seeds of the kind holding a slot in the layer when rejected
    };

    ControllerConfig config_;
    std::vector<PolicyPtr> stack_;  // back() is active
    std::vector<PolicyHistoryEntry> history_;
    std::deque<DecisionRecord> journal_;
    std::map<std::pair<uint32_t, uint32_t>, Pending> pending_;
    std::map<std::pair<uint32_t, BlueprintKind>, Backoff> backoff_;  // by (layer, kind)
    Budget budget_;
};

}  // namespace esper::tamiyo
