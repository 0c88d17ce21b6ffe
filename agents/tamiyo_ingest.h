// Bus messages into Tamiyo's view, with bounded trust (DESIGN §10, issue 18). A message counts
// only when it names this run and comes from the executor the run registered (`kasmina/0`, the
// sender of every telemetry, status and lifecycle message); the executor's RunConfig on
// config.<run> announces the run's shape, and until it has, nothing else is taken. Everything
// refused is dropped, counted per reason and logged (rate-limited, with the sender's text
// escaped); nothing on the bus can make Tamiyo store more than the announced shape. An executor
// that restarts (its config announcement's sequence starts over) gets a fresh view.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "bus/envelope.h"
#include "tamiyo/view.h"

namespace esper::agents {

// Why the agent dropped a message before the view saw it (the view's own reasons: tamiyo::Drop).
enum class IngestDrop : uint8_t {
    kWrongRun = 0,            // the envelope names another run
    kUnregisteredSender = 1,  // not the run's executor
    kUnannounced = 2,         // before the executor announced the run's shape
    kBadShape = 3,            // an announcement the view refuses (beyond its bounds, no layer)
    kShapeChanged = 4,        // a different shape from the same, running executor
    kUnknownStage = 5,        // a stage this build does not know (one record, or one event)
    kMalformed = 6,           // a field that fails capnp's checks when read
};
inline constexpr int kNumIngestDrops = 7;
std::string_view ingest_drop_name(IngestDrop d);

struct TamiyoIngestConfig {
    std::string run_id;
    std::string executor = "kasmina/0";  // the only sender whose messages are taken
    tamiyo::ViewConfig view;
};

class TamiyoIngest {
public:
    explicit TamiyoIngest(TamiyoIngestConfig config);

    // The topics to subscribe to (prefixes; ingest() checks the exact topic and the run).
    std::vector<std::string> prefixes() const;
    // Takes one decoded message; never throws for anything in it.
    void ingest(std::string_view topic, uint64_t sequence, schema::Envelope::Reader envelope);

    const tamiyo::View& view() const { return view_; }
    // Increases each time the view was rebuilt for a restarted executor.
    uint64_t generation() const { return generation_; }
    uint64_t dropped() const;
    uint64_t drops(IngestDrop d) const { return drops_[static_cast<size_t>(d)]; }
    // esper_tamiyo_dropped_total{reason} (agent and view reasons) and
    // esper_tamiyo_rejected_values_total: the counters of the status reply and heartbeat.
    std::vector<bus::Count> counters() const;

private:
    void drop(IngestDrop d, std::string_view topic, std::string_view detail = {});
    void dispatch(std::string_view topic, uint64_t sequence, schema::Envelope::Reader envelope);
    void announce(uint64_t sequence, schema::RunConfig::Reader config);
    void telemetry(std::string_view topic, schema::SeedTelemetryBatch::Reader batch);
    void view_drop(std::optional<tamiyo::Drop> d, std::string_view topic);

    TamiyoIngestConfig config_;
    tamiyo::View view_;
    std::string config_topic_, seeds_prefix_, run_topic_, events_prefix_;
    uint64_t generation_ = 0;
    uint64_t config_sequence_ = 0;  // of the newest announcement taken
    std::array<uint64_t, kNumIngestDrops> drops_{};
    // The view's drops before its last rebuild (and batches refused whole), added to its own.
    std::array<uint64_t, tamiyo::kNumDrops> past_view_drops_{};
    uint64_t past_rejected_values_ = 0;
};

}  // namespace esper::agents
