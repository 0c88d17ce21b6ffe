// Blueprint kinds and arenas. Slot init draws from splitmix64 seeded per germination, so the
// same (run seed, layer, seed, step) gives the same weights on every rank and after a resume.
#include "kasmina/model/blueprints.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace esper::kasmina {

namespace {
uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
}  // namespace

int64_t blueprint_hidden(BlueprintKind k, int64_t max_width, const BlueprintsConfig& cfg) {
    switch (k) {
        case BlueprintKind::kResidualMlp:
            return cfg.residual_mlp.expansion * max_width;
        case BlueprintKind::kLowrank:
            return cfg.lowrank.rank;
        case BlueprintKind::kScaleShift:
            return 0;
        case BlueprintKind::kMlpUnits:
            return cfg.mlp_units.units;
        case BlueprintKind::kLora:
            return cfg.lora.rank;
        case BlueprintKind::kAttentionHead:
            break;  // the head dimension comes from the host (widening())
    }
    return 0;
}

int64_t blueprint_capacity(BlueprintKind k, const BlueprintsConfig& cfg) {
    switch (k) {
        case BlueprintKind::kResidualMlp:
            return cfg.residual_mlp.slots;
        case BlueprintKind::kLowrank:
            return cfg.lowrank.slots;
        case BlueprintKind::kScaleShift:
            return cfg.scale_shift.slots;
        case BlueprintKind::kMlpUnits:
            return cfg.mlp_units.slots;
        case BlueprintKind::kAttentionHead:
            return cfg.attention_head.slots;
        case BlueprintKind::kLora:
            return cfg.lora.slots;
    }
    return 0;
}

WideningOffsets widening_offsets(BlueprintKind k, int64_t d_model, int64_t hidden,
                                 int64_t out_width) {
    const int64_t C = d_model, H = hidden, O = out_width > 0 ? out_width : d_model;
    WideningOffsets o;
    switch (k) {
        case BlueprintKind::kMlpUnits:
            o.in_b = H * C;
            o.out_w = H * C + H;
            o.floats = H * C + H + O * H;
            break;
        case BlueprintKind::kAttentionHead:
            o.in_b = 3 * H * C;
            o.out_w = 3 * H * C + 3 * H;
            o.floats = 4 * H * C + 3 * H;
            break;
        case BlueprintKind::kLora:
            o.in_b = H * C;
            o.out_w = H * C;
            o.floats = H * C + 3 * C * H;
            break;
        default:
            ESPER_REQUIRE(false, "not a widening kind: ", int(k));
    }
    return o;
}

int64_t blueprint_params(BlueprintKind k, int64_t w, int64_t max_width, const BlueprintsConfig& cfg,
                         int64_t in_width) {
    return kernels::blueprint_param_count(k, w, blueprint_hidden(k, max_width, cfg), in_width);
}

BlueprintArenas::BlueprintArenas(int64_t max_width, const BlueprintsConfig& cfg, int64_t in_width)
    : max_width_(static_cast<int32_t>(max_width)), in_width_(static_cast<int32_t>(in_width)) {
    ESPER_REQUIRE(in_width >= 0, "in_width=", in_width);
    for (int i = 0; i < kNumBlueprintKinds; ++i) {
        const auto k = static_cast<BlueprintKind>(i);
        Arena& a = arenas_[i];
        a.serves = !blueprint_is_widening(k);
        if (!a.serves) continue;
        a.capacity = static_cast<int32_t>(blueprint_capacity(k, cfg));
        a.hidden = static_cast<int32_t>(blueprint_hidden(k, max_width, cfg));
        a.stride =
            static_cast<int32_t>(kernels::blueprint_slot_floats(k, max_width, a.hidden, in_width));
        const auto n = static_cast<size_t>(a.capacity) * static_cast<size_t>(a.stride);
        a.params.assign(n, 0.0f);
        a.grads.assign(n, 0.0f);
        a.m.assign(n, 0.0f);
        a.v.assign(n, 0.0f);
        a.used.assign(static_cast<size_t>(a.capacity), 0);
    }
}

BlueprintArenas BlueprintArenas::widening(int64_t d_model, int64_t head_dim,
                                          const BlueprintsConfig& cfg, int64_t out_width) {
    ESPER_REQUIRE(d_model > 0 && (head_dim > 0 || out_width > 0), "d_model=", d_model,
                  " head_dim=", head_dim, " out_width=", out_width);
    const bool mlp_host = head_dim == 0;  // only mlp_units: no heads, no qkv to adapt
    BlueprintArenas out;
    // max_width_ is what mlp_units write (O), in_width_ what they read (C).
    out.max_width_ = static_cast<int32_t>(out_width > 0 ? out_width : d_model);
    out.in_width_ = static_cast<int32_t>(d_model);
    for (int i = 0; i < kNumBlueprintKinds; ++i) {
        const auto k = static_cast<BlueprintKind>(i);
        Arena& a = out.arenas_[i];
        a.serves = blueprint_is_widening(k) && (!mlp_host || k == BlueprintKind::kMlpUnits);
        if (!a.serves) continue;
        a.capacity = static_cast<int32_t>(blueprint_capacity(k, cfg));
        a.hidden = static_cast<int32_t>(
            k == BlueprintKind::kAttentionHead ? head_dim : blueprint_hidden(k, d_model, cfg));
        a.stride =
            static_cast<int32_t>(widening_offsets(k, d_model, a.hidden, out.max_width_).floats);
        const auto n = static_cast<size_t>(a.capacity) * static_cast<size_t>(a.stride);
        a.params.assign(n, 0.0f);
        a.grads.assign(n, 0.0f);
        a.m.assign(n, 0.0f);
        a.v.assign(n, 0.0f);
        a.used.assign(static_cast<size_t>(a.capacity), 0);
    }
    return out;
}

