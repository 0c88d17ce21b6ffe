// Tool JSON of `esper tap`/`esper pub` (agents/tool_json.h): every payload type survives
// envelope -> JSON -> payload, 64-bit integers are exact JSON numbers, enums are names (the
// vocabulary's spelling for stages, kinds, strategies and origins), misfits name the field.
#include "agents/tool_json.h"

#include <capnp/dynamic.h>
#include <capnp/message.h>
#include <capnp/schema.h>
#include <kj/string.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>

#include "bus/envelope.h"
#include "core/error.h"
#include "tests/bus/random_payload.h"

using namespace esper;

TEST_CASE("every payload type survives JSON and back", "[agents][json]") {
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
        // An unmeasured value is null in JSON, so the first trip drops what a false flag hid;
        // from then on JSON -> payload -> JSON is exact.
        std::string json = agents::payload_to_json(env.asReader());
        capnp::MallocMessageBuilder b, c;
        auto env2 = b.initRoot<schema::Envelope>();
        auto env3 = c.initRoot<schema::Envelope>();
        INFO(name << " " << json);
        agents::payload_from_json(name, json, env2.getPayload());
        const std::string json2 = agents::payload_to_json(env2.asReader());
        CHECK(json2 == json);
        agents::payload_from_json(name, json2, env3.getPayload());
        CHECK(std::string(kj::str(env3.getPayload().asReader()).cStr()) ==
              std::string(kj::str(env2.getPayload().asReader()).cStr()));
    }
}

TEST_CASE("tap JSON prints 64-bit integers exactly and enums in the vocabulary's spelling",
          "[agents][json]") {
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
    std::string line = agents::envelope_to_json("telemetry.seeds.r1.0", env.asReader());
    CHECK(line.find("\"seq\":12345678901234,") != std::string::npos);
    CHECK(line.find("\"sent_at_ns\":-9223372036854775807,") != std::string::npos);
    CHECK(line.find("\"stage\":\"FINE_TUNING\"") != std::string::npos);
    CHECK(line.find("\"alpha\":0.1,") != std::string::npos);
    CHECK(line.find("\"type\":\"seedTelemetry\"") != std::string::npos);

    env.getPayload().initRunStatus().setHostParams(9007199254740993ull);
    line = agents::envelope_to_json("telemetry.run.r1", env.asReader());
    CHECK(line.find("\"hostParams\":9007199254740993") != std::string::npos);
}

