# Policy injection and the generic control request/reply pair used over the broker's
# request/reply endpoint (`esper policy load/show/history/rollback`, `esper ctl status`).
# Agents add request and reply variants by appending union members with the next ordinal.
@0xcc2f4929092f2c91;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("esper::schema");

using Telemetry = import "telemetry.capnp";
using Commands = import "commands.capnp";

enum PolicyKind {
  rules @0;
  plugin @1;
  heuristic @2;
}

struct PolicyLoad {
  name @0 :Text;
  kind @1 :PolicyKind;
  union {
    source @2 :Text;
    # The policy text itself (rules YAML).
    path @3 :Text;
    # A file on the controller's host (plugin shared library).
  }
}

struct PolicyInfo {
  name @0 :Text;
  kind @1 :PolicyKind;
  version @2 :UInt32;
  loadedAtStep @3 :UInt64;
  loadedAtNs @4 :Int64;
  active @5 :Bool;
  digest @6 :Text;
}

struct ControlRequest {
  union {
    status @0 :Void;
    policyLoad @1 :PolicyLoad;
    policyShow @2 :Void;
    policyHistory @3 :Void;
    policyRollback @4 :Void;
    command @5 :Commands.Command;
    ping @6 :Text;
    kvSet @7 :KvSet;
    # Rendezvous key-value service, served by the broker itself for the reserved agent name
    # "kv" (docs/distributed.md). Replied with `none`.
    kvGet @8 :Text;
    # The key; replied with `kvValue`.
  }
}

struct KvSet {
  key @0 :Text;
  value @1 :Data;
}

struct KvValue {
  found @0 :Bool;
  value @1 :Data;
}

struct ControlReply {
  ok @0 :Bool;
  error @1 :Text;
  # Why the request was refused, when ok is false.
  union {
    none @2 :Void;
    status @3 :Telemetry.RunStatus;
    policy @4 :PolicyInfo;
    policyHistory @5 :List(PolicyInfo);
    commandAck @6 :Commands.CommandAck;
    pong @7 :Text;
    unimplemented @8 :Text;
    # The receiver does not know the request variant; the text names what it got.
    kvValue @9 :KvValue;
  }
}
