// `esper broker`: runs the message broker (bus/broker.h) until SIGINT/SIGTERM, and next to it, on
// a thread of its own with its own socket, the rendezvous key-value worker "kv"
// (agents/kv_service.h). Once bound and the kv worker is registered, prints its endpoints as one
// line on stdout for humans and scripts ("broker pub=tcp://... sub=tcp://... rpc=tcp://...") and,
// with --ready-fd N, writes them as a JSON line to descriptor N for a supervisor
// (agents/supervisor.h). With --keys DIR every endpoint speaks CURVE and only keys in the
// allowlist connect, with their roles (agents/keys.h, bus/security.h); without keys, binding a
// non-loopback address needs --insecure (like Redis's protected mode) and warns.
#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/keys.h"
#include "agents/kv_service.h"
#include "agents/supervisor.h"
#include "bus/broker.h"
#include "core/clock.h"
#include "core/log.h"

namespace esper::agents {

namespace {

std::atomic<bool> g_broker_stop{false};

extern "C" void broker_on_signal(int) { g_broker_stop.store(true); }

bool is_loopback(const std::string& host) {
    return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

std::string endpoint(const std::string& host, int64_t port) {
    std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    return "tcp://" + h + ":" + (port == 0 ? std::string("*") : std::to_string(port));
}

int64_t port_value(const cli::Option& o) {
    int64_t p = o.as_int();
    if (p < 0 || p > 65535)
        throw cli::UsageError("--" + o.name + ": port out of range: " + o.str());
    return p;
}

// Moves traffic until the hosted kv worker has registered, so a client that starts once the
// broker says it is ready never gets "unknown agent kv". False after `timeout_ms`.
bool wait_for_kv(bus::Broker& broker, int timeout_ms) {
    for (Stopwatch sw; sw.elapsed_s() * 1000 < timeout_ms;) {
        broker.poll_once(10);
        for (const std::string& name : broker.agents())
            if (name == kKvAgentName) return true;
    }
    return false;
}

}  // namespace

int broker_main(int argc, char** argv) {
    cli::Parser p("esper broker",
                  "Run the message broker: XSUB for publishers, XPUB for "
                  "subscribers, ROUTER for request/reply between named agents.");
    auto& bind = p.option("bind", "ADDR", "address to bind", "127.0.0.1");
    auto& pub_port =
        p.option("pub-port", "P", "port publishers connect to (0 = ephemeral)", "5555");
    auto& sub_port = p.option("sub-port", "S", "port subscribers (esper tap) connect to", "5556");
    auto& rpc_port = p.option("rpc-port", "R", "port for request/reply", "5557");
    auto& expiry = p.option("agent-expiry-ms", "MS",
                            "forget an agent after this long without "
                            "a heartbeat",
                            "3000");
    auto& queue_bytes = p.option("max-queue-bytes", "N",
                                 "memory the queue towards one peer (a stalled subscriber or "
                                 "agent) may pin, in bytes",
                                 std::to_string(bus::BrokerConfig{}.max_queue_bytes));
    auto& frame_bytes =
        p.option("max-frame-bytes", "N", "largest request/reply frame; larger ones are refused",
                 std::to_string(bus::BrokerConfig{}.max_frame_bytes));
    auto& pubsub_bytes = p.option("max-pubsub-frame-bytes", "N",
                                  "largest published message; larger ones are dropped",
                                  std::to_string(bus::BrokerConfig{}.max_pubsub_frame_bytes));
    auto& io_threads = p.option("io-threads", "N",
                                "ZeroMQ I/O threads: the publishers' and the subscribers' "
                                "connections are served in parallel from 2",
                                "2");
    auto& insecure = p.flag("insecure", "allow a non-loopback bind without keys (warns)");
    auto& keys = p.option("keys", "DIR",
                          "CURVE on every endpoint: DIR/broker.secret is the broker's key, and "
                          "DIR/*.pub the allowlist unless --allow (make them: esper keygen)");
    auto& allow = p.option("allow", "DIR",
                           "allowlist: client public keys (*.pub) with their roles; re-read when "
                           "a file is added or removed (default: the --keys DIR)");
    auto& ready_fd = p.option("ready-fd", "N",
                              "once ready, write the endpoints as one JSON line "
                              "{\"pub\",\"sub\",\"rpc\"} to this inherited descriptor and "
                              "close it (used by esper run)");
    p.epilog(
        "Prints 'broker pub=ENDPOINT sub=ENDPOINT rpc=ENDPOINT' on stdout once bound.\n"
        "Also serves the rendezvous key-value store as the agent 'kv'.\n"
        "Stops cleanly on SIGINT or SIGTERM.");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (!p.positional().empty())
        return p.usage_error("unexpected argument '" + p.positional()[0] + "'");
    if (const char* spec = std::getenv("ESPER_LOG")) set_log_levels(spec);

    if (allow.given() && !keys.given()) return p.usage_error("--allow needs --keys");
    if (!is_loopback(bind.str()) && !keys.given()) {
        if (!insecure.on())
            return p.usage_error("refusing to bind non-loopback address " + bind.str() +
                                 " without authentication; pass --insecure to do it anyway");
        std::fprintf(stderr,
                     "esper broker: WARNING: binding %s without keys (--insecure); anyone "
                     "who can reach it can read telemetry and send commands\n",
                     bind.str().c_str());
    }
    bus::BrokerConfig config;
    config.pub_endpoint = endpoint(bind.str(), port_value(pub_port));
    config.sub_endpoint = endpoint(bind.str(), port_value(sub_port));
    config.rpc_endpoint = endpoint(bind.str(), port_value(rpc_port));
    config.agent_expiry_ms = static_cast<int>(expiry.as_int());
    if (config.agent_expiry_ms <= 0) throw cli::UsageError("--agent-expiry-ms must be positive");
    config.max_queue_bytes = queue_bytes.as_int();
    config.max_frame_bytes = frame_bytes.as_int();
    config.max_pubsub_frame_bytes = pubsub_bytes.as_int();
    for (const cli::Option* o : {&queue_bytes, &frame_bytes, &pubsub_bytes})
        if (o->as_int() < 1024) throw cli::UsageError("--" + o->name + " must be >= 1024");
    const int64_t n_io_threads = io_threads.as_int();
    if (n_io_threads < 1 || n_io_threads > 64)
        throw cli::UsageError("--io-threads must be between 1 and 64");
    const int ready = ready_fd.given() ? static_cast<int>(ready_fd.as_int()) : -1;
    if (ready_fd.given() && ready < 0) throw cli::UsageError("--ready-fd must be >= 0");
    if (keys.given()) {
        config.security = server_security(keys.str(), allow.given() ? allow.str() : keys.str());
        ESPER_LOG_INFO(logger("bus.broker"), "security=curve keys=", keys.str(),
                       " allowlist=", allow.given() ? allow.str() : keys.str());
    }
    // The hosted kv worker reaches the router in-process, whatever --bind is.
    config.local_rpc_endpoint = "inproc://esper-broker-rpc";

    struct sigaction sa {};
    sa.sa_handler = broker_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);

