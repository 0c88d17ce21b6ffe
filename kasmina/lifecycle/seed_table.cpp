// Seed table storage, the chunk layout and the table's binary image / digest.
// Image format (little-endian, version 1): magic "ESTB", u32 version, i32 layer, i32 width,
// i32 seeds, then per seed the SeedRow fields in declaration order.
#include "kasmina/lifecycle/seed_table.h"

#include <cstring>
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

// ---- binary image ----

namespace {
constexpr uint32_t kTableImageVersion = 1;
constexpr char kTableMagic[4] = {'E', 'S', 'T', 'B'};

template <typename T>
void put(std::vector<uint8_t>& out, const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    out.insert(out.end(), p, p + sizeof(T));
}

void put_graft(std::vector<uint8_t>& out, const GraftState& g) {
    put(out, g.t);
    put(out, g.velocity);
    put(out, g.weight_ema);
    put(out, g.last_stable_alpha);
    put(out, g.loss_delta_ema);
    put(out, g.ramp_steps);
    put(out, g.unstable_count);
    put(out, g.adaptive_choice);
    put(out, g.has_ema);
}

class Cursor {
public:
    explicit Cursor(std::span<const uint8_t> b) : b_(b) {}
    template <typename T>
    T get() {
        if (at_ + sizeof(T) > b_.size()) ESPER_THROW(kIntegrity, "seed table image truncated");
        T v;
        std::memcpy(&v, b_.data() + at_, sizeof(T));
        at_ += sizeof(T);
        return v;
    }
    bool done() const { return at_ == b_.size(); }

private:
    std::span<const uint8_t> b_;
    size_t at_ = 0;
};
}  // namespace

void SeedTable::write_to(std::vector<uint8_t>& out) const {
    out.insert(out.end(), kTableMagic, kTableMagic + 4);
    put(out, kTableImageVersion);
    put(out, layer_);
    put(out, width_);
    put(out, num_seeds());
    for (int32_t s = 0; s < num_seeds(); ++s) {
        put(out, stage_[s]);
        put(out, kind_[s]);
        put(out, strategy_[s]);
        put(out, flags_[s]);
        put(out, slot_[s]);
        put(out, alpha_[s]);
        put(out, steps_in_stage_[s]);
        put(out, error_count_[s]);
        put(out, embargo_until_step_[s]);
        put_graft(out, graft_[s]);
    }
}

void SeedTable::read_from(std::span<const uint8_t> image) {
    Cursor c(image);
    char magic[4];
    for (char& m : magic) m = c.get<char>();
    if (std::memcmp(magic, kTableMagic, 4) != 0)
        ESPER_THROW(kIntegrity, "seed table image: bad magic");
    const auto version = c.get<uint32_t>();
    if (version != kTableImageVersion) {
        ESPER_THROW(kIntegrity, "seed table image version ", version, " (this build reads ",
                    kTableImageVersion, ")");
    }
    const auto layer = c.get<int32_t>();
    const auto width = c.get<int32_t>();
    const auto seeds = c.get<int32_t>();
    if (layer != layer_ || width != width_ || seeds != num_seeds()) {
        ESPER_THROW(kIntegrity, "seed table image is for layer ", layer, " width ", width,
                    " seeds ", seeds, "; this table is layer ", layer_, " width ", width_,
                    " seeds ", num_seeds());
    }
    std::vector<SeedRow> rows(static_cast<size_t>(seeds));
    for (auto& r : rows) {
        const auto st = c.get<uint8_t>();
        const auto kd = c.get<uint8_t>();
        const auto sg = c.get<uint8_t>();
        if (st >= kNumSeedStages || kd >= kNumBlueprintKinds ||
            sg >= kNumGraftingStrategies) {
            ESPER_THROW(kIntegrity, "seed table image: value out of range");
        }
        r.stage = static_cast<SeedStage>(st);
        r.kind = static_cast<BlueprintKind>(kd);
        r.strategy = static_cast<GraftingStrategy>(sg);
        r.flags = c.get<uint8_t>();
        r.slot = c.get<int32_t>();
        r.alpha = c.get<float>();
        r.steps_in_stage = c.get<uint32_t>();
        r.error_count = c.get<uint16_t>();
        r.embargo_until_step = c.get<uint32_t>();
        r.graft.t = c.get<float>();
        r.graft.velocity = c.get<float>();
        r.graft.weight_ema = c.get<float>();
        r.graft.last_stable_alpha = c.get<float>();
        r.graft.loss_delta_ema = c.get<float>();
        r.graft.ramp_steps = c.get<int32_t>();
        r.graft.unstable_count = c.get<uint16_t>();
        r.graft.adaptive_choice = c.get<uint8_t>();
        r.graft.has_ema = c.get<uint8_t>();
    }
    if (!c.done()) ESPER_THROW(kIntegrity, "seed table image has trailing bytes");
    for (int32_t s = 0; s < seeds; ++s) set_row(s, rows[s]);
}

uint64_t SeedTable::digest() const {
    std::vector<uint8_t> img;
    write_to(img);
    for (int32_t o : offsets_) put(img, o);
    uint64_t h = 1469598103934665603ull;
    for (uint8_t b : img) {
        h ^= b;
        h *= 1099511628211ull;
    }
    return h;
}

}  // namespace esper::kasmina