int64_t BlueprintArenas::params_for(BlueprintKind k, int64_t w) const {
    const Arena& a = arena(k);
    switch (k) {
        case BlueprintKind::kMlpUnits:
        case BlueprintKind::kAttentionHead:
            return kernels::blueprint_param_count(k, max_width_, a.hidden, in_width_);
        case BlueprintKind::kLora:
            return kernels::blueprint_param_count(k, 3 * int64_t(max_width_), a.hidden, in_width_);
        default:
            return kernels::blueprint_param_count(k, w, a.hidden, in_width_);
    }
}

int32_t BlueprintArenas::free_slots(BlueprintKind k) const {
    const Arena& a = arena(k);
    return static_cast<int32_t>(std::count(a.used.begin(), a.used.end(), uint8_t{0}));
}

bool BlueprintArenas::slot_in_use(BlueprintKind k, int32_t slot) const {
    const Arena& a = arena(k);
    ESPER_REQUIRE(slot >= 0 && slot < a.capacity, "slot=", slot);
    return a.used[slot] != 0;
}

std::optional<int32_t> BlueprintArenas::acquire(BlueprintKind k) {
    Arena& a = arena(k);
    for (int32_t s = 0; s < a.capacity; ++s) {
        if (!a.used[s]) {
            a.used[s] = 1;
            return s;
        }
    }
    return std::nullopt;
}

void BlueprintArenas::release(BlueprintKind k, int32_t slot) {
    Arena& a = arena(k);
    ESPER_REQUIRE(slot >= 0 && slot < a.capacity && a.used[slot], "slot=", slot);
    a.used[slot] = 0;
    std::ranges::fill(grads(k, slot), 0.0f);
    std::ranges::fill(opt_m(k, slot), 0.0f);
    std::ranges::fill(opt_v(k, slot), 0.0f);
}

void BlueprintArenas::set_in_use(BlueprintKind k, int32_t slot, bool in_use) {
    Arena& a = arena(k);
    ESPER_REQUIRE(slot >= 0 && slot < a.capacity, "slot=", slot);
    a.used[slot] = in_use ? 1 : 0;
}

void BlueprintArenas::init_slot(BlueprintKind k, int32_t slot, int32_t width, uint64_t rng_seed) {
    ESPER_REQUIRE(width > 0 && width <= max_width_, "width=", width, " max_width=", max_width_);
    std::span<float> p = params(k, slot);
    std::ranges::fill(p, 0.0f);
    std::ranges::fill(grads(k, slot), 0.0f);
    std::ranges::fill(opt_m(k, slot), 0.0f);
    std::ranges::fill(opt_v(k, slot), 0.0f);
    if (k == BlueprintKind::kScaleShift) return;  // s = 0, b = 0: r ≡ 0
    const int64_t hidden = arena(k).hidden;
    uint64_t state = rng_seed;
    auto uniform = [&state](double bound) {
        const double u = static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-53;
        return static_cast<float>((2.0 * u - 1.0) * bound);
    };
    if (blueprint_is_widening(k)) {
        // The input side U(±1/√C) like a fresh Linear; the output side stays zero.
        const WideningOffsets o = widening_offsets(k, in_width_, hidden, max_width_);
        const double bound = 1.0 / std::sqrt(static_cast<double>(in_width_));
        const int64_t rows = k == BlueprintKind::kAttentionHead ? 3 * hidden : hidden;
        for (int64_t i = 0; i < rows * in_width_; ++i) p[size_t(o.in_w + i)] = uniform(bound);
        return;
    }
    const auto off = kernels::mlp_slot_offsets(max_width_, hidden, in_width_);
    // Kaiming-uniform over the fan-in of V (the chunk width, or the layer input's width):
    // U(−√(6/n), √(6/n)).
    const int64_t fan_in = in_width_ > 0 ? in_width_ : width;
    const int64_t v_stride = in_width_ > 0 ? in_width_ : max_width_;
    const double bound = std::sqrt(6.0 / static_cast<double>(fan_in));
    for (int64_t j = 0; j < hidden; ++j)
        for (int64_t i = 0; i < fan_in; ++i) p[off.v + j * v_stride + i] = uniform(bound);
}

