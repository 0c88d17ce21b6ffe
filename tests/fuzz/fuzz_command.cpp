// libFuzzer harness: the executor's command intake. Bytes decode as an envelope; a command in it
// (or in a control request) goes through to_command, the wire validator, and when it converts,
// through SeedManager::apply, the one lifecycle validator, on a small two-layer seed table.
#include <kj/exception.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>
#include <variant>

#include "agents/kasmina_bus.h"
#include "bus/envelope.h"
#include "kasmina/io/config.h"
#include "kasmina/lifecycle/seed_manager.h"
#include "tests/fuzz/quiet.h"

namespace {

const esper::kasmina::Config& config() {
    static const esper::kasmina::Config c = [] {
        esper::kasmina::Config k;
        k.model.hidden = {16, 12};
        k.model.seeds_per_layer = 4;
        k.blueprints.residual_mlp.slots = 2;
        return k;
    }();
    return c;
}

void apply(esper::schema::Command::Reader c) {
    auto r = esper::agents::to_command(c, config());
    auto* cmd = std::get_if<esper::kasmina::Command>(&r);
    if (cmd == nullptr) return;
    esper::kasmina::SeedManager seeds(esper::kasmina::seed_manager_config(config()), {16, 12});
    (void)seeds.apply(*cmd);
    (void)seeds.apply(*cmd);  // the same again: a second transition from the new state
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    esper::bus::DecodeResult d =
        esper::bus::decode(std::span(reinterpret_cast<const std::byte*>(data), size));
    if (!d.ok()) return 0;
    try {
        auto p = d.value->envelope().getPayload();
        if (p.isCommand()) apply(p.getCommand());
        if (p.isControlRequest() && p.getControlRequest().isCommand())
            apply(p.getControlRequest().getCommand());
    } catch (const kj::Exception&) {
        // Text fields are NUL-checked lazily: the worker answers these with an error reply.
    }
    return 0;
}
