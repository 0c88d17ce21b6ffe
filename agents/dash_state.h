// What `esper dash` knows about a run, built from bus messages alone (no sockets here, so it is
// tested without a network): the run's config and status, the curves (train points from every
// run status, test points from every new evaluation), the events (lifecycle transitions, command
// results, policy changes, annotations, the end of the run), the seed swimlane (every seed that
// ever left DORMANT: its stage and α over steps) and the per-layer seed grid. It renders the JSON
// of the page and `/api/...`, the deltas pushed to open pages, and `/metrics` (Prometheus text,
// labels run/layer/stage only, never a seed). One thread (the dash's event loop) owns it.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/vocabulary.h"
#include "schemas/envelope.capnp.h"

namespace esper::agents {

struct DashLimits {
    size_t curve_points = 4000;    // train points kept (halved by keeping every other one)
    size_t events = 5000;          // newest events kept for the page and /api/events
    size_t lane_samples = 512;     // samples per seed in the swimlane (thinned the same way)
    size_t lanes = 2000;           // seeds in the swimlane (the first that left DORMANT)
    double lane_alpha_step = 0.1;  // a telemetry α this far from the last sample is a new sample
};

// Counters of the dash's own subscription, shown on the page and on /metrics.
struct DashBusStats {
    uint64_t received = 0, gaps = 0, malformed = 0;
};

class DashState {
public:
    // `run_id` empty: follow the first run seen, and a new run once its config is published.
    explicit DashState(std::string run_id = {}, DashLimits limits = {});

    // Takes one decoded message; messages of other runs and other payloads are ignored.
    // `now_ns`: wall clock at arrival (for ETA and the age of heartbeats).
    void ingest(std::string_view topic, schema::Envelope::Reader envelope, int64_t now_ns);
    // A policy history from the controller (`esper policy history`), e.g. at startup.
    void set_policy_history(const nlohmann::json& history);

    const std::string& run_id() const { return run_id_; }
    uint64_t step() const { return status_.step; }

    // Everything the page draws.
    nlohmann::json snapshot(int64_t now_ns) const;
    // What changed since the last call, in the snapshot's shape (lists hold new items only);
    // nullopt when nothing did.
    std::optional<nlohmann::json> take_delta(int64_t now_ns);
    nlohmann::json status_json(int64_t now_ns) const;  // /api/status
    // /api/seeds: every seed known (or one, given layer and seed) with its latest telemetry.
    nlohmann::json seeds_json(std::optional<uint32_t> layer = {},
                              std::optional<uint32_t> seed = {}) const;
    // /api/events?since=N: events with id > since, at most `limit`, and the next cursor.
    nlohmann::json events_since(uint64_t since, size_t limit) const;
    // /metrics in the Prometheus text exposition format 0.0.4.
    std::string prometheus(const DashBusStats& bus, int64_t now_ns) const;

private:
    struct Status {
        uint64_t step = 0, epoch = 0, total_steps = 0;
        std::optional<double> loss, accuracy, lr, samples_per_s, step_time_ms;
        std::optional<double> test_loss, test_accuracy, test_bits_per_byte;
        std::optional<uint64_t> test_step;
        int64_t host_params = 0, blueprint_params = 0;
        std::array<uint32_t, kNumSeedStages> seeds_per_stage{};
        std::string backend;
        std::string state = "waiting", state_reason;
        int64_t updated_ns = 0;
        bool seen = false;
    };
    struct Seed {
        uint32_t layer = 0, seed = 0;
        int stage = 0;
        float alpha = 0;
        uint64_t steps_in_stage = 0, step = 0;
        nlohmann::json metrics;  // the latest measured values (absent = not measured)
    };
    struct LaneSample {
        uint64_t step;
        int stage;
        float alpha;
    };

    void reset(std::string run_id);
    bool accept_run(std::string_view run_id, bool is_config);
    void on_status(schema::RunStatus::Reader s, int64_t now_ns);
    void on_seeds(schema::SeedTelemetryBatch::Reader b);
    void on_transition(schema::LifecycleTransition::Reader t, int64_t sent_ns);
    void on_config(schema::RunConfig::Reader c);
    void add_event(nlohmann::json event);
    void lane_sample(uint32_t layer, uint32_t seed, uint64_t step, int stage, float alpha,
                     bool force);
    nlohmann::json run_json() const;
    nlohmann::json grid_json(uint32_t layer) const;
    std::optional<double> eta_s() const;

    std::string filter_, run_id_;
    DashLimits limits_;
    // run
    nlohmann::json config_ = nlohmann::json::object();  // backend, world, layers, yaml (RunConfig)
    Status status_;
    std::deque<nlohmann::json> train_, test_;
    std::deque<nlohmann::json> events_;
    uint64_t next_event_id_ = 1;
    std::map<std::pair<uint32_t, uint32_t>, Seed> seeds_;
    std::map<std::pair<uint32_t, uint32_t>, std::vector<LaneSample>> lanes_;
    nlohmann::json policy_ = nlohmann::json::object();  // {"active": {...}, "history": [...]}
    std::map<std::string, nlohmann::json> agents_;      // heartbeats by agent name
    // for ETA: two status points (step, wall ns) some seconds apart
    std::deque<std::pair<uint64_t, int64_t>> progress_;
    // counters for /metrics
    std::map<std::pair<uint32_t, int>, uint64_t> transitions_;  // (layer, to stage)
    std::map<std::string, uint64_t> commands_;                  // by outcome
    std::map<std::string, uint64_t> policy_changes_;            // by action
    uint64_t annotations_ = 0;
    // pending delta
    struct Pending {
        size_t train = 0, test = 0, events = 0;                 // new items at the back
        std::map<std::pair<uint32_t, uint32_t>, size_t> lanes;  // new samples at the back
        std::vector<uint32_t> grid;                             // layers changed
        bool status = false, run = false, policy = false, reset = false;
    } pending_;
};

}  // namespace esper::agents
