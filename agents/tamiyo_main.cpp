// `esper tamiyo`: the controller agent. One event-loop thread owns its sockets: it subscribes to
// the run's telemetry and lifecycle events and feeds them to the tamiyo::View through
// TamiyoIngest (only the run's executor is believed, within the shape it announced), runs the
// tamiyo::Controller every --decide-every-ms and sends each accepted decision to the executor
// (kasmina/0) as a reliable command, and serves control requests as `tamiyo` on the broker's
// request/reply endpoint: status, policy load/show/history/rollback. Commands go out without
// blocking the loop (bus::AsyncRpcClient): acks are handled in callbacks, and telemetry and
// requests keep being served while a command is outstanding. Policy changes (including a
// policy disabled for throwing or overrunning its time budget) are announced on
// events.policy.<run>. A restarted Tamiyo rebuilds its view from what the bus delivers next.
// What it drops is counted in its status reply and heartbeat (esper_tamiyo_* counters).
// With --ready-fd N it writes {"agent":"tamiyo"} to descriptor N once the broker routes to it.
// With --keys the bus is CURVE (agent key) and only operator keys may load or roll back
// policies; plugins go through agents/policy_guard.h before any of their code runs here.
#include <fmt/format.h>
#include <kj/exception.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/keys.h"
#include "agents/policy_guard.h"
#include "agents/process.h"
#include "agents/supervisor.h"
#include "agents/tamiyo_ingest.h"
#include "agents/wire_vocabulary.h"
#include "bus/event_loop.h"
#include "bus/pubsub.h"
#include "bus/rpc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "kasmina/io/config.h"
#include "tamiyo/config.h"
#include "tamiyo/controller.h"
#include "tamiyo/policy_factory.h"

