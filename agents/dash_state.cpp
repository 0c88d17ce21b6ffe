// The dashboard's model of a run (agents/dash_state.h). Events reuse the tool JSON of `esper tap`
// (agents/tool_json.h), so stages and kinds are spelled the vocabulary's way everywhere; the
// frequent seed telemetry is read field by field. Prometheus numbers go through {fmt}.
#include "agents/dash_state.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iterator>

#include "agents/tool_json.h"
#include "agents/wire_vocabulary.h"
#include "core/clock.h"

namespace esper::agents {

namespace {

using nlohmann::json;

constexpr size_t kNoIndex = static_cast<size_t>(-1);

json opt(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

// A Float32 from the wire as the double its shortest decimal text denotes (0.61f reads 0.61, as
// in the tool JSON), so pages and /metrics show the number that was sent.
double f32(float v) {
    return std::isfinite(v) ? std::strtod(fmt::format("{}", v).c_str(), nullptr) : double(v);
}

std::optional<double> finite(double v) {
    return std::isfinite(v) ? std::optional<double>(v) : std::nullopt;
}

int stage_value(schema::SeedStage s) {
    const auto st = from_wire(s);
    return st ? static_cast<int>(*st) : -1;
}

std::string stage_text(int s) {
    return s >= 0 && s < kNumSeedStages ? std::string(stage_name(static_cast<SeedStage>(s)))
                                        : std::to_string(s);
}

// Keeps every other element (the newest always stays), halving a long series.
template <typename Seq>
void thin(Seq& seq) {
    Seq out;
    const size_t n = seq.size();
    for (size_t i = 0; i < n; ++i)
        if ((n - 1 - i) % 2 == 0) out.push_back(std::move(seq[i]));
    seq = std::move(out);
}

// Prometheus label values: backslash, double quote and newline are escaped (text format 0.0.4);
// there is no Debian C++ library for the exposition format.
std::string label_value(std::string_view v) {
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"') out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out;
}

std::string run_state_name(schema::RunState s) {
    switch (s) {
        case schema::RunState::TRAINING:
            return "training";
        case schema::RunState::FINISHED:
            return "finished";
        case schema::RunState::STOPPED:
            return "stopped";
        case schema::RunState::FAILED:
            return "failed";
    }
    return std::to_string(static_cast<unsigned>(s));  // a newer sender's state
}

json payload_json(schema::Envelope::Reader env) {
    return json::parse(payload_to_json(env), nullptr, false);
}

}  // namespace

DashState::DashState(std::string run_id, DashLimits limits)
    : filter_(std::move(run_id)), run_id_(filter_), limits_(limits) {}

void DashState::reset(std::string run_id) {
    DashLimits limits = limits_;
    std::string filter = filter_;
    *this = DashState(std::move(filter), limits);
    run_id_ = std::move(run_id);
    pending_.reset = true;
}

bool DashState::accept_run(std::string_view run_id, bool is_config) {
    if (run_id.empty()) return false;
    if (!filter_.empty()) return run_id == filter_;
    if (run_id_.empty()) {
        run_id_ = std::string(run_id);
        pending_.run = true;
        return true;
    }
    if (run_id == run_id_) return true;
    if (is_config) {  // a new run announced itself: follow it
        reset(std::string(run_id));
        return true;
    }
    return false;
}

void DashState::ingest(std::string_view topic, schema::Envelope::Reader env, int64_t now_ns) {
    (void)topic;
    auto p = env.getPayload();
    const std::string sender = env.getSender().cStr();
    if (p.isHeartbeat()) {  // heartbeats carry no run in their topic; the envelope has it
        auto h = p.getHeartbeat();
        if (!run_id_.empty() && env.getRunId().size() > 0 && env.getRunId() != run_id_) return;
        agents_[h.getAgent().cStr()] = json{
            {"name", h.getAgent().cStr()}, {"role", h.getRole().cStr()},   {"pid", h.getPid()},
            {"step", h.getStep()},         {"state", h.getState().cStr()}, {"seen_ns", now_ns}};
        pending_.status = true;
        return;
    }
    if (!accept_run(env.getRunId().cStr(), p.isRunConfig())) return;
    const int64_t sent_ns = env.getSentAtNs();
    switch (p.which()) {
        case schema::Envelope::Payload::RUN_CONFIG:
            on_config(p.getRunConfig());
            break;
        case schema::Envelope::Payload::RUN_STATUS:
            on_status(p.getRunStatus(), now_ns);
            break;
        case schema::Envelope::Payload::SEED_TELEMETRY:
            on_seeds(p.getSeedTelemetry());
            break;
        case schema::Envelope::Payload::LIFECYCLE_TRANSITION:
            on_transition(p.getLifecycleTransition(), sent_ns);
            break;
        case schema::Envelope::Payload::COMMAND_RESULT: {
            json r = payload_json(env);
            if (!r.is_object()) break;
            const json& cmd = r.value("command", json::object());
            const json& ack = r.value("ack", json::object());
            std::string action;
            json target = json::object();
            for (const char* a : {"germinate", "transition", "cull", "cancel", "rollback",
                                  "setAlphaSchedule", "batch"})
                if (cmd.contains(a)) {
                    action = a;
                    if (cmd[a].is_object()) target = cmd[a];
                }
            const std::string outcome = ack.value("outcome", "");
            ++commands_[outcome];
            add_event({{"kind", "command"},
                       {"step", ack.value("step", status_.step)},
                       {"time_ns", sent_ns},
                       {"sender", sender},
                       {"action", action},
                       {"layer", target.value("layer", 0)},
                       {"seed", target.value("seed", 0)},
                       {"to", target.value("toStage", "")},
                       {"outcome", outcome},
                       {"reason", cmd.value("reason", "")},
                       {"ack_reason", ack.value("reason", "")}});
            break;
        }
        case schema::Envelope::Payload::POLICY_CHANGE: {
            auto c = p.getPolicyChange();
            json r = payload_json(env);
            const std::string action = r.value("action", "");
            ++policy_changes_[action];
            json entry = {{"kind", "policy"},
                          {"step", c.getStep()},
                          {"time_ns", sent_ns},
                          {"action", action},
                          {"name", c.getName().cStr()},
                          {"policy_kind", c.getKind().cStr()},
                          {"previous", c.getPrevious().cStr()},
                          {"reason", c.getReason().cStr()}};
            policy_["active"] = {{"name", entry["name"]},
                                 {"kind", entry["policy_kind"]},
                                 {"since_step", entry["step"]}};
            if (!policy_.contains("history")) policy_["history"] = json::array();
            policy_["history"].push_back(entry);
            pending_.policy = true;
            add_event(std::move(entry));
            break;
        }
        case schema::Envelope::Payload::ANNOTATION: {
            auto a = p.getAnnotation();
            ++annotations_;
            add_event({{"kind", "annotation"},
                       {"step", a.getStep() != 0 ? a.getStep() : status_.step},
                       {"time_ns", sent_ns},
                       {"sender", sender},
                       {"label", a.getKind().cStr()},
                       {"text", a.getText().cStr()}});
            break;
        }
        default:
            break;
    }
}

void DashState::on_config(schema::RunConfig::Reader c) {
    json layers = json::array();
    uint32_t l = 0;
    for (auto layer : c.getLayers())
        layers.push_back(
            {{"layer", l++}, {"width", layer.getWidth()}, {"seeds", layer.getSeeds()}});
    config_ = {{"backend", c.getBackend().cStr()},
               {"world", c.getWorldSize()},
               {"steps", c.getSteps()},
               {"batch_size", c.getBatchSize()},
               {"telemetry_interval_steps", c.getTelemetryIntervalSteps()},
               {"seed", c.getSeed()},
               {"config_path", c.getSourcePath().cStr()},
               {"yaml", c.getYaml().cStr()},
               {"layers", layers}};
    if (status_.total_steps == 0) status_.total_steps = c.getSteps();
    pending_.run = true;
}

void DashState::on_status(schema::RunStatus::Reader s, int64_t now_ns) {
    if (status_.seen && s.getStep() < status_.step && s.getState() == schema::RunState::TRAINING)
        return;  // stale (a reordered or replayed status)
    Status& st = status_;
    st.seen = true;
    st.step = s.getStep();
    st.epoch = s.getEpoch();
    if (s.getTotalSteps() > 0) st.total_steps = s.getTotalSteps();
    st.loss = s.getLossMeasured() ? finite(f32(s.getLoss())) : std::nullopt;
    st.accuracy = s.getAccuracyMeasured() ? finite(f32(s.getAccuracy())) : std::nullopt;
    st.samples_per_s = s.getLossMeasured() ? finite(s.getSamplesPerS()) : std::nullopt;
    st.step_time_ms = s.getLossMeasured() ? finite(f32(s.getStepTimeMs())) : std::nullopt;
    st.lr = finite(f32(s.getLr()));
    st.host_params = static_cast<int64_t>(s.getHostParams());
    st.blueprint_params = static_cast<int64_t>(s.getBlueprintParams());
    auto per_stage = s.getSeedsPerStage();
    for (unsigned i = 0; i < per_stage.size() && i < st.seeds_per_stage.size(); ++i)
        st.seeds_per_stage[i] = per_stage[i];
    if (s.getBackend().size() > 0) st.backend = s.getBackend().cStr();
    st.updated_ns = now_ns;
    const bool new_test =
        s.getTestMeasured() && (!st.test_step || *st.test_step != s.getTestStep());
    if (s.getTestMeasured()) {
        st.test_step = s.getTestStep();
        st.test_loss = finite(f32(s.getTestLoss()));
        st.test_accuracy = finite(f32(s.getTestAccuracy()));
    }
    if (s.getTestBitsPerByteMeasured()) st.test_bits_per_byte = finite(f32(s.getTestBitsPerByte()));
    const std::string previous_state = st.state;
    st.state = run_state_name(s.getState());
    st.state_reason = s.getStateReason().cStr();
    pending_.status = true;

    // One train point per status; a status that only repeats the step (the final one) is not.
    if (train_.empty() || train_.back()["step"].get<uint64_t>() < st.step) {
        json point = {{"step", st.step},
                      {"time_ns", now_ns},
                      {"loss", opt(st.loss)},
                      {"accuracy", opt(st.accuracy)},
                      {"lr", opt(st.lr)},
                      {"samples_per_s", opt(st.samples_per_s)},
                      {"host_params", st.host_params},
                      {"blueprint_params", st.blueprint_params},
                      {"seeds_per_stage", st.seeds_per_stage}};
        train_.push_back(std::move(point));
        ++pending_.train;
        if (train_.size() > limits_.curve_points) {
            thin(train_);
            pending_.reset = true;
        }
    }
    if (new_test) {
        test_.push_back({{"step", *st.test_step},
                         {"loss", opt(st.test_loss)},
                         {"accuracy", opt(st.test_accuracy)},
                         {"bits_per_byte", opt(st.test_bits_per_byte)}});
        ++pending_.test;
    }
    if (st.state != "training" && previous_state != st.state)
        add_event({{"kind", "run"},
                   {"step", st.step},
                   {"time_ns", now_ns},
                   {"state", st.state},
                   {"reason", st.state_reason}});
    progress_.emplace_back(st.step, now_ns);
    while (progress_.size() > 2 && progress_.back().second - progress_[1].second > 10'000'000'000)
        progress_.pop_front();
}

void DashState::on_seeds(schema::SeedTelemetryBatch::Reader b) {
    const uint32_t layer = b.getLayer();
    const uint64_t step = b.getStepEnd();
    bool changed = false;
    for (auto r : b.getSeeds()) {
        const int stage = stage_value(r.getStage());
        if (stage < 0) continue;
        Seed& s = seeds_[{layer, r.getSeed()}];
        changed =
            changed || s.stage != stage || std::fabs(s.alpha - r.getAlpha()) > 1e-3f || s.step == 0;
        s.layer = layer;
        s.seed = r.getSeed();
        s.stage = stage;
        s.alpha = r.getAlpha();
        s.steps_in_stage = r.getStepsInStage();
        s.step = step;
        json m = json::object();
        if (r.getActivationMeasured()) {
            m["act_mean"] = f32(r.getActMean());
            m["act_var"] = f32(r.getActVar());
            m["dead_fraction"] = f32(r.getDeadFraction());
            m["health"] = f32(r.getHealth());
        }
        if (r.getGradientMeasured()) {
            m["grad_norm"] = f32(r.getGradNorm());
            m["blueprint_grad_norm"] = f32(r.getBlueprintGradNorm());
        }
        if (r.getGradientHealthMeasured()) m["gradient_health"] = f32(r.getGradientHealth());
        if (r.getContributionMeasured()) m["contribution"] = f32(r.getContribution());
        if (r.getBlueprintParams() > 0) m["blueprint_params"] = r.getBlueprintParams();
        s.metrics = std::move(m);
        if (stage != 0 || lanes_.count({layer, r.getSeed()}))
            lane_sample(layer, r.getSeed(), step, stage, r.getAlpha(), false);
    }
    if (changed &&
        std::find(pending_.grid.begin(), pending_.grid.end(), layer) == pending_.grid.end())
        pending_.grid.push_back(layer);
}

void DashState::on_transition(schema::LifecycleTransition::Reader t, int64_t sent_ns) {
    const int from = stage_value(t.getFrom()), to = stage_value(t.getTo());
    if (to < 0) return;
    const uint32_t layer = t.getLayer(), seed = t.getSeed();
    Seed& s = seeds_[{layer, seed}];
    s.layer = layer;
    s.seed = seed;
    s.stage = to;
    s.alpha = t.getAlpha();
    s.steps_in_stage = 0;
    s.step = std::max<uint64_t>(s.step, t.getStep());
    if (std::find(pending_.grid.begin(), pending_.grid.end(), layer) == pending_.grid.end())
        pending_.grid.push_back(layer);
    ++transitions_[{layer, to}];
    lane_sample(layer, seed, t.getStep(), to, t.getAlpha(), true);
    json origin = "auto";
    switch (t.getOrigin()) {
        case schema::TransitionOrigin::CONTROLLER:
            origin = "controller";
            break;
        case schema::TransitionOrigin::OPERATOR:
            origin = "operator";
            break;
        case schema::TransitionOrigin::GOVERNOR:
            origin = "governor";
            break;
        default:
            break;
    }
    add_event({{"kind", "transition"},
               {"step", t.getStep()},
               {"time_ns", sent_ns},
               {"layer", layer},
               {"seed", seed},
               {"from", stage_text(from)},
               {"to", stage_text(to)},
               {"origin", origin},
               {"alpha", f32(t.getAlpha())},
               {"reason", t.getReason().cStr()}});
}

void DashState::lane_sample(uint32_t layer, uint32_t seed, uint64_t step, int stage, float alpha,
                            bool force) {
    auto key = std::make_pair(layer, seed);
    auto it = lanes_.find(key);
    if (it == lanes_.end()) {
        if (stage == 0 || lanes_.size() >= limits_.lanes) return;
        it = lanes_.emplace(key, std::vector<LaneSample>{}).first;
    }
    std::vector<LaneSample>& lane = it->second;
    if (!lane.empty()) {
        const LaneSample& last = lane.back();
        if (step < last.step) return;  // telemetry older than a transition already drawn
        const bool same =
            last.stage == stage && std::fabs(last.alpha - alpha) < limits_.lane_alpha_step;
        if (same && !force) return;
        if (same && last.step == step) return;
    }
    lane.push_back({step, stage, alpha});
    size_t& n = pending_.lanes[key];
    if (n != kNoIndex) ++n;
    if (lane.size() > limits_.lane_samples) {
        thin(lane);
        n = kNoIndex;  // resend the whole lane
    }
}

void DashState::add_event(json event) {
    event["id"] = next_event_id_++;
    if (event.contains("time_ns")) event["time"] = utc_iso8601(event["time_ns"].get<int64_t>());
    events_.push_back(std::move(event));
    ++pending_.events;
    while (events_.size() > limits_.events) events_.pop_front();
}

void DashState::set_policy_history(const json& history) {
    if (!history.is_array()) return;
    json h = json::array();
    for (const json& e : history) {
        h.push_back({{"kind", "policy"},
                     {"step", e.value("loadedAtStep", 0)},
                     {"time_ns", e.value("loadedAtNs", 0)},
                     {"action", "loaded"},
                     {"name", e.value("name", "")},
                     {"policy_kind", e.value("kind", "")},
                     {"active", e.value("active", false)}});
        if (e.value("active", false))
            policy_["active"] = {{"name", e.value("name", "")},
                                 {"kind", e.value("kind", "")},
                                 {"since_step", e.value("loadedAtStep", 0)}};
    }
    // The controller's own record comes first; changes seen on the bus after it follow.
    int64_t newest = 0;
    for (const json& e : h) newest = std::max<int64_t>(newest, e.value("time_ns", int64_t{0}));
    if (policy_.contains("history"))
        for (const json& e : policy_["history"])
            if (e.value("time_ns", int64_t{0}) > newest) h.push_back(e);
    policy_["history"] = std::move(h);
    pending_.policy = true;
}

std::optional<double> DashState::eta_s() const {
    if (progress_.size() < 2 || status_.total_steps == 0 || status_.state != "training")
        return std::nullopt;
    const auto& [s0, t0] = progress_.front();
    const auto& [s1, t1] = progress_.back();
    if (s1 <= s0 || t1 <= t0) return std::nullopt;
    const double steps_per_s = double(s1 - s0) / (double(t1 - t0) * 1e-9);
    const double left =
        status_.total_steps > status_.step ? double(status_.total_steps - status_.step) : 0.0;
    return left / steps_per_s;
}

json DashState::run_json() const {
    json r = config_.is_object() ? config_ : json::object();
    r["id"] = run_id_;
    return r;
}

json DashState::status_json(int64_t now_ns) const {
    const Status& s = status_;
    json agents = json::array();
    for (const auto& [name, a] : agents_) {
        json entry = a;
        entry["age_s"] = double(now_ns - a.value("seen_ns", now_ns)) * 1e-9;
        agents.push_back(std::move(entry));
    }
    int ranks = 0;
    for (const auto& [name, a] : agents_) ranks += a.value("role", "") == "executor" ? 1 : 0;
    json per_stage = json::object();
    for (int i = 0; i < kNumSeedStages; ++i)
        per_stage[stage_text(i)] = s.seeds_per_stage[static_cast<size_t>(i)];
    return {{"run", run_id_},
            {"state", s.state},
            {"state_reason", s.state_reason},
            {"step", s.step},
            {"epoch", s.epoch},
            {"total_steps", s.total_steps},
            {"loss", opt(s.loss)},
            {"accuracy", opt(s.accuracy)},
            {"lr", opt(s.lr)},
            {"samples_per_s", opt(s.samples_per_s)},
            {"step_time_ms", opt(s.step_time_ms)},
            {"eta_s", opt(eta_s())},
            {"test_step", s.test_step ? json(*s.test_step) : json(nullptr)},
            {"test_loss", opt(s.test_loss)},
            {"test_accuracy", opt(s.test_accuracy)},
            {"test_bits_per_byte", opt(s.test_bits_per_byte)},
            {"host_params", s.host_params},
            {"blueprint_params", s.blueprint_params},
            {"seeds_per_stage", per_stage},
            {"backend", !s.backend.empty() ? s.backend : config_.value("backend", "")},
            {"world", config_.value("world", 0)},
            {"ranks_seen", ranks},
            {"updated", s.updated_ns ? json(utc_iso8601(s.updated_ns)) : json(nullptr)},
            {"agents", agents}};
}

json DashState::grid_json(uint32_t layer) const {
    json stages = json::array(), alphas = json::array();
    uint32_t n = 0;
    if (config_.contains("layers"))
        for (const json& l : config_["layers"])
            if (l.value("layer", 0u) == layer) n = l.value("seeds", 0u);
    for (auto it = seeds_.lower_bound({layer, 0}); it != seeds_.end() && it->first.first == layer;
         ++it)
        n = std::max(n, it->first.second + 1);
    std::vector<int> st(n, 0);
    std::vector<float> al(n, 0.0f);
    for (auto it = seeds_.lower_bound({layer, 0}); it != seeds_.end() && it->first.first == layer;
         ++it) {
        st[it->first.second] = it->second.stage;
        al[it->first.second] = it->second.alpha;
    }
    for (uint32_t i = 0; i < n; ++i) {
        stages.push_back(st[i]);
        alphas.push_back(std::round(al[i] * 1000.0f) / 1000.0f);
    }
    return {{"layer", layer}, {"stages", stages}, {"alphas", alphas}};
}

json DashState::seeds_json(std::optional<uint32_t> layer, std::optional<uint32_t> seed) const {
    json out = json::array();
    for (const auto& [key, s] : seeds_) {
        if (layer && key.first != *layer) continue;
        if (seed && key.second != *seed) continue;
        out.push_back({{"layer", s.layer},
                       {"seed", s.seed},
                       {"stage", stage_text(s.stage)},
                       {"alpha", s.alpha},
                       {"steps_in_stage", s.steps_in_stage},
                       {"step", s.step},
                       {"metrics", s.metrics}});
    }
    return {{"run", run_id_}, {"seeds", out}};
}

json DashState::events_since(uint64_t since, size_t limit) const {
    json out = json::array();
    auto it = std::find_if(events_.begin(), events_.end(),
                           [&](const json& e) { return e["id"].get<uint64_t>() > since; });
    for (; it != events_.end() && out.size() < limit; ++it) out.push_back(*it);
    const uint64_t next = out.empty() ? since : out.back()["id"].get<uint64_t>();
    return {{"run", run_id_}, {"next", next}, {"events", out}};
}

json DashState::snapshot(int64_t now_ns) const {
    json lanes = json::object();
    for (const auto& [key, lane] : lanes_) {
        json samples = json::array();
        for (const LaneSample& s : lane) samples.push_back({s.step, s.stage, s.alpha});
        lanes[fmt::format("{}:{}", key.first, key.second)] = std::move(samples);
    }
    std::vector<uint32_t> layers;
    for (const auto& [key, s] : seeds_)
        if (layers.empty() || layers.back() != key.first) layers.push_back(key.first);
    if (config_.contains("layers"))
        for (const json& l : config_["layers"]) {
            const uint32_t id = l.value("layer", 0u);
            if (std::find(layers.begin(), layers.end(), id) == layers.end()) layers.push_back(id);
        }
    std::sort(layers.begin(), layers.end());
    json grid = json::array();
    for (uint32_t l : layers) grid.push_back(grid_json(l));
    json stages = json::array();
    for (std::string_view n : kSeedStageNames) stages.push_back(n);
    return {{"reset", true},
            {"stages", stages},
            {"run", run_json()},
            {"status", status_json(now_ns)},
            {"train", json(train_)},
            {"test", json(test_)},
            {"events", json(events_)},
            {"lanes", lanes},
            {"grid", grid},
            {"policy", policy_}};
}

std::optional<json> DashState::take_delta(int64_t now_ns) {
    Pending p = std::move(pending_);
    pending_ = Pending{};
    if (p.reset) return snapshot(now_ns);
    json d = json::object();
    if (p.run) d["run"] = run_json();
    if (p.status || p.train > 0) d["status"] = status_json(now_ns);
    if (p.train > 0)
        d["train"] = json(std::vector<json>(
            train_.end() - static_cast<std::ptrdiff_t>(std::min(p.train, train_.size())),
            train_.end()));
    if (p.test > 0)
        d["test"] = json(std::vector<json>(
            test_.end() - static_cast<std::ptrdiff_t>(std::min(p.test, test_.size())),
            test_.end()));
    if (p.events > 0)
        d["events"] = json(std::vector<json>(
            events_.end() - static_cast<std::ptrdiff_t>(std::min(p.events, events_.size())),
            events_.end()));
    if (!p.lanes.empty()) {
        json lanes = json::object(), full = json::object();
        for (const auto& [key, n] : p.lanes) {
            auto it = lanes_.find(key);
            if (it == lanes_.end()) continue;
            const auto& lane = it->second;
            const size_t count = n == kNoIndex ? lane.size() : std::min(n, lane.size());
            json samples = json::array();
            for (size_t i = lane.size() - count; i < lane.size(); ++i)
                samples.push_back({lane[i].step, lane[i].stage, lane[i].alpha});
            (n == kNoIndex ? full : lanes)[fmt::format("{}:{}", key.first, key.second)] =
                std::move(samples);
        }
        if (!lanes.empty()) d["lanes"] = std::move(lanes);
        if (!full.empty()) d["lanes_full"] = std::move(full);
    }
    if (!p.grid.empty()) {
        json grid = json::array();
        std::sort(p.grid.begin(), p.grid.end());
        for (uint32_t l : p.grid) grid.push_back(grid_json(l));
        d["grid"] = std::move(grid);
    }
    if (p.policy) d["policy"] = policy_;
    if (d.empty()) return std::nullopt;
    return d;
}

std::string DashState::prometheus(const DashBusStats& bus, int64_t now_ns) const {
    std::string out;
    auto os = std::back_inserter(out);
    const std::string run = label_value(run_id_);
    auto family = [&](std::string_view name, std::string_view type, std::string_view help) {
        fmt::format_to(os, "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    };
    auto gauge = [&](std::string_view name, std::string_view help, const std::optional<double>& v) {
        if (!v) return;  // not measured: no sample rather than a made-up 0
        family(name, "gauge", help);
        fmt::format_to(os, "{}{{run=\"{}\"}} {}\n", name, run, *v);
    };
    const Status& s = status_;
    family("esper_run_info", "gauge", "The run the dashboard follows (value 1).");
    fmt::format_to(os, "esper_run_info{{run=\"{}\",state=\"{}\",backend=\"{}\"}} 1\n", run,
                   label_value(s.state), label_value(s.backend));
    if (s.seen) {
        gauge("esper_run_step", "Optimizer steps done.", double(s.step));
        gauge("esper_run_epoch", "Epoch of the newest step (0-based).", double(s.epoch));
        if (s.total_steps > 0)
            gauge("esper_run_planned_steps", "Optimizer steps planned for the run.",
                  double(s.total_steps));
    }
    gauge("esper_train_loss", "Mean training loss over the last telemetry interval.", s.loss);
    gauge("esper_train_accuracy_ratio", "Training accuracy over the last interval (0..1).",
          s.accuracy);
    gauge("esper_learning_rate", "Learning rate of the newest step.", s.lr);
    gauge("esper_samples_per_second", "Training throughput over the last interval.",
          s.samples_per_s);
    gauge("esper_step_duration_seconds", "Mean optimizer step time over the last interval.",
          s.step_time_ms ? std::optional<double>(*s.step_time_ms / 1e3) : std::nullopt);
    gauge("esper_test_loss", "Loss of the newest evaluation on the test/validation split.",
          s.test_loss);
    gauge("esper_test_accuracy_ratio", "Accuracy of the newest evaluation (0..1).",
          s.test_accuracy);
    gauge("esper_test_bits_per_byte", "Validation bits per byte of the newest evaluation.",
          s.test_bits_per_byte);
    gauge("esper_eta_seconds", "Estimated time until the planned steps are done.", eta_s());
    if (s.seen) {
        family("esper_parameters", "gauge", "Parameters by kind (host network, live blueprints).");
        fmt::format_to(os, "esper_parameters{{run=\"{}\",kind=\"host\"}} {}\n", run, s.host_params);
        fmt::format_to(os, "esper_parameters{{run=\"{}\",kind=\"blueprint\"}} {}\n", run,
                       s.blueprint_params);
    }
    // Seeds per layer and stage from the newest telemetry of every seed.
    std::map<std::pair<uint32_t, int>, uint64_t> per_layer;
    for (const auto& [key, seed] : seeds_) ++per_layer[{key.first, seed.stage}];
    if (!per_layer.empty()) {
        family("esper_seeds", "gauge", "Seeds by layer and lifecycle stage.");
        for (const auto& [key, n] : per_layer)
            fmt::format_to(os, "esper_seeds{{run=\"{}\",layer=\"{}\",stage=\"{}\"}} {}\n", run,
                           key.first, stage_text(key.second), n);
    }
    family("esper_lifecycle_transitions_total", "counter",
           "Lifecycle transitions seen, by layer and the stage entered.");
    for (const auto& [key, n] : transitions_)
        fmt::format_to(os,
                       "esper_lifecycle_transitions_total{{run=\"{}\",layer=\"{}\",stage=\"{}\"}} "
                       "{}\n",
                       run, key.first, stage_text(key.second), n);
    family("esper_commands_total", "counter", "Controller commands seen, by outcome.");
    for (const auto& [outcome, n] : commands_)
        fmt::format_to(os, "esper_commands_total{{run=\"{}\",outcome=\"{}\"}} {}\n", run,
                       label_value(outcome), n);
    family("esper_policy_changes_total", "counter", "Policy changes seen, by action.");
    for (const auto& [action, n] : policy_changes_)
        fmt::format_to(os, "esper_policy_changes_total{{run=\"{}\",action=\"{}\"}} {}\n", run,
                       label_value(action), n);
    family("esper_annotations_total", "counter", "Annotations seen.");
    fmt::format_to(os, "esper_annotations_total{{run=\"{}\"}} {}\n", run, annotations_);
    family("esper_dash_bus_messages_total", "counter", "Bus messages the dashboard decoded.");
    fmt::format_to(os, "esper_dash_bus_messages_total {}\n", bus.received);
    family("esper_dash_bus_gaps_total", "counter",
           "Messages lost before the dashboard (sequence gaps).");
    fmt::format_to(os, "esper_dash_bus_gaps_total {}\n", bus.gaps);
    family("esper_dash_bus_malformed_total", "counter", "Malformed frames dropped.");
    fmt::format_to(os, "esper_dash_bus_malformed_total {}\n", bus.malformed);
    if (s.updated_ns > 0)
        gauge("esper_status_age_seconds", "Seconds since the newest run status arrived.",
              double(now_ns - s.updated_ns) * 1e-9);
    return out;
}

}  // namespace esper::agents
