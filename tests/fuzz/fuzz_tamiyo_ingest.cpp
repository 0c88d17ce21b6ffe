// libFuzzer harness: Tamiyo's intake (agents/tamiyo_ingest.h). The input is a sequence of frames,
// each [u8 topic selector][u32 little-endian length][that many bytes]; each frame decodes as an
// envelope and goes to TamiyoIngest on one of its topics, after a valid announcement of a small
// shape. The view must stay within the shape whatever arrives.
#include <capnp/message.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "agents/tamiyo_ingest.h"
#include "bus/envelope.h"
#include "tests/fuzz/quiet.h"

namespace {

constexpr const char* kTopics[] = {"config.r",        "telemetry.seeds.r.0",  "telemetry.seeds.r.1",
                                   "telemetry.run.r", "events.lifecycle.r.0", "config.r2"};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace esper;
    agents::TamiyoIngest ingest({.run_id = "r", .executor = "kasmina/0", .view = {}});
    {
        capnp::MallocMessageBuilder m;
        auto e = m.initRoot<schema::Envelope>();
        auto rc = e.getPayload().initRunConfig();
        rc.setSteps(100000);
        auto layers = rc.initLayers(2);
        layers[0].setSeeds(4);
        layers[1].setSeeds(8);
        bus::stamp_envelope(e, "kasmina/0", "r", 1);
        ingest.ingest("config.r", 1, e.asReader());
    }
    size_t at = 0;
    while (at + 5 <= size) {
        const uint8_t topic = data[at];
        uint32_t len = 0;
        std::memcpy(&len, data + at + 1, 4);
        at += 5;
        len = static_cast<uint32_t>(std::min<size_t>(len, size - at));
        bus::DecodeResult d =
            bus::decode(std::span(reinterpret_cast<const std::byte*>(data + at), len));
        at += len;
        if (!d.ok()) continue;
        auto env = d.value->envelope();
        ingest.ingest(kTopics[topic % std::size(kTopics)], env.getSequence(), env);
    }
    // The bound the intake promises: nothing outside the announced shape is stored.
    const auto& view = ingest.view();
    if (view.shape()) {
        const auto& n = view.shape()->seeds_per_layer;
        for (const auto& [layer, lv] : view.layers())
            if (layer >= n.size() || lv.seeds.size() > n[layer]) __builtin_trap();
    }
    return 0;
}