namespace esper::agents {
namespace {

namespace fs = std::filesystem;

Logger& log() { return logger("tamiyo.agent"); }

// A policy from a PolicyLoad request: a plugin path (inside a --plugin-dir, checked before it
// runs), or rules YAML text named by its file.
tamiyo::PolicyPtr policy_from_request(schema::PolicyLoad::Reader l,
                                      const std::vector<fs::path>& plugin_dirs,
                                      const WhileWaiting& while_waiting) {
    std::string name = l.getName().cStr();
    if (l.isPath()) {
        const std::string spec = l.getPath().cStr();
        const std::string path = plugin_path_of(spec);
        check_plugin_dir(plugin_dirs, path.empty() ? spec : path);
        return make_checked_policy(self_exe_dir() / "esper", spec, {}, while_waiting);
    }
    if (name == "heuristic") return tamiyo::make_policy("heuristic");
    return tamiyo::make_rules_policy_from_text(l.getSource().cStr(), name);
}

schema::PolicyKind policy_kind(const std::string& kind) {
    if (kind == "plugin") return schema::PolicyKind::PLUGIN;
    if (kind == "heuristic") return schema::PolicyKind::HEURISTIC;
    return schema::PolicyKind::RULES;
}

// ---- the policy stack persisted in RUN_DIR/tamiyo/policy.json ----
// Each policy on the controller's stack as what it takes to build it again, so a controller that
// `esper run` restarts comes back with the policy in force (and the ones under it for rollback)
// and the history so far, instead of its initial one.
struct PolicySpec {
    std::string kind;  // heuristic | rules | plugin
    std::string name;  // rules: the file name used in errors
    std::string text;  // rules: the YAML; plugin: "path.so[:config]"
};

nlohmann::json spec_json(const PolicySpec& s) {
    return {{"kind", s.kind}, {"name", s.name}, {"text", s.text}};
}

// What an initial --policy/tamiyo.policy names ("heuristic", a rules file, "lib.so[:CONFIG]").
PolicySpec spec_from_name(const std::string& policy) {
    if (policy == "heuristic") return {"heuristic", "heuristic", ""};
    const auto so = policy.find(".so");
    if (so != std::string::npos && (so + 3 == policy.size() || policy[so + 3] == ':')) {
        const std::string path = fs::absolute(policy.substr(0, so + 3)).string();
        return {"plugin", path, path + policy.substr(so + 3)};
    }
    std::ifstream in(policy);
    std::stringstream ss;
    ss << in.rdbuf();
    return {"rules", policy, ss.str()};
}

tamiyo::PolicyPtr build_policy(const PolicySpec& s, const tamiyo::HeuristicConfig& heuristic) {
    if (s.kind == "heuristic") return tamiyo::make_policy("heuristic", heuristic);
    // A plugin (also one restored from the run dir) is checked in a child before it runs here.
    if (s.kind == "plugin") return make_checked_policy(self_exe_dir() / "esper", s.text);
    return tamiyo::make_rules_policy_from_text(s.text, s.name);
}

struct PersistedPolicies {
    std::vector<PolicySpec> stack;
    nlohmann::json history = nlohmann::json::array();
    int restarts = 0;
};

fs::path policy_state_path(const std::string& run_dir) {
    return fs::path(run_dir) / "tamiyo" / "policy.json";
}

std::optional<PersistedPolicies> load_persisted(const std::string& run_dir) {
    if (run_dir.empty()) return std::nullopt;
    std::ifstream in(policy_state_path(run_dir));
    if (!in) return std::nullopt;
    const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
    if (!j.is_object() || !j.contains("stack") || !j["stack"].is_array() || j["stack"].empty())
        ESPER_THROW(kInvalidInput, policy_state_path(run_dir).string(),
                    ": not a policy state file (remove it to start from the initial policy)");
    PersistedPolicies p;
    for (const nlohmann::json& s : j["stack"])
        p.stack.push_back({s.value("kind", ""), s.value("name", ""), s.value("text", "")});
    p.history = j.value("history", nlohmann::json::array());
    p.restarts = j.value("restarts", 0);
    return p;
}

PolicySpec spec_from_request(schema::PolicyLoad::Reader l) {
    const std::string name = l.getName().cStr();
    if (l.isPath()) return {"plugin", name, l.getPath().cStr()};
    if (name == "heuristic") return {"heuristic", "heuristic", ""};
    return {"rules", name, l.getSource().cStr()};
}

// Tamiyo's config from the run-config file: its `tamiyo:` section, plus the settings the executor
// owns (gate times, per-layer limits) read from lifecycle:/blueprints: with Kasmina's own loader,
// so both agents act on one value per setting. Without a file: both sides' defaults.
tamiyo::Config load_tamiyo_config(const cli::Option& file) {
    tamiyo::Config c = file.given() ? tamiyo::load_config_file(file.str()) : tamiyo::Config{};
    const kasmina::Config k = file.given() ? kasmina::load_config(file.str()) : kasmina::Config{};
    tamiyo::ExecutorSettings s;
    s.training_steps = static_cast<uint64_t>(k.lifecycle.training_steps);
    s.evaluation_steps = static_cast<uint64_t>(k.lifecycle.evaluation_steps);
    s.fine_tuning_steps = static_cast<uint64_t>(k.lifecycle.fine_tuning_steps);
    s.max_active_per_layer = static_cast<uint32_t>(
        std::min<int64_t>(k.lifecycle.max_active_per_layer, std::numeric_limits<uint32_t>::max()));
    s.max_blueprint_params_per_layer = k.blueprints.max_params_per_layer;
    tamiyo::set_executor_settings(c, s);
    // A policy file named by a relative path in the config is found next to the config.
    if (file.given() && c.policy != "heuristic") {
        const std::filesystem::path spec(c.policy);
        if (spec.is_relative() && !std::filesystem::exists(spec)) {
            const std::filesystem::path beside =
                std::filesystem::path(file.str()).parent_path() / spec;
            const std::string plain = beside.string().substr(0, beside.string().find(':'));
            if (std::filesystem::exists(plain)) c.policy = beside.string();
        }
    }
    return c;
}

class TamiyoAgent {
public:
    struct Options {
        std::string pub, sub, rpc, run_id, target = "kasmina/0";
        bus::ClientSecurity security{};       // CURVE agent key (--keys)
        std::vector<fs::path> plugin_dirs{};  // live plugin loads only from these
        int tick_ms = 50;                     // how often the loop checks whether a decision is due
        int ready_fd = -1;                    // >= 0: write the ready line here once registered
        std::string run_dir;    // non-empty: the policy stack persists in RUN_DIR/tamiyo/
        tamiyo::Config config;  // decision_interval_steps, view, controller, heuristic, policy
    };

