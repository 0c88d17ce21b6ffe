// Tamiyo's intake of bus messages (agents/tamiyo_ingest.h): run, sender and shape checks, then
// the wire → tamiyo::View translation.
#include "agents/tamiyo_ingest.h"

#include <fmt/format.h>
#include <kj/exception.h>

#include <exception>

#include "agents/wire_vocabulary.h"
#include "core/log.h"

namespace esper::agents {
namespace {

Logger& log() { return logger("tamiyo.ingest"); }

}  // namespace

std::string_view ingest_drop_name(IngestDrop d) {
    switch (d) {
        case IngestDrop::kWrongRun:
            return "wrong_run";
        case IngestDrop::kUnregisteredSender:
            return "unregistered_sender";
        case IngestDrop::kUnannounced:
            return "unannounced";
        case IngestDrop::kBadShape:
            return "bad_shape";
        case IngestDrop::kShapeChanged:
            return "shape_changed";
        case IngestDrop::kUnknownStage:
            return "unknown_stage";
        case IngestDrop::kMalformed:
            return "malformed";
    }
    return "unknown";
}

TamiyoIngest::TamiyoIngest(TamiyoIngestConfig config)
    : config_(std::move(config)),
      view_(config_.view),
      config_topic_("config." + config_.run_id),
      seeds_prefix_("telemetry.seeds." + config_.run_id + "."),
      run_topic_("telemetry.run." + config_.run_id),
      events_prefix_("events.lifecycle." + config_.run_id + ".") {}

std::vector<std::string> TamiyoIngest::prefixes() const {
    return {config_topic_, seeds_prefix_, run_topic_, events_prefix_};
}

uint64_t TamiyoIngest::dropped() const {
    uint64_t n = 0;
    for (uint64_t d : drops_) n += d;
    for (size_t i = 0; i < past_view_drops_.size(); ++i)
        n += past_view_drops_[i] + view_.drops()[i];
    return n;
}

std::vector<bus::Count> TamiyoIngest::counters() const {
    std::vector<bus::Count> out;
    const std::string dropped = "esper_tamiyo_dropped_total";
    for (int i = 0; i < kNumIngestDrops; ++i)
        out.push_back({dropped, std::string(ingest_drop_name(IngestDrop(i))), drops_[size_t(i)]});
    for (int i = 0; i < tamiyo::kNumDrops; ++i)
        out.push_back({dropped, std::string(tamiyo::drop_name(tamiyo::Drop(i))),
                       past_view_drops_[size_t(i)] + view_.drops()[size_t(i)]});
    out.push_back({"esper_tamiyo_rejected_values_total", "",
                   past_rejected_values_ + view_.rejected_values()});
    return out;
}

void TamiyoIngest::drop(IngestDrop d, std::string_view topic, std::string_view detail) {
    ++drops_[static_cast<size_t>(d)];
    ESPER_LOG_WARN_RATE(log(), 5, "dropped topic=", bus::printable(topic),
                        " reason=", ingest_drop_name(d), detail.empty() ? "" : " ", detail,
                        " dropped_total=", dropped());
}

void TamiyoIngest::view_drop(std::optional<tamiyo::Drop> d, std::string_view topic) {
    if (!d) return;
    ESPER_LOG_WARN_RATE(log(), 5, "dropped topic=", bus::printable(topic),
                        " reason=", tamiyo::drop_name(*d), " dropped_total=", dropped());
}

void TamiyoIngest::ingest(std::string_view topic, uint64_t sequence,
                          schema::Envelope::Reader envelope) {
    // decode() validated the structure; a text field is checked only when read, so a malformed
    // one throws here. Bus input is never fatal: drop, count, log.
    try {
        dispatch(topic, sequence, envelope);
    } catch (const kj::Exception& e) {
        drop(IngestDrop::kMalformed, topic, bus::printable(e.getDescription().cStr(), 200));
    } catch (const std::exception& e) {
        drop(IngestDrop::kMalformed, topic, bus::printable(e.what(), 200));
    }
}

void TamiyoIngest::dispatch(std::string_view topic, uint64_t sequence,
                            schema::Envelope::Reader envelope) {
    if (std::string_view(envelope.getRunId().cStr()) != config_.run_id)
        return drop(IngestDrop::kWrongRun, topic);
    const std::string_view sender = envelope.getSender().cStr();
    if (sender != config_.executor)
        return drop(IngestDrop::kUnregisteredSender, topic, "sender=" + bus::printable(sender));
    auto p = envelope.getPayload();
    if (topic == config_topic_) {
        if (p.isRunConfig()) announce(sequence, p.getRunConfig());
        return;
    }
    const bool seeds = topic.starts_with(seeds_prefix_), run = topic == run_topic_,
               events = topic.starts_with(events_prefix_);
    if (!seeds && !run && !events) return;  // another run's topic that shares our prefix
    if (!view_.shape()) return drop(IngestDrop::kUnannounced, topic);
    switch (p.which()) {
        case schema::Envelope::Payload::SEED_TELEMETRY:
            if (seeds) telemetry(topic, p.getSeedTelemetry());
            break;
        case schema::Envelope::Payload::RUN_STATUS: {
            if (!run) break;
            auto s = p.getRunStatus();
            tamiyo::RunStatus rs;
            rs.step = s.getStep();
            rs.epoch = s.getEpoch();
            if (s.getLossMeasured()) rs.loss = s.getLoss();
            if (s.getAccuracyMeasured()) rs.accuracy = s.getAccuracy();
            if (s.getTestMeasured()) {  // rules on run.test_loss / run.test_accuracy
                rs.test_loss = s.getTestLoss();
                rs.test_accuracy = s.getTestAccuracy();
            }
            rs.learning_rate = s.getLr();
            rs.host_params = static_cast<int64_t>(s.getHostParams());
            rs.blueprint_params = static_cast<int64_t>(s.getBlueprintParams());
            view_drop(view_.ingest_run_status(rs), topic);
            break;
        }
        case schema::Envelope::Payload::LIFECYCLE_TRANSITION: {
            if (!events) break;
            auto e = p.getLifecycleTransition();
            auto from = from_wire(e.getFrom()), to = from_wire(e.getTo());
            if (!from || !to)
                return drop(IngestDrop::kUnknownStage, topic,
                            fmt::format("{}->{}", static_cast<uint16_t>(e.getFrom()),
                                        static_cast<uint16_t>(e.getTo())));
            tamiyo::TransitionEvent t;
            t.layer = e.getLayer();
            t.seed = e.getSeed();
            t.step = e.getStep();
            t.from = *from;
            t.to = *to;
            t.reason = e.getReason().cStr();
            view_drop(view_.ingest_transition(t), topic);
            break;
        }
        default:
            break;  // other payloads on these topics are not ours
    }
}

void TamiyoIngest::announce(uint64_t sequence, schema::RunConfig::Reader config) {
    tamiyo::RunShape shape;
    shape.total_steps = config.getSteps();
    auto layers = config.getLayers();
    if (layers.size() > config_.view.max_layers)  // before copying anything out of it
        return drop(
            IngestDrop::kBadShape, config_topic_,
            fmt::format("{} layers > max_layers {}", layers.size(), config_.view.max_layers));
    for (auto l : layers) shape.seeds_per_layer.push_back(l.getSeeds());
    const bool restarted = view_.shape() && sequence <= config_sequence_;
    if (view_.shape() && !restarted) {
        config_sequence_ = sequence;
        if (shape != *view_.shape()) drop(IngestDrop::kShapeChanged, config_topic_);
        return;  // the periodic re-announcement of the shape we have
    }
    tamiyo::View fresh(config_.view);
    if (auto why = fresh.announce(shape)) return drop(IngestDrop::kBadShape, config_topic_, *why);
    if (restarted) {
        // A new executor process (its sequences start over): what we knew is about its
        // predecessor, whose steps may run ahead of the restarted one's.
        ++generation_;
        ESPER_LOG_INFO(log(), "executor=", config_.executor, " restarted (config sequence ",
                       sequence, " <= ", config_sequence_, "); view rebuilt");
    }
    // Nothing was taken before the first announcement, so the fresh view loses nothing then;
    // the counters count what this process dropped, across rebuilds.
    for (int i = 0; i < tamiyo::kNumDrops; ++i)
        past_view_drops_[size_t(i)] += view_.drops()[size_t(i)];
    past_rejected_values_ += view_.rejected_values();
    view_ = std::move(fresh);
    config_sequence_ = sequence;
    ESPER_LOG_INFO(log(), "run=", config_.run_id, " shape layers=", shape.seeds_per_layer.size(),
                   " total_steps=", shape.total_steps);
}

void TamiyoIngest::telemetry(std::string_view topic, schema::SeedTelemetryBatch::Reader b) {
    const uint32_t layer = b.getLayer();
    const auto& shape = *view_.shape();
    auto records = b.getSeeds();
    // A batch never holds more records than its layer has seeds: refuse it whole, unread.
    if (layer >= shape.seeds_per_layer.size() || records.size() > shape.seeds_per_layer[layer]) {
        ++past_view_drops_[static_cast<size_t>(tamiyo::Drop::kOutOfShape)];
        view_drop(tamiyo::Drop::kOutOfShape, topic);
        return;
    }
    for (auto r : records) {
        auto st = from_wire(r.getStage());
        if (!st) {
            drop(IngestDrop::kUnknownStage, topic,
                 fmt::format("seed={} stage={}", r.getSeed(), static_cast<uint16_t>(r.getStage())));
            continue;
        }
        tamiyo::SeedTelemetry t;
        t.layer = layer;
        t.seed = r.getSeed();
        t.step = b.getStepEnd();
        t.stage = *st;
        t.alpha = r.getAlpha();
        t.steps_in_stage = r.getStepsInStage();
        auto& mt = t.metrics;
        if (r.getActivationMeasured()) {
            mt.act_mean = r.getActMean();
            mt.act_var = r.getActVar();
            mt.dead_fraction = r.getDeadFraction();
            mt.health = r.getHealth();
        }
        if (r.getGradientMeasured()) {
            mt.grad_norm = r.getGradNorm();
            mt.blueprint_grad_norm = r.getBlueprintGradNorm();
        }
        if (r.getGradientHealthMeasured()) mt.gradient_health = r.getGradientHealth();
        if (r.getContributionMeasured()) mt.contribution = r.getContribution();
        t.chunk_width = r.getChunkWidth();
        t.blueprint_params = r.getBlueprintParams();
        // The executor's prices, indexed by BlueprintKind value (extra kinds of a newer executor
        // are ignored; missing ones stay unpublished).
        auto prices = r.getGerminationParams();
        for (unsigned k = 0; k < prices.size() && k < t.germination_params.size(); ++k)
            t.germination_params[k] = prices[k];
        view_drop(view_.ingest_telemetry(t), topic);
    }
}

}  // namespace esper::agents
