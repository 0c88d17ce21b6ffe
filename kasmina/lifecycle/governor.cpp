// Governor vitals (see governor.h).
#include "kasmina/lifecycle/governor.h"

#include <fmt/format.h>

#include <cmath>

namespace esper::kasmina {

Vitals Governor::check(double loss, bool grads_finite) {
    if (!config_.enabled) return Vitals::kOk;
    if (!std::isfinite(loss) || !grads_finite) {
        ++trips_;
        ++consecutive_trips_;
        reason_ =
            !std::isfinite(loss) ? "governor: non-finite loss" : "governor: non-finite gradients";
        return Vitals::kNonFinite;
    }
    // Divergence needs a meaningful history: at least a fifth of the window (and 5 steps).
    const size_t min_hist = size_t(std::max<int64_t>(5, config_.window / 5));
    if (window_.size() >= min_hist) {
        double mean = 0.0;
        for (double v : window_) mean += v;
        mean /= double(window_.size());
        if (loss > config_.divergence_factor * mean) {
            ++trips_;
            ++consecutive_trips_;
            reason_ = fmt::format("governor: divergence (loss {:g} > {:g} x recent mean {:g})",
                                  loss, config_.divergence_factor, mean);
            return Vitals::kDivergence;
        }
    }
    consecutive_trips_ = 0;
    window_.push_back(loss);
    while (int64_t(window_.size()) > std::max<int64_t>(1, config_.window)) window_.pop_front();
    return Vitals::kOk;
}

}  // namespace esper::kasmina