    TamiyoAgent(Options o, std::vector<PolicySpec> stack, PersistedPolicies previous)
        : o_(std::move(o)),
          ingest_({.run_id = o_.run_id, .executor = o_.target, .view = o_.config.view}),
          controller_(o_.config.controller, build_policy(stack.at(0), o_.config.heuristic)),
          stack_(std::move(stack)),
          previous_(std::move(previous)),
          sub_(ctx_, {.endpoint = o_.sub, .prefixes = ingest_.prefixes(), .security = o_.security}),
          events_(ctx_, {.endpoint = o_.pub,
                         .sender = "tamiyo",
                         .run_id = o_.run_id,
                         .reliability = bus::Reliability::kControl,
                         .security = o_.security}),
          worker_(ctx_, {.endpoint = o_.rpc,
                         .name = "tamiyo",
                         .run_id = o_.run_id,
                         .security = o_.security,
                         .authorize = authorize_request}),
          client_(ctx_, loop_,
                  {.endpoint = o_.rpc,
                   .sender = "tamiyo",
                   .run_id = o_.run_id,
                   .timeout_ms = 300,
                   .max_attempts = 4,
                   .security = o_.security}) {
        // A restarted controller: the policies above the first one, in order.
        for (size_t i = 1; i < stack_.size(); ++i)
            controller_.load(build_policy(stack_[i], o_.config.heuristic),
                             "restored after a controller restart");
        history_seen_ = controller_.history().size();
    }

    int run() {
        loop_.watch(sub_.socket(), [this] {
            while (auto m = sub_.try_receive())
                ingest_.ingest(m->topic, m->envelope().getSequence(), m->envelope());
        });
        loop_.watch(worker_.socket(), [this] { worker_.process(handler()); });
        loop_.every(std::chrono::milliseconds(o_.tick_ms), [this] { decide(); });
        loop_.every(std::chrono::milliseconds(1000), [this] {
            worker_.heartbeat();
            publish_heartbeat();
        });
        loop_.on_signal([this](int sig) {
            ESPER_LOG_INFO(log(), "signal=", sig, " stopping");
            loop_.stop();
        });
        ESPER_LOG_INFO(log(), "run=", o_.run_id, " policy=", controller_.active().name(),
                       " target=", o_.target, " rpc=", o_.rpc);
        // The announcement is a lossless event, but a PUB socket drops what goes out before the
        // broker forwarded a subscription: give a listener (esper run's recorder) a moment.
        events_.wait_for_subscriber("events.policy." + o_.run_id, 500);
        const bool restored = !previous_.stack.empty();
        announce(schema::PolicyAction::LOADED, controller_.active().name(),
                 controller_.active().kind(), "",
                 restored ? fmt::format("restored after a controller restart ({})",
                                        previous_.restarts + 1)
                          : "initial policy");
        persist();
        if (o_.ready_fd >= 0) ping_self();
        loop_.run();
        return 0;
    }

private:
    // Policies are code and change what the run does: only an operator key may load or roll
    // them back (not an agent key, which every node holds). Status and show are for anyone.
    static std::optional<std::string> authorize_request(const bus::Peer& peer,
                                                        schema::Envelope::Reader req) {
        auto p = req.getPayload();
        if (!p.isControlRequest()) return std::nullopt;
        const auto which = p.getControlRequest().which();
        if (which != schema::ControlRequest::POLICY_LOAD &&
            which != schema::ControlRequest::POLICY_ROLLBACK)
            return std::nullopt;
        if (peer.allowed({bus::Role::kOperator})) return std::nullopt;
        return "policy changes need an operator key; this is " +
               std::string(bus::role_name(peer.role)) + " " + peer.name;
    }

    // Registered once a ping through the broker comes back: then the ready line.
    void ping_self() {
        bool queued = client_.send(
            "tamiyo", "",
            [](schema::Envelope::Payload::Builder p) { p.initControlRequest().setPing("ready"); },
            [this](bus::RpcReply reply) {
                if (reply.ok()) {
                    write_ready_line(o_.ready_fd, {{"agent", "tamiyo"}});
                    o_.ready_fd = -1;
                    return;
                }
                ESPER_LOG_WARN(log(), "not routed yet (", bus::rpc_status_name(reply.status), " ",
                               reply.error, "); pinging again");
                ping_self();
            });
        if (!queued) ESPER_LOG_WARN(log(), "ready ping not sent: request queue full");
    }

