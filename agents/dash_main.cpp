// `esper dash`: the live dashboard. Subscribes to a run's telemetry and events on the broker's
// XPUB endpoint (the same --bus as `esper tap`), keeps agents/dash_state.h, and serves over HTTP
// (agents/http_server.h) on one event-loop thread: the page and its assets from web/ (compiled
// in), `/api/...` JSON, `/metrics` (Prometheus text) and `/api/stream`, the server-sent events
// that keep open pages live (a snapshot first, then a delta every 250 ms). It asks the controller
// once for its policy history over --bus-rpc. Binds loopback unless --insecure.
#include <fmt/format.h>
#include <unistd.h>

#include <boost/asio/ip/address.hpp>
#include <cstdlib>
#include <string>

#include "agents/cli.h"
#include "agents/commands.h"
#include "agents/dash_state.h"
#include "agents/http_server.h"
#include "agents/keys.h"
#include "agents/supervisor.h"
#include "agents/tool_json.h"
#include "bus/event_loop.h"
#include "bus/pubsub.h"
#include "bus/rpc.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"
#include "web/assets.h"

namespace esper::agents {

namespace {

using nlohmann::json;

Logger& log() { return logger("agents.dash"); }

struct HttpBind {
    std::string address;
    uint16_t port = 0;
};

// "ADDR:PORT", ":PORT" or "PORT" (loopback); IPv6 as "[::1]:PORT".
HttpBind parse_http(const std::string& text) {
    HttpBind b{"127.0.0.1", 0};
    std::string port = text;
    if (const auto colon = text.rfind(':'); colon != std::string::npos) {
        b.address = text.substr(0, colon);
        port = text.substr(colon + 1);
        if (b.address.size() >= 2 && b.address.front() == '[' && b.address.back() == ']')
            b.address = b.address.substr(1, b.address.size() - 2);
        if (b.address.empty()) b.address = "127.0.0.1";
        if (b.address == "localhost") b.address = "127.0.0.1";
    }
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != port.npos ||
        std::stoi(port) > 65535)
        throw cli::UsageError("--http '" + text + "': expected ADDR:PORT, e.g. 127.0.0.1:8080");
    b.port = static_cast<uint16_t>(std::stoi(port));
    return b;
}

bool is_loopback(const std::string& address) {
    boost::system::error_code ec;
    const auto a = boost::asio::ip::make_address(address, ec);
    if (ec) throw cli::UsageError("--http: '" + address + "' is not an IP address");
    return a.is_loopback();
}

HttpResponse json_response(const json& j) {
    return {200,
            "application/json",
            j.dump(-1, ' ', false, json::error_handler_t::replace),
            {{"Cache-Control", "no-store"}}};
}

std::optional<uint64_t> query_u64(const HttpRequest& r, const std::string& key) {
    auto it = r.query.find(key);
    if (it == r.query.end() || it->second.empty() ||
        it->second.find_first_not_of("0123456789") != std::string::npos || it->second.size() > 19)
        return std::nullopt;
    return std::stoull(it->second);
}

class Dash {
public:
    struct Options {
        std::string sub, rpc, run;
        HttpBind http;
        int ready_fd = -1;
        bus::ClientSecurity security{};  // --keys: CURVE on both sockets
    };

    explicit Dash(Options o)
        : o_(std::move(o)),
          state_(o_.run),
          sub_(ctx_, {.endpoint = o_.sub, .prefixes = prefixes(o_.run), .security = o_.security}),
          client_(ctx_, loop_,
                  {.endpoint = o_.rpc,
                   .sender = fmt::format("dash/{}", ::getpid()),
                   .timeout_ms = 500,
                   .max_attempts = 2,
                   .security = o_.security}),
          server_(
              loop_.context(), {.address = o_.http.address, .port = o_.http.port},
              [this](const HttpRequest& r) { return respond(r); },
              [](const HttpRequest& r) { return r.path == "/api/stream"; },
              [this](HttpServer::Stream& s, const HttpRequest&) { open_stream(s); }) {}

