// Test helpers for tests/kernels: seeded random inputs (never zeros), ragged seed layers with every
// stage and blueprint kind, and the llm.c-style |a - b| <= atol + rtol·|b| comparison.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/seed_layer.h"

namespace esper::kernels::test {

inline void fill_uniform(std::vector<float>& v, std::mt19937& rng, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    for (float& x : v) {
        float y = d(rng);
        if (y == 0.0f) y = 1e-3f;
        x = y;
    }
}

// A host-side seed layer that owns its arrays; view() hands out raw pointers.
struct HostSeedLayer {
    int32_t batch = 0, width = 0, num_seeds = 0;
    std::vector<int32_t> chunk_offset;
    std::vector<uint8_t> stage, kind;
    std::vector<int32_t> slot;
    std::vector<float> alpha;
    std::vector<float> params[kNumBlueprintKinds], grads[kNumBlueprintKinds];
    BlueprintArena arena[kNumBlueprintKinds];

    SeedLayerView view() {
        SeedLayerView v;
        v.batch = batch;
        v.width = width;
        v.num_seeds = num_seeds;
        v.chunk_offset = chunk_offset.data();
        v.stage = stage.data();
        v.kind = kind.data();
        v.slot = slot.data();
        v.alpha = alpha.data();
        for (int k = 0; k < kNumBlueprintKinds; ++k) {
            v.arenas[k] = arena[k];
            v.arenas[k].params = params[k].empty() ? nullptr : params[k].data();
            v.arenas[k].grads = grads[k].empty() ? nullptr : grads[k].data();
        }
        return v;
    }
};

struct LayerSpec {
    int32_t batch = 5;
    int32_t num_seeds = 7;
    int32_t min_width = 1;
    int32_t max_chunk = 9;
    int32_t mlp_expansion = 2;
    int32_t lowrank = 3;
    bool all_dormant = false;
    int forced_stage = -1;  // >= 0: every seed gets this stage
    int forced_kind = -1;   // >= 0: every seed with a blueprint gets this kind
};

// Ragged chunks in [min_width, max_chunk]; stages cycle through all eleven (or forced); every
// seed in a blueprint-running stage (and some others) owns a slot with random, non-zero weights.
inline HostSeedLayer make_layer(const LayerSpec& spec, std::mt19937& rng) {
    HostSeedLayer L;
    L.batch = spec.batch;
    L.num_seeds = spec.num_seeds;
    std::uniform_int_distribution<int32_t> wd(spec.min_width, spec.max_chunk);
    L.chunk_offset.push_back(0);
    int32_t max_w = 1;
    for (int32_t s = 0; s < spec.num_seeds; ++s) {
        const int32_t w = wd(rng);
        max_w = std::max(max_w, w);
        L.chunk_offset.push_back(L.chunk_offset.back() + w);
    }
    L.width = L.chunk_offset.back();
    std::uniform_real_distribution<float> ad(0.05f, 0.95f);
    int32_t used[kNumBlueprintKinds] = {0, 0, 0};
    for (int32_t s = 0; s < spec.num_seeds; ++s) {
        int st = spec.all_dormant
                     ? 0
                     : (spec.forced_stage >= 0 ? spec.forced_stage : s % kNumSeedStages);
        int kd = spec.forced_kind >= 0 ? spec.forced_kind : (s / 2) % kNumChunkBlueprintKinds;
        L.stage.push_back(static_cast<uint8_t>(st));
        L.kind.push_back(static_cast<uint8_t>(kd));
        L.alpha.push_back(ad(rng));
        const bool has_slot = st >= 1 && st <= 7;
        L.slot.push_back(has_slot ? used[kd]++ : -1);
    }
    // Chunk kinds only: the seed kernels never see a widening kind (kernels/vocabulary.h).
    for (int k = 0; k < kNumChunkBlueprintKinds; ++k) {
        const auto kind = static_cast<BlueprintKind>(k);
        const int32_t hidden = kind == BlueprintKind::kResidualMlp ? spec.mlp_expansion * max_w
                               : kind == BlueprintKind::kLowrank   ? spec.lowrank
                                                                   : 0;
        BlueprintArena& a = L.arena[k];
        a.capacity = std::max(used[k], 1);
        a.hidden = hidden;
        a.max_width = max_w;
        a.stride = static_cast<int32_t>(blueprint_slot_floats(kind, max_w, hidden));
        L.params[k].resize(static_cast<size_t>(a.capacity) * a.stride);
        L.grads[k].resize(L.params[k].size());
        fill_uniform(L.params[k], rng, -0.6f, 0.6f);
        fill_uniform(L.grads[k], rng, -0.1f, 0.1f);
    }
    return L;
}

struct Telemetry {
    std::vector<double> count, mean, m2, dead, grad_sq, contribution;
    explicit Telemetry(int32_t s)
        : count(s, 0.0),
          mean(s, 0.0),
          m2(s, 0.0),
          dead(s, 0.0),
          grad_sq(s, 0.0),
          contribution(s, 0.0) {}
    SeedTelemetryAccum accum() {
        return {count.data(), mean.data(),    m2.data(),
                dead.data(),  grad_sq.data(), contribution.data()};
    }
};

// Returns "" when every |got - want| <= atol + rtol·|want|, else a description of the first few
// mismatches with their indices.
template <typename A, typename B>
std::string compare(const std::vector<A>& got, const std::vector<B>& want, double atol, double rtol,
                    const char* what) {
    std::ostringstream os;
    int bad = 0;
    if (got.size() != want.size()) return std::string(what) + ": size mismatch";
    for (size_t i = 0; i < got.size(); ++i) {
        const double g = double(got[i]), w = double(want[i]);
        if (!(std::fabs(g - w) <= atol + rtol * std::fabs(w))) {
            if (bad < 5) os << what << "[" << i << "]: got " << g << " want " << w << "\n";
            ++bad;
        }
    }
    if (bad) os << what << ": " << bad << " of " << got.size() << " mismatches\n";
    return os.str();
}

}  // namespace esper::kernels::test