    void decide() {
        const tamiyo::View& view = ingest_.view();
        if (ingest_.generation() != generation_) {  // a restarted executor: its steps start over
            generation_ = ingest_.generation();
            decided_once_ = false;
        }
        if (!view.run().has_status) return;  // nothing to decide on yet
        // One decision round per decision_interval_steps of training progress.
        if (decided_once_ && view.step() < last_decision_step_ + o_.config.decision_interval_steps)
            return;
        decided_once_ = true;
        last_decision_step_ = view.step();
        std::vector<tamiyo::Decision> decisions = controller_.decide(view, view.step());
        announce_history();
        for (const tamiyo::Decision& d : decisions) {
            if (d.kind == tamiyo::DecisionKind::kDeny) continue;
            send(d);
        }
    }

    void fill_command(schema::Command::Builder c, const tamiyo::Decision& d,
                      const std::string& id) {
        c.setCommandId(id);
        c.setTarget(o_.target);
        c.setIssuedBy("tamiyo");
        std::string reason = "policy " + d.policy + ": " + d.reason;
        c.setReason(reason);
        switch (d.kind) {
            case tamiyo::DecisionKind::kGerminate: {
                auto g = c.initGerminate();
                g.setLayer(d.layer);
                g.setSeed(d.seed);
                g.setBlueprintKind(to_wire(d.blueprint));
                g.setSize(d.blueprint_size);
                // The controller admitted only known strategies (Controller::sanity).
                g.setStrategy(to_wire(
                    parse_grafting_strategy(d.strategy).value_or(GraftingStrategy::kLinear)));
                break;
            }
            case tamiyo::DecisionKind::kCull: {
                auto r = c.initCull();
                r.setLayer(d.layer);
                r.setSeed(d.seed);
                break;
            }
            case tamiyo::DecisionKind::kCancel: {
                auto r = c.initCancel();
                r.setLayer(d.layer);
                r.setSeed(d.seed);
                break;
            }
            case tamiyo::DecisionKind::kRollback: {
                auto r = c.initRollback();
                r.setLayer(d.layer);
                r.setSeed(d.seed);
                break;
            }
            default: {  // approve / fossilize: a transition to the stage the controller chose
                auto t = c.initTransition();
                t.setLayer(d.layer);
                t.setSeed(d.seed);
                t.setToStage(to_wire(d.to_stage));
                break;
            }
        }
    }

    // Returns at once; on_ack() runs on this loop when the executor answers or the retries end.
    void send(const tamiyo::Decision& d) {
        // Unpredictable (random 128-bit): a key another client guessed could not pre-answer it.
        std::string id = bus::random_key("tamiyo");
        bool queued = client_.send(
            o_.target, id,
            [&](schema::Envelope::Payload::Builder p) { fill_command(p.initCommand(), d, id); },
            [this, d, id](bus::RpcReply reply) { on_ack(d, id, reply); });
        if (!queued) {
            controller_.forget_pending(d.layer, d.seed);
            ESPER_LOG_WARN(log(), "command=", id, " ", tamiyo::to_string(d),
                           " outcome=not sent reason=too many commands outstanding");
        }
    }

    void on_ack(const tamiyo::Decision& d, const std::string& id, const bus::RpcReply& reply) {
        std::string outcome = "no reply", reason = reply.error;
        if (!reply.ok()) controller_.forget_pending(d.layer, d.seed);
        if (reply.ok()) {
            auto rp = reply.reply->envelope().getPayload();
            if (rp.isCommandAck()) {
                auto ack = rp.getCommandAck();
                outcome =
                    ack.getOutcome() == schema::CommandOutcome::APPLIED ? "applied" : "rejected";
                reason = ack.getReason().cStr();
                const bool applied = ack.getOutcome() == schema::CommandOutcome::APPLIED;
                if (!applied) controller_.forget_pending(d.layer, d.seed);
                // A rejected germination (a full arena) is not proposed again every round.
                controller_.germination_answered(d, applied, ingest_.view(), ingest_.view().step());
                events_.publish(
                    "events.commands." + o_.run_id,
                    [&](schema::Envelope::Payload::Builder p) {
                        auto res = p.initCommandResult();
                        fill_command(res.initCommand(), d, id);
                        res.setAck(ack);
                    },
                    id);
            }
        }
        ++command_outcomes_[outcome];
        ESPER_LOG_INFO(log(), "command=", id, " ", tamiyo::to_string(d), " outcome=", outcome,
                       reason.empty() ? "" : " reason=", reason);
    }

