// `esper pub`: publishes one message whose payload is JSON converted into a schema type with
// the tool JSON of agents/tool_json.h. JSON that does not fit the type is refused with the
// field named (exit code 2). Waits briefly for a subscriber so the message is not lost.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdlib>
#include <string>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/keys.h"
#include "agents/tool_json.h"
#include "bus/pubsub.h"
#include "core/error.h"
#include "core/log.h"

namespace esper::agents {

int pub_main(int argc, char** argv) {
    cli::Parser p("esper pub", "Publish one message on the bus.", "TOPIC");
    auto& bus_ep = p.endpoint("bus", "ENDPOINT", "broker publisher endpoint", "tcp://127.0.0.1:5555");
    auto& type = p.option("type", "TYPE", "payload type, e.g. annotation, runStatus, heartbeat");
    auto& json = p.option("json", "JSON", "the payload as JSON", "{}");
    auto& sender = p.option("sender", "NAME", "sender name in the envelope", "pub");
    auto& run = p.option("run", "ID", "run id in the envelope", "");
    auto& wait =
        p.option("wait-ms", "MS", "wait this long for a subscriber first (0 = don't)", "1000");
    auto& keys =
        p.option("keys", "DIR", "CURVE keys: DIR/broker.pub and an operator (or agent) secret key");
    p.epilog(fmt::format("Types: {}", fmt::join(payload_type_names(), ", ")) +
             "\nExample: esper pub events.annotations.r1 --type annotation "
             "--json '{\"kind\":\"note\",\"text\":\"lr drop\"}'");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (const char* spec = std::getenv("ESPER_LOG")) set_log_levels(spec);
    if (p.positional().size() != 1) return p.usage_error("expected exactly one TOPIC");
    if (!type.given()) return p.usage_error("--type is required");
    const std::string& topic = p.positional()[0];

    zmq::context_t context(1);
    bus::Publisher pub(
        context, {.endpoint = bus_ep.str(),
                  .sender = sender.str(),
                  .run_id = run.str(),
                  .reliability = bus::Reliability::kControl,
                  .security = keys.given() ? client_security(keys.str(), {bus::Role::kOperator,
                                                                          bus::Role::kAgent,
                                                                          bus::Role::kObserver})
                                           : bus::ClientSecurity{}});
    // Check the JSON before touching the network so a misfit is a usage error.
    {
        capnp::MallocMessageBuilder probe;
        try {
            payload_from_json(type.str(), json.str(),
                              probe.initRoot<schema::Envelope>().getPayload());
        } catch (const Error& e) {
            throw cli::UsageError("--json does not fit --type " + type.str() + ": " + e.message());
        }
    }
    int64_t wait_ms = wait.as_int();
    if (wait_ms > 0 && !pub.wait_for_subscriber(topic, static_cast<int>(wait_ms)))
        fmt::print(stderr, "esper pub: no subscriber for '{}' after {} ms; sending anyway\n", topic,
                   wait_ms);
    auto r = pub.publish(topic, [&](schema::Envelope::Payload::Builder payload) {
        payload_from_json(type.str(), json.str(), payload);
    });
    if (r != bus::PublishResult::kSent)
        ESPER_THROW(kOverloaded, "could not send to ", bus_ep.str());
    return 0;
}

}  // namespace esper::agents
