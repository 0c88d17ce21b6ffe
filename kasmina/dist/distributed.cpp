// Data-parallel glue for the Trainer (see distributed.h).
//
// Telemetry accumulators over ranks. Each rank's step buffers hold, per seed, a Welford triple
// (count, mean, m2) plus sums. We all-reduce raw moments in one double buffer:
//   n, S1 = n·mean, S2 = m2 + n·mean²        (then mean = S1/n, m2 = S2 − n·mean², clamped ≥ 0)
// and the plain sums dead, grad_sq, contribution. ∂L/∂y on a rank is the gradient of that rank's
// batch-mean loss, i.e. W times the gradient of the global-batch mean loss, so the global
// grad_sq is Σ_r grad_sq_r / W² and the global contribution Σ_r contribution_r / W. The raw
// moment form loses some precision against a Chan merge when |mean| ≫ σ; the result is still
// bit-identical on every rank, which is what the lifecycle needs (identical decisions).
//
// Boundary flags (fold_flags): the statistics buffer ends with {changed, stop}: rank 0 sets
// changed when commands wait in its queue (or its seed state moved outside the step), any rank
// sets stop. The next sync_boundary() reads them instead of running a collective, so the seed
// state moves, and the run stops, one boundary after the request, on every rank at once.
#include "kasmina/dist/distributed.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "core/check.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "kasmina/io/state_codec.h"

