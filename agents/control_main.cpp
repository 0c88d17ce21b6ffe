// Operator tools that talk to a live run through the broker's request/reply endpoint:
//   esper policy load FILE | show | history | rollback     (to `tamiyo`)
//   esper policy check FILE                                (offline: validate and describe)
//   esper ctl germinate|transition|cull|cancel|rollback …   (to the executor, `kasmina/0`)
//   esper status [--json]                                  (both; a table for people)
// Requests go through the reliable client (timeout, retries with backoff, idempotency key), so
// a retried command is applied once. Exit codes: 0 applied/ok, 1 refused or unreachable, 2 usage.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/keys.h"
#include "agents/policy_guard.h"
#include "agents/process.h"
#include "agents/tool_json.h"
#include "agents/wire_vocabulary.h"
#include "bus/pubsub.h"
#include "bus/rpc.h"
#include "core/clock.h"
#include "core/error.h"
#include "kernels/vocabulary.h"
#include "tamiyo/policy_factory.h"

namespace esper::agents {
namespace {

namespace fs = std::filesystem;

// The keys of --keys DIR: the first secret key of `roles` found in DIR (the broker decides what
// the role may do, so an observer key is sent and answered "forbidden" rather than refused here).
bus::ClientSecurity tool_keys(const cli::Option& keys, std::initializer_list<bus::Role> roles) {
    return keys.given() ? client_security(keys.str(), roles) : bus::ClientSecurity{};
}

cli::Option& keys_option(cli::Parser& p) {
    return p.option("keys", "DIR",
                    "CURVE keys: DIR/broker.pub and this tool's secret key (docs/bus.md)");
}

bus::RpcClient make_client(zmq::context_t& ctx, const std::string& endpoint, int timeout_ms,
                           const bus::ClientSecurity& security) {
    return bus::RpcClient(ctx, {.endpoint = endpoint,
                                .sender = fmt::format("operator/{}", ::getpid()),
                                .timeout_ms = timeout_ms,
                                .max_attempts = 4,
                                .security = security});
}

// Random 128-bit keys: one guessed by another client could otherwise pre-answer the command.
std::string new_key(const char* what) { return bus::random_key(what); }

// Prints a reply's payload as one JSON line; returns the exit code.
int print_reply(const bus::RpcReply& r, const std::string& agent) {
    if (!r.ok()) {
        fmt::print(stderr, "no answer from {}: {}{}{} (after {} attempts)\n", agent,
                   bus::rpc_status_name(r.status), r.error.empty() ? "" : ": ", r.error,
                   r.attempts);
        return 1;
    }
    auto env = r.reply->envelope();
    fmt::print("{}\n", payload_to_json(env));
    auto p = env.getPayload();
    if (p.isControlReply()) {
        auto c = p.getControlReply();
        if (!c.getOk()) {
            fmt::print(stderr, "{} refused: {}{}\n", agent, c.getError().cStr(),
                       c.isUnimplemented() ? c.getUnimplemented().cStr() : "");
            return 1;
        }
        if (c.isCommandAck() && c.getCommandAck().getOutcome() != schema::CommandOutcome::APPLIED)
            return 1;
    }
    if (p.isCommandAck() && p.getCommandAck().getOutcome() != schema::CommandOutcome::APPLIED) {
        fmt::print(stderr, "rejected: {}\n", p.getCommandAck().getReason().cStr());
        return 1;
    }
    return 0;
}

template <typename Fill>
int control(const std::string& endpoint, const std::string& agent, int timeout_ms,
            const bus::ClientSecurity& security, Fill&& fill) {
    zmq::context_t ctx;
    bus::RpcClient client = make_client(ctx, endpoint, timeout_ms, security);
    bus::RpcReply r =
        client.request(agent, new_key("ctl"),
                       [&](schema::Envelope::Payload::Builder p) { fill(p.initControlRequest()); });
    return print_reply(r, agent);
}

uint32_t parse_u32(const std::string& s, const char* what) {
    try {
        size_t used = 0;
        long long v = std::stoll(s, &used);
        if (used == s.size() && v >= 0 && v <= 0xffffffffLL) return static_cast<uint32_t>(v);
    } catch (const std::exception&) {
    }
    throw cli::UsageError(std::string(what) + ": expected a non-negative integer, got '" + s + "'");
}

// Case-insensitive, underscores ignored: the vocabulary's "residual_mlp" and "FINE_TUNING", and
// the schema's "residualMlp" and "fineTuning" (accepted for compatibility), all match.
std::string fold_name(std::string_view s) {
    std::string out;
    for (char c : s)
        if (c != '_') out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

// The vocabulary value spelled `name` (kernels/vocabulary.h) as its wire enum.
template <typename E, size_t N>
auto parse_wire(const std::string& name, const std::array<std::string_view, N>& names,
                const char* what) {
    for (size_t i = 0; i < N; ++i)
        if (fold_name(names[i]) == fold_name(name)) return to_wire(static_cast<E>(i));
    throw cli::UsageError(
        fmt::format("{}: unknown value '{}' (one of {})", what, name, fmt::join(names, ", ")));
}

// ---- esper status ----

struct StatusReply {
    std::string agent;
    std::string error;  // empty: answered
    nlohmann::json status = nlohmann::json::object();
};
struct StatusReplies {
    StatusReply executor, controller;
};

nlohmann::json status_json(const StatusReplies& r, const std::string& bus) {
    auto one = [](const StatusReply& s) {
        return s.error.empty() ? s.status : nlohmann::json{{"error", s.error}};
    };
    return {{"bus", bus},
            {"executor", {{"agent", r.executor.agent}, {"reply", one(r.executor)}}},
            {"controller", {{"agent", r.controller.agent}, {"reply", one(r.controller)}}}};
}

std::string number(const nlohmann::json& j, const char* key, const char* format = "{:.4g}") {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number()) return "-";
    if (it->is_number_integer()) return fmt::format("{}", it->get<int64_t>());
    return fmt::format(fmt::runtime(format), it->get<double>());
}

// The status for people: one labelled line per fact, "-" for what is not measured.
// "name{reason}=value" for every non-zero counter of a status or heartbeat ("none" when all 0).
// The first "counters" array anywhere in `j` (a status reply, or a heartbeat's JSON envelope).
nlohmann::json find_counters(const nlohmann::json& j) {
    if (!j.is_object()) return nlohmann::json::array();
    if (auto it = j.find("counters"); it != j.end() && it->is_array()) return *it;
    for (const auto& [k, v] : j.items()) {
        nlohmann::json c = find_counters(v);
        if (!c.empty()) return c;
    }
    return nlohmann::json::array();
}

std::string counters_line(const nlohmann::json& j) {
    std::string out;
    for (const auto& c : find_counters(j)) {
        if (!c.is_object() || c.value("value", uint64_t{0}) == 0) continue;
        const std::string reason = c.value("reason", "");
        out += fmt::format("{}{}{}={}", out.empty() ? "" : ", ", c.value("name", "?"),
                           reason.empty() ? "" : "{" + reason + "}", c.value("value", uint64_t{0}));
    }
    return out.empty() ? "none" : out;
}

std::string format_status(const StatusReplies& r, const std::string& bus,
                          const nlohmann::json& broker) {
    std::string out = fmt::format("run status via {}\n", bus);
    auto row = [&](std::string_view k, const std::string& v) {
        out += fmt::format("  {:<18} {}\n", k, v);
    };
    const nlohmann::json& e = r.executor.status;
    if (!r.executor.error.empty()) {
        row("executor", r.executor.agent + ": no answer (" + r.executor.error + ")");
    } else {
        const uint64_t step = e.value("step", uint64_t{0}),
                       total = e.value("totalSteps", uint64_t{0});
        row("executor", fmt::format("{} ({})", r.executor.agent, e.value("backend", "?")));
        row("state",
            e.value("state", "training") +
                (e.value("stateReason", "").empty() ? "" : ": " + e.value("stateReason", "")));
        row("step", total > 0 ? fmt::format("{} of {} ({:.0f}%)", step, total,
                                            100.0 * double(step) / double(total))
                              : fmt::format("{}", step));
        row("epoch", number(e, "epoch"));
        row("train loss", number(e, "loss"));
        row("train accuracy", number(e, "accuracy"));
        row("test loss", number(e, "testLoss"));
        row("test accuracy", number(e, "testAccuracy") +
                                 (e.contains("testStep") && e["testStep"].is_number()
                                      ? fmt::format(" (step {})", e["testStep"].get<uint64_t>())
                                      : ""));
        row("samples/s", number(e, "samplesPerS", "{:.0f}"));
        row("parameters", fmt::format("host {} + blueprints {}", number(e, "hostParams"),
                                      number(e, "blueprintParams")));
        std::string seeds;
        int dormant = 0;
        const nlohmann::json per = e.value("seedsPerStage", nlohmann::json::array());
        for (size_t i = 0; i < per.size() && i < kSeedStageNames.size(); ++i) {
            const int n = per[i].get<int>();
            if (i == 0)
                dormant = n;
            else if (n > 0)
                seeds += fmt::format("{}{} {}", seeds.empty() ? "" : ", ", kSeedStageNames[i], n);
        }
        row("seeds", (seeds.empty() ? std::string("none active") : seeds) +
                         fmt::format(" ({} dormant)", dormant));
        row("dropped/refused", counters_line(e));
    }
    if (!r.controller.error.empty()) {
        row("controller", r.controller.agent + ": no answer (" + r.controller.error + ")");
    } else {
        const nlohmann::json& c = r.controller.status;
        // Tamiyo reports its policy and plateau state as "policy=... plateau=... pending=...".
        row("controller", fmt::format("{} at step {}: {}", r.controller.agent, number(c, "step"),
                                      c.value("backend", "")));
        row("dropped/refused", counters_line(c));
    }
    if (broker.is_object()) {
        row("broker", broker.contains("error") ? broker.value("error", "")
                                               : "dropped/refused " + counters_line(broker));
    }
    if (!r.executor.error.empty() || !r.controller.error.empty())
        out += "  (is a run up? `esper run` prints its --bus endpoint)\n";
    return out;
}

}  // namespace

int policy_main(int argc, char** argv) {
    cli::Parser p("esper policy",
                  "Manage the controller's policy in a live run, or check a policy offline.\n\n"
                  "  load FILE    validate and activate a rules YAML, or a plugin LIB.so[:CONFIG]\n"
                  "  show         the active policy\n"
                  "  history      every policy change of this controller\n"
                  "  rollback     restore the previous policy\n"
                  "  check FILE   validate FILE here (no run needed) and describe it",
                  "load FILE | show | history | rollback | check FILE");
    auto& bus_ep = p.endpoint("bus", "tcp://HOST:RPC", "broker request/reply endpoint",
                              "tcp://127.0.0.1:5557");
    auto& timeout = p.option("timeout-ms", "MS", "per-attempt timeout", "1000");
    auto& keys = keys_option(p);
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    const auto& pos = p.positional();
    if (pos.empty()) return p.usage_error("missing action (load, show, history, rollback)");
    int t = static_cast<int>(timeout.as_int());
    const bus::ClientSecurity sec =
        tool_keys(keys, {bus::Role::kOperator, bus::Role::kObserver, bus::Role::kAgent});
    const std::string& action = pos[0];
    if (action == "check") {
        if (pos.size() != 2) return p.usage_error("check needs exactly one FILE");
        // A plugin is validated in a throw-away child, never loaded here (agents/policy_guard.h).
        if (!plugin_path_of(pos[1]).empty()) {
            const std::string name = probe_plugin(self_exe_dir() / "esper", pos[1]);
            fmt::print("{}: ok\npolicy {} (plugin, esper_policy_v1, checked in a child process)\n",
                       pos[1], name);
            return 0;
        }
        // The loaders the controller uses; an error names file:line and the field (exit 1).
        tamiyo::PolicyPtr checked = tamiyo::make_policy(pos[1]);
        fmt::print("{}: ok\n{}", pos[1], tamiyo::describe_policy(*checked));
        return 0;
    }
    if (action == "load") {
        if (pos.size() != 2) return p.usage_error("load needs exactly one FILE");
        // A plugin may carry its init config after the library: lib.so:training_steps=50.
        std::string spec = pos[1], plugin_config;
        const auto so = spec.find(".so:");
        if (so != std::string::npos) {
            plugin_config = spec.substr(so + 3);
            spec = spec.substr(0, so + 3);
        }
        fs::path file = spec;
        if (!fs::exists(file)) ESPER_THROW(kInvalidInput, file.string(), ": no such file");
        bool plugin = file.extension() == ".so";
        if (!plugin && !plugin_config.empty())
            return p.usage_error("':CONFIG' is for a plugin (.so), not " + file.string());
        std::string text;
        if (!plugin) {
            std::ifstream in(file);
            std::stringstream ss;
            ss << in.rdbuf();
            text = ss.str();
        }
        return control(bus_ep.str(), "tamiyo", t, sec, [&](schema::ControlRequest::Builder r) {
            auto l = r.initPolicyLoad();
            l.setName(file.string());
            if (plugin) {
                l.setKind(schema::PolicyKind::PLUGIN);
                l.setPath(fs::absolute(file).string() + plugin_config);
            } else {
                l.setKind(schema::PolicyKind::RULES);
                l.setSource(text);
            }
        });
    }
    if (pos.size() != 1) return p.usage_error("unexpected argument '" + pos[1] + "'");
    if (action == "show")
        return control(bus_ep.str(), "tamiyo", t, sec, [](auto r) { r.setPolicyShow(); });
    if (action == "history")
        return control(bus_ep.str(), "tamiyo", t, sec, [](auto r) { r.setPolicyHistory(); });
    if (action == "rollback")
        return control(bus_ep.str(), "tamiyo", t, sec, [](auto r) { r.setPolicyRollback(); });
    return p.usage_error("unknown action '" + action + "'");
}

int ctl_main(int argc, char** argv) {
    cli::Parser p(
        "esper ctl",
        "Send an operator lifecycle command to the executor of a live run and print the ack.\n\n"
        "  germinate LAYER SEED [--kind residual_mlp|lowrank|scale_shift] [--size N] [--strategy "
        "S]\n"
        "  transition LAYER SEED STAGE      (e.g. GRAFTING, FINE_TUNING, FOSSILIZED)\n"
        "  cull | cancel | rollback LAYER SEED",
        "ACTION LAYER SEED [STAGE]");
    auto& bus_ep = p.endpoint("bus", "tcp://HOST:RPC", "broker request/reply endpoint",
                              "tcp://127.0.0.1:5557");
    auto& target = p.option("target", "AGENT", "executor to command", "kasmina/0");
    auto& kind = p.option("kind", "KIND", "germinate: blueprint kind", "residual_mlp");
    auto& size = p.option("size", "N", "germinate: expansion or rank (0 = config default)", "0");
    auto& strategy = p.option("strategy", "S", "germinate: grafting strategy", "linear");
    auto& reason = p.option("reason", "TEXT", "recorded with the event", "operator command");
    auto& timeout = p.option("timeout-ms", "MS", "per-attempt timeout", "1000");
    auto& keys = keys_option(p);
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    const auto& pos = p.positional();
    if (pos.size() < 3) return p.usage_error("need ACTION LAYER SEED");
    const std::string& action = pos[0];
    uint32_t layer = parse_u32(pos[1], "LAYER"), seed = parse_u32(pos[2], "SEED");
    bool transition = action == "transition";
    if (transition ? pos.size() != 4 : pos.size() != 3)
        return p.usage_error(transition ? "transition needs LAYER SEED STAGE"
                                        : "too many arguments");
    if (action != "germinate" && !transition && action != "cull" && action != "cancel" &&
        action != "rollback")
        return p.usage_error("unknown action '" + action + "'");
    auto bk = parse_wire<BlueprintKind>(kind.str(), kBlueprintKindNames, "--kind");
    auto gs = parse_wire<GraftingStrategy>(strategy.str(), kGraftingStrategyNames, "--strategy");
    auto to = transition ? parse_wire<SeedStage>(pos[3], kSeedStageNames, "STAGE")
                         : schema::SeedStage::DORMANT;
    uint32_t sz = parse_u32(size.str(), "--size");
    std::string key = new_key("op");

    zmq::context_t ctx;
    bus::RpcClient client = make_client(
        ctx, bus_ep.str(), static_cast<int>(timeout.as_int()),
        tool_keys(keys, {bus::Role::kOperator, bus::Role::kAgent, bus::Role::kObserver}));
    bus::RpcReply r = client.request(target.str(), key, [&](schema::Envelope::Payload::Builder pl) {
        auto c = pl.initCommand();
        c.setCommandId(key);
        c.setTarget(target.str());
        c.setIssuedBy("operator");
        c.setReason(reason.str());
        if (action == "germinate") {
            auto g = c.initGerminate();
            g.setLayer(layer), g.setSeed(seed), g.setBlueprintKind(bk), g.setSize(sz),
                g.setStrategy(gs);
        } else if (transition) {
            auto t = c.initTransition();
            t.setLayer(layer), t.setSeed(seed), t.setToStage(to);
        } else {
            auto s = action == "cull"     ? c.initCull()
                     : action == "cancel" ? c.initCancel()
                                          : c.initRollback();
            s.setLayer(layer), s.setSeed(seed);
        }
    });
    return print_reply(r, target.str());
}

int status_main(int argc, char** argv) {
    cli::Parser p("esper status",
                  "Show the state of a live run: the executor's status and the controller's view,\n"
                  "each with its counters of what it dropped or refused, then the broker's\n"
                  "counters from its heartbeat; as a table (--json: one JSON object). Fails\n"
                  "within about --timeout-ms when nothing answers.");
    auto& bus_ep = p.endpoint("bus", "tcp://HOST:RPC", "broker request/reply endpoint",
                              "tcp://127.0.0.1:5557");
    auto& bus_sub = p.option("bus-sub", "tcp://HOST:SUB",
                             "broker subscriber endpoint, for the broker's heartbeat and its "
                             "counters ('' = skip)",
                             "tcp://127.0.0.1:5556");
    auto& target = p.option("target", "AGENT", "executor to ask", "kasmina/0");
    auto& timeout = p.option("timeout-ms", "MS", "the whole command's time limit", "800");
    auto& as_json = p.flag("json", "print one JSON object instead of the table");
    auto& keys = keys_option(p);
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (!p.positional().empty())
        return p.usage_error("unexpected argument '" + p.positional()[0] + "'");
    const int64_t total_ms = timeout.as_int();
    if (total_ms < 100) return p.usage_error("--timeout-ms must be >= 100");
    std::string sub_ep;
    try {
        if (!bus_sub.str().empty()) sub_ep = cli::normalize_endpoint(bus_sub.str(), "bus-sub");
    } catch (const cli::UsageError& e) {
        return p.usage_error(e.what());
    }
    const bus::ClientSecurity sec =
        tool_keys(keys, {bus::Role::kObserver, bus::Role::kOperator, bus::Role::kAgent});
    // One attempt per agent, both at once with the whole budget each (so a loaded run has the
    // time to answer and a missing one fails within it): a status request changes nothing, so a
    // lost reply is simply reported.
    zmq::context_t ctx;
    StatusReplies replies;
    auto ask = [&](const std::string& agent, StatusReply& out) {
        bus::RpcClient client(ctx, {.endpoint = bus_ep.str(),
                                    .sender = fmt::format("operator/{}/{}", ::getpid(), agent),
                                    .timeout_ms = static_cast<int>(total_ms),
                                    .max_attempts = 1,
                                    .security = sec});
        bus::RpcReply r = client.request(agent, "", [](schema::Envelope::Payload::Builder pl) {
            pl.initControlRequest().setStatus();
        });
        out.agent = agent;
        if (!r.ok()) {
            out.error = fmt::format("{}{}{}", bus::rpc_status_name(r.status),
                                    r.error.empty() ? "" : ": ", r.error);
            return;
        }
        auto reply = r.reply->envelope().getPayload();
        if (!reply.isControlReply() || !reply.getControlReply().getOk() ||
            !reply.getControlReply().isStatus()) {
            out.error = "no status in the reply";
            return;
        }
        out.status = nlohmann::json::parse(payload_to_json(r.reply->envelope()), nullptr, false)
                         .value("status", nlohmann::json::object());
    };
    {
        std::thread executor([&] { ask(target.str(), replies.executor); });
        ask("tamiyo", replies.controller);
        executor.join();
    }
    // The broker answers no requests (it only routes): its counters come in its heartbeat,
    // published every second on heartbeat.broker. Asked only of a run that answered, so a run
    // that is not there still fails within the budget.
    nlohmann::json broker;
    if (!sub_ep.empty() && replies.executor.error.empty()) {
        bus::Subscriber sub(
            ctx, {.endpoint = sub_ep, .prefixes = {"heartbeat.broker"}, .security = sec});
        if (auto m = sub.poll(1500))
            broker =
                nlohmann::json::parse(envelope_to_json(m->topic, m->envelope()), nullptr, false);
        else
            broker = {{"error", "no heartbeat from the broker within 1500 ms"}};
    }
    if (as_json.on()) {
        nlohmann::json j = status_json(replies, bus_ep.str());
        if (!broker.is_null()) j["broker"] = broker;
        fmt::print("{}\n", j.dump());
    } else {
        fmt::print("{}", format_status(replies, bus_ep.str(), broker));
    }
    return replies.executor.error.empty() && replies.controller.error.empty() ? 0 : 1;
}

}  // namespace esper::agents
