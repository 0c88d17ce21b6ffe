// bf16 on the host: the rounding of __float2bfloat16 (to nearest even; inf and NaN kept) for the
// CPU references, weight uploads, test inputs and benchmarks, so every side rounds the same way.
#pragma once

#include <cstdint>
#include <cstring>

namespace esper::kernels {

inline uint16_t bf16_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return uint16_t(u >> 16);  // inf / nan as is
    u += 0x7FFFu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

inline float bf16_value(uint16_t b) {
    const uint32_t u = uint32_t(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

inline float round_bf16(float f) { return bf16_value(bf16_bits(f)); }

}  // namespace esper::kernels
