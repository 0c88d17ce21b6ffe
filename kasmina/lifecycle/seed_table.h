// Host seed table of one seed layer (DESIGN §4.2): structure-of-arrays, one row per seed, plus
// the chunk layout. Chunk i has ⌊D/S⌋ features, +1 for the first D % S chunks, contiguous, in
// order; S = 0 and S > D are refused at construction. Only SeedManager mutates a live table;
// SeedRow is the value form of one row (tests, checkpoints, governor snapshots).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kasmina/lifecycle/config.h"
#include "kasmina/lifecycle/grafting.h"
#include "kasmina/lifecycle/lifecycle.h"

namespace esper::kasmina {

// Offsets [S + 1] of the chunk layout; throws esper::Error(kInvalidInput) for S = 0 or S > D.
std::vector<int32_t> chunk_offsets(int64_t width, int64_t num_seeds);

// flags bits
inline constexpr uint8_t kSeedFlagHealthMeasured = 1u << 0;  // gradient health seen at least once

struct SeedRow {
    SeedStage stage = SeedStage::kDormant;
    BlueprintKind kind = BlueprintKind::kResidualMlp;  // meaningful while slot >= 0
    GraftingStrategy strategy = GraftingStrategy::kLinear;
    uint8_t flags = 0;
    int32_t slot = -1;
    float alpha = 0.0f;
    uint32_t steps_in_stage = 0;
    uint16_t error_count = 0;
    uint32_t embargo_until_step = 0;
    GraftState graft;  // α-schedule state
    bool operator==(const SeedRow&) const = default;
};

class SeedTable {
public:
    SeedTable(int32_t layer, int64_t width, int64_t num_seeds);

    int32_t layer() const { return layer_; }
    int32_t width() const { return width_; }
    int32_t num_seeds() const { return static_cast<int32_t>(stage_.size()); }
    int32_t max_chunk_width() const { return max_chunk_width_; }
    int32_t chunk_begin(int32_t s) const { return offsets_[s]; }
    int32_t chunk_width(int32_t s) const { return offsets_[s + 1] - offsets_[s]; }
    std::span<const int32_t> chunk_offsets() const { return offsets_; }

    SeedStage stage(int32_t s) const { return static_cast<SeedStage>(stage_[s]); }
    BlueprintKind kind(int32_t s) const { return static_cast<BlueprintKind>(kind_[s]); }
    GraftingStrategy strategy(int32_t s) const {
        return static_cast<GraftingStrategy>(strategy_[s]);
    }
    uint8_t flags(int32_t s) const { return flags_[s]; }
    int32_t slot(int32_t s) const { return slot_[s]; }
    float alpha(int32_t s) const { return alpha_[s]; }
    uint32_t steps_in_stage(int32_t s) const { return steps_in_stage_[s]; }
    uint16_t error_count(int32_t s) const { return error_count_[s]; }
    uint32_t embargo_until_step(int32_t s) const { return embargo_until_step_[s]; }
    const GraftState& graft(int32_t s) const { return graft_[s]; }

    SeedRow row(int32_t s) const;
    void set_row(int32_t s, const SeedRow& r);
    int64_t count_in_stage(SeedStage st) const;
    int64_t count_active() const;

    // Raw columns for kernels::SeedLayerView (valid until the table is destroyed).
    const uint8_t* stage_data() const { return stage_.data(); }
    const uint8_t* kind_data() const { return kind_.data(); }
    const int32_t* slot_data() const { return slot_.data(); }
    const float* alpha_data() const { return alpha_.data(); }
    const int32_t* chunk_offset_data() const { return offsets_.data(); }

    // FNV-1a 64 over layer, layout and every row: equal tables ⇔ equal digests (in practice).
    // A hash for comparing ranks, never stored (checkpoints store rows: kasmina/io/state_codec.h).
    uint64_t digest() const;

private:
    int32_t layer_;
    int32_t width_;
    int32_t max_chunk_width_;
    std::vector<int32_t> offsets_;
    std::vector<uint8_t> stage_, kind_, strategy_, flags_;
    std::vector<int32_t> slot_;
    std::vector<float> alpha_;
    std::vector<uint32_t> steps_in_stage_;
    std::vector<uint16_t> error_count_;
    std::vector<uint32_t> embargo_until_step_;
    std::vector<GraftState> graft_;
};

}  // namespace esper::kasmina
