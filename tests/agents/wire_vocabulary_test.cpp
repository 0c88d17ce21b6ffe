// The wire enums and the one vocabulary agree: same count, same order, names that differ only in
// casing (capnp "fineTuning" vs "FINE_TUNING"), and the conversions reject what the vocabulary
// does not know. The per-value static_asserts live in agents/wire_vocabulary.h; the count of
// wire enumerants is only known at run time, so a new one without a vocabulary value fails here.
#include "agents/wire_vocabulary.h"

#include <capnp/schema.h>

#include <catch2/catch.hpp>
#include <cctype>
#include <string>

using namespace esper;
using namespace esper::agents;

namespace {

std::string fold(std::string_view s) {
    std::string out;
    for (char c : s)
        if (c != '_') out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

template <typename Wire, typename Vocabulary, size_t N>
void check_enum(const std::array<std::string_view, N>& names) {
    auto enumerants = capnp::Schema::from<Wire>().getEnumerants();
    REQUIRE(enumerants.size() == N);
    for (unsigned i = 0; i < N; ++i) {
        INFO("enumerant " << i << " " << enumerants[i].getProto().getName().cStr());
        CHECK(enumerants[i].getOrdinal() == i);
        CHECK(fold(enumerants[i].getProto().getName().cStr()) == fold(names[i]));
        const auto v = static_cast<Vocabulary>(i);
        CHECK(static_cast<unsigned>(to_wire(v)) == i);
        CHECK(from_wire(to_wire(v)) == v);
    }
    // One past the end is a value from a newer (or broken) peer: refused, never cast.
    CHECK_FALSE(from_wire(static_cast<Wire>(N)).has_value());
    CHECK_FALSE(from_wire(static_cast<Wire>(0xffff)).has_value());
}

}  // namespace

TEST_CASE("wire stages, kinds, strategies and origins match the vocabulary one to one",
          "[agents][vocabulary]") {
    check_enum<schema::SeedStage, SeedStage>(kSeedStageNames);
    check_enum<schema::BlueprintKind, BlueprintKind>(kBlueprintKindNames);
    check_enum<schema::GraftingStrategy, GraftingStrategy>(kGraftingStrategyNames);
    check_enum<schema::TransitionOrigin, TransitionOrigin>(kTransitionOriginNames);
}
