// JSON layer of `esper tap`/`esper pub`: every payload type survives envelope -> JSON ->
// payload, 64-bit integers are exact JSON numbers, enums are names, misfits name the field.
#include <capnp/dynamic.h>
#include <capnp/message.h>
#include <capnp/schema.h>
#include <kj/string.h>

#include <catch2/catch.hpp>
#include <random>

#include "bus/envelope.h"
#include "bus/json.h"
#include "core/error.h"
#include "tests/bus/random_payload.h"

using namespace esper;

TEST_CASE("every payload type survives JSON and back", "[bus][json]") {
    std::mt19937_64 rng(77);
    for (auto member : capnp::Schema::from<schema::Envelope::Payload>().getUnionFields()) {
        std::string name = member.getProto().getName().cStr();
        capnp::MallocMessageBuilder a;
        auto env = a.initRoot<schema::Envelope>();
        capnp::DynamicStruct::Builder payload = env.getPayload();
        if (member.getType().isStruct())
            bus::testing::fill_random(payload.init(member).as<capnp::DynamicStruct>(), rng, 0);
        else
            payload.set(member, capnp::VOID);
        std::string json = bus::payload_to_json(env.asReader());
        capnp::MallocMessageBuilder b;
        auto env2 = b.initRoot<schema::Envelope>();
        INFO(name << " " << json);
        bus::payload_from_json(name, json, env2.getPayload());
        CHECK(std::string(kj::str(env2.getPayload().asReader()).cStr()) ==
              std::string(kj::str(env.getPayload().asReader()).cStr()));
    }
}

TEST_CASE("tap JSON prints 64-bit integers exactly and enums as names", "[bus][json]") {
    capnp::MallocMessageBuilder m;
    auto env = m.initRoot<schema::Envelope>();
    auto status = env.getPayload().initRunStatus();
    status.setStep(18446744073709551615ull);
    status.setHostParams(9007199254740993ull);  // 2^53 + 1: not representable as a double
    auto seeds = env.getPayload().initSeedTelemetry().initSeeds(1);
    seeds[0].setStage(schema::SeedStage::FINE_TUNING);
    seeds[0].setAlpha(0.1f);
    bus::stamp_envelope(env, "kasmina/0", "r1", 12345678901234ull, "");
    env.setSentAtNs(-9223372036854775807ll);
    std::string line = bus::envelope_to_json("telemetry.seeds.r1.0", env.asReader());
    CHECK(line.find("\"seq\":12345678901234,") != std::string::npos);
    CHECK(line.find("\"sent_at_ns\":-9223372036854775807,") != std::string::npos);
    CHECK(line.find("\"stage\":\"fineTuning\"") != std::string::npos);
    CHECK(line.find("\"alpha\":0.1,") != std::string::npos);
    CHECK(line.find("\"type\":\"seedTelemetry\"") != std::string::npos);

    env.getPayload().initRunStatus().setHostParams(9007199254740993ull);
    line = bus::envelope_to_json("telemetry.run.r1", env.asReader());
    CHECK(line.find("\"hostParams\":9007199254740993") != std::string::npos);
}

TEST_CASE("pub JSON that does not fit the type is refused with the field named", "[bus][json]") {
    capnp::MallocMessageBuilder m;
    auto payload = m.initRoot<schema::Envelope>().getPayload();
    auto refused = [&](const char* type, const char* json) -> std::string {
        try {
            bus::payload_from_json(type, json, payload);
        } catch (const Error& e) {
            CHECK(e.kind() == ErrorKind::kInvalidInput);
            return e.message();
        }
        FAIL("accepted: " << json);
        return {};
    };
    CHECK_THAT(refused("annotation", R"({"kind":"x","txt":"y"})"),
               Catch::Contains("annotation.txt") && Catch::Contains("no such field"));
    CHECK_THAT(refused("runStatus", R"({"epoch":-1})"), Catch::Contains("runStatus.epoch"));
    CHECK_THAT(refused("runStatus", R"({"epoch":1.5})"), Catch::Contains("runStatus.epoch"));
    CHECK_THAT(refused("runStatus", R"({"loss":"high"})"), Catch::Contains("runStatus.loss"));
    CHECK_THAT(refused("seedTelemetry", R"({"seeds":[{"seed":1},{"stage":"grown"}]})"),
               Catch::Contains("seedTelemetry.seeds[1].stage") && Catch::Contains("grown"));
    CHECK_THAT(refused("command", R"({"cull":{"seed":1},"cancel":{"seed":2}})"),
               Catch::Contains("command.cancel") && Catch::Contains("union"));
    CHECK_THAT(refused("annotation", R"({"kind":)"), Catch::Contains("not valid JSON"));
    CHECK_THAT(refused("bogus", R"({})"), Catch::Contains("unknown type 'bogus'"));

    bus::payload_from_json("Annotation", R"({"kind":"note","text":"lr drop","step":12})", payload);
    CHECK(payload.getAnnotation().getStep() == 12);
    bus::payload_from_json("runStatus", R"({"step":"18446744073709551615"})", payload);
    CHECK(payload.getRunStatus().getStep() == 18446744073709551615ull);
}
