// CPU fast path of layer-input ("widening") blueprints: residual_mlp and lowrank seeds whose
// arena has in_width > 0 read the host layer's whole input row (kernels/seed_layer.h). The math is
// kernels/seed_{forward,backward}_reference.cpp's, done as float GEMMs through BLAS, because the
// scalar double-precision reference is far too slow at a 784-wide input (minutes instead of
// seconds for the 10-epoch quality run); tests/kasmina/widening_test.cpp checks the two agree.
// The reference still handles every other seed of the layer: mask() hides
// the layer-input seeds from it (slot −1: identity, activation telemetry still merged).
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/seed_layer.h"

namespace esper::kasmina {

class WideningPath {
public:
    // `v` with the seeds this path handles masked out (pointers into this object, valid until the
    // next call). Identity when the layer has no layer-input arena.
    kernels::SeedLayerView mask(const kernels::SeedLayerView& v);
    // y[:, chunk] += a_eff · r(input) for the layer-input seeds; caches what backward needs.
    void forward(const kernels::SeedLayerView& v, float* y);
    // After forward on the same batch: blueprint grads (+=), d_input (+=, may be null) and the
    // contribution telemetry (`tel` may be null) of the layer-input seeds.
    void backward(const kernels::SeedLayerView& v, const float* dy, float* d_input,
                  kernels::SeedTelemetryAccum* tel);

private:
    struct Cache {
        int32_t seed = -1;
        std::vector<float> act;  // [B, H] act(V·x + b1)
        std::vector<float> r;    // [B, w] U·act + b2
    };
    static bool handled(const kernels::SeedLayerView& v, int32_t s);

    std::vector<int32_t> masked_slot_;
    std::vector<Cache> cache_;
    std::vector<float> da_;
};

}  // namespace esper::kasmina