    // Everything this agent dropped, refused or lost, for the status reply and the heartbeat.
    std::vector<bus::Count> counters() const {
        std::vector<bus::Count> c = ingest_.counters();
        c.push_back({"esper_tamiyo_bus_malformed_total", "", sub_.stats().malformed});
        c.push_back({"esper_tamiyo_bus_sequence_gaps_total", "", sub_.sequences().gaps()});
        c.push_back({"esper_tamiyo_bus_reordered_total", "", sub_.sequences().reordered()});
        c.push_back({"esper_tamiyo_bus_untracked_total", "", sub_.sequences().untracked()});
        for (const char* o : {"applied", "rejected", "no reply"}) {
            auto it = command_outcomes_.find(o);
            c.push_back({"esper_tamiyo_commands_total",
                         o == std::string("no reply") ? "no_reply" : o,
                         it == command_outcomes_.end() ? 0 : it->second});
        }
        c.push_back({"esper_tamiyo_commands_refused_total", "queue_full", client_.stats().refused});
        return c;
    }

    void announce(schema::PolicyAction action, const std::string& name, const std::string& kind,
                  const std::string& previous, const std::string& reason) {
        events_.publish("events.policy." + o_.run_id, [&](schema::Envelope::Payload::Builder p) {
            auto c = p.initPolicyChange();
            c.setName(name);
            c.setKind(kind);
            c.setAction(action);
            c.setPrevious(previous);
            c.setReason(reason);
            c.setStep(ingest_.view().step());
        });
    }

    // Announces history entries the controller added by itself (a disabled policy).
    void announce_history() {
        const auto& h = controller_.history();
        if (history_seen_ < h.size()) {
            stack_.resize(std::min(stack_.size(), controller_.depth()));  // popped on a failure
            persist_pending_ = true;
        }
        for (; history_seen_ < h.size(); ++history_seen_) {
            const tamiyo::PolicyHistoryEntry& e = h[history_seen_];
            schema::PolicyAction a =
                e.action == tamiyo::PolicyAction::kRollback ? schema::PolicyAction::ROLLED_BACK
                : e.action == tamiyo::PolicyAction::kLoad   ? schema::PolicyAction::LOADED
                                                            : schema::PolicyAction::DISABLED;
            ESPER_LOG_WARN(log(), "policy=", e.name,
                           " action=", tamiyo::policy_action_name(e.action),
                           " affected=", e.affected, " reason=", e.reason);
            announce(a, e.name, e.kind, e.affected, e.reason);
        }
        if (persist_pending_) persist();
    }

    // RUN_DIR/tamiyo/policy.json: the stack and the history (temp file + rename). A failure is
    // logged: the run goes on, only a restart would lose the policy.
    void persist() {
        persist_pending_ = false;
        if (o_.run_dir.empty()) return;
        nlohmann::json stack = nlohmann::json::array();
        for (const PolicySpec& s : stack_) stack.push_back(spec_json(s));
        nlohmann::json history = previous_.history;
        for (const tamiyo::PolicyHistoryEntry& e : controller_.history()) {
            if (&e == &controller_.history().front() && !previous_.stack.empty()) continue;
            history.push_back({{"time_ns", e.wall_ns},
                               {"step", e.step},
                               {"action", std::string(tamiyo::policy_action_name(e.action))},
                               {"name", e.name},
                               {"kind", e.kind},
                               {"affected", e.affected},
                               {"reason", e.reason}});
        }
        const nlohmann::json j = {
            {"schema", 1},
            {"stack", stack},
            {"history", history},
            {"restarts", previous_.stack.empty() ? 0 : previous_.restarts + 1}};
        const fs::path path = policy_state_path(o_.run_dir);
        std::error_code ec;
        fs::create_directories(path.parent_path(), ec);
        const fs::path tmp = path.string() + ".tmp";
        {
            std::ofstream out(tmp, std::ios::trunc);
            out << j.dump(1) << "\n";
            if (!out) {
                ESPER_LOG_WARN(log(), "cannot write ", tmp.string());
                return;
            }
        }
        fs::rename(tmp, path, ec);
        if (ec) ESPER_LOG_WARN(log(), "cannot write ", path.string(), ": ", ec.message());
    }