namespace esper::kasmina {

namespace {

Logger& dist_log() { return logger("kasmina.dist"); }

constexpr int kFields = 6;  // n, S1, S2, dead, grad_sq, contribution

std::span<const std::uint8_t> float_bytes(std::span<const float> v) {
    return {reinterpret_cast<const std::uint8_t*>(v.data()), v.size() * sizeof(float)};
}

}  // namespace

DistributedSync::DistributedSync(Collectives& comm, const Config& config, Model& model,
                                 SeedManager& seeds, bool fold_flags)
    : comm_(comm),
      config_(config),
      model_(model),
      seeds_(seeds),
      buckets_(comm),
      fold_(fold_flags) {
    for (const ParamRef& p : model_.params()) buckets_.add(p.grad->span());
    for (int32_t l = 0; l < seeds_.num_layers(); ++l)
        for (int k = 0; k < kNumBlueprintKinds; ++k) {
            std::span<float> g = seeds_.arenas(l).all_grads(BlueprintKind(k));
            if (!g.empty()) buckets_.add(g);
        }
}

void DistributedSync::reduce_gradients() { buckets_.all_reduce_average(); }

void DistributedSync::reduce_step_stats(std::span<kernels::SeedTelemetryAccum* const> accums,
                                        double& loss, int32_t& correct) {
    ESPER_REQUIRE(static_cast<int32_t>(accums.size()) == seeds_.num_layers(), "accums ",
                  accums.size());
    stats_.clear();
    for (int32_t l = 0; l < seeds_.num_layers(); ++l) {
        const kernels::SeedTelemetryAccum& a = *accums[size_t(l)];
        for (int32_t s = 0; s < seeds_.table(l).num_seeds(); ++s) {
            const double n = a.count[s], mean = a.mean[s];
            stats_.insert(stats_.end(), {n, n * mean, a.m2[s] + n * mean * mean, a.dead[s],
                                         a.grad_sq[s], a.contribution[s]});
        }
    }
    stats_.push_back(loss);
    stats_.push_back(double(correct));
    if (fold_) {
        stats_.push_back(leader_changed() ? 1.0 : 0.0);
        stats_.push_back(stop_local_ ? 1.0 : 0.0);
    }
    comm_.all_reduce_sum(stats_.data(), stats_.size());
    probe_valid_ = false;  // the step moved the seed state the probe copied
    const double w = double(comm_.world());
    size_t i = 0;
    for (int32_t l = 0; l < seeds_.num_layers(); ++l) {
        const kernels::SeedTelemetryAccum& a = *accums[size_t(l)];
        for (int32_t s = 0; s < seeds_.table(l).num_seeds(); ++s, i += kFields) {
            const double n = stats_[i];
            const double mean = n > 0 ? stats_[i + 1] / n : 0.0;
            a.count[s] = n;
            a.mean[s] = mean;
            a.m2[s] = n > 0 ? std::max(0.0, stats_[i + 2] - n * mean * mean) : 0.0;
            a.dead[s] = stats_[i + 3];
            a.grad_sq[s] = stats_[i + 4] / (w * w);
            a.contribution[s] = stats_[i + 5] / w;
        }
    }
    loss = stats_[i] / w;
    correct = int32_t(stats_[i + 1]);
    if (fold_) {
        flags_[0] = stats_[i + 2];
        flags_[1] = stats_[i + 3];
        flags_fresh_ = true;
    }
}

bool DistributedSync::leader_changed() const {
    // Steps change the seed state identically on every rank; only commands on rank 0 make it
    // differ (queued ones, or ones applied to the manager directly since the last step).
    return comm_.rank() == 0 &&
           (!pending_.empty() || seeds_.applied_commands() != applied_at_last_step_);
}

Outcome DistributedSync::submit(const Command& command) {
    if (!fold_) return seeds_.apply(command);
    if (!probe_) {
        probe_ = std::make_unique<SeedManager>(seed_manager_config(config_), model_.seed_sites(),
                                               nullptr);
        probe_valid_ = false;
    }
    if (!probe_valid_) {
        probe_->restore(seeds_.snapshot());
        for (const Command& c : pending_) (void)probe_->apply(c);
        probe_valid_ = true;
    }
    Outcome o = probe_->apply(command);
    if (o.applied() && comm_.rank() == 0) pending_.push_back(command);
    return o;
}

void DistributedSync::apply_pending() {
    for (const Command& c : pending_) {
        const Outcome o = seeds_.apply(c);
        if (o.applied()) continue;
        ++dropped_;
        ESPER_LOG_AT(dist_log(), LogLevel::kWarn,
                     "command submitted a step earlier dropped at step ", seeds_.next_step(), ": ",
                     o.reason);
    }
    pending_.clear();
}

bool DistributedSync::sync_boundary(bool stop_requested) {
    if (!corrupted_ && config_.faults.corrupt_digest_rank == comm_.rank() && seeds_.next_step() > 0)
        corrupt_for_test();
    stop_local_ = stop_requested;
    probe_valid_ = false;
    double flags[2] = {flags_[0], flags_[1]};
    if (!fold_ || !flags_fresh_) {
        // A flag all-reduce of its own: slot 0 only rank 0 fills (changed), slot 1 any rank.
        flags[0] = comm_.rank() == 0 && (first_ || leader_changed()) ? 1.0 : 0.0;
        flags[1] = stop_requested ? 1.0 : 0.0;
        comm_.all_reduce_sum(flags, 2);
        ++flag_collectives_;
    }
    flags_fresh_ = false;
    first_ = false;
    if (flags[0] > 0) {
        if (comm_.rank() == 0) apply_pending();
        broadcast_seed_state();
    }
    applied_at_last_step_ = seeds_.applied_commands();
    return flags[1] > 0;
}

void DistributedSync::broadcast_seed_state() {
    Stopwatch sw;
    Bytes image;
    if (comm_.rank() == 0) image = encode_seed_state(seeds_.snapshot());
    broadcast_bytes(comm_, image, 0);
    if (comm_.rank() != 0) seeds_.restore(decode_seed_state(image, "seed-state broadcast"));
    int64_t bytes = int64_t(image.size());
    for (int32_t l = 0; l < seeds_.num_layers(); ++l) {
        BlueprintArenas& a = seeds_.arenas(l);
        for (int k = 0; k < kNumBlueprintKinds; ++k) {
            const BlueprintKind kind = BlueprintKind(k);
            for (std::span<float> buf :
                 {a.all_params(kind), a.all_opt_m(kind), a.all_opt_v(kind)}) {
                if (buf.empty()) continue;
                comm_.broadcast(buf.data(), buf.size_bytes(), 0);
                bytes += int64_t(buf.size_bytes());
            }
        }
    }
    sync_bytes_ += bytes;
    ++syncs_;
    ESPER_LOG_AT(dist_log(), LogLevel::kDebug, "seed-state sync step=", seeds_.next_step(),
                 " bytes=", bytes, " ms=", sw.elapsed_s() * 1e3);
}

void DistributedSync::corrupt_for_test() {
    // A seed command applied on this rank only: a real divergence of the seed table (and of the
    // arenas, once the seed trains), which the digest check must catch.
    corrupted_ = true;
    for (int32_t l = 0; l < seeds_.num_layers(); ++l)
        for (int32_t s = seeds_.table(l).num_seeds() - 1; s >= 0; --s) {
            Command c;
            c.origin = TransitionOrigin::kOperator;
            c.reason = "faults.corrupt_digest_rank";
            c.body = GerminateCommand{SeedRef{l, s}, BlueprintKind::kScaleShift, std::nullopt};
            if (seeds_.apply(c).applied()) {
                ESPER_LOG_AT(dist_log(), LogLevel::kWarn, "rank=", comm_.rank(),
                             " faults.corrupt_digest_rank: germinated layer ", l, " seed ", s,
                             " on this rank only");
                return;
            }
        }
}

void DistributedSync::after_step(int64_t step) {
    applied_at_last_step_ = seeds_.applied_commands();
    const int64_t every = config_.run.digest_every_steps;
    if (every <= 0 || step % every != 0) return;
    // Hashing the seed tables costs ~32 bytes per seed: only at the check steps.
    const std::vector<int> seed_bad = digest_mismatches(comm_, seeds_.digest());
    const std::vector<int> param_bad = digest_mismatches(comm_, param_digest());
    if (seed_bad.empty() && param_bad.empty()) {
        ESPER_LOG_AT(dist_log(), LogLevel::kDebug, "digest check step=", step, " ok");
        return;
    }
    std::ostringstream os;
    const std::vector<int>& bad = seed_bad.empty() ? param_bad : seed_bad;
    for (size_t i = 0; i < bad.size(); ++i) os << (i ? "," : "") << bad[i];
    ESPER_THROW(kFailed, seed_bad.empty() ? "parameter divergence" : "seed-table divergence",
                ": ranks ", os.str(), " differ from rank 0 at step ", step);
}

uint64_t DistributedSync::param_digest() const {
    uint64_t h = digest64({});
    for (const ParamRef& p : model_.params()) h = digest64(float_bytes(p.value->span()), h);
    for (int32_t l = 0; l < seeds_.num_layers(); ++l)
        for (int k = 0; k < kNumBlueprintKinds; ++k)
            h = digest64(float_bytes(seeds_.arenas(l).all_params(BlueprintKind(k))), h);
    return h;
}

}  // namespace esper::kasmina
