// Budget accounting (tamiyo/budget.h).
#include "tamiyo/budget.h"

#include <fmt/format.h>

#include "core/error.h"

namespace esper::tamiyo {

std::optional<int64_t> germination_price(const View& view, uint32_t layer, uint32_t seed,
                                         BlueprintKind kind) {
    const SeedView* sv = view.seed(layer, seed);
    const auto k = static_cast<size_t>(kind);
    if (sv == nullptr || k >= sv->germination_params.size()) return std::nullopt;
    return sv->germination_params[k];
}

void Budget::begin(const View& view, uint64_t step,
                   const std::vector<PendingGermination>& pending) {
    step_ = step;
    active_.clear();
    last_germination_.clear();
    batch_germinations_ = 0;
    params_.clear();
    for (const auto& [id, lv] : view.layers()) {
        active_[id] = lv.active_seeds();
        params_[id] = lv.blueprint_params();
        if (lv.last_germination_step) last_germination_[id] = *lv.last_germination_step;
    }
    for (const PendingGermination& p : pending) {
        ++active_[p.layer];
        params_[p.layer] += p.blueprint_params;
        auto it = last_germination_.find(p.layer);
        if (it == last_germination_.end() || p.step > it->second)
            last_germination_[p.layer] = p.step;
    }
}

std::optional<std::string> Budget::admit(const Decision& d, const View& view) {
    if (d.kind != DecisionKind::kGerminate) return std::nullopt;
    if (config_.max_germinations_per_decision > 0 &&
        batch_germinations_ >= config_.max_germinations_per_decision)
        return fmt::format("budget: at most {} germinations per decision",
                           config_.max_germinations_per_decision);
    const uint32_t active = active_[d.layer];
    if (active >= config_.max_active_per_layer)
        return fmt::format("budget: layer {} has {} active seeds (max {})", d.layer, active,
                           config_.max_active_per_layer);
    if (config_.germination_cooldown_steps > 0) {
        auto it = last_germination_.find(d.layer);
        if (it != last_germination_.end() &&
            step_ < it->second + config_.germination_cooldown_steps)
            return fmt::format("cooldown: layer {} germinated at step {}, next allowed at step {}",
                               d.layer, it->second,
                               it->second + config_.germination_cooldown_steps);
    }
    const std::optional<int64_t> price = germination_price(view, d.layer, d.seed, d.blueprint);
    if (!price)
        return fmt::format("budget: no {} germination price published for seed {}/{} yet",
                           blueprint_kind_name(d.blueprint), d.layer, d.seed);
    if (*price < 0)
        return fmt::format("budget: {} is not available on layer {} (the executor prices it -1)",
                           blueprint_kind_name(d.blueprint), d.layer);
    int64_t& layer_params = params_[d.layer];
    if (config_.max_blueprint_params_per_layer > 0 &&
        layer_params + *price > config_.max_blueprint_params_per_layer)
        return fmt::format("budget: layer {} blueprint parameters {} + {} > max {}", d.layer,
                           layer_params, *price, config_.max_blueprint_params_per_layer);
    ++active_[d.layer];
    layer_params += *price;
    last_germination_[d.layer] = step_;
    ++batch_germinations_;
    return std::nullopt;
}

}  // namespace esper::tamiyo
