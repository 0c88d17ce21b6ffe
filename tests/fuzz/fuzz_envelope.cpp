// libFuzzer harness: bytes off the wire through bus::decode(), then every field of whatever
// payload type they hold read back through the tools' JSON (capnp reflection walks each member,
// so every payload type's reader is exercised). Nothing may crash, leak or read out of bounds.
#include <kj/exception.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>

#include "agents/tool_json.h"
#include "bus/envelope.h"
#include "tests/fuzz/quiet.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    esper::bus::DecodeResult d =
        esper::bus::decode(std::span(reinterpret_cast<const std::byte*>(data), size));
    if (!d.ok()) return 0;
    try {
        (void)esper::agents::envelope_to_json("fuzz", d.value->envelope());
    } catch (const kj::Exception&) {
        // A text without its NUL fails capnp's lazy check: the tools report it, not a crash.
    } catch (const std::exception&) {
    }
    return 0;
}
