// SeedManager: the per-run lifecycle engine over every seed layer. It owns the seed tables and
// blueprint arenas, applies commands at step boundaries (apply), runs the automatic transitions,
// α schedules, auto gates and decision timeouts after each step (on_step_end), and writes one
// event per transition. Every transition goes through validate_transition.
// Step stamps: on_step_end(k) stamps its events with k; commands applied afterwards are stamped
// with k + 1 (the step they take effect in). Before the first on_step_end the stamp is 0.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "kasmina/lifecycle/command.h"
#include "kasmina/lifecycle/config.h"
#include "kasmina/lifecycle/events.h"
#include "kasmina/lifecycle/seed_table.h"
#include "kasmina/model/blueprints.h"
#include "kasmina/model/config.h"
#include "kasmina/model/model.h"
#include "kernels/seed_layer.h"

namespace esper::kasmina {

// Per-seed measurements from telemetry for the step just ended; nullopt = not measured.
// contribution: the first-order loss change if the seed were removed, c = −Σ⟨∂L/∂y, α·r(h)⟩
// (positive = removing it would raise the loss = the seed helps).
struct SeedMetrics {
    std::optional<double> gradient_health;
    std::optional<double> contribution;
    std::optional<double> stability;    // in [0, 1]; EVALUATING → FINE_TUNING gate
    std::optional<double> improvement;  // overrides the manager's own loss-based estimate
    bool error = false;                 // non-finite values seen for this seed this step
};

struct StepMetrics {
    double loss = 0.0;                            // training loss of the step just ended
    std::vector<std::vector<SeedMetrics>> seeds;  // [layer][seed]; empty = nothing measured
};

// A seed waiting for a controller decision (minimum time in a gated stage has passed).
struct PendingGate {
    SeedRef seed;
    SeedStage stage = SeedStage::kDormant;
    int64_t waiting_steps = 0;     // steps since the decision became due
    int64_t timeout_in_steps = 0;  // steps until the safe default (auto_gates false)
};

// What the manager last measured of one seed (telemetry), kept between steps.
struct SeedMeasurements {
    std::optional<double> gradient_health;
    std::optional<double> contribution;
    std::optional<double> stability;
    std::optional<double> improvement;
    double loss_at_germination = 0.0;
    bool operator==(const SeedMeasurements&) const = default;
};

// One seed layer of a snapshot: its shape (checked on restore) and every seed.
struct SeedLayerState {
    int32_t layer = 0;
    int32_t width = 0;
    std::vector<SeedRow> rows;               // [seed]
    std::vector<SeedMeasurements> measured;  // [seed]
    bool operator==(const SeedLayerState&) const = default;
};

// The whole lifecycle state as a value (not the arena weights: those are tensors of
// arenas()): the governor's last-known-good, checkpoints and the seed-state broadcast. The
// Cap'n Proto form (schemas/checkpoint.capnp SeedState) lives in kasmina/io/state_codec.h.
struct SeedManagerSnapshot {
    int64_t next_step = 0;
    std::vector<SeedLayerState> layers;
    std::vector<double> loss_window;  // recent run losses, oldest first, at most 20
    std::optional<double> last_loss;
    double last_loss_delta = 0.0;
    std::optional<double> loss_ema;
    bool operator==(const SeedManagerSnapshot&) const = default;
};

// What the manager needs of a run config (io/config.h: seed_manager_config(config)).
struct SeedManagerConfig {
    LifecycleConfig lifecycle;
    BlueprintsConfig blueprints;
    uint64_t run_seed = 42;  // germination initialisations are deterministic in it
    int64_t seeds_per_layer = 16;
};

class SeedManager {
public:
    // layer_widths[i] = D of seed layer i; seeds per layer from config.seeds_per_layer.
    // `events` may be null (no file); it must outlive the manager. Throws esper::Error on a bad
    // layout (S = 0, S > D). layer_inputs[i] = input features of host layer i, needed when
    // config.blueprints.input is layer (widening blueprints) and ignored otherwise.
    SeedManager(const SeedManagerConfig& config, std::vector<int64_t> layer_widths,
                EventSink* events = nullptr, std::vector<int64_t> layer_inputs = {});
    // One seed layer per site of the host (Model::seed_sites): chunk sites get
    // config.seeds_per_layer seeds, a widening site one seed per unit of its width.
    SeedManager(const SeedManagerConfig& config, std::span<const SeedSite> sites,
                EventSink* events = nullptr);

    int32_t num_layers() const { return static_cast<int32_t>(tables_.size()); }
    SiteKind site_kind(int32_t layer) const { return site_kinds_[layer]; }
    const SeedTable& table(int32_t layer) const { return tables_[layer]; }
    BlueprintArenas& arenas(int32_t layer) { return arenas_[layer]; }
    const BlueprintArenas& arenas(int32_t layer) const { return arenas_[layer]; }
    const LifecycleConfig& lifecycle() const { return lifecycle_; }
    // The stamp the next command would get.
    int64_t next_step() const { return next_step_; }