    // Every message crosses the broker twice (in from a publisher, out to each subscriber): with
    // one I/O thread both directions queue on it (docs/benchmarks.md, "Bus").
    zmq::context_t context(static_cast<int>(n_io_threads));
    bus::Broker broker(context, config);
    Logger& log = logger("bus.broker");
    // Heartbeats well inside the expiry, so the broker never forgets its own service.
    KvServiceThread kv(context, config.local_rpc_endpoint,
                       std::max(10, std::min(1000, config.agent_expiry_ms / 3)));
    if (!wait_for_kv(broker, 5000))
        ESPER_LOG_WARN(log, "kv worker did not register within 5 s; rendezvous may be refused");
    std::printf("%s\n", broker.endpoints_line().c_str());
    std::fflush(stdout);
    ESPER_LOG_INFO(log, broker.endpoints_line());
    const bus::BrokerEndpoints& ep = broker.endpoints();
    write_ready_line(ready, {{"pub", ep.pub}, {"sub", ep.sub}, {"rpc", ep.rpc}});
    broker.run(g_broker_stop);
    kv.stop();
    const auto& s = broker.stats();
    ESPER_LOG_INFO(log, "stopped forwarded=", s.forwarded, " requests=", s.requests,
                   " replies=", s.replies, " unknown_agent=", s.unknown_agent,
                   " malformed=", s.malformed, " oversized=", s.oversized,
                   " agent_busy=", s.agent_busy, " auth_allowed=", s.auth_allowed,
                   " auth_denied=", s.auth_denied, " handshake_failed=", s.handshake_failed,
                   " forbidden=", s.forbidden, " name_conflicts=", s.name_conflicts,
                   " forged_replies=", s.forged_replies);
    return 0;
}

}  // namespace esper::agents
