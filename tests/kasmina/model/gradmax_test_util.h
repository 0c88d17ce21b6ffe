// What the GradMax tests share: how much of G = Σ δ·xᵀ a set of unit rows V captures, and the
// check that a trainer placed an mlp_units seed's units as blueprints.init: gradmax says (the
// MLP and transformer tests run it on their own hosts).
#pragma once

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "kasmina/model/blueprints.h"
#include "kasmina/model/gradmax.h"
#include "kasmina/train/trainer.h"
#include "tests/kasmina/train/teacher_test_util.h"

namespace esper::kasmina::test {

// ‖G·Vᵀ‖_F² for G [out, in] and the first `rows` rows of V [·, in].
inline double gradient_captured(std::span<const float> g, int64_t out, int64_t in,
                                std::span<const float> v, int64_t rows) {
    double s = 0.0;
    for (int64_t r = 0; r < out; ++r)
        for (int64_t j = 0; j < rows; ++j) {
            double d = 0.0;
            for (int64_t i = 0; i < in; ++i)
                d += double(g[size_t(r * in + i)]) * v[size_t(j * in + i)];
            s += d * d;
        }
    return s;
}

// An mlp_units seed's V [k, in] as germinated on widening site `layer` after 5 steps, and G as
// GradMax sees it there (the next four training batches on the host as it is then).
struct PlacedUnits {
    std::vector<float> v, g;
};
inline PlacedUnits place_units(Config c, BlueprintInit init, int32_t layer, int64_t in,
                               int64_t out) {
    c.blueprints.init = init;
    Trainer t(c);
    for (int i = 0; i < 5; ++i) {
        REQUIRE(t.boundary());
        t.step();
        t.after_step();
    }
    PlacedUnits p;
    p.g.assign(size_t(out * in), 0.0f);
    for (int64_t b = 0; b < 4; ++b)
        REQUIRE(t.model().widening_gradient(layer, t.data().train_batch(5 + b), p.g));
    REQUIRE(t.apply(operator_germinate(layer, 0, BlueprintKind::kMlpUnits)).applied());
    REQUIRE(t.boundary());
    t.step();  // the units are placed before the step runs
    const int32_t slot = t.seeds().table(layer).slot(0);
    const auto params = t.seeds().arenas(layer).params(BlueprintKind::kMlpUnits, slot);
    const int64_t k = t.seeds().arenas(layer).hidden(BlueprintKind::kMlpUnits);
    const WideningOffsets o = widening_offsets(BlueprintKind::kMlpUnits, in, k, out);
    p.v.assign(params.begin() + o.in_w, params.begin() + o.in_w + k * in);
    return p;
}

// GradMax placed the first `placed` rows along G's top directions with the random draw's mean
// norm 1/√3 (the most gradient rows of that norm can get), kept the draw for the others, and
// gets more gradient than the draw.
inline void check_gradmax_placement(const PlacedUnits& random, const PlacedUnits& gradmax,
                                    int64_t in, int64_t out, int64_t placed) {
    REQUIRE(random.g == gradmax.g);  // the same host up to the germination
    const int64_t k = int64_t(random.v.size()) / in;
    const GradmaxDirections d = gradmax_directions(gradmax.g, out, in, k);
    REQUIRE(d.rows == placed);
    double best = 0.0;
    for (int64_t j = 0; j < placed; ++j) {
        best += d.sigma[size_t(j)] * d.sigma[size_t(j)] / 3.0;
        for (int64_t i = 0; i < in; ++i)
            CHECK(gradmax.v[size_t(j * in + i)] ==
                  Approx(d.v[size_t(j * in + i)] / std::sqrt(3.0)).margin(1e-4));
    }
    const double along = gradient_captured(gradmax.g, out, in, gradmax.v, placed);
    CHECK(along == Approx(best).epsilon(1e-4));
    for (int64_t i = placed * in; i < k * in; ++i)
        CHECK(gradmax.v[size_t(i)] == random.v[size_t(i)]);
    CHECK(gradmax.v != random.v);
    // At most in/placed times the draw's expectation: 2× for 8 of 16 inputs, 8× into a head.
    CHECK(along > 1.5 * gradient_captured(random.g, out, in, random.v, placed));
}

}  // namespace esper::kasmina::test
