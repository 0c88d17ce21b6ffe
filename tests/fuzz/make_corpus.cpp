// Writes the binary seed inputs of the fuzz corpora (tests/fuzz/corpus/<target>): encoded
// envelopes of every payload type (random fills and hand-made commands), Tamiyo intake sequences,
// `esper pub` JSON inputs and checkpoint manifests. The text corpora (YAML) are copied examples.
// Deterministic: the same build writes the same files. Usage: esper_fuzz_make_corpus DIR
#include <capnp/dynamic.h>
#include <capnp/message.h>
#include <capnp/schema.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "agents/tool_json.h"
#include "bus/envelope.h"
#include "kasmina/io/checkpoint.h"
#include "kasmina/io/state_codec.h"
#include "tests/bus/random_payload.h"

namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;

void write(const fs::path& dir, const std::string& name, const Bytes& bytes) {
    fs::create_directories(dir);
    std::ofstream(dir / name, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

Bytes frame_bytes(capnp::MallocMessageBuilder& m) {
    zmq::message_t f = esper::bus::encode(m);
    const auto* p = static_cast<const uint8_t*>(f.data());
    return Bytes(p, p + f.size());
}

// One envelope of payload member `type` filled from `json` (the `esper pub` spelling).
Bytes envelope(const std::string& type, const std::string& json, const char* sender = "kasmina/0",
               uint64_t seq = 1) {
    capnp::MallocMessageBuilder m;
    auto e = m.initRoot<esper::schema::Envelope>();
    esper::agents::payload_from_json(type, json, e.getPayload());
    esper::bus::stamp_envelope(e, sender, "r", seq, "k1");
    return frame_bytes(m);
}

// [u8 topic][u32 length][frame], the framing of fuzz_tamiyo_ingest.cpp.
void append_framed(Bytes& out, uint8_t topic, const Bytes& frame) {
    out.push_back(topic);
    const uint32_t n = uint32_t(frame.size());
    for (int i = 0; i < 4; ++i) out.push_back(uint8_t(n >> (8 * i)));
    out.insert(out.end(), frame.begin(), frame.end());
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: esper_fuzz_make_corpus DIR\n");
        return 2;
    }
    const fs::path root = argv[1];

    // envelope: every payload type, randomly filled (three fills each).
    std::mt19937_64 rng(18);
    for (auto member : capnp::Schema::from<esper::schema::Envelope::Payload>().getUnionFields()) {
        const std::string name = member.getProto().getName().cStr();
        for (int k = 0; k < 3; ++k) {
            capnp::MallocMessageBuilder m;
            auto e = m.initRoot<esper::schema::Envelope>();
            capnp::DynamicStruct::Builder payload = e.getPayload();
            if (member.getType().isStruct())
                esper::bus::testing::fill_random(payload.init(member).as<capnp::DynamicStruct>(),
                                                 rng, 0);
            else
                payload.set(member, capnp::VOID);
            esper::bus::stamp_envelope(e, "kasmina/0", "r", 1 + uint64_t(k), "");
            write(root / "envelope", name + "-" + std::to_string(k), frame_bytes(m));
        }
    }

    // command: each kind of command, valid and not, and the same inside a control request.
    const std::vector<std::pair<std::string, std::string>> commands = {
        {"germinate", R"({"commandId":"a","target":"kasmina/0","germinate":{"layer":0,"seed":1,)"
                      R"("blueprintKind":"residual_mlp","size":4,"strategy":"linear"}})"},
        {"germinate-big-ids", R"({"commandId":"b","germinate":{"layer":4294967295,"seed":7}})"},
        {"transition",
         R"({"commandId":"c","transition":{"layer":1,"seed":2,"toStage":"TRAINING"}})"},
        {"cull", R"({"commandId":"d","cull":{"layer":0,"seed":3}})"},
        {"cancel", R"({"commandId":"e","cancel":{"layer":1,"seed":0}})"},
        {"rollback", R"({"commandId":"f","rollback":{"layer":0,"seed":0}})"},
        {"alpha", R"({"commandId":"g","setAlphaSchedule":{"layer":0,"seed":1}})"},
        {"batch", R"({"commandId":"h","batch":[{"germinate":{"layer":0,"seed":0,)"
                  R"("blueprintKind":"lowrank","size":2}},{"cull":{"layer":1,"seed":1}}]})"},
        {"batch-empty", R"({"commandId":"i","batch":[]})"},
        {"unset", R"({"commandId":"j"})"},
    };
    for (const auto& [name, json] : commands) {
        write(root / "command", name, envelope("command", json, "tamiyo"));
        write(root / "command", "ctl-" + name,
              envelope("controlRequest", R"({"command":)" + json + "}", "ctl"));
    }

    // tamiyo_ingest: telemetry, status and events of the announced run, in and out of shape.
    // Topic selectors index kTopics of fuzz_tamiyo_ingest.cpp.
    {
        Bytes seq;
        append_framed(
            seq, 1,
            envelope("seedTelemetry",
                     R"({"layer":0,"stepEnd":10,"seeds":[{"seed":1,"stage":"DORMANT"}]})"));
        append_framed(
            seq, 2,
            envelope("seedTelemetry", R"({"layer":1,"stepEnd":11,"seeds":[{"seed":4194303}]})",
                     "kasmina/0", 2));
        append_framed(seq, 3, envelope("runStatus", R"({"step":12,"loss":1.5})", "kasmina/0", 3));
        append_framed(seq, 3,
                      envelope("runStatus", R"({"step":"4611686018427387904"})", "kasmina/0", 4));
        append_framed(
            seq, 4,
            envelope("lifecycleTransition",
                     R"({"layer":0,"seed":1,"from":"DORMANT","to":"GERMINATED"})", "kasmina/0", 5));
        append_framed(seq, 3, envelope("runStatus", R"({"step":13})", "intruder", 1));
        write(root / "tamiyo_ingest", "sequence", seq);
        Bytes reannounce;
        append_framed(reannounce, 0,
                      envelope("runConfig", R"({"steps":10,"layers":[{"seeds":100000}]})"));
        append_framed(reannounce, 1,
                      envelope("seedTelemetry", R"({"layer":0,"seeds":[{"seed":99999}]})"));
        write(root / "tamiyo_ingest", "reannounce", reannounce);
    }

    // pub_json: [type index][JSON], the type index into payload_type_names().
    {
        const std::vector<std::string> types = esper::agents::payload_type_names();
        const std::vector<std::pair<std::string, std::string>> samples = {
            {"annotation", R"({"kind":"note","text":"lr drop","step":12})"},
            {"runStatus", R"({"step":"18446744073709551615","loss":"NaN"})"},
            {"seedTelemetry", R"({"layer":0,"seeds":[{"seed":1,"actMean":"Infinity"}]})"},
            {"command", commands[0].second},
            {"command", commands[7].second},
            {"controlRequest", R"({"status":{}})"},
            {"policyLoad", R"({"name":"p","kind":"rules","source":"rules: []"})"},
        };
        for (size_t i = 0; i < samples.size(); ++i) {
            const auto& [type, json] = samples[i];
            uint8_t index = 0;
            for (size_t t = 0; t < types.size(); ++t)
                if (types[t] == type) index = uint8_t(t);
            Bytes b{index};
            b.insert(b.end(), json.begin(), json.end());
            write(root / "pub_json", type + "-" + std::to_string(i), b);
        }
    }

    // manifest: an empty checkpoint and one with scalars, seed state and tensor files.
    {
        esper::kasmina::CheckpointData d;
        write(root / "manifest", "empty", esper::kasmina::encode_manifest(d, {}));
        d.step = 300;
        d.run_id = "r";
        d.config_yaml = "model: {hidden: [8]}\n";
        d.trainer.step = 300;
        d.trainer.governor_window = {1.0, 0.9};
        d.trainer.model_structure = {8, 4};
        d.optimizer.host_steps = 300;
        d.optimizer.slot_steps = {{{1, 2}, {}, {3}}};
        d.optimizer.slot_owner = {{{0, -1}, {}, {2}}};
        write(root / "manifest", "full",
              esper::kasmina::encode_manifest(
                  d, {{"host.w0", "host.w0.f32", 128, std::string(64, 'a')},
                      {"opt.m0", "opt.m0.f32", 128, std::string(64, 'b')}}));
    }
    std::printf("corpus written under %s\n", root.c_str());
    return 0;
}