    void fill_info(schema::PolicyInfo::Builder info, const tamiyo::PolicyHistoryEntry* e,
                   bool active) {
        const tamiyo::Policy& p = controller_.active();
        info.setName(e ? e->name : p.name());
        info.setKind(policy_kind(e ? e->kind : p.kind()));
        // The n-th entry of the policy history (1-based); the active policy without history: 1.
        const auto& h = controller_.history();
        info.setVersion(e != nullptr ? static_cast<uint32_t>(e - h.data() + 1) : 1u);
        info.setLoadedAtStep(e ? e->step : 0);
        info.setLoadedAtNs(e ? e->wall_ns : 0);
        info.setActive(active);
        info.setDigest(e ? e->source : p.source());
    }

    bus::RpcWorker::Handler handler() {
        return [this](schema::Envelope::Reader req, schema::Envelope::Payload::Builder rep) {
            auto reply = rep.initControlReply();
            auto p = req.getPayload();
            if (!p.isControlRequest()) {
                reply.setOk(false);
                reply.setUnimplemented("tamiyo serves controlRequest payloads only");
                return;
            }
            auto r = p.getControlRequest();
            reply.setOk(true);
            switch (r.which()) {
                case schema::ControlRequest::STATUS: {
                    auto s = reply.initStatus();
                    const tamiyo::RunView& run = ingest_.view().run();
                    s.setStep(run.step);
                    s.setEpoch(run.epoch);
                    if (run.latest.loss) {
                        s.setLoss(static_cast<float>(*run.latest.loss));
                        s.setLossMeasured(true);
                    }
                    if (run.latest.accuracy) {
                        s.setAccuracy(static_cast<float>(*run.latest.accuracy));
                        s.setAccuracyMeasured(true);
                    }
                    s.setHostParams(static_cast<uint64_t>(run.latest.host_params));
                    s.setBlueprintParams(static_cast<uint64_t>(run.latest.blueprint_params));
                    std::array<uint32_t, kNumSeedStages> counts{};
                    for (const auto& [id, layer] : ingest_.view().layers())
                        for (int i = 0; i < kNumSeedStages; ++i) counts[i] += layer.stage_counts[i];
                    auto list = s.initSeedsPerStage(kNumSeedStages);
                    for (int i = 0; i < kNumSeedStages; ++i) list.set(i, counts[i]);
                    std::string backend = "policy=" + controller_.active().name() +
                                          " plateau=" + (run.plateau ? "yes" : "no") +
                                          " pending=" + std::to_string(controller_.pending_count());
                    s.setBackend(backend);
                    const std::vector<bus::Count> drops = counters();
                    bus::fill_counters(s.initCounters(static_cast<unsigned>(drops.size())), drops);
                    break;
                }
                case schema::ControlRequest::POLICY_LOAD: {
                    auto l = r.getPolicyLoad();
                    std::string name = l.getName().cStr();
                    try {
                        // The probe of a plugin can take seconds on a loaded machine: keep the
                        // broker's registration alive meanwhile.
                        tamiyo::PolicyPtr policy =
                            policy_from_request(l, o_.plugin_dirs, [this] { worker_.heartbeat(); });
                        std::string previous = controller_.active().name();
                        controller_.load(std::move(policy), "esper policy load",
                                         ingest_.view().step());
                        history_seen_ = controller_.history().size();
                        stack_.push_back(spec_from_request(l));
                        persist();
                        announce(schema::PolicyAction::LOADED, controller_.active().name(),
                                 controller_.active().kind(), previous,
                                 "esper policy load " + name);
                        ESPER_LOG_INFO(log(), "policy=", controller_.active().name(),
                                       " loaded previous=", previous);
                        fill_info(reply.initPolicy(), &controller_.history().back(), true);
                    } catch (const Error& e) {
                        reply.setOk(false);
                        reply.setError(e.what());
                        ESPER_LOG_WARN(log(), "policy load refused: ", e.what());
                    }
                    break;
                }
                case schema::ControlRequest::POLICY_SHOW:
                    fill_info(
                        reply.initPolicy(),
                        controller_.history().empty() ? nullptr : &controller_.history().back(),
                        true);
                    break;
                case schema::ControlRequest::POLICY_HISTORY: {
                    // What a controller before a restart did first (from the run dir), then ours.
                    const auto& h = controller_.history();
                    const nlohmann::json& prev = previous_.history;
                    auto list =
                        reply.initPolicyHistory(static_cast<unsigned>(prev.size() + h.size()));
                    unsigned n = 0;
                    for (const nlohmann::json& e : prev) {
                        auto info = list[n++];
                        info.setName(e.value("name", ""));
                        info.setKind(policy_kind(e.value("kind", "")));
                        info.setVersion(n);
                        info.setLoadedAtStep(e.value("step", uint64_t{0}));
                        info.setLoadedAtNs(e.value("time_ns", int64_t{0}));
                        info.setActive(false);
                    }
                    for (size_t i = 0; i < h.size(); ++i) {
                        auto info = list[n++];
                        fill_info(info, &h[i], i + 1 == h.size());
                        info.setVersion(n);
                    }
                    break;
                }
                case schema::ControlRequest::POLICY_ROLLBACK: {
                    try {
                        std::string previous = controller_.active().name();
                        controller_.rollback("esper policy rollback", ingest_.view().step());
                        history_seen_ = controller_.history().size();
                        stack_.resize(controller_.depth());
                        persist();
                        announce(schema::PolicyAction::ROLLED_BACK, controller_.active().name(),
                                 controller_.active().kind(), previous, "esper policy rollback");
                        fill_info(reply.initPolicy(), &controller_.history().back(), true);
                    } catch (const Error& e) {
                        reply.setOk(false);
                        reply.setError(e.what());
                    }
                    break;
                }
                case schema::ControlRequest::PING:
                    reply.setPong(r.getPing());
                    break;
                default:
                    reply.setOk(false);
                    reply.setUnimplemented("request not served by tamiyo");
                    break;
            }
        };
    }

