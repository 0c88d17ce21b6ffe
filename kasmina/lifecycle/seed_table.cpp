// Seed table storage, the chunk layout and the table's digest.
#include "kasmina/lifecycle/seed_table.h"

#include <bit>
#include <type_traits>

#include "core/check.h"
#include "core/error.h"

namespace esper::kasmina {

std::vector<int32_t> chunk_offsets(int64_t width, int64_t num_seeds) {
    ESPER_CHECK_INPUT(num_seeds > 0, "seed layer of width ", width,
                      ": seeds_per_layer must be at least 1 (got ", num_seeds, ")");
    ESPER_CHECK_INPUT(num_seeds <= width, "seed layer of width ", width, ": seeds_per_layer ",
                      num_seeds, " exceeds the width (S > D)");
    ESPER_CHECK_INPUT(width <= (int64_t{1} << 30), "seed layer width ", width, " is too large");
    std::vector<int32_t> off(static_cast<size_t>(num_seeds) + 1);
    const int64_t base = width / num_seeds;
    const int64_t extra = width % num_seeds;
    int64_t at = 0;
    for (int64_t i = 0; i < num_seeds; ++i) {
        off[i] = static_cast<int32_t>(at);
        at += base + (i < extra ? 1 : 0);
    }
    off[num_seeds] = static_cast<int32_t>(at);
    ESPER_ASSERT(at == width);
    return off;
}

SeedTable::SeedTable(int32_t layer, int64_t width, int64_t num_seeds)
    : layer_(layer),
      width_(static_cast<int32_t>(width)),
      offsets_(kasmina::chunk_offsets(width, num_seeds)) {
    const auto n = static_cast<size_t>(num_seeds);
    max_chunk_width_ = static_cast<int32_t>((width + num_seeds - 1) / num_seeds);
    stage_.assign(n, static_cast<uint8_t>(SeedStage::kDormant));
    kind_.assign(n, 0);
    strategy_.assign(n, 0);
    flags_.assign(n, 0);
    slot_.assign(n, -1);
    alpha_.assign(n, 0.0f);
    steps_in_stage_.assign(n, 0);
    error_count_.assign(n, 0);
    embargo_until_step_.assign(n, 0);
    graft_.assign(n, GraftState{});
}

SeedRow SeedTable::row(int32_t s) const {
    ESPER_REQUIRE(s >= 0 && s < num_seeds(), "seed=", s);
    SeedRow r;
    r.stage = stage(s);
    r.kind = kind(s);
    r.strategy = strategy(s);
    r.flags = flags_[s];
    r.slot = slot_[s];
    r.alpha = alpha_[s];
    r.steps_in_stage = steps_in_stage_[s];
    r.error_count = error_count_[s];
    r.embargo_until_step = embargo_until_step_[s];
    r.graft = graft_[s];
    return r;
}

void SeedTable::set_row(int32_t s, const SeedRow& r) {
    ESPER_REQUIRE(s >= 0 && s < num_seeds(), "seed=", s);
    stage_[s] = static_cast<uint8_t>(r.stage);
    kind_[s] = static_cast<uint8_t>(r.kind);
    strategy_[s] = static_cast<uint8_t>(r.strategy);
    flags_[s] = r.flags;
    slot_[s] = r.slot;
    alpha_[s] = r.alpha;
    steps_in_stage_[s] = r.steps_in_stage;
    error_count_[s] = r.error_count;
    embargo_until_step_[s] = r.embargo_until_step;
    graft_[s] = r.graft;
}

int64_t SeedTable::count_in_stage(SeedStage st) const {
    int64_t n = 0;
    for (uint8_t v : stage_) n += v == static_cast<uint8_t>(st);
    return n;
}

int64_t SeedTable::count_active() const {
    int64_t n = 0;
    for (uint8_t v : stage_) n += stage_is_active(static_cast<SeedStage>(v));
    return n;
}

// ---- digest ----

namespace {
// FNV-1a 64 over the bytes of one value.
template <typename T>
void mix(uint64_t& h, const T& v) {
    static_assert(std::is_trivially_copyable_v<T> && std::has_unique_object_representations_v<T>);
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    for (size_t i = 0; i < sizeof(T); ++i) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
}
}  // namespace

uint64_t SeedTable::digest() const {
    uint64_t h = 1469598103934665603ull;
    mix(h, layer_);
    mix(h, width_);
    mix(h, num_seeds());
    for (int32_t s = 0; s < num_seeds(); ++s) {
        mix(h, stage_[s]);
        mix(h, kind_[s]);
        mix(h, strategy_[s]);
        mix(h, flags_[s]);
        mix(h, slot_[s]);
        mix(h, std::bit_cast<uint32_t>(alpha_[s]));
        mix(h, steps_in_stage_[s]);
        mix(h, error_count_[s]);
        mix(h, embargo_until_step_[s]);
        const GraftState& g = graft_[s];
        for (float f : {g.t, g.velocity, g.weight_ema, g.last_stable_alpha, g.loss_delta_ema})
            mix(h, std::bit_cast<uint32_t>(f));
        mix(h, g.ramp_steps);
        mix(h, g.unstable_count);
        mix(h, g.adaptive_choice);
        mix(h, g.has_ema);
    }
    for (int32_t o : offsets_) mix(h, o);
    return h;
}

}  // namespace esper::kasmina
