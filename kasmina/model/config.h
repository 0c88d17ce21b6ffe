// Configuration values of the model room: the host network's shape and the blueprint arenas
// (the `model:` and `blueprints:` sections of a run config; kasmina/io/config.h reads them from
// YAML). Plain values; the spellings of the enums are the YAML spellings.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

#include "kernels/vocabulary.h"

namespace esper::kasmina {

// The shared vocabulary (kernels/vocabulary.h), visible as kasmina:: names.
using esper::BlueprintKind;
using esper::GraftingStrategy;
using esper::kNumBlueprintKinds;
using esper::kNumGraftingStrategies;
using esper::kNumSeedStages;
using esper::SeedStage;
using esper::TransitionOrigin;

enum class Activation : uint8_t { kRelu = 0, kGelu = 1 };
inline constexpr std::array<std::string_view, 2> kActivationNames = {"relu", "gelu"};
constexpr std::string_view activation_name(Activation a) { return enum_name(a, kActivationNames); }

// What residual_mlp / lowrank blueprints read: their chunk of h (DESIGN §4.5) or the host layer's
// whole input ("widening" blueprints; docs/kasmina.md).
enum class BlueprintInput : uint8_t { kChunk = 0, kLayer = 1 };
inline constexpr std::array<std::string_view, 2> kBlueprintInputNames = {"chunk", "layer"};
constexpr std::string_view blueprint_input_name(BlueprintInput i) {
    return enum_name(i, kBlueprintInputNames);
}

// Which host network (DESIGN §4.1): the MLP over feature vectors, or the decoder-only
// transformer over bytes (§14).
enum class ModelKind : uint8_t { kMlp = 0, kTransformer = 1 };
inline constexpr std::array<std::string_view, 2> kModelKindNames = {"mlp", "transformer"};
constexpr std::string_view model_kind_name(ModelKind k) { return enum_name(k, kModelKindNames); }

// How grown blocks start (model.transformer.grow_depth.init): `copy` — the weights of a block
// below (the whole stack repeated in order, as progressive stacking does: 2 blocks + 2 grown =
// [b0, b1, b0', b1']); `zero_out` — the same copy with what writes the residual stream (attn.proj,
// mlp.proj, their biases, the room's output side) zeroed: the network computes what it did.
enum class DepthInit : uint8_t { kCopy = 0, kZeroOut = 1 };
inline constexpr std::array<std::string_view, 2> kDepthInitNames = {"copy", "zero_out"};
constexpr std::string_view depth_init_name(DepthInit i) { return enum_name(i, kDepthInitNames); }

// Depth growth on a schedule (model.transformer.grow_depth): `blocks` more blocks join the top of
// the stack at the start of step `at_step`; until then they are not computed, not counted and not
// trained. A host-level experiment of issue 14 (docs/kasmina.md, "Growing depth"), not a seed.
struct GrowDepthConfig {
    int64_t blocks = 0;  // 0: off
    int64_t at_step = 0;
    DepthInit init = DepthInit::kCopy;
    // The grown blocks' learning rate ramps from 1/warmup_steps of the schedule's to all of it
    // over this many steps from at_step (0: the schedule's rate at once).
    int64_t warmup_steps = 0;
    bool operator==(const GrowDepthConfig&) const = default;
};

// How grown width starts (model.transformer.grow_width.init): `zero_out` — input side drawn as
// the block's (N(0, 0.02), zero biases), output side zero; `split` — each new unit (head) a copy
// of a trained host unit (head) of the block, taken in order, that unit's output weights halved
// and the other half given to the copy (Net2Net's widening). Both leave the function unchanged.
enum class WidthInit : uint8_t { kZeroOut = 0, kSplit = 1 };
inline constexpr std::array<std::string_view, 2> kWidthInitNames = {"zero_out", "split"};
constexpr std::string_view width_init_name(WidthInit i) { return enum_name(i, kWidthInitNames); }

// Width growth on a schedule (model.transformer.grow_width): at the start of step `at_step` every
// block computed then puts `units` more MLP units and `heads` more attention heads of its reserved
// room in use, as `init` says, so the network computes what it did and the new parameters learn
// from the next step. A host-level experiment of issue 14 beside grow_depth (docs/kasmina.md,
// "Growing width").
struct GrowWidthConfig {
    int64_t units = 0;  // 0 and heads 0: off
    int64_t heads = 0;
    int64_t at_step = 0;
    WidthInit init = WidthInit::kZeroOut;
    bool operator==(const GrowWidthConfig&) const = default;
};

// model.kind: transformer (DESIGN §14): decoder-only, pre-LayerNorm blocks, causal multi-head
// attention, GELU MLP of 4·d_model hidden units, learned positions, byte vocabulary (256).
struct TransformerConfig {
    int64_t n_layer = 4;
    int64_t n_head = 4;  // d_model must be a multiple of it
    int64_t d_model = 128;
    int64_t context = 64;        // T: positions per sample
    bool tie_embeddings = true;  // the output head reuses the token embedding
    // Widening seeds per block (mlp_units, attention_head, lora germinate there) and how many
    // fossilized units and heads each block can take in (the host's reserved room).
    int64_t widening_seeds = 4;
    int64_t max_extra_units = 64;
    int64_t max_extra_heads = 2;
    // Reserved room in use from step 0, randomly initialised like the rest of the block: a static
    // host of a grown run's final shape (the matched baseline of bench/quality).
    int64_t initial_extra_units = 0;  // <= max_extra_units
    int64_t initial_extra_heads = 0;  // <= max_extra_heads
    GrowDepthConfig grow_depth{};
    GrowWidthConfig grow_width{};
    bool operator==(const TransformerConfig&) const = default;
};

struct ModelConfig {
    ModelKind kind = ModelKind::kMlp;
    std::vector<int64_t> hidden{128,
                                128};  // mlp: one seed layer per entry; each >= seeds_per_layer
    Activation activation = Activation::kRelu;  // mlp
    // mlp: seeds of each hidden layer; transformer: seeds over each block's MLP hidden units.
    int64_t seeds_per_layer = 16;  // >= 1 (0 is refused: S = 0)
    // mlp: mlp_units seeds per hidden layer (a widening site each, seed layers L..2L-1 after the
    // L chunk sites) and how many folded units each hidden layer can take in (its reserved room:
    // a FOSSILIZED seed's k units become the layer's, its output weights the next layer's).
    int64_t widening_seeds = 0;
    int64_t max_extra_units = 0;
    TransformerConfig transformer;
    bool operator==(const ModelConfig&) const = default;
};

struct ResidualMlpBlueprintConfig {
    int64_t expansion = 2;  // hidden = expansion · chunk width
    int64_t slots = 8;      // arena capacity per layer
    bool operator==(const ResidualMlpBlueprintConfig&) const = default;
};
struct LowrankBlueprintConfig {
    int64_t rank = 4;
    int64_t slots = 8;
    bool operator==(const LowrankBlueprintConfig&) const = default;
};
struct ScaleShiftBlueprintConfig {
    int64_t slots = 8;
    bool operator==(const ScaleShiftBlueprintConfig&) const = default;
};
// Widening kinds of the transformer host (DESIGN §14); arenas per block.
struct MlpUnitsBlueprintConfig {
    int64_t units = 16;  // k: hidden units a germination adds to a block's MLP
    int64_t slots = 2;
    bool operator==(const MlpUnitsBlueprintConfig&) const = default;
};
struct AttentionHeadBlueprintConfig {
    int64_t slots = 1;  // one head of d_model / n_head dimensions each
    bool operator==(const AttentionHeadBlueprintConfig&) const = default;
};
struct LoraBlueprintConfig {
    int64_t rank = 4;  // r of the adapter on the qkv projection
    int64_t slots = 2;
    bool operator==(const LoraBlueprintConfig&) const = default;
};
// How a layer-input residual_mlp seed's hidden units start (its output side is zero either way,
// so germination preserves the function): `random` Kaiming-uniform, `split` copies of the host
// layer's own trained units (weights and bias of unit c0 + j mod w of the seed's chunk) plus a
// little noise, so the new units start as features the host already found useful (MLP only).
// `gradmax`: an mlp_units seed's first units read along the directions in which their (zero)
// output weights get the largest gradient (GradMax, Evci et al. 2022; docs/kasmina.md).
enum class BlueprintInit : uint8_t { kRandom = 0, kSplit = 1, kGradmax = 2 };
inline constexpr std::array<std::string_view, 3> kBlueprintInitNames = {"random", "split",
                                                                        "gradmax"};
constexpr std::string_view blueprint_init_name(BlueprintInit i) {
    return enum_name(i, kBlueprintInitNames);
}

struct BlueprintsConfig {
    ResidualMlpBlueprintConfig residual_mlp;
    LowrankBlueprintConfig lowrank;
    ScaleShiftBlueprintConfig scale_shift;
    MlpUnitsBlueprintConfig mlp_units;
    AttentionHeadBlueprintConfig attention_head;
    LoraBlueprintConfig lora;
    int64_t max_params_per_layer = 1000000;  // budget over live blueprints of one layer
    BlueprintInput input = BlueprintInput::kChunk;
    BlueprintInit init = BlueprintInit::kRandom;
    bool operator==(const BlueprintsConfig&) const = default;
};

}  // namespace esper::kasmina
