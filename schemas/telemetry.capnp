# Metrics-class payloads (best effort, DESIGN.md §6): per-seed telemetry for one seed layer and
# one interval, and the per-run status line. "Not measured" is a flag, distinct from zero (tool
# JSON turns a value whose flag is false into null and drops the flag).
@0xca8fed008e726660;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("esper::schema");

using Common = import "common.capnp";

struct SeedRecord {
  # One seed's window of telemetry (DESIGN.md §4.6).
  seed @0 :UInt32;
  stage @1 :Common.SeedStage;
  alpha @2 :Float32;
  stepsInStage @3 :UInt32;
  actMean @4 :Float32;
  actVar @5 :Float32;
  deadFraction @6 :Float32;
  gradNorm @7 :Float32;
  blueprintGradNorm @8 :Float32;
  contribution @9 :Float32;
  # c = −Σ⟨∂L/∂y, α·r(h)⟩: the first-order change in loss if the seed were removed, so
  # POSITIVE = the seed helps (the loss would rise without it). DESIGN.md §4.6's parenthetical
  # says the opposite; its gate table and the math agree with this sign (docs/kasmina.md).
  health @10 :Float32;
  activationMeasured @11 :Bool;
  gradientMeasured @12 :Bool;
  contributionMeasured @13 :Bool;
  gradientHealth @14 :Float32;
  # The TRAINING → GRAFTING gate metric (kasmina's gradient health of the seed).
  gradientHealthMeasured @15 :Bool;
  chunkWidth @16 :UInt32;
  # Features in the seed's chunk (lets the controller price a germination).
  blueprintParams @17 :Int64;
  # Parameters of the seed's blueprint while it holds one; 0 otherwise.
  germinationParams @18 :List(Int64);
  # What germinating this seed would cost, indexed by BlueprintKind value: the parameters of a
  # blueprint of that kind with the executor's configured arenas on this seed's chunk (a widening
  # arena counts the layer's input width). Equal to blueprintParams after such a germination.
  # The controller prices germinations with these numbers and never recomputes them; empty =
  # not published (older executor).
}

struct SeedTelemetryBatch {
  # Every seed of one layer over steps [stepBegin, stepEnd), reduced across ranks.
  layer @0 :UInt32;
  stepBegin @1 :UInt64;
  stepEnd @2 :UInt64;
  worldSize @3 :UInt32;
  seeds @4 :List(SeedRecord);
}

struct RunStatus {
  step @0 :UInt64;
  epoch @1 :UInt32;
  loss @2 :Float32;
  accuracy @3 :Float32;
  lr @4 :Float32;
  samplesPerS @5 :Float64;
  stepTimeMs @6 :Float32;
  hostParams @7 :UInt64;
  blueprintParams @8 :UInt64;
  seedsPerStage @9 :List(UInt32);
  # Indexed by SeedStage value (11 entries).
  lossMeasured @10 :Bool;
  accuracyMeasured @11 :Bool;
  backend @12 :Text;
  # "cpu" or "cuda".
  testStep @13 :UInt64;
  # The step of the newest evaluation on the test/validation split (0 with testMeasured false:
  # none yet). Every run status carries the newest one, so a late subscriber sees it too.
  testLoss @14 :Float32;
  testAccuracy @15 :Float32;
  testMeasured @16 :Bool;
  # testStep, testLoss and testAccuracy hold an evaluation (tool JSON shows them as null when not).
  testBitsPerByte @17 :Float32;
  # Byte-level language models: validation bits per byte (loss / ln 2).
  testBitsPerByteMeasured @18 :Bool;
  totalSteps @19 :UInt64;
  # The run's planned optimizer steps (0 = unknown).
  state @20 :RunState;
  stateReason @21 :Text;
  # Why the run ended when it is not `training` (a signal, a lost child, ...).
}

enum RunState {
  # Where a run is. The last run status of a run (also on events.run.<run>, lossless) says how it
  # ended; `esper tap --until-end` and the dashboard stop on it.
  training @0;
  finished @1;
  # All planned steps done.
  stopped @2;
  # Stopped early on request (SIGINT/SIGTERM); a checkpoint was written.
  failed @3;
  # A process of the run died or could not start (`esper run` says so).
}
