// Data-parallel glue for the Trainer (DESIGN.md §8, docs/distributed.md): averages gradients
// (host + blueprint arenas, bucketed), all-reduces the step's telemetry accumulators, loss and
// correct count so every rank sees the global batch, replicates rank 0's seed state at step
// boundaries, and compares seed-table and parameter digests every run.digest_every_steps.
// The boundary's {seed state changed, stop} flags ride on the step's statistics all-reduce
// (fold_flags), so a step without commands pays no collective of its own for them.
// Every rank must call the same methods in the same order (they issue collectives).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kasmina/dist/collectives.h"
#include "kasmina/io/config.h"
#include "kasmina/lifecycle/seed_manager.h"
#include "kasmina/model/model.h"
#include "kernels/seed_layer.h"

namespace esper::kasmina {

class DistributedSync {
public:
    // `comm` must outlive this object. Registers the gradient buffers of `model` and of every
    // blueprint arena (their storage is allocated once, so the spans stay valid).
    // fold_flags (the default): the boundary flags travel in the previous step's statistics
    // all-reduce; a command submitted at boundary K is applied on every rank at boundary K+1
    // (see submit()), a stop requested at K takes effect at K+1. false: one flag all-reduce at
    // every boundary and commands apply at once (the behaviour before issue 17).
    DistributedSync(Collectives& comm, const Config& config, Model& model, SeedManager& seeds,
                    bool fold_flags = true);

    int rank() const { return comm_.rank(); }
    int world() const { return comm_.world(); }
    // Sums v over ranks in place (every rank calls it at the same step).
    void all_reduce_sum(std::span<float> v) { comm_.all_reduce_sum(v.data(), v.size()); }

    // After backward: every gradient becomes the mean over ranks.
    void reduce_gradients();
    // After backward: the per-seed accumulators of this step, the batch-mean loss and the correct
    // count are combined over ranks so they describe the global batch (see the .cpp for the
    // moment arithmetic). `accums[l]` holds seeds_per_layer(l) entries.
    // With fold_flags the same all-reduce carries rank 0's "seed state changes at the next
    // boundary" and any rank's stop request (two more doubles).
    void reduce_step_stats(std::span<kernels::SeedTelemetryAccum* const> accums, double& loss,
                           int32_t& correct);

    // A command for the seed state (Trainer::apply when world > 1), at a step boundary.
    // fold_flags: the outcome is that of applying it now, tried on a scratch copy of this rank's
    // seed state with the commands already queued at this boundary; rank 0 queues an applied
    // one and applies the queue for real at the next boundary the step's all-reduce announced,
    // before broadcasting (a command the step in between made illegal is then dropped with a
    // warning; dropped_commands() counts them). Other ranks queue nothing: rank 0's state
    // replaces theirs. Without fold_flags: applied at once.
    Outcome submit(const Command& command);
    // Commands rank 0 holds for the next boundary.
    size_t pending_commands() const { return pending_.size(); }
    int64_t dropped_commands() const { return dropped_; }

    // At a step boundary, after this rank's commands were submitted. All ranks agree on
    // {changed, stop}: from the previous step's statistics all-reduce (fold_flags), else (the
    // first boundary, a boundary without a step since the last one, or fold_flags off) from a
    // flag all-reduce of its own. When rank 0's seed state changed (or on the first call) rank 0
    // applies its queued commands and broadcasts the seed manager's snapshot (the Cap'n Proto
    // SeedState image of io/state_codec.h) and all arena params/optimizer state, and the others
    // restore them. Returns true when every rank is to stop here (a rank's stop request reaches
    // the others through the next statistics all-reduce, so all leave at the same boundary).
    bool sync_boundary(bool stop_requested);
    // After each step (on every rank): remembers the seed-table digest the step produced, and
    // every run.digest_every_steps steps compares digests across ranks; throws
    // Error(kFailed, "seed-table divergence: ranks ... differ at step N") on a mismatch.
    void after_step(int64_t step);

    // FNV-1a over host parameters and every arena's params (all ranks must agree bit for bit).
    uint64_t param_digest() const;
    // Bytes broadcast by the seed-state syncs so far, and how many syncs carried a payload.
    int64_t sync_bytes() const { return sync_bytes_; }
    int64_t syncs() const { return syncs_; }
    // Boundaries that needed a flag all-reduce of their own (with fold_flags: the first one).
    int64_t flag_collectives() const { return flag_collectives_; }
    bool fold_flags() const { return fold_; }

private:
    void broadcast_seed_state();
    void corrupt_for_test();
    // Rank 0: its seed state differs from the last replicated one, or commands wait.
    bool leader_changed() const;
    void apply_pending();

    Collectives& comm_;
    const Config& config_;
    Model& model_;
    SeedManager& seeds_;
    GradientBuckets buckets_;
    std::vector<double> stats_;
    uint64_t applied_at_last_step_ = 0;  // seeds_.applied_commands() after the last step
    bool fold_;
    double flags_[2] = {0.0, 0.0};        // {changed, stop} of the last statistics all-reduce
    bool flags_fresh_ = false;            // a statistics all-reduce ran since the last boundary
    bool stop_local_ = false;             // this rank's stop request at the last boundary
    std::vector<Command> pending_;        // rank 0: submitted, applied at the next sync
    std::unique_ptr<SeedManager> probe_;  // scratch copy that answers submit(); no events
    bool probe_valid_ = false;            // probe_ = seeds_ + this boundary's submissions
    int64_t dropped_ = 0;
    int64_t flag_collectives_ = 0;
    bool first_ = true;
    bool corrupted_ = false;
    int64_t sync_bytes_ = 0;
    int64_t syncs_ = 0;
};

}  // namespace esper::kasmina
