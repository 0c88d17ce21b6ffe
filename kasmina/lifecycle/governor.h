// The governor's vitals check (DESIGN §4.7): after every step it looks at the loss and the
// gradients and trips on a non-finite value or on divergence (loss above divergence_factor × the
// mean of the last `window` healthy losses). The trainer owns the last-known-good snapshot and
// does the restore; the governor only decides. Tests trip it with faults.nan_at_step (faults.h).
#pragma once

#include <cstdint>
#include <deque>
#include <string>

#include "kasmina/lifecycle/config.h"

namespace esper::kasmina {

enum class Vitals : uint8_t { kOk = 0, kNonFinite = 1, kDivergence = 2 };

class Governor {
public:
    explicit Governor(const GovernorConfig& config) : config_(config) {}

    bool enabled() const { return config_.enabled; }
    // Judges one step; healthy losses join the window.
    Vitals check(double loss, bool grads_finite);
    // Human-readable reason of the last trip.
    const std::string& last_reason() const { return reason_; }
    bool snapshot_due(int64_t steps_done) const {
        return config_.snapshot_every_steps > 0 && steps_done % config_.snapshot_every_steps == 0;
    }
    int64_t trips() const { return trips_; }
    // Trips since the last healthy step.
    int64_t consecutive_trips() const { return consecutive_trips_; }
    // True when the last `max_consecutive_trips` steps all tripped: the run cannot recover.
    bool gave_up() const {
        return config_.max_consecutive_trips > 0 &&
               consecutive_trips_ >= config_.max_consecutive_trips;
    }
    // Loss window (checkpointed so a resumed run judges divergence identically).
    const std::deque<double>& window() const { return window_; }
    // Drops the loss history and keeps the trip counts: after a rollback that changed what the
    // network computes, the old losses no longer describe it (divergence waits for a new one).
    void forget_history() { window_.clear(); }
    void set_window(std::deque<double> w, int64_t trips) {
        window_ = std::move(w);
        trips_ = trips;
        consecutive_trips_ = 0;
    }

private:
    GovernorConfig config_;
    std::deque<double> window_;
    std::string reason_;
    int64_t trips_ = 0;
    int64_t consecutive_trips_ = 0;
};

}  // namespace esper::kasmina