TEST_CASE("pub JSON that does not fit the type is refused with the field named", "[agents][json]") {
    capnp::MallocMessageBuilder m;
    auto payload = m.initRoot<schema::Envelope>().getPayload();
    auto refused = [&](const char* type, const char* json) -> std::string {
        try {
            agents::payload_from_json(type, json, payload);
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

    agents::payload_from_json("Annotation", R"({"kind":"note","text":"lr drop","step":12})",
                              payload);
    CHECK(payload.getAnnotation().getStep() == 12);
    agents::payload_from_json("runStatus", R"({"step":"18446744073709551615"})", payload);
    CHECK(payload.getRunStatus().getStep() == 18446744073709551615ull);
}

TEST_CASE("tool JSON spells kinds, strategies and origins the vocabulary's way, both ways",
          "[agents][json]") {
    capnp::MallocMessageBuilder m;
    auto env = m.initRoot<schema::Envelope>();
    auto g = env.getPayload().initCommand().initGerminate();
    g.setBlueprintKind(schema::BlueprintKind::SCALE_SHIFT);
    g.setStrategy(schema::GraftingStrategy::DRIFT_CONTROLLED);
    std::string json = agents::payload_to_json(env.asReader());
    CHECK_THAT(json, Catch::Contains(R"("blueprintKind":"scale_shift")") &&
                         Catch::Contains(R"("strategy":"drift_controlled")"));

    auto t = env.getPayload().initLifecycleTransition();
    t.setFrom(schema::SeedStage::EVALUATING);
    t.setTo(schema::SeedStage::ROLLED_BACK);
    t.setOrigin(schema::TransitionOrigin::CONTROLLER);
    json = agents::payload_to_json(env.asReader());
    CHECK_THAT(json, Catch::Contains(R"("from":"EVALUATING","to":"ROLLED_BACK")") &&
                         Catch::Contains(R"("origin":"controller")"));

    // esper pub takes the vocabulary's spelling (any case) and capnp's, for compatibility.
    capnp::MallocMessageBuilder b;
    auto payload = b.initRoot<schema::Envelope>().getPayload();
    for (const char* spelling :
         {R"({"germinate":{"blueprintKind":"lowrank","strategy":"DRIFT_CONTROLLED"}})",
          R"({"germinate":{"blueprintKind":"lowrank","strategy":"driftControlled"}})"}) {
        INFO(spelling);
        agents::payload_from_json("command", spelling, payload);
        CHECK(payload.getCommand().getGerminate().getStrategy() ==
              schema::GraftingStrategy::DRIFT_CONTROLLED);
        CHECK(payload.getCommand().getGerminate().getBlueprintKind() ==
              schema::BlueprintKind::LOWRANK);
    }
    for (const char* stage : {"FINE_TUNING", "fine_tuning", "fineTuning"}) {
        agents::payload_from_json(
            "command", std::string(R"({"transition":{"toStage":")") + stage + "\"}}", payload);
        CHECK(payload.getCommand().getTransition().getToStage() == schema::SeedStage::FINE_TUNING);
    }
    // A misspelt stage lists the vocabulary's names.
    try {
        agents::payload_from_json("command", R"({"transition":{"toStage":"FINETUNE"}})", payload);
        FAIL("accepted FINETUNE");
    } catch (const Error& e) {
        CHECK_THAT(e.message(), Catch::Contains("command.transition.toStage") &&
                                    Catch::Contains("FINE_TUNING, FOSSILIZED"));
    }
}

TEST_CASE("tool JSON keeps the line's fields, escapes text, and survives odd values",
          "[agents][json]") {
    capnp::MallocMessageBuilder m;
    auto env = m.initRoot<schema::Envelope>();
    auto a = env.getPayload().initAnnotation();
    a.setKind("note");
    a.setText("quote \" backslash \\ newline \n tab \t bell \x07 arrow →");
    bus::stamp_envelope(env, "pub", "r1", 7, "corr-1");
    const std::string line = agents::envelope_to_json("events.annotations.r1", env.asReader());
    CHECK(line.find('\n') == std::string::npos);
    CHECK(line.rfind(R"({"schema":1,"time":")", 0) == 0);
    CHECK(line.find(R"("topic":"events.annotations.r1","type":"annotation","sender":"pub",)"
                    R"("seq":7,"sent_at_ns":)") != std::string::npos);
    CHECK(line.find(R"("run_id":"r1","correlation_id":"corr-1","payload":{)") != std::string::npos);
    const auto parsed = nlohmann::json::parse(line);
    CHECK(parsed["payload"]["text"] == a.asReader().getText().cStr());

    // Non-finite floats are strings (JSON has no NaN) and read back; an enum value from a newer
    // schema prints as its number instead of a guessed name.
    auto seeds = env.getPayload().initSeedTelemetry().initSeeds(1);
    seeds[0].setActivationMeasured(true);
    seeds[0].setActMean(std::numeric_limits<float>::quiet_NaN());
    seeds[0].setActVar(std::numeric_limits<float>::infinity());
    seeds[0].setStage(static_cast<schema::SeedStage>(42));
    const std::string json = agents::payload_to_json(env.asReader());
    CHECK_THAT(json, Catch::Contains(R"("stage":42)") && Catch::Contains(R"("actMean":"NaN")") &&
                         Catch::Contains(R"("actVar":"Infinity")"));
    capnp::MallocMessageBuilder b;
    auto payload = b.initRoot<schema::Envelope>().getPayload();
    agents::payload_from_json("seedTelemetry",
                              R"({"seeds":[{"actMean":"NaN","actVar":"Infinity"}]})", payload);
    CHECK(std::isnan(payload.getSeedTelemetry().getSeeds()[0].getActMean()));
    CHECK(std::isinf(payload.getSeedTelemetry().getSeeds()[0].getActVar()));
}

TEST_CASE("an unmeasured value is null in tool JSON, never 0 next to a flag", "[agents][json]") {
    capnp::MallocMessageBuilder m;
    auto env = m.initRoot<schema::Envelope>();
    auto status = env.getPayload().initRunStatus();
    status.setStep(40);
    status.setLoss(0.5f);
    status.setLossMeasured(true);
    status.setTestAccuracy(0.0f);  // no evaluation yet: testMeasured stays false
    bus::stamp_envelope(env, "kasmina/0", "r1", 1, "");
    env.setSentAtNs(1733455292123456789);
    const auto line = nlohmann::json::parse(agents::envelope_to_json("telemetry.run.r1", env));
    CHECK(line["schema"] == agents::kTapSchemaVersion);
    CHECK(line["time"] == "2024-12-06T03:21:32.123Z");
    const auto& p = line["payload"];
    CHECK(p["loss"] == 0.5);
    CHECK(p["testAccuracy"].is_null());
    CHECK(p["testLoss"].is_null());
    CHECK(p["accuracy"].is_null());
    CHECK_FALSE(p.contains("lossMeasured"));
    CHECK_FALSE(p.contains("testMeasured"));

    // esper pub: a number for a governed field sets its flag; null leaves it unmeasured.
    capnp::MallocMessageBuilder b;
    auto payload = b.initRoot<schema::Envelope>().getPayload();
    agents::payload_from_json("runStatus", R"({"step":7,"testAccuracy":0.8,"loss":null})", payload);
    CHECK(payload.getRunStatus().getTestMeasured());
    CHECK(payload.getRunStatus().getTestAccuracy() == Approx(0.8));
    CHECK_FALSE(payload.getRunStatus().getLossMeasured());
    agents::payload_from_json("seedTelemetry", R"({"seeds":[{"seed":1,"contribution":-0.5}]})",
                              payload);
    CHECK(payload.getSeedTelemetry().getSeeds()[0].getContributionMeasured());
    CHECK_FALSE(payload.getSeedTelemetry().getSeeds()[0].getGradientMeasured());
}