std::span<float> BlueprintArenas::params(BlueprintKind k, int32_t slot) {
    Arena& a = arena(k);
    ESPER_REQUIRE(slot >= 0 && slot < a.capacity, "slot=", slot);
    return {a.params.data() + static_cast<size_t>(slot) * a.stride, static_cast<size_t>(a.stride)};
}
std::span<const float> BlueprintArenas::params(BlueprintKind k, int32_t slot) const {
    const Arena& a = arena(k);
    ESPER_REQUIRE(slot >= 0 && slot < a.capacity, "slot=", slot);
    return {a.params.data() + static_cast<size_t>(slot) * a.stride, static_cast<size_t>(a.stride)};
}
std::span<float> BlueprintArenas::grads(BlueprintKind k, int32_t slot) {
    Arena& a = arena(k);
    ESPER_REQUIRE(slot >= 0 && slot < a.capacity, "slot=", slot);
    return {a.grads.data() + static_cast<size_t>(slot) * a.stride, static_cast<size_t>(a.stride)};
}
std::span<float> BlueprintArenas::opt_m(BlueprintKind k, int32_t slot) {
    Arena& a = arena(k);
    ESPER_REQUIRE(slot >= 0 && slot < a.capacity, "slot=", slot);
    return {a.m.data() + static_cast<size_t>(slot) * a.stride, static_cast<size_t>(a.stride)};
}
std::span<float> BlueprintArenas::opt_v(BlueprintKind k, int32_t slot) {
    Arena& a = arena(k);
    ESPER_REQUIRE(slot >= 0 && slot < a.capacity, "slot=", slot);
    return {a.v.data() + static_cast<size_t>(slot) * a.stride, static_cast<size_t>(a.stride)};
}
std::span<float> BlueprintArenas::all_params(BlueprintKind k) { return arena(k).params; }
std::span<float> BlueprintArenas::all_grads(BlueprintKind k) { return arena(k).grads; }
std::span<float> BlueprintArenas::all_opt_m(BlueprintKind k) { return arena(k).m; }
std::span<float> BlueprintArenas::all_opt_v(BlueprintKind k) { return arena(k).v; }
std::span<const float> BlueprintArenas::all_params(BlueprintKind k) const {
    return arena(k).params;
}
std::span<const float> BlueprintArenas::all_opt_m(BlueprintKind k) const { return arena(k).m; }
std::span<const float> BlueprintArenas::all_opt_v(BlueprintKind k) const { return arena(k).v; }

void BlueprintArenas::zero_grads() {
    for (Arena& a : arenas_) std::ranges::fill(a.grads, 0.0f);
}

double BlueprintArenas::param_norm(BlueprintKind k, int32_t slot) const {
    double s = 0.0;
    for (float v : params(k, slot)) s += static_cast<double>(v) * v;
    return std::sqrt(s);
}

kernels::BlueprintArena BlueprintArenas::view(BlueprintKind k) {
    Arena& a = arena(k);
    kernels::BlueprintArena v;
    v.params = a.params.data();
    v.grads = a.grads.data();
    v.capacity = a.capacity;
    v.stride = a.stride;
    v.hidden = a.hidden;
    v.max_width = max_width_;
    v.in_width = in_width_;
    return v;
}

namespace {

// Chan's merge of nb values (their mean, m2 and dead count) into seed `seed`'s accumulators.
void merge_summary(kernels::SeedTelemetryAccum* t, int32_t seed, double nb, double mean, double m2,
                   double dead) {
    double& na = t->count[seed];
    const double total = na + nb, delta = mean - t->mean[seed];
    t->mean[seed] += delta * (nb / total);
    t->m2[seed] = std::max(0.0, t->m2[seed] + m2 + delta * delta * (na * nb / total));
    na = total;
    t->dead[seed] += dead;
}

}  // namespace

void merge_activation_stats(kernels::SeedTelemetryAccum* t, int32_t seed, const float* v,
                            int64_t n) {
    if (n <= 0) return;
    double mean = 0.0, m2 = 0.0, dead = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        const double d = v[i] - mean;
        mean += d / double(i + 1);
        m2 += d * (v[i] - mean);
        dead += std::fabs(v[i]) < kernels::kDeadThreshold ? 1.0 : 0.0;
    }
    merge_summary(t, seed, double(n), mean, m2, dead);
}

void merge_activation_summary(kernels::SeedTelemetryAccum* t, int32_t seed, double n, double mean,
                              double m2, double dead) {
    if (n <= 0.0) return;
    merge_summary(t, seed, n, mean, m2, dead);
}

void merge_activation_sums(kernels::SeedTelemetryAccum* t, int32_t seed, double n, double sum,
                           double sum_sq, double dead) {
    if (n <= 0.0) return;
    const double mean = sum / n;
    merge_summary(t, seed, n, mean, std::max(0.0, sum_sq - sum * mean), dead);
}

}  // namespace esper::kasmina
