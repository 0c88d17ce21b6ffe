# Control-class events (lossless): lifecycle transitions, command results, policy changes,
# user annotations that mark a run, and agent heartbeats.
@0xc6986f246582f1e7;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("esper::schema");

using Common = import "common.capnp";
using Commands = import "commands.capnp";
using Telemetry = import "telemetry.capnp";

enum TransitionOrigin {
  auto @0;
  controller @1;
  operator @2;
  governor @3;
}

struct LifecycleTransition {
  step @0 :UInt64;
  layer @1 :UInt32;
  seed @2 :UInt32;
  from @3 :Common.SeedStage;
  to @4 :Common.SeedStage;
  reason @5 :Text;
  origin @6 :TransitionOrigin;
  commandId @7 :Text;
  # Empty unless a command caused it.
  alpha @8 :Float32;
}

struct CommandResult {
  # Published on events.commands.<run> after a command was handled.
  command @0 :Commands.Command;
  ack @1 :Commands.CommandAck;
}

enum PolicyAction {
  loaded @0;
  rolledBack @1;
  disabled @2;
}

struct PolicyChange {
  name @0 :Text;
  kind @1 :Text;
  action @2 :PolicyAction;
  previous @3 :Text;
  reason @4 :Text;
  step @5 :UInt64;
}

struct Annotation {
  # A user's mark on a run (`esper pub ... --type annotation`).
  kind @0 :Text;
  text @1 :Text;
  step @2 :UInt64;
}

struct Heartbeat {
  agent @0 :Text;
  role @1 :Text;
  pid @2 :UInt32;
  uptimeMs @3 :UInt64;
  step @4 :UInt64;
  state @5 :Text;
  counters @6 :List(Telemetry.Counter);
  # The agent's drop/refusal counters (the same as in its status reply; docs/bus.md).
}
