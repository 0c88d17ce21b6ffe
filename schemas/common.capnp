# Shared vocabulary of every Esper schema: lifecycle stages (values fixed by DESIGN.md §4.3 and
# kernels/seed_layer.h, they appear in checkpoints too), blueprint kinds, grafting strategies,
# seed ids and shapes. Evolution rule: new enumerants and fields take the next ordinal only.
@0xe63b2abac3050697;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("esper::schema");

enum SeedStage {
  dormant @0;
  germinated @1;
  training @2;
  grafting @3;
  stabilization @4;
  evaluating @5;
  fineTuning @6;
  fossilized @7;
  culled @8;
  cancelled @9;
  rolledBack @10;
}

enum BlueprintKind {
  residualMlp @0;
  lowrank @1;
  scaleShift @2;
  mlpUnits @3;
  # Transformer widening site: k new MLP hidden units of a block.
  attentionHead @4;
  # Transformer widening site: one new attention head of a block.
  lora @5;
  # Transformer widening site: a low-rank adapter on a block's qkv projection.
}

enum GraftingStrategy {
  linear @0;
  cosine @1;
  sigmoid @2;
  driftControlled @3;
  momentum @4;
  stability @5;
  adaptive @6;
}

struct SeedId {
  # One seed of one seed layer.
  layer @0 :UInt32;
  seed @1 :UInt32;
}

struct Shape {
  # Dimensions, outermost first (row-major).
  dims @0 :List(UInt32);
}
