// `esper tap`: subscribes to the broker's XPUB endpoint and prints every message as one JSON
// line (agents/tool_json.h). Exits 0 after --count messages, after --timeout-ms without a
// message (1 if nothing arrived at all), or with --until-end once a run ends (its last run status
// on events.run.<run>, lossless). Sequence gaps and dropped frames are reported on stderr.
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/keys.h"
#include "agents/tool_json.h"
#include "bus/event_loop.h"
#include "bus/pubsub.h"
#include "core/clock.h"
#include "core/log.h"
#include "schemas/telemetry.capnp.h"

namespace esper::agents {

int tap_main(int argc, char** argv) {
    cli::Parser p("esper tap", "Print bus messages as JSON lines.", "[PREFIX...]");
    auto& bus_ep =
        p.endpoint("bus", "ENDPOINT", "broker subscriber endpoint", "tcp://127.0.0.1:5556");
    auto& until_end = p.flag("until-end", "exit 0 once a run ends (finished, stopped or failed)");
    auto& run = p.option("run", "ID", "with --until-end: only the end of this run counts");
    auto& count = p.option("count", "N", "exit after N messages (0 = no limit)", "0");
    auto& timeout = p.option("timeout-ms", "T",
                             "exit after T ms without a message "
                             "(0 = never; exit code 1 if none arrived)",
                             "0");
    auto& keys =
        p.option("keys", "DIR", "CURVE keys: DIR/broker.pub and an observer (or other) secret key");
    p.epilog(
        "Topic prefixes use ZeroMQ prefix matching, e.g. 'telemetry.seeds.' or 'events.'.\n"
        "Output: "
        "{\"schema\",\"time\",\"topic\",\"type\",\"sender\",\"seq\",\"sent_at_ns\",\"run_id\",\n"
        "\"payload\"}; an unmeasured value is null.");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (const char* spec = std::getenv("ESPER_LOG")) set_log_levels(spec);
    int64_t max_count = count.as_int();
    int64_t timeout_ms = timeout.as_int();
    if (max_count < 0) throw cli::UsageError("--count must be >= 0");
    if (timeout_ms < 0) throw cli::UsageError("--timeout-ms must be >= 0");

    std::vector<std::string> prefixes = p.positional();
    const auto wanted = [&](const std::string& topic) {
        if (p.positional().empty()) return true;
        for (const std::string& prefix : p.positional())
            if (topic.rfind(prefix, 0) == 0) return true;
        return false;
    };
    // The end of a run comes on events.run.<run>; subscribed even when not printed.
    if (until_end.on() && !prefixes.empty()) prefixes.push_back("events.run.");
    zmq::context_t context(1);
    bus::SubscriberConfig sc{.endpoint = bus_ep.str(), .prefixes = prefixes};
    if (keys.given())
        sc.security = client_security(
            keys.str(), {bus::Role::kObserver, bus::Role::kOperator, bus::Role::kAgent});
    bus::Subscriber sub(context, sc);
    bus::EventLoop loop;
    int64_t received = 0;
    int64_t last_activity_ns = monotonic_ns();
    uint64_t malformed_reported = 0;
    int exit_code = 0;

    loop.watch(sub.socket(), [&] {
        while (auto m = sub.try_receive()) {
            last_activity_ns = monotonic_ns();
            auto env = m->envelope();
            if (m->missing_before > 0) {
                fmt::print(stderr, "esper tap: gap sender={} topic={} missing={} before seq={}\n",
                           env.getSender().cStr(), m->topic, m->missing_before, env.getSequence());
            }
            const bool ended =
                until_end.on() && m->topic.rfind("events.run.", 0) == 0 &&
                env.getPayload().isRunStatus() &&
                env.getPayload().getRunStatus().getState() != schema::RunState::TRAINING &&
                (!run.given() || env.getRunId() == run.str());
            if (wanted(m->topic)) {
                std::string line = envelope_to_json(m->topic, env);
                line.push_back('\n');
                std::fwrite(line.data(), 1, line.size(), stdout);
                std::fflush(stdout);
                ++received;
            }
            if ((received == max_count && max_count > 0) || ended) {
                if (ended) fmt::print(stderr, "esper tap: run {} ended\n", env.getRunId().cStr());
                loop.stop();
                return;
            }
        }
        if (sub.stats().malformed > malformed_reported) {
            fmt::print(stderr, "esper tap: dropped {} malformed frame(s) so far\n",
                       sub.stats().malformed);
            malformed_reported = sub.stats().malformed;
        }
    });
    if (timeout_ms > 0) {
        loop.every(std::chrono::milliseconds(20), [&] {
            if (monotonic_ns() - last_activity_ns >= timeout_ms * 1000000) {
                if (received == 0) {
                    fmt::print(stderr, "esper tap: no message within {} ms\n", timeout_ms);
                    exit_code = 1;
                }
                loop.stop();
            }
        });
    }
    loop.on_signal([&](int) { loop.stop(); });
    loop.run();
    fmt::print(stderr, "esper tap: received={} gaps={} reordered={} malformed={}\n", received,
               sub.sequences().gaps(), sub.sequences().reordered(), sub.stats().malformed);
    return exit_code;
}

}  // namespace esper::agents