    void publish_heartbeat() {
        events_.publish("heartbeat.tamiyo", [&](schema::Envelope::Payload::Builder p) {
            auto h = p.initHeartbeat();
            h.setAgent("tamiyo");
            h.setRole("controller");
            h.setPid(static_cast<uint32_t>(::getpid()));
            h.setUptimeMs(static_cast<uint64_t>(uptime_.elapsed_ns() / 1'000'000));
            h.setStep(ingest_.view().step());
            h.setState("policy=" + controller_.active().name());
            const std::vector<bus::Count> counts = counters();
            bus::fill_counters(h.initCounters(static_cast<unsigned>(counts.size())), counts);
        });
    }

    Options o_;
    TamiyoIngest ingest_;
    tamiyo::Controller controller_;
    std::vector<PolicySpec> stack_;  // how to rebuild each policy of controller_'s stack
    PersistedPolicies previous_;     // what a restarted controller found in the run dir
    zmq::context_t ctx_;
    bus::Subscriber sub_;
    bus::Publisher events_;
    bus::RpcWorker worker_;
    bus::EventLoop loop_;
    bus::AsyncRpcClient client_;  // after loop_: it watches its socket on the loop
    size_t history_seen_ = 0;
    bool persist_pending_ = false;
    bool decided_once_ = false;
    uint64_t last_decision_step_ = 0;
    uint64_t generation_ = 0;  // of the view decide() last saw
    std::map<std::string, uint64_t> command_outcomes_;
    Stopwatch uptime_;
};

}  // namespace

int tamiyo_main(int argc, char** argv) {
    cli::Parser p(
        "esper tamiyo",
        "Run the Tamiyo controller: watch a run's telemetry and events on the bus, run the\n"
        "policy, and send lifecycle commands to the executor.");
    auto& bus_rpc = p.endpoint("bus", "tcp://HOST:RPC", "broker request/reply endpoint",
                               "tcp://127.0.0.1:5557");
    auto& bus_pub =
        p.endpoint("bus-pub", "tcp://HOST:P", "broker publisher endpoint", "tcp://127.0.0.1:5555");
    auto& bus_sub =
        p.endpoint("bus-sub", "tcp://HOST:S", "broker subscriber endpoint", "tcp://127.0.0.1:5556");
    auto& run_id = p.option("run-id", "ID", "the run to control (topic component)");
    auto& config =
        p.option("config", "FILE",
                 "run config: its `tamiyo:` section sets plateau, budgets, "
                 "heuristic thresholds and the policy; gate times and per-layer limits come "
                 "from its lifecycle: and blueprints: sections (docs/policies.md)");
    auto& policy = p.option("policy", "FILE|heuristic",
                            "initial policy (overrides tamiyo.policy): "
                            "heuristic, rules YAML or plugin .so");
    auto& target = p.option("target", "AGENT", "executor that receives commands", "kasmina/0");
    auto& tick = p.option("tick-ms", "MS", "how often to check whether a decision is due", "50");
    auto& run_dir = p.option("run-dir", "DIR",
                             "run directory: the policy in force and its history persist in "
                             "DIR/tamiyo/policy.json, and a controller restarted on the same "
                             "directory continues with them");
    auto& ready_fd = p.option("ready-fd", "N",
                              "once registered with the broker, write "
                              "{\"agent\":\"tamiyo\"} as one line to this inherited descriptor "
                              "and close it (used by esper run)");
    auto& check =
        p.flag("check-config", "validate the tamiyo section and the policy, print them, and exit");
    auto& keys =
        p.option("keys", "DIR", "CURVE keys: DIR/broker.pub and an agent secret key (docs/bus.md)");
    auto& plugin_dirs = p.option("plugin-dir", "DIR",
                                 "allow `esper policy load` of plugins inside DIR (default: "
                                 "none, live plugin loads are refused)",
                                 "", true);
    auto& probe = p.option("probe-plugin", "SPEC",
                           "internal: load a plugin in this throw-away process, print its name");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (probe.given()) return run_plugin_probe(probe.str());
    const fs::path esper = self_exe_dir() / "esper";
    if (check.on()) {
        tamiyo::Config c = load_tamiyo_config(config);
        if (policy.given()) c.policy = policy.str();
        if (!plugin_path_of(c.policy).empty()) {
            // Validating a plugin never runs it here: symbols from the file, the rest in a child.
            const std::string name = probe_plugin(esper, c.policy);
            std::printf("%spolicy %s (plugin, %s): esper_policy_v1, checked in a child process\n",
                        tamiyo::format_config(c).c_str(), name.c_str(),
                        plugin_path_of(c.policy).c_str());
            return 0;
        }
        tamiyo::PolicyPtr checked = tamiyo::make_policy(c.policy, c.heuristic);
        std::printf("%s%s\n", tamiyo::format_config(c).c_str(),
                    tamiyo::describe_policy(*checked).c_str());
        return 0;
    }
    if (!run_id.given()) return p.usage_error("--run-id is required");
    if (const char* spec = std::getenv("ESPER_LOG")) set_log_levels(spec);

    TamiyoAgent::Options o;
    o.pub = bus_pub.str();
    o.sub = bus_sub.str();
    o.rpc = bus_rpc.str();
    o.run_id = run_id.str();
    o.target = target.str();
    o.tick_ms = static_cast<int>(tick.as_int());
    if (o.tick_ms <= 0) return p.usage_error("--tick-ms must be > 0");
    if (ready_fd.given()) {
        o.ready_fd = static_cast<int>(ready_fd.as_int());
        if (o.ready_fd < 0) return p.usage_error("--ready-fd must be >= 0");
    }
    o.config = load_tamiyo_config(config);
    if (policy.given()) o.config.policy = policy.str();
    if (keys.given()) o.security = client_security(keys.str(), {bus::Role::kAgent});
    for (const std::string& d : plugin_dirs.values) {
        if (!fs::is_directory(d)) return p.usage_error("--plugin-dir " + d + ": not a directory");
        o.plugin_dirs.emplace_back(d);
    }
    if (run_dir.given()) o.run_dir = run_dir.str();
    ESPER_LOG_INFO(log(), "effective config\n", tamiyo::format_config(o.config));
    std::optional<PersistedPolicies> previous = load_persisted(o.run_dir);
    std::vector<PolicySpec> stack;
    if (previous) {
        stack = previous->stack;
        ESPER_LOG_INFO(log(), "restoring ", stack.size(), " policies from ",
                       policy_state_path(o.run_dir).string());
    } else {
        // Validates with file:line; a plugin is checked in a child before it runs here.
        make_checked_policy(esper, o.config.policy, o.config.heuristic);
        stack.push_back(spec_from_name(o.config.policy));
    }
    TamiyoAgent agent(std::move(o), std::move(stack), previous.value_or(PersistedPolicies{}));
    return agent.run();
}

}  // namespace esper::agents
