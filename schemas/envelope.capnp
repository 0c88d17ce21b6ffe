# The one message root on the bus: frame 1 is the topic, frame 2 an `Envelope`. The payload union
# lists every message type so any frame is self-describing
# (`capnp convert binary:json schemas/envelope.capnp Envelope`). typeId is the payload struct's
# capnp type id, so the bus can route without parsing. Add payloads with the next ordinal only.
@0xf962cf6901d7a897;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("esper::schema");

using Telemetry = import "telemetry.capnp";
using Events = import "events.capnp";
using Commands = import "commands.capnp";
using Policy = import "policy.capnp";
using Control = import "control.capnp";
using Config = import "config.capnp";

const currentVersion :UInt16 = 1;

struct Envelope {
  version @0 :UInt16;
  typeId @1 :UInt64;
  sender @2 :Text;
  # Agent name, e.g. "kasmina/0", "tamiyo", "tap".
  runId @3 :Text;
  sequence @4 :UInt64;
  # Per (sender, topic), starting at 1; gaps mean drops.
  sentAtNs @5 :Int64;
  # Wall clock (ns since the Unix epoch).
  correlationId @6 :Text;
  # Request/reply: the idempotency key (a command's commandId), echoed in the reply.

  payload :union {
    none @7 :Void;
    seedTelemetry @8 :Telemetry.SeedTelemetryBatch;
    runStatus @9 :Telemetry.RunStatus;
    lifecycleTransition @10 :Events.LifecycleTransition;
    commandResult @11 :Events.CommandResult;
    policyChange @12 :Events.PolicyChange;
    annotation @13 :Events.Annotation;
    heartbeat @14 :Events.Heartbeat;
    command @15 :Commands.Command;
    commandAck @16 :Commands.CommandAck;
    policyLoad @17 :Policy.PolicyLoad;
    policyInfo @18 :Policy.PolicyInfo;
    controlRequest @19 :Control.ControlRequest;
    controlReply @20 :Control.ControlReply;
    runConfig @21 :Config.RunConfig;
  }
}
