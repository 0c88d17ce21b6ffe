// Operator tools that talk to a live run through the broker's request/reply endpoint:
//   esper policy load FILE | show | history | rollback     (to `tamiyo`)
//   esper ctl germinate|transition|cull|cancel|rollback …   (to the executor, `kasmina/0`)
//   esper status                                           (both)
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
#include <sstream>
#include <string>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/tool_json.h"
#include "agents/wire_vocabulary.h"
#include "bus/pubsub.h"
#include "bus/rpc.h"
#include "core/clock.h"
#include "core/error.h"

namespace esper::agents {
namespace {

namespace fs = std::filesystem;

bus::RpcClient make_client(zmq::context_t& ctx, const std::string& endpoint, int timeout_ms) {
    return bus::RpcClient(ctx, {.endpoint = endpoint,
                                .sender = fmt::format("operator/{}", ::getpid()),
                                .timeout_ms = timeout_ms,
                                .max_attempts = 4});
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
int control(const std::string& endpoint, const std::string& agent, int timeout_ms, Fill&& fill) {
    zmq::context_t ctx;
    bus::RpcClient client = make_client(ctx, endpoint, timeout_ms);
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

}  // namespace

int policy_main(int argc, char** argv) {
    cli::Parser p("esper policy",
                  "Manage the controller's policy in a live run.\n\n"
                  "  load FILE    validate and activate a rules YAML or a plugin .so\n"
                  "  show         the active policy\n"
                  "  history      every policy change of this controller\n"
                  "  rollback     restore the previous policy",
                  "load FILE | show | history | rollback");
    auto& bus_ep =
        p.option("bus", "tcp://HOST:RPC", "broker request/reply endpoint", "tcp://127.0.0.1:5557");
    auto& timeout = p.option("timeout-ms", "MS", "per-attempt timeout", "1000");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    const auto& pos = p.positional();
    if (pos.empty()) return p.usage_error("missing action (load, show, history, rollback)");
    int t = static_cast<int>(timeout.as_int());
    const std::string& action = pos[0];
    if (action == "load") {
        if (pos.size() != 2) return p.usage_error("load needs exactly one FILE");
        fs::path file = pos[1];
        if (!fs::exists(file)) ESPER_THROW(kInvalidInput, file.string(), ": no such file");
        bool plugin = file.extension() == ".so";
        std::string text;
        if (!plugin) {
            std::ifstream in(file);
            std::stringstream ss;
            ss << in.rdbuf();
            text = ss.str();
        }
        return control(bus_ep.str(), "tamiyo", t, [&](schema::ControlRequest::Builder r) {
            auto l = r.initPolicyLoad();
            l.setName(file.string());
            if (plugin) {
                l.setKind(schema::PolicyKind::PLUGIN);
                l.setPath(fs::absolute(file).string());
            } else {
                l.setKind(schema::PolicyKind::RULES);
                l.setSource(text);
            }
        });
    }
    if (pos.size() != 1) return p.usage_error("unexpected argument '" + pos[1] + "'");
    if (action == "show")
        return control(bus_ep.str(), "tamiyo", t, [](auto r) { r.setPolicyShow(); });
    if (action == "history")
        return control(bus_ep.str(), "tamiyo", t, [](auto r) { r.setPolicyHistory(); });
    if (action == "rollback")
        return control(bus_ep.str(), "tamiyo", t, [](auto r) { r.setPolicyRollback(); });
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
    auto& bus_ep =
        p.option("bus", "tcp://HOST:RPC", "broker request/reply endpoint", "tcp://127.0.0.1:5557");
    auto& target = p.option("target", "AGENT", "executor to command", "kasmina/0");
    auto& kind = p.option("kind", "KIND", "germinate: blueprint kind", "residual_mlp");
    auto& size = p.option("size", "N", "germinate: expansion or rank (0 = config default)", "0");
    auto& strategy = p.option("strategy", "S", "germinate: grafting strategy", "linear");
    auto& reason = p.option("reason", "TEXT", "recorded with the event", "operator command");
    auto& timeout = p.option("timeout-ms", "MS", "per-attempt timeout", "1000");
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
    bus::RpcClient client = make_client(ctx, bus_ep.str(), static_cast<int>(timeout.as_int()));
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
                  "Show the state of a live run: the controller's view and the executor's status,\n"
                  "each with its counters of what it dropped or refused (\"counters\"), then the\n"
                  "broker's heartbeat with its own counters (oversized frames, busy agents, ...).");
    auto& bus_ep =
        p.option("bus", "tcp://HOST:RPC", "broker request/reply endpoint", "tcp://127.0.0.1:5557");
    auto& bus_sub = p.option("bus-sub", "tcp://HOST:S",
                             "broker subscriber endpoint (for the broker's heartbeat; '' = skip)",
                             "tcp://127.0.0.1:5556");
    auto& target = p.option("target", "AGENT", "executor to ask", "kasmina/0");
    auto& timeout = p.option("timeout-ms", "MS", "per-attempt timeout", "1000");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (!p.positional().empty())
        return p.usage_error("unexpected argument '" + p.positional()[0] + "'");
    int t = static_cast<int>(timeout.as_int());
    int rc_t = control(bus_ep.str(), "tamiyo", t, [](auto r) { r.setStatus(); });
    int rc_k = control(bus_ep.str(), target.str(), t, [](auto r) { r.setStatus(); });
    if (!bus_sub.str().empty()) {
        // The broker answers no requests (it only routes): its counters come in its heartbeat,
        // published every second on heartbeat.broker.
        zmq::context_t ctx;
        bus::Subscriber sub(ctx, {.endpoint = bus_sub.str(), .prefixes = {"heartbeat.broker"}});
        if (auto m = sub.poll(std::max(t, 1500)))
            fmt::print("{}\n", envelope_to_json(m->topic, m->envelope()));
        else
            fmt::print(stderr, "no heartbeat from the broker on {} within {} ms\n", bus_sub.str(),
                       std::max(t, 1500));
    }
    return rc_t == 0 && rc_k == 0 ? 0 : 1;
}

}  // namespace esper::agents
