// Cap'n Proto encoding of the seed-state image and the checkpoint manifest (see state_codec.h).
// Readers follow every pointer once (the traversal limit counts each visit) and convert wire
// enums through the vocabulary's checked *_from_value, never a bare cast.
#include "kasmina/io/state_codec.h"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstring>
#include <optional>

#include "core/check.h"
#include "schemas/checkpoint.capnp.h"

namespace esper::kasmina {

namespace {

// The wire enums of schemas/common.capnp carry the vocabulary's values (agents/ ties them value
// by value); the decoder range-checks every value it reads.
static_assert(static_cast<int>(schema::SeedStage::ROLLED_BACK) + 1 == kNumSeedStages);
static_assert(static_cast<int>(schema::BlueprintKind::LORA) + 1 == kNumBlueprintKinds);
static_assert(static_cast<int>(schema::GraftingStrategy::ADAPTIVE) + 1 == kNumGraftingStrategies);

template <typename Wire, typename E>
Wire to_wire(E v) {
    return static_cast<Wire>(static_cast<uint16_t>(v));
}

// Nesting of the deepest path (Manifest.seeds.layers[].seeds[].row.graft) plus headroom.
constexpr int kNestingLimit = 16;

capnp::Text::Reader text(const std::string& s) { return capnp::Text::Reader(s.data(), s.size()); }
std::string str(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

// A decoder's context: every refusal names the entry being read.
class Decoder {
public:
    explicit Decoder(std::string what) : what_(std::move(what)) {}

    template <typename... A>
    [[noreturn]] void fail(const A&... a) const {
        ESPER_THROW(kIntegrity, what_, ": ", a...);
    }

    // Reads `bytes` as one flat Cap'n Proto message and hands its root to `read`; library
    // exceptions (bad pointers, limits) become Error(kIntegrity).
    template <typename T, typename F>
    void read_message(std::span<const uint8_t> bytes, F&& read) const {
        if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0)
            fail("not a Cap'n Proto message (", bytes.size(), " bytes, truncated?)");
        // Copy to aligned words: capnp refuses unaligned data and the caller's bytes may be any.
        kj::Array<capnp::word> words =
            kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
        std::memcpy(words.begin(), bytes.data(), bytes.size());
        capnp::ReaderOptions options;
        // A valid message is walked about once; twice its size (plus slack for tiny ones)
        // bounds a crafted one that points many times at the same data.
        options.traversalLimitInWords = 2 * words.size() + 1024;
        options.nestingLimit = kNestingLimit;
        try {
            capnp::FlatArrayMessageReader reader(words.asPtr(), options);
            if (reader.getEnd() != words.end())
                fail("trailing bytes after the Cap'n Proto message");
            read(reader.getRoot<T>());
        } catch (const kj::Exception& e) {
            fail("malformed Cap'n Proto message: ", e.getDescription().cStr());
        }
    }

    std::optional<double> optional(schema::OptionalFloat64::Reader r) const {
        switch (r.which()) {
            case schema::OptionalFloat64::NONE:
                return std::nullopt;
            case schema::OptionalFloat64::VALUE:
                return r.getValue();
        }
        fail("unknown OptionalFloat64 variant ", static_cast<int>(r.which()));
    }
    SeedStage stage(schema::SeedStage v) const {
        if (auto s = stage_from_value(static_cast<uint16_t>(v))) return *s;
        fail("seed stage ", static_cast<int>(v), " out of range");
    }
    BlueprintKind kind(schema::BlueprintKind v) const {
        if (auto k = blueprint_kind_from_value(static_cast<uint16_t>(v))) return *k;
        fail("blueprint kind ", static_cast<int>(v), " out of range");
    }
    GraftingStrategy strategy(schema::GraftingStrategy v) const {
        if (auto s = grafting_strategy_from_value(static_cast<uint16_t>(v))) return *s;
        fail("grafting strategy ", static_cast<int>(v), " out of range");
    }
    template <typename T>
    std::vector<T> list(typename capnp::List<T>::Reader r) const {
        std::vector<T> v;
        v.reserve(r.size());
        for (T x : r) v.push_back(x);
        return v;
    }

private:
    std::string what_;
};

void set_optional(schema::OptionalFloat64::Builder b, const std::optional<double>& v) {
    if (v)
        b.setValue(*v);
    else
        b.setNone();
}

// ---- SeedState ----

void write_row(schema::SeedRow::Builder b, const SeedRow& r) {
    b.setStage(to_wire<schema::SeedStage>(r.stage));
    b.setKind(to_wire<schema::BlueprintKind>(r.kind));
    b.setStrategy(to_wire<schema::GraftingStrategy>(r.strategy));
    b.setFlags(r.flags);
    b.setSlot(r.slot);
    b.setAlpha(r.alpha);
    b.setStepsInStage(r.steps_in_stage);
    b.setErrorCount(r.error_count);
    b.setEmbargoUntilStep(r.embargo_until_step);
    schema::GraftState::Builder g = b.initGraft();
    g.setT(r.graft.t);
    g.setVelocity(r.graft.velocity);
    g.setWeightEma(r.graft.weight_ema);
    g.setLastStableAlpha(r.graft.last_stable_alpha);
    g.setLossDeltaEma(r.graft.loss_delta_ema);
    g.setRampSteps(r.graft.ramp_steps);
    g.setUnstableCount(r.graft.unstable_count);
    g.setAdaptiveChoice(to_wire<schema::GraftingStrategy>(r.graft.adaptive_choice));
    g.setHasEma(r.graft.has_ema != 0);
}

SeedRow read_row(const Decoder& d, schema::SeedRow::Reader b) {
    SeedRow r;
    r.stage = d.stage(b.getStage());
    r.kind = d.kind(b.getKind());
    r.strategy = d.strategy(b.getStrategy());
    r.flags = b.getFlags();
    r.slot = b.getSlot();
    r.alpha = b.getAlpha();
    r.steps_in_stage = b.getStepsInStage();
    r.error_count = b.getErrorCount();
    r.embargo_until_step = b.getEmbargoUntilStep();
    const schema::GraftState::Reader g = b.getGraft();
    r.graft.t = g.getT();
    r.graft.velocity = g.getVelocity();
    r.graft.weight_ema = g.getWeightEma();
    r.graft.last_stable_alpha = g.getLastStableAlpha();
    r.graft.loss_delta_ema = g.getLossDeltaEma();
    r.graft.ramp_steps = g.getRampSteps();
    r.graft.unstable_count = g.getUnstableCount();
    r.graft.adaptive_choice = static_cast<uint8_t>(d.strategy(g.getAdaptiveChoice()));
    r.graft.has_ema = g.getHasEma() ? 1 : 0;
    return r;
}

void write_seed_state(schema::SeedState::Builder b, const SeedManagerSnapshot& s) {
    b.setNextStep(s.next_step);
    auto layers = b.initLayers(static_cast<unsigned>(s.layers.size()));
    for (size_t l = 0; l < s.layers.size(); ++l) {
        const SeedLayerState& in = s.layers[l];
        ESPER_REQUIRE(in.measured.size() == in.rows.size(), "layer=", l);
        schema::SeedLayerState::Builder out = layers[static_cast<unsigned>(l)];
        out.setLayer(in.layer);
        out.setWidth(in.width);
        auto seeds = out.initSeeds(static_cast<unsigned>(in.rows.size()));
        for (size_t i = 0; i < in.rows.size(); ++i) {
            schema::SeedEntry::Builder e = seeds[static_cast<unsigned>(i)];
            write_row(e.initRow(), in.rows[i]);
            const SeedMeasurements& m = in.measured[i];
            schema::SeedMeasurements::Builder mb = e.initMeasured();
            set_optional(mb.initGradientHealth(), m.gradient_health);
            set_optional(mb.initContribution(), m.contribution);
            set_optional(mb.initStability(), m.stability);
            set_optional(mb.initImprovement(), m.improvement);
            mb.setLossAtGermination(m.loss_at_germination);
        }
    }
    auto window = b.initLossWindow(static_cast<unsigned>(s.loss_window.size()));
    for (size_t i = 0; i < s.loss_window.size(); ++i)
        window.set(static_cast<unsigned>(i), s.loss_window[i]);
    set_optional(b.initLastLoss(), s.last_loss);
    b.setLastLossDelta(s.last_loss_delta);
    set_optional(b.initLossEma(), s.loss_ema);
}

SeedManagerSnapshot read_seed_state(const Decoder& d, schema::SeedState::Reader b) {
    SeedManagerSnapshot s;
    s.next_step = b.getNextStep();
    for (schema::SeedLayerState::Reader in : b.getLayers()) {
        SeedLayerState& out = s.layers.emplace_back();
        out.layer = in.getLayer();
        out.width = in.getWidth();
        for (schema::SeedEntry::Reader e : in.getSeeds()) {
            out.rows.push_back(read_row(d, e.getRow()));
            const schema::SeedMeasurements::Reader mr = e.getMeasured();
            SeedMeasurements& m = out.measured.emplace_back();
            m.gradient_health = d.optional(mr.getGradientHealth());
            m.contribution = d.optional(mr.getContribution());
            m.stability = d.optional(mr.getStability());
            m.improvement = d.optional(mr.getImprovement());
            m.loss_at_germination = mr.getLossAtGermination();
        }
    }
    s.loss_window = d.list<double>(b.getLossWindow());
    s.last_loss = d.optional(b.getLastLoss());
    s.last_loss_delta = b.getLastLossDelta();
    s.loss_ema = d.optional(b.getLossEma());
    return s;
}

// ---- Manifest parts ----

void write_trainer(schema::TrainerState::Builder b, const TrainerScalars& t) {
    b.setStep(t.step);
    b.setTotalSteps(t.total_steps);
    b.setEpochLossSum(t.epoch_loss_sum);
    b.setEpochLossSteps(t.epoch_loss_steps);
    auto w = b.initGovernorWindow(static_cast<unsigned>(t.governor_window.size()));
    for (size_t i = 0; i < t.governor_window.size(); ++i)
        w.set(static_cast<unsigned>(i), t.governor_window[i]);
    b.setGovernorTrips(t.governor_trips);
    auto ms = b.initModelStructure(static_cast<unsigned>(t.model_structure.size()));
    for (size_t i = 0; i < t.model_structure.size(); ++i)
        ms.set(static_cast<unsigned>(i), t.model_structure[i]);
}

TrainerScalars read_trainer(const Decoder& d, schema::TrainerState::Reader b) {
    TrainerScalars t;
    t.step = b.getStep();
    t.total_steps = b.getTotalSteps();
    t.epoch_loss_sum = b.getEpochLossSum();
    t.epoch_loss_steps = b.getEpochLossSteps();
    t.governor_window = d.list<double>(b.getGovernorWindow());
    t.governor_trips = b.getGovernorTrips();
    t.model_structure = d.list<int64_t>(b.getModelStructure());
    return t;
}

void write_optimizer(schema::OptimizerState::Builder b, const OptimizerScalars& o) {
    ESPER_REQUIRE(o.slot_steps.size() == o.slot_owner.size());
    b.setHostSteps(o.host_steps);
    auto layers = b.initLayers(static_cast<unsigned>(o.slot_steps.size()));
    for (size_t l = 0; l < o.slot_steps.size(); ++l) {
        ESPER_REQUIRE(o.slot_steps[l].size() == o.slot_owner[l].size(), "layer=", l);
        auto kinds = layers[static_cast<unsigned>(l)].initKinds(
            static_cast<unsigned>(o.slot_steps[l].size()));
        for (size_t k = 0; k < o.slot_steps[l].size(); ++k) {
            const std::vector<int64_t>& steps = o.slot_steps[l][k];
            const std::vector<int64_t>& owner = o.slot_owner[l][k];
            ESPER_REQUIRE(steps.size() == owner.size(), "layer=", l, " kind=", k);
            auto slots =
                kinds[static_cast<unsigned>(k)].initSlots(static_cast<unsigned>(steps.size()));
            for (size_t i = 0; i < steps.size(); ++i) {
                slots[static_cast<unsigned>(i)].setSteps(steps[i]);
                slots[static_cast<unsigned>(i)].setOwner(owner[i]);
            }
        }
    }
}

OptimizerScalars read_optimizer(schema::OptimizerState::Reader b) {
    OptimizerScalars o;
    o.host_steps = b.getHostSteps();
    for (schema::OptimizerLayer::Reader layer : b.getLayers()) {
        auto& steps = o.slot_steps.emplace_back();
        auto& owner = o.slot_owner.emplace_back();
        for (schema::OptimizerKindSlots::Reader kind : layer.getKinds()) {
            auto& ks = steps.emplace_back();
            auto& ko = owner.emplace_back();
            for (schema::OptimizerSlot::Reader slot : kind.getSlots()) {
                ks.push_back(slot.getSteps());
                ko.push_back(slot.getOwner());
            }
        }
    }
    return o;
}

std::vector<uint8_t> to_bytes(capnp::MessageBuilder& message) {
    const kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
    const kj::ArrayPtr<const kj::byte> bytes = words.asBytes();
    return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

}  // namespace

std::vector<uint8_t> encode_seed_state(const SeedManagerSnapshot& snapshot) {
    capnp::MallocMessageBuilder message;
    write_seed_state(message.initRoot<schema::SeedState>(), snapshot);
    return to_bytes(message);
}

SeedManagerSnapshot decode_seed_state(std::span<const uint8_t> bytes, const std::string& what) {
    const Decoder d(what);
    SeedManagerSnapshot s;
    d.read_message<schema::SeedState>(
        bytes, [&](schema::SeedState::Reader root) { s = read_seed_state(d, root); });
    return s;
}

std::vector<uint8_t> encode_manifest(const CheckpointData& data,
                                     const std::vector<TensorFileInfo>& files) {
    capnp::MallocMessageBuilder message;
    schema::Manifest::Builder m = message.initRoot<schema::Manifest>();
    m.setFormatVersion(kCheckpointFormatVersion);
    m.setRunId(text(data.run_id));
    m.setStep(data.step);
    m.setConfigYaml(text(data.config_yaml));
    write_trainer(m.initTrainer(), data.trainer);
    write_optimizer(m.initOptimizer(), data.optimizer);
    write_seed_state(m.initSeeds(), data.seeds);
    auto list = m.initTensors(static_cast<unsigned>(files.size()));
    for (size_t i = 0; i < files.size(); ++i) {
        schema::TensorFile::Builder f = list[static_cast<unsigned>(i)];
        f.setName(text(files[i].name));
        f.setFile(text(files[i].file));
        f.setSizeBytes(files[i].size_bytes);
        f.setSha256(text(files[i].sha256));
    }
    return to_bytes(message);
}

void decode_manifest(std::span<const uint8_t> bytes, const std::string& what, CheckpointData& data,
                     std::vector<TensorFileInfo>& files) {
    const Decoder d(what);
    d.read_message<schema::Manifest>(bytes, [&](schema::Manifest::Reader m) {
        if (m.getFormatVersion() != static_cast<uint32_t>(kCheckpointFormatVersion)) {
            d.fail("checkpoint format version ", m.getFormatVersion(),
                   ", this build reads version ", kCheckpointFormatVersion);
        }
        data.run_id = str(m.getRunId());
        data.step = m.getStep();
        data.config_yaml = str(m.getConfigYaml());
        data.trainer = read_trainer(d, m.getTrainer());
        data.optimizer = read_optimizer(m.getOptimizer());
        data.seeds = read_seed_state(d, m.getSeeds());
        files.clear();
        for (schema::TensorFile::Reader f : m.getTensors()) {
            files.push_back(TensorFileInfo{str(f.getName()), str(f.getFile()), f.getSizeBytes(),
                                           str(f.getSha256())});
        }
    });
}

}  // namespace esper::kasmina