    int run() {
        loop_.watch(sub_.socket(), [this] {
            while (auto m = sub_.try_receive()) {
                try {
                    state_.ingest(m->topic, m->envelope(), wall_time_ns());
                } catch (const std::exception& e) {  // bus input is never fatal
                    ESPER_LOG_WARN_RATE(log(), 5, "dropped message topic=", m->topic,
                                        " reason=", e.what());
                } catch (const kj::Exception& e) {
                    ESPER_LOG_WARN_RATE(log(), 5, "dropped message topic=", m->topic,
                                        " reason=", e.getDescription().cStr());
                }
            }
        });
        loop_.every(std::chrono::milliseconds(250), [this] { flush(); });
        loop_.every(std::chrono::milliseconds(3000), [this] { ask_policy_history(); });
        loop_.on_signal([this](int) {
            server_.stop();
            loop_.stop();
        });
        const std::string url =
            fmt::format("http://{}:{}/",
                        o_.http.address.find(':') != std::string::npos ? "[" + o_.http.address + "]"
                                                                       : o_.http.address,
                        server_.port());
        std::printf("esper dash: serving %s (bus %s%s%s)\n", url.c_str(), o_.sub.c_str(),
                    o_.run.empty() ? "" : ", run ", o_.run.c_str());
        std::fflush(stdout);
        write_ready_line(o_.ready_fd, {{"http", url}, {"port", server_.port()}});
        ask_policy_history();
        loop_.run();
        return 0;
    }

private:
    static std::vector<std::string> prefixes(const std::string& run) {
        if (run.empty()) return {"telemetry.", "events.", "config.", "heartbeat."};
        return {"telemetry.run." + run, "telemetry.seeds." + run + ".", "events.", "config." + run,
                "heartbeat."};
    }

    DashBusStats bus_stats() const {
        return {sub_.stats().received, sub_.sequences().gaps(), sub_.stats().malformed};
    }

    void flush() {
        if (auto d = state_.take_delta(wall_time_ns()))
            server_.broadcast("update", d->dump(-1, ' ', false, json::error_handler_t::replace));
    }

    // A new page first gets everything; open pages get what changed before it, so nothing is
    // sent twice to anyone.
    void open_stream(HttpServer::Stream& s) {
        flush();
        s.send(
            "update",
            state_.snapshot(wall_time_ns()).dump(-1, ' ', false, json::error_handler_t::replace));
    }

    void ask_policy_history() {
        if (have_history_ || asking_ || o_.rpc.empty()) return;
        asking_ = true;
        const bool queued = client_.send(
            "tamiyo", "",
            [](schema::Envelope::Payload::Builder p) { p.initControlRequest().setPolicyHistory(); },
            [this](bus::RpcReply reply) {
                asking_ = false;
                if (!reply.ok()) return;  // no controller yet: asked again in a few seconds
                json j = json::parse(payload_to_json(reply.reply->envelope()), nullptr, false);
                if (!j.is_object() || !j.value("ok", false)) return;
                state_.set_policy_history(j.value("policyHistory", json::array()));
                have_history_ = true;
            });
        if (!queued) asking_ = false;
    }

