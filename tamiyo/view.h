// The controller's view of a run: every seed (stage, α, time in stage, latest telemetry and a
// short history), per-layer aggregates, and the run (loss curve, accuracy, plateau state).
// It is a pure function of the messages ingested, in order, so a restarted Tamiyo rebuilds it by
// replaying what the bus delivers. "Not measured" is std::nullopt, never 0. Telemetry older than
// the last transition seen for a seed does not overwrite its stage (topics are not ordered).
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kernels/vocabulary.h"

namespace esper::tamiyo {

// ---- messages the agent layer translates bus payloads into ----

struct SeedMetrics {
    uint64_t step = 0;
    std::optional<double> act_mean;
    std::optional<double> act_var;
    std::optional<double> dead_fraction;
    std::optional<double> grad_norm;  // output-gradient L2 norm
    std::optional<double> blueprint_grad_norm;
    std::optional<double> gradient_health;  // the TRAINING → GRAFTING gate metric
    std::optional<double> contribution;     // > 0: the seed helps (loss would rise without it)
    std::optional<double> health;           // 0.5·min(1, var/var_ref) + 0.5·(1 − dead)
    bool operator==(const SeedMetrics&) const = default;
};

// What germinating one seed with each blueprint kind would cost in parameters, as the executor
// publishes it for its configured arenas (indexed by BlueprintKind value). nullopt = not
// published, -1 = the kind cannot be germinated on that seed's layer; Tamiyo never recomputes a
// price.
using GerminationPrices = std::array<std::optional<int64_t>, kNumBlueprintKinds>;

struct SeedTelemetry {
    uint32_t layer = 0;
    uint32_t seed = 0;
    uint64_t step = 0;
    SeedStage stage = SeedStage::kDormant;
    float alpha = 0.0f;
    uint32_t steps_in_stage = 0;
    SeedMetrics metrics;            // metrics.step is overwritten with `step`
    int64_t chunk_width = 0;        // 0 = unknown
    int64_t blueprint_params = -1;  // parameters the seed's blueprint uses; -1 = unknown
    GerminationPrices germination_params{};
    bool operator==(const SeedTelemetry&) const = default;
};

struct TransitionEvent {
    uint32_t layer = 0;
    uint32_t seed = 0;
    uint64_t step = 0;
    SeedStage from = SeedStage::kDormant;
    SeedStage to = SeedStage::kDormant;
    std::optional<BlueprintKind> blueprint;  // set on germination
    uint32_t blueprint_size = 0;
    int64_t blueprint_params = -1;  // -1 = unknown (then the seed's published price of `blueprint`)
    std::string reason;
    bool operator==(const TransitionEvent&) const = default;
};

struct RunStatus {
    uint64_t step = 0;
    uint32_t epoch = 0;
    std::optional<double> loss;  // training loss over the last interval: drives plateau detection
    std::optional<double> test_loss;
    std::optional<double> accuracy;
    std::optional<double> test_accuracy;
    std::optional<double> learning_rate;
    int64_t host_params = 0;
    int64_t blueprint_params = 0;
    bool operator==(const RunStatus&) const = default;
};

// ---- the view ----

struct PlateauConfig {
    uint64_t patience_steps = 500;  // steps without an improvement > min_delta → plateau
    double min_delta = 1e-3;        // absolute loss improvement that counts
    bool operator==(const PlateauConfig&) const = default;
};

struct ViewConfig {
    PlateauConfig plateau;
    size_t seed_history = 8;                  // telemetry samples kept per seed
    size_t loss_curve_points = 2048;          // run status points kept (oldest dropped)
    uint32_t max_seeds_per_layer = 1u << 22;  // messages naming a higher seed id are ignored
    bool operator==(const ViewConfig&) const = default;
};

struct SeedView {
    uint32_t layer = 0;
    uint32_t seed = 0;
    bool known = false;  // a message named this seed (others are placeholders)
    SeedStage stage = SeedStage::kDormant;
    float alpha = 0.0f;
    uint64_t stage_entered_step = 0;  // step at which the current stage began (estimated)
    uint64_t stage_step = 0;          // step of the newest message that set the stage
    bool has_telemetry = false;
    SeedMetrics latest;               // all nullopt until telemetry arrives
    std::deque<SeedMetrics> history;  // newest last, at most ViewConfig::seed_history
    std::optional<BlueprintKind> blueprint;
    uint32_t blueprint_size = 0;
    int64_t blueprint_params = 0;            // while the seed holds a blueprint
    GerminationPrices germination_params{};  // the newest published prices
    uint32_t germinations = 0;
    uint32_t culls = 0;

    uint64_t steps_in_stage(uint64_t now) const {
        return now > stage_entered_step ? now - stage_entered_step : 0;
    }
    bool operator==(const SeedView&) const = default;
};

struct LayerView {
    uint32_t layer = 0;
    std::vector<SeedView> seeds;                          // indexed by seed id
    std::array<uint32_t, kNumSeedStages> stage_counts{};  // over known seeds
    int64_t chunk_width = 0;                              // 0 = unknown
    std::optional<uint64_t> last_germination_step;
    uint32_t germinations = 0;

    uint32_t active_seeds() const;                    // GERMINATED..FINE_TUNING
    int64_t blueprint_params() const;                 // held by GERMINATED..FOSSILIZED seeds
    std::optional<double> mean_health() const;        // over seeds with health measured
    std::optional<double> mean_contribution() const;  // over seeds with contribution measured
    bool operator==(const LayerView&) const = default;
};

struct LossPoint {
    uint64_t step = 0;
    double loss = 0.0;
    bool operator==(const LossPoint&) const = default;
};

struct RunView {
    uint64_t step = 0;
    uint32_t epoch = 0;
    RunStatus latest;  // the newest run status as received
    bool has_status = false;
    std::deque<LossPoint> loss_curve;
    std::optional<double> best_loss;
    uint64_t best_step = 0;
    bool plateau = false;
    uint64_t plateau_since_step = 0;
    uint32_t plateaus = 0;  // number of plateau onsets so far

    uint64_t steps_since_improvement() const { return step > best_step ? step - best_step : 0; }
    bool operator==(const RunView&) const = default;
};

class View {
public:
    explicit View(ViewConfig config = {});

    void ingest_telemetry(const SeedTelemetry& t);
    void ingest_transition(const TransitionEvent& e);
    void ingest_run_status(const RunStatus& s);

    const ViewConfig& config() const { return config_; }
    const RunView& run() const { return run_; }
    const std::map<uint32_t, LayerView>& layers() const { return layers_; }
    const LayerView* layer(uint32_t layer) const;
    const SeedView* seed(uint32_t layer, uint32_t seed) const;  // nullptr if never named
    // Newest step seen in any message.
    uint64_t step() const { return step_; }
    // Blueprint parameters held by seeds in GERMINATED..FOSSILIZED, over all layers.
    int64_t live_blueprint_params() const;
    // Non-finite or negative-variance values turned into "not measured".
    uint64_t rejected_values() const { return rejected_values_; }
    // Messages ignored because they named a seed id beyond max_seeds_per_layer.
    uint64_t ignored_messages() const { return ignored_messages_; }

    bool operator==(const View&) const = default;

private:
    SeedView* seed_slot(uint32_t layer, uint32_t seed);
    void set_stage(LayerView& lv, SeedView& sv, SeedStage to);

    ViewConfig config_;
    RunView run_;
    std::map<uint32_t, LayerView> layers_;
    uint64_t step_ = 0;
    uint64_t rejected_values_ = 0;
    uint64_t ignored_messages_ = 0;
};

}  // namespace esper::tamiyo
