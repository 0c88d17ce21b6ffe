// Budgets applied to every policy's output before it becomes a command: at most N active seeds
// (GERMINATED..FINE_TUNING) per layer, a cap on live blueprint parameters per layer, and a
// cooldown (steps) between germinations in one layer. Only germinations consume budget; every
// refusal carries a reason that the controller records. Counts include what was accepted earlier
// in the same batch and germinations sent but not yet seen in the view (pending). A germination
// is priced with what the executor published for that seed and kind (SeedView::
// germination_params); a seed without a published price is not germinated.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tamiyo/decision.h"
#include "tamiyo/view.h"

namespace esper::tamiyo {

struct BudgetConfig {
    // The agent sets these two from the run config's lifecycle.max_active_per_layer and
    // blueprints.max_params_per_layer, the executor's own limits.
    uint32_t max_active_per_layer = 4;           // 0 = no germination at all
    int64_t max_blueprint_params_per_layer = 0;  // live + pending + new; 0 = unlimited
    uint64_t germination_cooldown_steps = 0;     // per layer
    uint32_t max_germinations_per_decision = 0;  // over all layers per decide(); 0 = unlimited
    bool operator==(const BudgetConfig&) const = default;
};

// What the controller has sent but the view has not yet confirmed.
struct PendingGermination {
    uint32_t layer = 0;
    uint32_t seed = 0;
    uint64_t step = 0;
    int64_t blueprint_params = 0;
};

// The executor's published price of germinating seed layer/seed with `kind`; nullopt when the
// seed is unknown or has published none.
std::optional<int64_t> germination_price(const View& view, uint32_t layer, uint32_t seed,
                                         BlueprintKind kind);

class Budget {
public:
    explicit Budget(BudgetConfig config = {}) : config_(config) {}
    const BudgetConfig& config() const { return config_; }

    // Starts a batch at `step`: snapshots usage from the view plus pending germinations.
    void begin(const View& view, uint64_t step, const std::vector<PendingGermination>& pending);
    // nullopt = accepted (and counted); otherwise the refusal reason. Non-germinations pass.
    std::optional<std::string> admit(const Decision& d, const View& view);

private:
    BudgetConfig config_;
    uint64_t step_ = 0;
    std::map<uint32_t, uint32_t> active_;            // per layer
    std::map<uint32_t, uint64_t> last_germination_;  // per layer
    std::map<uint32_t, int64_t> params_;             // per layer
    uint32_t batch_germinations_ = 0;
};

}  // namespace esper::tamiyo
