// Budget accounting (tamiyo/budget.h).
#include "tamiyo/budget.h"

#include "core/error.h"

namespace esper::tamiyo {

void Budget::begin(const View& view, uint64_t step,
                   const std::vector<PendingGermination>& pending) {
    step_ = step;
    active_.clear();
    last_germination_.clear();
    batch_germinations_ = 0;
    params_ = view.live_blueprint_params();
    for (const auto& [id, lv] : view.layers()) {
        active_[id] = lv.active_seeds();
        if (lv.last_germination_step) last_germination_[id] = *lv.last_germination_step;
    }
    for (const PendingGermination& p : pending) {
        ++active_[p.layer];
        params_ += p.blueprint_params;
        auto it = last_germination_.find(p.layer);
        if (it == last_germination_.end() || p.step > it->second)
            last_germination_[p.layer] = p.step;
    }
}

std::optional<std::string> Budget::admit(const Decision& d, const View& view) {
    if (d.kind != DecisionKind::kGerminate) return std::nullopt;
    if (config_.max_germinations_per_decision > 0 &&
        batch_germinations_ >= config_.max_germinations_per_decision)
        return detail::concat("budget: at most ", config_.max_germinations_per_decision,
                              " germinations per decision");
    const uint32_t active = active_[d.layer];
    if (active >= config_.max_active_per_layer)
        return detail::concat("budget: layer ", d.layer, " has ", active, " active seeds (max ",
                              config_.max_active_per_layer, ")");
    if (config_.germination_cooldown_steps > 0) {
        auto it = last_germination_.find(d.layer);
        if (it != last_germination_.end() &&
            step_ < it->second + config_.germination_cooldown_steps)
            return detail::concat("cooldown: layer ", d.layer, " germinated at step ", it->second,
                                  ", next allowed at step ",
                                  it->second + config_.germination_cooldown_steps);
    }
    int64_t params = 0;
    if (const LayerView* lv = view.layer(d.layer))
        params = blueprint_param_count(d.blueprint, d.blueprint_size, lv->chunk_width);
    if (config_.max_blueprint_params > 0) {
        if (params == 0)
            return detail::concat("budget: chunk width of layer ", d.layer,
                                  " unknown, cannot check the parameter budget");
        if (params_ + params > config_.max_blueprint_params)
            return detail::concat("budget: blueprint parameters ", params_, " + ", params,
                                  " > max ", config_.max_blueprint_params);
    }
    ++active_[d.layer];
    params_ += params;
    last_germination_[d.layer] = step_;
    ++batch_germinations_;
    return std::nullopt;
}

}  // namespace esper::tamiyo
