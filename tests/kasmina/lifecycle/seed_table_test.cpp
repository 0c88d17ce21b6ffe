// Chunk layouts and their refusals, seed-table rows and digests, blueprint arenas (slots, identity
// at birth, deterministic init).
#include "kasmina/lifecycle/seed_table.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "kasmina/model/blueprints.h"

using namespace esper;
using namespace esper::kasmina;

namespace {
std::vector<int32_t> widths(const std::vector<int32_t>& off) {
    std::vector<int32_t> w;
    for (size_t i = 0; i + 1 < off.size(); ++i) w.push_back(off[i + 1] - off[i]);
    return w;
}
}  // namespace

TEST_CASE("chunks are floor(D/S) wide, one wider for the first D mod S", "[kasmina][seed_table]") {
    CHECK(widths(chunk_offsets(100, 8)) == std::vector<int32_t>{13, 13, 13, 13, 12, 12, 12, 12});
    CHECK(chunk_offsets(100, 8).front() == 0);
    CHECK(chunk_offsets(100, 8).back() == 100);
    CHECK(widths(chunk_offsets(7, 3)) == std::vector<int32_t>{3, 2, 2});
    CHECK(widths(chunk_offsets(5, 5)) == std::vector<int32_t>{1, 1, 1, 1, 1});
    CHECK(widths(chunk_offsets(9, 1)) == std::vector<int32_t>{9});
    CHECK(widths(chunk_offsets(128, 16)) == std::vector<int32_t>(16, 8));
    for (int64_t d : {1, 2, 17, 100, 257}) {
        for (int64_t s = 1; s <= d; s += 3) {
            const auto w = widths(chunk_offsets(d, s));
            int64_t sum = 0;
            for (size_t i = 0; i < w.size(); ++i) {
                sum += w[i];
                CHECK(w[i] == d / s + (static_cast<int64_t>(i) < d % s ? 1 : 0));
            }
            CHECK(sum == d);
        }
    }
}

TEST_CASE("S = 0 and S > D are refused at construction", "[kasmina][seed_table]") {
    CHECK_THROWS_WITH(SeedTable(0, 100, 0), Catch::Contains("seeds_per_layer must be at least 1"));
    CHECK_THROWS_WITH(SeedTable(0, 8, 9),
                      Catch::Contains("seeds_per_layer 9 exceeds the width (S > D)"));
    try {
        chunk_offsets(8, 9);
        FAIL("no error");
    } catch (const esper::Error& e) {
        CHECK(e.kind() == ErrorKind::kInvalidInput);
    }
    CHECK_NOTHROW(SeedTable(0, 8, 8));
}

TEST_CASE("a new seed table is all dormant and rows round-trip", "[kasmina][seed_table]") {
    SeedTable t(2, 100, 8);
    CHECK(t.layer() == 2);
    CHECK(t.num_seeds() == 8);
    CHECK(t.max_chunk_width() == 13);
    CHECK(t.chunk_begin(4) == 52);
    CHECK(t.chunk_width(4) == 12);
    CHECK(t.count_in_stage(SeedStage::kDormant) == 8);
    CHECK(t.count_active() == 0);
    for (int s = 0; s < 8; ++s) CHECK(t.slot(s) == -1);

    SeedRow r;
    r.stage = SeedStage::kGrafting;
    r.kind = BlueprintKind::kLowrank;
    r.strategy = GraftingStrategy::kSigmoid;
    r.slot = 3;
    r.alpha = 0.37f;
    r.steps_in_stage = 12;
    r.error_count = 2;
    r.embargo_until_step = 99;
    r.graft.t = 12.0f;
    r.graft.velocity = 0.25f;
    const uint64_t before = t.digest();
    t.set_row(5, r);
    CHECK(t.row(5) == r);
    CHECK(t.count_active() == 1);
    CHECK(t.digest() != before);

    // The digest covers every row field and the layer: equal tables, equal digests.
    SeedTable u(2, 100, 8);
    for (int32_t s = 0; s < 8; ++s) u.set_row(s, t.row(s));
    CHECK(u.digest() == t.digest());
    SeedRow moved = r;
    moved.graft.velocity = 0.5f;
    u.set_row(5, moved);
    CHECK(u.digest() != t.digest());
    SeedTable other(1, 100, 8);
    for (int32_t s = 0; s < 8; ++s) other.set_row(s, t.row(s));
    CHECK(other.digest() != t.digest());
}

