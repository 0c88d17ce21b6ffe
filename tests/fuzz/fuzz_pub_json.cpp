// libFuzzer harness: the JSON `esper pub` reads (agents/tool_json.h). The first byte picks the
// payload type, the rest is the JSON; what fits the type is encoded, decoded like a frame off
// the wire and printed back as the tools print it. Misfits are esper::Error naming the field.
#include <capnp/message.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "agents/tool_json.h"
#include "bus/envelope.h"
#include "core/error.h"
#include "tests/fuzz/quiet.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace esper;
    if (size == 0) return 0;
    static const std::vector<std::string> types = agents::payload_type_names();
    const std::string& type = types[data[0] % types.size()];
    const std::string_view json(reinterpret_cast<const char*>(data + 1), size - 1);
    capnp::MallocMessageBuilder m;
    auto e = m.initRoot<schema::Envelope>();
    try {
        agents::payload_from_json(type, json, e.getPayload());
    } catch (const Error&) {
        return 0;
    }
    bus::stamp_envelope(e, "pub", "r", 1);
    zmq::message_t frame = bus::encode(m);
    bus::DecodeResult d = bus::decode(std::move(frame));
    if (!d.ok()) return 0;  // e.g. over the frame limit: refused like any frame
    (void)agents::envelope_to_json("t", d.value->envelope());
    return 0;
}
