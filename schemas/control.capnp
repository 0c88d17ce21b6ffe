# The generic control request/reply pair used over the broker's request/reply endpoint: status,
# policy load/show/history/rollback, commands, ping, and the rendezvous requests of the `kv`
# worker. Agents add request and reply variants by appending union members with the next ordinal;
# a receiver that does not know a variant answers `unimplemented`. The two structs lived in
# policy.capnp; their type ids are pinned so the envelope's typeId stays the same.
@0xc9d40a40b187c1bd;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("esper::schema");

using Telemetry = import "telemetry.capnp";
using Commands = import "commands.capnp";
using Policy = import "policy.capnp";
using Rendezvous = import "rendezvous.capnp";

struct ControlRequest @0x93d96d810868c36c {
  union {
    status @0 :Void;
    policyLoad @1 :Policy.PolicyLoad;
    policyShow @2 :Void;
    policyHistory @3 :Void;
    policyRollback @4 :Void;
    command @5 :Commands.Command;
    ping @6 :Text;
    kvSet @7 :Rendezvous.KvSet;
    # Rendezvous key-value service: addressed to the agent named "kv" (the worker `esper broker`
    # hosts; docs/distributed.md). Replied with `none`.
    kvGet @8 :Text;
    # The key; replied with `kvValue`.
  }
}

struct ControlReply @0xbf6901d1242669fb {
  ok @0 :Bool;
  error @1 :Text;
  # Why the request was refused, when ok is false.
  union {
    none @2 :Void;
    status @3 :Telemetry.RunStatus;
    policy @4 :Policy.PolicyInfo;
    policyHistory @5 :List(Policy.PolicyInfo);
    commandAck @6 :Commands.CommandAck;
    pong @7 :Text;
    unimplemented @8 :Text;
    # The receiver does not know the request variant; the text names what it got.
    kvValue @9 :Rendezvous.KvValue;
  }
}
