// The Cap'n Proto seed-state image (what checkpoints store and rank 0 broadcasts): a round trip
// restores a manager that continues identically; truncated, padded, garbage or out-of-range
// images are refused with an integrity error naming the image, and no flipped byte crashes the
// decoder or gets past it as anything but an integrity error or a value.
#include "kasmina/io/state_codec.h"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "kasmina/io/config.h"
#include "schemas/checkpoint.capnp.h"

using namespace esper;
using namespace esper::kasmina;

namespace {

SeedManagerConfig small_config() {
    Config c;
    c.model.seeds_per_layer = 4;
    c.lifecycle.training_steps = 2;
    c.lifecycle.grafting.strategy = GraftingStrategy::kAdaptive;
    c.lifecycle.grafting.ramp_steps = 4;
    return seed_manager_config(c);
}

Command germinate(int32_t layer, int32_t seed, BlueprintKind kind) {
    Command c;
    c.origin = TransitionOrigin::kController;
    c.body = GerminateCommand{SeedRef{layer, seed}, kind, std::nullopt};
    return c;
}

StepMetrics metrics(const SeedManager& m, int64_t step) {
    StepMetrics sm;
    sm.loss = 2.0 / double(step + 1);
    for (int32_t l = 0; l < m.num_layers(); ++l) {
        auto& layer = sm.seeds.emplace_back(size_t(m.table(l).num_seeds()));
        for (SeedMetrics& s : layer) {
            s.gradient_health = 0.9;
            s.contribution = 0.25;  // stability and improvement stay unmeasured
        }
    }
    return sm;
}

// A manager with seeds in several stages, measured metrics and a loss history.
SeedManager busy_manager() {
    SeedManager m(small_config(), {32, 20});
    REQUIRE(m.apply(germinate(0, 0, BlueprintKind::kResidualMlp)).applied());
    REQUIRE(m.apply(germinate(1, 2, BlueprintKind::kLowrank)).applied());
    for (int64_t step = 0; step < 5; ++step) m.on_step_end(step, metrics(m, step));
    REQUIRE(m.apply(germinate(0, 3, BlueprintKind::kScaleShift)).applied());
    return m;
}

ErrorKind refusal(std::span<const uint8_t> bytes, std::string* msg = nullptr) {
    try {
        decode_seed_state(bytes, "test image");
    } catch (const Error& e) {
        if (msg) *msg = e.what();
        return e.kind();
    }
    FAIL("image accepted");
    return ErrorKind::kFailed;
}

}  // namespace

TEST_CASE("a seed-state image round-trips and restores a manager that continues identically",
          "[kasmina][checkpoint][seed_manager]") {
    SeedManager a = busy_manager();
    const SeedManagerSnapshot snap = a.snapshot();
    REQUIRE(snap.loss_ema.has_value());
    REQUIRE(snap.layers[0].measured[0].gradient_health.has_value());
    REQUIRE_FALSE(snap.layers[0].measured[0].stability.has_value());
    const std::vector<uint8_t> image = encode_seed_state(snap);
    CHECK(image.size() % 8 == 0);
    CHECK(decode_seed_state(image, "image") == snap);

    SeedManager b(small_config(), {32, 20});
    b.restore(decode_seed_state(image, "image"));
    CHECK(b.digest() == a.digest());
    for (int64_t step = 5; step < 20; ++step) {
        const StepMetrics sm = metrics(a, step);
        a.on_step_end(step, sm);
        b.on_step_end(step, sm);
        REQUIRE(b.snapshot() == a.snapshot());
    }

    SECTION("a fresh manager's state (nothing measured, no loss yet) round-trips too") {
        const SeedManagerSnapshot empty = SeedManager(small_config(), {8}).snapshot();
        REQUIRE_FALSE(empty.loss_ema.has_value());
        CHECK(decode_seed_state(encode_seed_state(empty), "image") == empty);
    }
}

TEST_CASE("truncated, padded and garbage seed-state images are refused naming the image",
          "[kasmina][checkpoint]") {
    const std::vector<uint8_t> image = encode_seed_state(busy_manager().snapshot());
    std::string msg;
    auto cut = image;
    cut.resize(cut.size() - 8);
    CHECK(refusal(cut, &msg) == ErrorKind::kIntegrity);
    CHECK_THAT(msg, Catch::Contains("test image"));
    cut.resize(cut.size() - 3);  // not even whole words
    CHECK(refusal(cut, &msg) == ErrorKind::kIntegrity);
    CHECK_THAT(msg, Catch::Contains("truncated"));
    auto padded = image;
    padded.resize(padded.size() + 8, 0);
    CHECK(refusal(padded, &msg) == ErrorKind::kIntegrity);
    CHECK_THAT(msg, Catch::Contains("trailing bytes"));
    CHECK(refusal(std::vector<uint8_t>(64, 0xff), &msg) == ErrorKind::kIntegrity);
    CHECK_THAT(msg, Catch::Contains("malformed"));
    CHECK(refusal({}) == ErrorKind::kIntegrity);
}

TEST_CASE("a seed-state image with an out-of-range stage, kind or strategy is refused",
          "[kasmina][checkpoint]") {
    const SeedManagerSnapshot snap = busy_manager().snapshot();
    auto image_with = [&](auto edit) {
        capnp::MallocMessageBuilder b;
        const std::vector<uint8_t> image = encode_seed_state(snap);
        kj::Array<capnp::word> words = kj::heapArray<capnp::word>(image.size() / 8);
        std::memcpy(words.begin(), image.data(), image.size());
        capnp::initMessageBuilderFromFlatArrayCopy(words, b);
        edit(b.getRoot<schema::SeedState>().getLayers()[0].getSeeds()[0].getRow());
        const kj::Array<capnp::word> out = capnp::messageToFlatArray(b);
        return std::vector<uint8_t>(out.asBytes().begin(), out.asBytes().end());
    };
    std::string msg;
    CHECK(refusal(image_with([](schema::SeedRow::Builder r) {
                      r.setStage(static_cast<schema::SeedStage>(kNumSeedStages));
                  }),
                  &msg) == ErrorKind::kIntegrity);
    CHECK_THAT(msg, Catch::Contains("seed stage 11 out of range"));
    CHECK(refusal(image_with([](schema::SeedRow::Builder r) {
                      r.setKind(static_cast<schema::BlueprintKind>(7));
                  }),
                  &msg) == ErrorKind::kIntegrity);
    CHECK_THAT(msg, Catch::Contains("blueprint kind 7"));
    CHECK(refusal(image_with([](schema::SeedRow::Builder r) {
                      r.getGraft().setAdaptiveChoice(static_cast<schema::GraftingStrategy>(99));
                  }),
                  &msg) == ErrorKind::kIntegrity);
    CHECK_THAT(msg, Catch::Contains("grafting strategy 99"));
}

TEST_CASE("no flipped byte makes the seed-state decoder fail other than with an integrity error",
          "[kasmina][checkpoint]") {
    const std::vector<uint8_t> image = encode_seed_state(busy_manager().snapshot());
    int refused = 0;
    for (size_t at = 0; at < image.size(); ++at) {
        for (uint8_t bit : {uint8_t(0x01), uint8_t(0x80)}) {
            auto bad = image;
            bad[at] ^= bit;
            try {
                decode_seed_state(bad, "image");  // a value; restore() checks its shape
            } catch (const Error& e) {
                INFO("byte " << at << ": " << e.what());
                CHECK(e.kind() == ErrorKind::kIntegrity);
                ++refused;
            }
        }
    }
    CHECK(refused > 0);
}