    // The kernels' view of layer `layer` for a batch of `batch` rows (pointers into this object,
    // valid until the next apply/on_step_end/restore).
    kernels::SeedLayerView view(int32_t layer, int32_t batch);

    // Applies one command (or a batch, all or nothing). Unknown layer/seed, illegal transition,
    // failed gate: rejected with a reason, nothing changes.
    Outcome apply(const Command& command);

    // After optimizer step `step`: steps_in_stage, α schedules, automatic transitions, auto gates
    // or decision timeouts, embargo expiry.
    void on_step_end(int64_t step, const StepMetrics& metrics);

    std::vector<PendingGate> pending_gates() const;
    // Digest over all seed tables (and the step stamp); equal across ranks.
    uint64_t digest() const;
    // Events since the last drain (also written to the EventSink when there is one).
    std::vector<LifecycleEvent> drain_events();
    int64_t events_written() const { return events_total_; }
    // Commands applied so far (apply() calls that succeeded): rank 0 compares it across a step
    // boundary to know whether its seed state must be broadcast, without hashing the tables.
    uint64_t applied_commands() const { return applied_commands_; }
    // Live blueprint parameters in a layer (GERMINATED..FOSSILIZED seeds).
    int64_t blueprint_params_in_layer(int32_t layer) const;
    // Parameters of one seed's blueprint (0 when it holds no slot).
    int64_t seed_blueprint_params(SeedRef s) const;
    // What a germination of `kind` on seed `s` would cost with the configured arenas (its chunk
    // width, or the layer's input width for widening arenas): seed_blueprint_params(s) after
    // that germination. The executor publishes it; the controller prices with it. -1: the kind
    // cannot be germinated on this layer (a chunk kind on a widening site or the other way).
    int64_t germination_params(SeedRef s, BlueprintKind kind) const;
    // A FOSSILIZED widening seed whose parameters the host took in (Model::fold_widening):
    // frees its arena slot; the row stays FOSSILIZED with slot -1. False for any other seed.
    bool release_folded(SeedRef s);
    // lifecycle.contribution: ablation — a forward without seed s's output: the row reads as
    // GRAFTING at α = 0, whose forward value is exactly the host's (blueprint, slot and arena
    // stay). Writes no event and validates no transition: the caller puts the returned row back
    // with unmute() right after its forward, before anything else reads the table.
    SeedRow mute(SeedRef s);
    void unmute(SeedRef s, const SeedRow& saved);
    // Latest measured gradient health of a seed (nullopt = never measured).
    std::optional<double> gradient_health(SeedRef s) const;

    // ---- governor, checkpoints and the seed-state broadcast ----
    SeedManagerSnapshot snapshot() const;
    // Restores exactly what snapshot() took, rebuilding the arenas' slot bookkeeping; writes no
    // events. A snapshot may come from a checkpoint or another rank: one of another shape (layer
    // count, widths, seeds per layer), with a loss window over 20 or with inconsistent slots is
    // refused with esper::Error(kIntegrity) and leaves the manager untouched.
    void restore(const SeedManagerSnapshot& snap);
    // Governor trip: every non-terminal seed whose row differs from `last_good` (stage, kind,
    // slot or α) leaves through the validator with origin governor: → ROLLED_BACK from
    // GRAFTING..FINE_TUNING, → CANCELLED from GERMINATED/TRAINING. Returns the number moved.
    int64_t governor_rollback(const SeedManagerSnapshot& last_good, const std::string& reason);

private:
    std::string check_seed(SeedRef s) const;
    TransitionFacts facts(SeedRef s, SeedStage to, std::optional<BlueprintKind> kind) const;
    // Validates and performs one transition; returns the rejection reason or "".
    std::string transition(SeedRef s, SeedStage to, TransitionOrigin origin, const std::string& why,
                           int64_t stamp);
    std::string germinate(const GerminateCommand& c, TransitionOrigin origin,
                          const std::string& why, int64_t stamp);
    std::string apply_one(const Command& c, int64_t stamp);
    void emit(LifecycleEvent e);
    void run_gate(SeedRef s, int64_t step);
    GraftMetrics graft_metrics(SeedRef s) const;
    uint64_t init_seed_for(SeedRef s, int64_t stamp) const;

    LifecycleConfig lifecycle_;
    BlueprintsConfig blueprints_cfg_;
    uint64_t run_seed_;
    std::vector<SeedTable> tables_;
    std::vector<SiteKind> site_kinds_;
    std::vector<BlueprintArenas> arenas_;
    std::vector<std::vector<SeedMeasurements>> extra_;
    EventSink* log_;
    std::vector<LifecycleEvent> pending_events_;
    bool buffering_ = false;  // inside a batch: events held until commit
    std::vector<LifecycleEvent> batch_events_;
    int64_t events_total_ = 0;
    uint64_t applied_commands_ = 0;
    int64_t next_step_ = 0;
    // Run-loss history for the strategies' metrics.
    std::vector<double> loss_window_;
    std::optional<double> last_loss_;
    double last_loss_delta_ = 0.0;
    double loss_ema_ = 0.0;
    bool has_loss_ema_ = false;
};

}  // namespace esper::kasmina
