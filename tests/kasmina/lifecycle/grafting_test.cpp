// α schedules: exact sequences for linear and momentum (the numbers), the shapes of
// cosine and sigmoid, and the behaviour of the adaptive family on controlled metrics.
#include "kasmina/lifecycle/grafting.h"

#include <catch2/catch.hpp>
#include <vector>

using namespace esper::kasmina;

namespace {
// Runs `n` steps feeding α back; returns α at steps 0..n-1.
std::vector<float> run(GraftingStrategy s, const GraftingConfig& cfg, int n, GraftMetrics m = {},
                       float alpha0 = 0.0f) {
    std::vector<float> out;
    GraftState st;
    float alpha = alpha0;
    for (int i = 0; i < n; ++i) {
        const GraftResult r = graft_step(s, cfg, st, alpha, m);
        alpha = r.alpha;
        st = r.state;
        out.push_back(alpha);
    }
    return out;
}
}  // namespace

TEST_CASE("linear ramp of 20 steps gives 0, 0.5, 1, 1 at steps 0, 10, 20, 24",
          "[kasmina][grafting]") {
    GraftingConfig cfg;
    cfg.ramp_steps = 20;
    const auto a = run(GraftingStrategy::kLinear, cfg, 25);
    CHECK(a[0] == 0.0f);
    CHECK(a[10] == 0.5f);
    CHECK(a[20] == 1.0f);
    CHECK(a[24] == 1.0f);
    CHECK(a[1] == Approx(0.05));
}

TEST_CASE("momentum with R=10, m=0.5 and a unit loss drop gives the reference sequence",
          "[kasmina][grafting]") {
    GraftingConfig cfg;
    cfg.ramp_steps = 10;
    cfg.momentum = 0.5;
    GraftMetrics m;
    m.loss_delta = 1.0;
    const auto a = run(GraftingStrategy::kMomentum, cfg, 5, m);
    const double expect[] = {0.01, 0.115, 0.2175, 0.31875, 0.419375};
    for (int i = 0; i < 5; ++i) CHECK(a[i] == Approx(expect[i]).margin(1e-6));
}

TEST_CASE("momentum never goes below the seed's current alpha", "[kasmina][grafting]") {
    GraftingConfig cfg;
    cfg.ramp_steps = 10;
    GraftMetrics m;
    m.loss_delta = -5.0;  // loss rising: the velocity pulls down
    GraftState st;
    const GraftResult r = graft_step(GraftingStrategy::kMomentum, cfg, st, 0.6f, m);
    CHECK(r.alpha == 0.6f);
    CHECK(r.state.velocity < 0.0f);
}

TEST_CASE("cosine and sigmoid run from 0 to 1, monotone, symmetric at half the ramp",
          "[kasmina][grafting]") {
    GraftingConfig cfg;
    cfg.ramp_steps = 10;
    cfg.steepness = 8.0;
    for (auto s : {GraftingStrategy::kCosine, GraftingStrategy::kSigmoid}) {
        const auto a = run(s, cfg, 12);
        CHECK(a[0] == Approx(0.0).margin(1e-7));
        CHECK(a[5] == Approx(0.5).margin(1e-6));
        CHECK(a[10] == Approx(1.0).margin(1e-6));
        CHECK(a[11] == Approx(1.0).margin(1e-6));
        for (int i = 1; i < 12; ++i) CHECK(a[i] >= a[i - 1]);
    }
    // The cosine value at a quarter: 0.5·(1 − cos(π/4)) with R = 8.
    cfg.ramp_steps = 8;
    CHECK(run(GraftingStrategy::kCosine, cfg, 3)[2] == Approx(0.5 * (1.0 - std::sqrt(0.5))));
}