    HttpResponse respond(const HttpRequest& r) {
        const int64_t now = wall_time_ns();
        if (r.path == "/metrics")
            return {200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    state_.prometheus(bus_stats(), now),
                    {{"Cache-Control", "no-store"}}};
        if (r.path == "/api/status") {
            json j = state_.status_json(now);
            const DashBusStats b = bus_stats();
            j["bus"] = {{"received", b.received}, {"gaps", b.gaps}, {"malformed", b.malformed}};
            return json_response(j);
        }
        if (r.path == "/api/snapshot") return json_response(state_.snapshot(now));
        if (r.path == "/api/seeds") {
            auto layer = query_u64(r, "layer"), seed = query_u64(r, "seed");
            auto u32 = [](std::optional<uint64_t> v) -> std::optional<uint32_t> {
                if (!v || *v > 0xffffffffu) return std::nullopt;
                return static_cast<uint32_t>(*v);
            };
            return json_response(state_.seeds_json(u32(layer), u32(seed)));
        }
        if (r.path == "/api/events") {
            const uint64_t since = query_u64(r, "since").value_or(0);
            const uint64_t limit = std::min<uint64_t>(query_u64(r, "limit").value_or(1000), 5000);
            return json_response(state_.events_since(since, static_cast<size_t>(limit)));
        }
        const std::string path = r.path == "/" ? "/index.html" : r.path;
        if (const web::Asset* a = web::find_asset(path)) {
            HttpResponse res{200, std::string(a->content_type), std::string(a->body), {}};
            // The page loads only its own files; uPlot sets inline styles.
            res.headers.push_back({"Content-Security-Policy",
                                   "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                   "img-src 'self' data:"});
            return res;
        }
        return http_not_found(r.path);
    }

    Options o_;
    DashState state_;
    zmq::context_t ctx_;
    bus::EventLoop loop_;
    bus::Subscriber sub_;
    bus::AsyncRpcClient client_;
    HttpServer server_;
    bool have_history_ = false, asking_ = false;
};

}  // namespace

int dash_main(int argc, char** argv) {
    cli::Parser p("esper dash",
                  "Serve a live dashboard of a run: curves, the seed swimlane and grid, policy "
                  "and events,\nplus /metrics (Prometheus) and /api/status, /api/seeds, "
                  "/api/events?since=N.");
    auto& bus_ep = p.endpoint("bus", "ENDPOINT", "broker subscriber endpoint (as esper tap)",
                              "tcp://127.0.0.1:5556");
    auto& bus_rpc = p.endpoint("bus-rpc", "ENDPOINT",
                               "broker request/reply endpoint (the controller's policy history)",
                               "tcp://127.0.0.1:5557");
    auto& http = p.option("http", "ADDR:PORT", "where to serve HTTP", "127.0.0.1:8080");
    auto& run = p.option("run", "ID", "follow this run only (default: the first run seen)");
    auto& insecure = p.flag("insecure", "allow a non-loopback --http address (warns)");
    auto& ready_fd = p.option("ready-fd", "N",
                              "once serving, write {\"http\":URL,\"port\":N} as one line to "
                              "this inherited descriptor (used by esper run)");
    auto& keys =
        p.option("keys", "DIR", "CURVE keys: DIR/broker.pub and an observer (or other) secret key");
    p.epilog(
        "Open the printed URL in a browser. Scrape /metrics with Prometheus; labels are run,\n"
        "layer and stage (never a seed). Example:\n"
        "  esper dash --bus tcp://127.0.0.1:5556 --http 127.0.0.1:8080");
    if (int rc = p.parse(argc, argv); rc >= 0) return rc;
    if (!p.positional().empty())
        return p.usage_error("unexpected argument '" + p.positional()[0] + "'");
    if (const char* spec = std::getenv("ESPER_LOG")) set_log_levels(spec);
    Dash::Options o;
    o.sub = bus_ep.str();
    o.rpc = bus_rpc.str();
    o.run = run.str();
    o.http = parse_http(http.str());
    if (!is_loopback(o.http.address)) {
        if (!insecure.on())
            return p.usage_error("--http " + http.str() +
                                 " is not a loopback address: anyone who can reach it sees the "
                                 "run; pass --insecure to allow it");
        std::fprintf(stderr,
                     "esper dash: warning: serving on %s without authentication (--insecure)\n",
                     o.http.address.c_str());
    }
    if (ready_fd.given()) o.ready_fd = static_cast<int>(ready_fd.as_int());
    if (keys.given())
        o.security = client_security(
            keys.str(), {bus::Role::kObserver, bus::Role::kOperator, bus::Role::kAgent});
    Dash dash(std::move(o));
    return dash.run();
}

}  // namespace esper::agents