TEST_CASE("blueprint kinds have the documented parameter formulas", "[kasmina][blueprints]") {
    BlueprintsConfig cfg;
    cfg.residual_mlp.expansion = 2;
    cfg.lowrank.rank = 4;
    // residual_mlp: w → e·max_w → w; lowrank: w → r → w; scale_shift: 2w.
    CHECK(blueprint_hidden(BlueprintKind::kResidualMlp, 13, cfg) == 26);
    CHECK(blueprint_params(BlueprintKind::kResidualMlp, 12, 13, cfg) ==
          26 * 12 + 26 + 12 * 26 + 12);
    CHECK(blueprint_params(BlueprintKind::kLowrank, 12, 13, cfg) == 4 * 12 + 4 + 12 * 4 + 12);
    CHECK(blueprint_params(BlueprintKind::kScaleShift, 12, 13, cfg) == 24);
    CHECK(parse_blueprint_kind("lowrank") == BlueprintKind::kLowrank);
    CHECK(blueprint_kind_name(BlueprintKind::kScaleShift) == "scale_shift");
    CHECK_FALSE(parse_blueprint_kind("conv"));
}

TEST_CASE("arenas hand out the lowest free slot and refuse when full", "[kasmina][blueprints]") {
    BlueprintsConfig cfg;
    cfg.lowrank.slots = 3;
    BlueprintArenas a(13, cfg);
    CHECK(a.capacity(BlueprintKind::kLowrank) == 3);
    CHECK(a.acquire(BlueprintKind::kLowrank) == 0);
    CHECK(a.acquire(BlueprintKind::kLowrank) == 1);
    CHECK(a.acquire(BlueprintKind::kLowrank) == 2);
    CHECK_FALSE(a.acquire(BlueprintKind::kLowrank));
    CHECK(a.free_slots(BlueprintKind::kLowrank) == 0);
    CHECK(a.free_slots(BlueprintKind::kResidualMlp) == cfg.residual_mlp.slots);
    a.grads(BlueprintKind::kLowrank, 1)[0] = 5.0f;
    a.opt_m(BlueprintKind::kLowrank, 1)[0] = 5.0f;
    a.release(BlueprintKind::kLowrank, 1);
    CHECK(a.grads(BlueprintKind::kLowrank, 1)[0] == 0.0f);
    CHECK(a.opt_m(BlueprintKind::kLowrank, 1)[0] == 0.0f);
    CHECK(a.acquire(BlueprintKind::kLowrank) == 1);
}

TEST_CASE("germination init is identity at birth, kaiming-uniform in V and deterministic",
          "[kasmina][blueprints]") {
    BlueprintsConfig cfg;
    const int mw = 13;
    BlueprintArenas a(mw, cfg);
    const auto k = BlueprintKind::kResidualMlp;
    const int32_t slot = *a.acquire(k);
    std::ranges::fill(a.params(k, slot), 7.0f);  // poison: init must overwrite everything
    a.init_slot(k, slot, 12, 1234);
    const int64_t h = a.hidden(k);
    const auto off = kernels::mlp_slot_offsets(mw, h);
    const auto p = a.params(k, slot);
    const double bound = std::sqrt(6.0 / 12.0);
    int nonzero = 0;
    double sum = 0.0;
    for (int64_t j = 0; j < h; ++j) {
        for (int i = 0; i < mw; ++i) {
            const float v = p[off.v + j * mw + i];
            if (i >= 12) {
                CHECK(v == 0.0f);  // unused column of a narrower chunk
            } else {
                CHECK(std::abs(v) <= bound);
                nonzero += v != 0.0f;
                sum += v;
            }
        }
    }
    CHECK(nonzero == h * 12);
    CHECK(std::abs(sum / (h * 12)) < 0.15);  // centred
    for (int64_t i = off.b1; i < static_cast<int64_t>(p.size()); ++i)
        CHECK(p[i] == 0.0f);  // b1, U, b2

    BlueprintArenas b(mw, cfg);
    const int32_t s2 = *b.acquire(k);
    b.init_slot(k, s2, 12, 1234);
    CHECK(std::ranges::equal(a.params(k, slot), b.params(k, s2)));
    b.init_slot(k, s2, 12, 1235);
    CHECK_FALSE(std::ranges::equal(a.params(k, slot), b.params(k, s2)));

    const int32_t ss = *a.acquire(BlueprintKind::kScaleShift);
    std::ranges::fill(a.params(BlueprintKind::kScaleShift, ss), 3.0f);
    a.init_slot(BlueprintKind::kScaleShift, ss, 10, 99);
    for (float v : a.params(BlueprintKind::kScaleShift, ss)) CHECK(v == 0.0f);
}