TEST_CASE("drift_controlled pauses while the blueprint weights drift from their EMA",
          "[kasmina][grafting]") {
    GraftingConfig cfg;
    cfg.ramp_steps = 10;
    cfg.drift_threshold = 0.1;
    cfg.drift_ema = 0.5;
    GraftState st;
    GraftMetrics m;
    m.weight_norm = 2.0;
    GraftResult r = graft_step(GraftingStrategy::kDriftControlled, cfg, st, 0.0f, m);  // init EMA
    CHECK(r.state.t == 1.0f);
    r = graft_step(GraftingStrategy::kDriftControlled, cfg, r.state, r.alpha, m);  // steady
    CHECK(r.alpha == Approx(0.1));
    m.weight_norm = 3.0;  // 50 % drift: pause
    const GraftResult p = graft_step(GraftingStrategy::kDriftControlled, cfg, r.state, r.alpha, m);
    CHECK(p.alpha == r.alpha);
    CHECK(p.state.t == r.state.t);
    CHECK(p.state.weight_ema == Approx(2.5));
}

TEST_CASE("stability halves the ramp while unstable and reverts after repeated instability",
          "[kasmina][grafting]") {
    GraftingConfig cfg;
    cfg.ramp_steps = 10;
    cfg.stability_threshold = 0.1;
    cfg.stability_patience = 3;
    GraftMetrics calm;
    GraftMetrics noisy;
    noisy.loss_variance = 0.5;
    GraftState st;
    float alpha = 0.0f;
    for (int i = 0; i < 5; ++i) {  // calm: α 0, .1, .2, .3, .4; last stable α = .4
        const GraftResult r = graft_step(GraftingStrategy::kStability, cfg, st, alpha, calm);
        st = r.state;
        alpha = r.alpha;
    }
    CHECK(alpha == Approx(0.4));
    CHECK(st.last_stable_alpha == Approx(0.4));
    GraftResult r = graft_step(GraftingStrategy::kStability, cfg, st, alpha, noisy);
    CHECK(r.alpha == Approx(0.5));  // progress 5 → α .5, then advance by a half step
    CHECK(r.state.t == Approx(5.5));
    r = graft_step(GraftingStrategy::kStability, cfg, r.state, r.alpha, noisy);
    CHECK(r.alpha == Approx(0.55));
    r = graft_step(GraftingStrategy::kStability, cfg, r.state, r.alpha, noisy);  // third: revert
    CHECK(r.alpha == Approx(0.4));
    CHECK(r.state.unstable_count == 0);
    CHECK(r.state.t == Approx(4.0));
}

TEST_CASE("adaptive follows momentum while improving and stability while noisy",
          "[kasmina][grafting]") {
    GraftingConfig cfg;
    cfg.ramp_steps = 10;
    cfg.adaptive_window = 1;
    GraftMetrics improving;
    improving.loss_delta = 1.0;
    GraftResult r = graft_step(GraftingStrategy::kAdaptive, cfg, GraftState{}, 0.0f, improving);
    CHECK(r.state.adaptive_choice == static_cast<uint8_t>(GraftingStrategy::kMomentum));
    CHECK(r.alpha > 0.0f);
    GraftMetrics noisy;
    noisy.loss_variance = 1.0;
    r = graft_step(GraftingStrategy::kAdaptive, cfg, r.state, r.alpha, noisy);
    CHECK(r.state.adaptive_choice == static_cast<uint8_t>(GraftingStrategy::kStability));
    GraftMetrics flat;
    flat.loss_delta = -1.0;
    GraftState s2;
    r = graft_step(GraftingStrategy::kAdaptive, cfg, s2, 0.0f, flat);
    CHECK(r.state.adaptive_choice == static_cast<uint8_t>(GraftingStrategy::kLinear));
    CHECK(r.alpha == 0.0f);
}

TEST_CASE("a per-seed ramp overrides the configured ramp", "[kasmina][grafting]") {
    GraftingConfig cfg;
    cfg.ramp_steps = 100;
    GraftState st;
    st.ramp_steps = 4;
    st.t = 2.0f;
    CHECK(graft_step(GraftingStrategy::kLinear, cfg, st, 0.25f, {}).alpha == 0.5f);
}
