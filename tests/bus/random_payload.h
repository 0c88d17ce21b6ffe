// Test helper: fills any capnp struct with random, non-zero values through the dynamic API, so
// every payload type (including ones added later) is covered without per-type code.
#pragma once

#include <capnp/dynamic.h>
#include <capnp/schema.h>

#include <random>
#include <string>

namespace esper::bus::testing {

inline std::string random_text(std::mt19937_64& rng) {
    static const char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789 ._/\"\\\n";
    size_t n = 1 + rng() % 12;
    std::string s;
    for (size_t i = 0; i < n; ++i) s.push_back(kChars[rng() % (sizeof(kChars) - 1)]);
    return s;
}

inline int64_t random_nonzero(std::mt19937_64& rng, int64_t lo, int64_t hi) {
    for (;;) {
        int64_t v = lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
        if (v != 0) return v;
    }
}

void fill_random(capnp::DynamicStruct::Builder b, std::mt19937_64& rng, int depth);

inline void set_random_element(capnp::DynamicList::Builder l, unsigned i, capnp::Type t,
                               std::mt19937_64& rng, int depth);

inline void fill_field(capnp::DynamicStruct::Builder b, capnp::StructSchema::Field f,
                       std::mt19937_64& rng, int depth) {
    using T = capnp::schema::Type;
    auto t = f.getType();
    std::uniform_real_distribution<double> real(0.001, 1000.0);
    switch (t.which()) {
        case T::VOID:
            b.set(f, capnp::VOID);
            break;
        case T::BOOL:
            b.set(f, true);
            break;
        case T::INT8:
            b.set(f, random_nonzero(rng, -128, 127));
            break;
        case T::INT16:
            b.set(f, random_nonzero(rng, -32768, 32767));
            break;
        case T::INT32:
            b.set(f, random_nonzero(rng, -2000000000, 2000000000));
            break;
        case T::INT64:
            b.set(f, static_cast<int64_t>(rng() | 1));
            break;
        case T::UINT8:
            b.set(f, static_cast<uint64_t>(random_nonzero(rng, 1, 255)));
            break;
        case T::UINT16:
            b.set(f, static_cast<uint64_t>(random_nonzero(rng, 1, 65535)));
            break;
        case T::UINT32:
            b.set(f, static_cast<uint64_t>(rng() % 4000000000u + 1));
            break;
        case T::UINT64:
            b.set(f, static_cast<uint64_t>(rng() | 1));
            break;
        case T::FLOAT32:
            b.set(f, static_cast<float>(real(rng) * (rng() & 1 ? 1 : -1)));
            break;
        case T::FLOAT64:
            b.set(f, real(rng));
            break;
        case T::TEXT: {
            std::string s = random_text(rng);
            b.set(f, capnp::Text::Reader(s.c_str(), s.size()));
            break;
        }
        case T::ENUM: {
            auto e = t.asEnum().getEnumerants();
            b.set(f, capnp::DynamicEnum(e[static_cast<unsigned>(rng() % e.size())]));
            break;
        }
        case T::STRUCT:
            fill_random(b.init(f).as<capnp::DynamicStruct>(), rng, depth + 1);
            break;
        case T::LIST: {
            unsigned n = depth < 2 ? static_cast<unsigned>(1 + rng() % 4) : 0;
            auto l = b.init(f, n).as<capnp::DynamicList>();
            for (unsigned i = 0; i < n; ++i)
                set_random_element(l, i, t.asList().getElementType(), rng, depth);
            break;
        }
        default:
            break;
    }
}

inline void set_random_element(capnp::DynamicList::Builder l, unsigned i, capnp::Type t,
                               std::mt19937_64& rng, int depth) {
    using T = capnp::schema::Type;
    switch (t.which()) {
        case T::STRUCT:
            fill_random(l[i].as<capnp::DynamicStruct>(), rng, depth + 1);
            break;
        case T::UINT32:
            l.set(i, static_cast<uint64_t>(rng() % 4000000000u + 1));
            break;
        case T::TEXT: {
            std::string s = random_text(rng);
            l.set(i, capnp::Text::Reader(s.c_str(), s.size()));
            break;
        }
        default:
            break;  // no other element types in our schemas yet
    }
}

inline void fill_random(capnp::DynamicStruct::Builder b, std::mt19937_64& rng, int depth) {
    auto s = b.getSchema();
    for (auto f : s.getNonUnionFields()) fill_field(b, f, rng, depth);
    auto u = s.getUnionFields();
    if (u.size() > 0) fill_field(b, u[static_cast<unsigned>(rng() % u.size())], rng, depth);
}

}  // namespace esper::bus::testing
