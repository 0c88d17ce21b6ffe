// Data-parallel glue for the Trainer (DESIGN.md §8, docs/distributed.md): averages gradients
// (host + blueprint arenas, bucketed), all-reduces the step's telemetry accumulators, loss and
// correct count so every rank sees the global batch, replicates rank 0's seed state at step
// boundaries, and compares seed-table and parameter digests every run.digest_every_steps.
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
    DistributedSync(Collectives& comm, const Config& config, Model& model, SeedManager& seeds);

    int rank() const { return comm_.rank(); }
    int world() const { return comm_.world(); }

    // After backward: every gradient becomes the mean over ranks.
    void reduce_gradients();
    // After backward: the per-seed accumulators of this step, the batch-mean loss and the correct
    // count are combined over ranks so they describe the global batch (see the .cpp for the
    // moment arithmetic). `accums[l]` holds seeds_per_layer(l) entries.
    void reduce_step_stats(std::span<kernels::SeedTelemetryAccum* const> accums, double& loss,
                           int32_t& correct);

    // At a step boundary, after rank 0 applied its commands. All ranks agree on {changed, stop};
    // when rank 0's seed state changed since the last call (or on the first call) it broadcasts
    // the seed manager's snapshot (the Cap'n Proto SeedState image of io/state_codec.h) and all
    // arena params/optimizer state, and the others restore them.
    // Returns true when any rank asked to stop (so every rank leaves the loop at the same
    // boundary).
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

private:
    void broadcast_seed_state();
    void corrupt_for_test();

    Collectives& comm_;
    const Config& config_;
    Model& model_;
    SeedManager& seeds_;
    GradientBuckets buckets_;
    std::vector<double> stats_;
    uint64_t applied_at_last_step_ = 0;  // seeds_.applied_commands() after the last step
    bool first_ = true;
    bool corrupted_ = false;
    int64_t sync_bytes_ = 0;
    int64_t syncs_ = 0;
};

}  // namespace esper::kasmina
