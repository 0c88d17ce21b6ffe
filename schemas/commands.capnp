# Control-class commands to an executor (lossless: acked, retried, idempotent by commandId,
# applied in order per target) and their acks. Receivers switch on the union with a default
# branch that answers `unimplemented`, so an old agent survives a new controller.
@0xfeaf9e578e92ffb7;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("esper::schema");

using Common = import "common.capnp";

struct Command {
  commandId @0 :Text;
  # Idempotency key: a retried command with the same id is applied once.
  target @1 :Text;
  # Agent name, e.g. "kasmina/0".
  issuedBy @2 :Text;
  reason @3 :Text;

  union {
    germinate @4 :Germinate;
    transition @5 :Transition;
    cull @6 :SeedRef;
    cancel @7 :SeedRef;
    rollback @8 :SeedRef;
    setAlphaSchedule @9 :SetAlphaSchedule;
    batch @10 :List(Command);
    # Applied in order at one step boundary.
  }

  struct Germinate {
    layer @0 :UInt32;
    seed @1 :UInt32;
    blueprintKind @2 :Common.BlueprintKind;
    size @3 :UInt32;
    # Hidden width (residualMlp) or rank (lowrank); ignored by scaleShift.
    strategy @4 :Common.GraftingStrategy;
  }

  struct Transition {
    layer @0 :UInt32;
    seed @1 :UInt32;
    toStage @2 :Common.SeedStage;
  }

  struct SeedRef {
    layer @0 :UInt32;
    seed @1 :UInt32;
  }

  struct SetAlphaSchedule {
    layer @0 :UInt32;
    seed @1 :UInt32;
    strategy @2 :Common.GraftingStrategy;
    rampSteps @3 :UInt32;
    steepness @4 :Float32;
  }
}

enum CommandOutcome {
  applied @0;
  rejected @1;
  unimplemented @2;
}

struct CommandAck {
  commandId @0 :Text;
  outcome @1 :CommandOutcome;
  reason @2 :Text;
  seedTableDigest @3 :UInt64;
  step @4 :UInt64;
  # The step boundary at which the command was applied or refused.
  items @5 :List(CommandAck);
  # One ack per element of a batch, in order.
}
