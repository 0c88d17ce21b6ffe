# Checkpoints and the seed-state image (DESIGN.md §4.7, §8). A checkpoint directory holds
# manifest.bin (one Manifest message, unpacked), manifest.sha256 (its SHA-256 in sha256sum format)
# and one raw little-endian float32 file per entry of Manifest.tensors. SeedState is also what rank
# 0 broadcasts to the other ranks when its seed tables changed. Readers set traversal limits and
# check every value at the point of use (enum ranges, list lengths, shapes); a change an old reader
# would misread bumps Manifest.formatVersion.
@0xb0079b3103b3bb11;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("esper::schema");

using Common = import "common.capnp";

struct Manifest {
  # Everything of a checkpoint except the float tensors, which it lists with their hashes.
  formatVersion @0 :UInt32;
  # 2 for this layout (version 1 was a text manifest.txt).
  runId @1 :Text;
  step @2 :Int64;
  # Optimizer steps done when the checkpoint was taken.
  configYaml @3 :Text;
  # The effective run config, as `esper kasmina` prints it (for the record; a resume takes its
  # config from the command line).
  trainer @4 :TrainerState;
  optimizer @5 :OptimizerState;
  seeds @6 :SeedState;
  tensors @7 :List(TensorFile);
  # No RNG state: every random stream (data order, germination initialisation) is derived from
  # the run seed in configYaml and the step or epoch.
}

struct TensorFile {
  # One raw tensor file of the checkpoint directory.
  name @0 :Text;
  # [A-Za-z0-9_.-], at most 100 characters: `param.<name>`, `opt.m.<name>`, `arena.l0.k1.params`...
  file @1 :Text;
  # The file in the directory: name + ".bin".
  sizeBytes @2 :UInt64;
  sha256 @3 :Text;
  # Lower-case hex, as sha256sum prints it.
}

struct TrainerState {
  # The trainer's scalars (kasmina/train/trainer.cpp Trainer::capture).
  step @0 :Int64;
  totalSteps @1 :Int64;
  # Of the writer's config; informative only (the resumed run's config decides).
  epochLossSum @2 :Float64;
  epochLossSteps @3 :Int64;
  governorWindow @4 :List(Float64);
  # The governor's recent healthy losses, oldest first.
  governorTrips @5 :Int64;
  modelStructure @6 :List(Int64);
  # What the host needs beyond its parameters to rebuild its shape (Model::structure: the
  # transformer's extra units and heads in use per block); empty for the MLP.
}

struct OptimizerState {
  # The optimizer's state besides its moment tensors (`opt.m.*`, `opt.v.*` files).
  hostSteps @0 :Int64;
  layers @1 :List(OptimizerLayer);
  # One per seed layer.
}

struct OptimizerLayer {
  kinds @0 :List(OptimizerKindSlots);
  # Empty until the layer's first blueprint update, then one per Common.BlueprintKind, in order.
}

struct OptimizerKindSlots {
  slots @0 :List(OptimizerSlot);
  # One per arena slot of this blueprint kind.
}

struct OptimizerSlot {
  steps @0 :Int64;
  # Updates taken by the seed holding the slot (AdamW bias correction).
  owner @1 :Int64;
  # The seed that held the slot at its last update; -1 = none yet.
}

struct SeedState {
  # The seed manager's whole lifecycle state (not the arena weights, which are tensors).
  nextStep @0 :Int64;
  # The step stamp the next command gets.
  layers @1 :List(SeedLayerState);
  lossWindow @2 :List(Float64);
  # Recent run losses, oldest first (at most 20).
  lastLoss @3 :OptionalFloat64;
  lastLossDelta @4 :Float64;
  lossEma @5 :OptionalFloat64;
}

struct SeedLayerState {
  # One seed layer: its shape (checked against the reader's) and every seed.
  layer @0 :Int32;
  width @1 :Int32;
  # D, the features of the seed layer.
  seeds @2 :List(SeedEntry);
}

struct SeedEntry {
  row @0 :SeedRow;
  measured @1 :SeedMeasurements;
}

struct SeedRow {
  # One row of a seed table (kasmina/lifecycle/seed_table.h SeedRow).
  stage @0 :Common.SeedStage;
  kind @1 :Common.BlueprintKind;
  # Meaningful while slot >= 0.
  strategy @2 :Common.GraftingStrategy;
  flags @3 :UInt8;
  # Bit 0: gradient health measured at least once.
  slot @4 :Int32;
  # Arena slot of the blueprint; -1 = none.
  alpha @5 :Float32;
  stepsInStage @6 :UInt32;
  errorCount @7 :UInt16;
  embargoUntilStep @8 :UInt32;
  graft @9 :GraftState;
}

struct GraftState {
  # The α schedule's state (kasmina/lifecycle/grafting.h).
  t @0 :Float32;
  velocity @1 :Float32;
  weightEma @2 :Float32;
  lastStableAlpha @3 :Float32;
  lossDeltaEma @4 :Float32;
  rampSteps @5 :Int32;
  unstableCount @6 :UInt16;
  adaptiveChoice @7 :Common.GraftingStrategy;
  # The strategy an adaptive schedule currently follows.
  hasEma @8 :Bool;
}

struct SeedMeasurements {
  # What the manager last measured of a seed (telemetry), kept between steps.
  gradientHealth @0 :OptionalFloat64;
  contribution @1 :OptionalFloat64;
  stability @2 :OptionalFloat64;
  improvement @3 :OptionalFloat64;
  lossAtGermination @4 :Float64;
}

struct OptionalFloat64 {
  # A measurement that may be missing ("not measured" is distinct from zero).
  union {
    none @0 :Void;
    value @1 :Float64;
  }
}
