// esper-bench-bus: bus throughput and latency on loopback, all in one run so ratios compare
// like with like. (1) Seed telemetry batches (several seeds-per-message sizes) Publisher ->
// broker (XSUB/XPUB) -> Subscriber with full decode; (2) the same frame sizes through raw libzmq
// PUB -> SUB, no broker, pre-encoded bodies; (3) the same raw frames through a bare zmq::proxy;
// (4) command round trips RpcClient -> broker -> RpcWorker -> back. Each role has a ZeroMQ
// context of its own, as separate processes would. Per case it also reports
// where the CPU goes (publisher, broker or proxy, subscriber, ZeroMQ's I/O threads) per
// delivered message. --transport tcp,ipc runs every telemetry case over each transport (raw over
// the same one); --copy-path adds the publisher path that encodes into a fresh frame (a copy),
// as before zero-copy sends. Last stdout line is JSON; the headline size is --headline-seeds.
// With --curve a second broker and every Esper socket on it use CURVE keys (bus/security.h),
// measured interleaved with the plain broker (ratio_vs_plain); raw libzmq stays plain.
#include <capnp/message.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>
#include <zmq.hpp>

#include "bus/broker.h"
#include "bus/envelope.h"
#include "bus/pubsub.h"
#include "bus/rpc.h"
#include "core/clock.h"

using namespace esper;

namespace {

struct Options {
    double seconds = 0.5;
    std::vector<unsigned> seeds = {16, 64, 256, 1024};
    unsigned headline_seeds = 256;
    int commands = 3000;
    int repeat = 3;  // best of N per case: the 2-core machine is shared and noisy
    bool curve = false;
    bool copy_path = false;
    int publisher_cost_messages = 0;  // --publisher-cost N: only that measurement
    // Each role gets a context of its own, as in a deployment where each is a process: the
    // broker and the bare proxy with hop_io_threads I/O threads (esper broker --io-threads,
    // default 2), a publisher and a subscriber with one each. --shared-context puts everything on
    // one context of two I/O threads (the layout before 2026-12-06).
    int hop_io_threads = 2;
    bool shared_context = false;
    std::vector<std::string> transports = {"tcp"};
    std::string only{};  // profiling: run only "esper", "copy", "raw" or "proxy"
};

int64_t cpu_ns(clockid_t clock) {
    timespec ts{};
    clock_gettime(clock, &ts);
    return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

clockid_t clock_of(pthread_t thread) {
    clockid_t c = CLOCK_THREAD_CPUTIME_ID;
    if (pthread_getcpuclockid(thread, &c) != 0) c = CLOCK_THREAD_CPUTIME_ID;
    return c;
}

// CPU time of one case by stage: the publishing thread, the broker (or bare proxy) thread, the
// subscribing thread, and the rest of the process (ZeroMQ's I/O threads).
struct Cpu {
    int64_t pub = 0, hop = 0, sub = 0, total = 0;
    int64_t io() const { return total - pub - hop - sub; }
};

// A publisher and a subscriber are processes of their own in a deployment, each with a context
// (one I/O thread); --shared-context puts both on one context of two I/O threads.
struct Contexts {
    zmq::context_t& pub;
    zmq::context_t& sub;
};

struct Rate {
    uint64_t messages = 0;   // received after the first (the first starts the clock)
    uint64_t delivered = 0;  // received in all
    uint64_t published = 0;  // send attempts (dropped ones included)
    double seconds = 0;
    Cpu cpu;
    double msgs_per_s() const { return seconds > 0 ? static_cast<double>(messages) / seconds : 0; }
    double us_per_msg(int64_t ns) const {
        return delivered > 0 ? static_cast<double>(ns) * 1e-3 / static_cast<double>(delivered) : 0;
    }
    std::string cpu_line() const {
        char b[200];
        // The publisher floods (like raw PUB), so its time is also given per message it built.
        const double pub_each =
            published > 0 ? static_cast<double>(cpu.pub) * 1e-3 / static_cast<double>(published)
                          : 0;
        std::snprintf(b, sizeof b,
                      "pub:%.2f,hop:%.2f,sub:%.2f,io:%.2f,total:%.2f,pub_per_published:%.3f",
                      us_per_msg(cpu.pub), us_per_msg(cpu.hop), us_per_msg(cpu.sub),
                      us_per_msg(cpu.io()), us_per_msg(cpu.total), pub_each);
        return b;
    }
};

// Starts the CPU clocks of a case; finish() fills rate.cpu. The subscriber thread measures
// itself (sub_ns).
struct CpuSpan {
    clockid_t hop_clock;
    bool has_hop;
    int64_t pub0 = cpu_ns(CLOCK_THREAD_CPUTIME_ID), total0 = cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
    int64_t hop0;
    CpuSpan(clockid_t hop, bool has) : hop_clock(hop), has_hop(has), hop0(has ? cpu_ns(hop) : 0) {}
    Cpu finish(int64_t sub_ns) const {
        Cpu c;
        c.pub = cpu_ns(CLOCK_THREAD_CPUTIME_ID) - pub0;
        c.hop = has_hop ? cpu_ns(hop_clock) - hop0 : 0;
        c.sub = sub_ns;
        c.total = cpu_ns(CLOCK_PROCESS_CPUTIME_ID) - total0;
        return c;
    }
};

void fill_batch(schema::Envelope::Payload::Builder p, unsigned n, uint64_t step) {
    auto batch = p.initSeedTelemetry();
    batch.setLayer(1);
    batch.setStepBegin(step);
    batch.setStepEnd(step + 10);
    auto seeds = batch.initSeeds(n);
    for (unsigned i = 0; i < n; ++i) {
        auto s = seeds[i];
        s.setSeed(i);
        s.setStage(schema::SeedStage::TRAINING);
        s.setAlpha(0.5f);
        s.setActMean(0.1f * static_cast<float>(i));
        s.setActVar(1.0f);
        s.setGradNorm(0.01f);
        s.setHealth(0.9f);
        s.setActivationMeasured(true);
    }
}

// Counts messages on "bench.data" until "bench.end" or 500 ms of silence; rate is measured
// from the first to the last message received. Adds the calling thread's CPU time to sub_ns.
template <typename Receive>
Rate consume(Receive&& receive, int64_t& sub_ns) {
    const int64_t cpu0 = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
    Rate r;
    int64_t first = 0, last = 0;
    for (;;) {
        int kind = receive();  // 1 data, 2 end, 0 timeout
        if (kind == 0 || kind == 2) break;
        last = monotonic_ns();
        if (r.messages++ == 0) first = last;
    }
    r.seconds = static_cast<double>(last - first) * 1e-9;
    r.delivered = r.messages;
    if (r.messages > 0) --r.messages;  // the first message starts the clock
    sub_ns += cpu_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    return r;
}

// The Esper path: TelemetryPublisher -> broker -> Subscriber (full decode, records counted).
// With copy_path the publisher builds a MallocMessageBuilder and send()s it, which encodes it
// into a fresh frame (the path publish() took before it sent the segment itself).
// `ctx`: the clients' contexts (publisher, subscriber).
Rate esper_run(const Contexts& ctx, const bus::BrokerEndpoints& ep, clockid_t broker_clock,
               const bus::ClientSecurity& keys, unsigned n_seeds, double seconds, bool copy_path,
               size_t& frame_bytes, uint64_t& records) {
    std::atomic<bool> ready{false};
    Rate rate;
    uint64_t recs = 0;
    int64_t sub_ns = 0;
    const CpuSpan span(broker_clock, true);
    std::thread sub_thread([&] {
        bus::Subscriber sub(ctx.sub,
                            {.endpoint = ep.sub, .prefixes = {"bench."}, .security = keys});
        ready = true;
        rate = consume(
            [&] {
                auto m = sub.poll(500);
                if (!m) return 0;
                if (m->topic == "bench.end") return 2;
                recs += m->envelope().getPayload().getSeedTelemetry().getSeeds().size();
                return 1;
            },
            sub_ns);
    });
    while (!ready) std::this_thread::yield();
    // The telemetry path as agents use it: never blocks, drops at a full queue (like raw PUB).
    // The first segment hint is the publisher's default: publish() learns each topic's size.
    bus::TelemetryPublisher pub(
        ctx.pub,
        {.endpoint = ep.pub, .sender = "bench", .run_id = "b", .send_hwm = 1000, .security = keys});
    pub.wait_for_subscriber("bench.data", 5000);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    Stopwatch sw;
    uint64_t step = 0;
    while (sw.elapsed_s() < seconds) {
        for (int i = 0; i < 64; ++i) {
            if (copy_path) {
                capnp::MallocMessageBuilder message(2 + n_seeds * 9 + 64);
                fill_batch(message.initRoot<schema::Envelope>().getPayload(), n_seeds, ++step);
                pub.send("bench.data", message);
            } else {
                pub.publish("bench.data", [&](auto p) { fill_batch(p, n_seeds, ++step); });
            }
        }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the queue drain a little
    while (pub.publish("bench.end", [](auto p) { p.initAnnotation(); }) !=
           bus::PublishResult::kSent)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    sub_thread.join();
    rate.cpu = span.finish(sub_ns);
    rate.published = step;
    capnp::MallocMessageBuilder probe;
    auto env = probe.initRoot<schema::Envelope>();
    fill_batch(env.getPayload(), n_seeds, 1);
    bus::stamp_envelope(env, "bench", "b", 1);
    frame_bytes = bus::encode(probe).size();
    records = recs;
    return rate;
}

// Raw libzmq PUB -> SUB with pre-built frames of `frame_bytes`. With `via_proxy`, the frames
// go through a bare zmq::proxy (XSUB/XPUB), the same topology as the broker, without Esper.
Rate raw_run(const Contexts& ctx, zmq::context_t& hop_ctx, const std::string& any_endpoint,
             size_t frame_bytes, double seconds, bool via_proxy) {
    zmq::socket_t pub(ctx.pub, zmq::socket_type::pub);
    pub.set(zmq::sockopt::sndhwm, 1000);
    std::string endpoint;
    std::thread proxy_thread;
    zmq::socket_t xsub(hop_ctx, zmq::socket_type::xsub), xpub(hop_ctx, zmq::socket_type::xpub);
    zmq::socket_t control_in(hop_ctx, zmq::socket_type::pair),
        control_out(hop_ctx, zmq::socket_type::pair);
    // Frames still queued when a case ends go nowhere: closing must not wait for them (ZeroMQ's
    // default linger is forever, which would hang the context's termination at exit).
    for (zmq::socket_t* s : {&pub, &xsub, &xpub, &control_in, &control_out})
        s->set(zmq::sockopt::linger, 0);
    if (via_proxy) {
        xsub.bind(any_endpoint);
        xpub.bind(any_endpoint);
        xpub.set(zmq::sockopt::sndhwm, 100000);
        xsub.set(zmq::sockopt::rcvhwm, 100000);
        pub.connect(xsub.get(zmq::sockopt::last_endpoint));
        endpoint = xpub.get(zmq::sockopt::last_endpoint);
        control_in.bind("inproc://bench-proxy-control");
        control_out.connect("inproc://bench-proxy-control");
        proxy_thread =
            std::thread([&] { zmq::proxy_steerable(xsub, xpub, zmq::socket_ref(), control_in); });
    } else {
        pub.bind(any_endpoint);
        endpoint = pub.get(zmq::sockopt::last_endpoint);
    }
    std::atomic<bool> ready{false};
    Rate rate;
    int64_t sub_ns = 0;
    std::thread sub_thread([&] {
        zmq::socket_t sub(ctx.sub, zmq::socket_type::sub);
        sub.set(zmq::sockopt::linger, 0);
        sub.set(zmq::sockopt::rcvhwm, 100000);
        sub.set(zmq::sockopt::subscribe, "bench.");
        sub.connect(endpoint);
        ready = true;
        rate = consume(
            [&] {
                zmq::pollitem_t item{sub.handle(), 0, ZMQ_POLLIN, 0};
                zmq::message_t topic, body;
                if (!sub.recv(topic, zmq::recv_flags::dontwait)) {
                    zmq::poll(&item, 1, std::chrono::milliseconds(500));
                    if (!sub.recv(topic, zmq::recv_flags::dontwait)) return 0;
                }
                (void)sub.recv(body, zmq::recv_flags::none);
                return topic.to_string_view() == "bench.end" ? 2 : 1;
            },
            sub_ns);
    });
    while (!ready) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the subscription land
    std::vector<char> body(frame_bytes, 'x');
    const CpuSpan span(via_proxy ? clock_of(proxy_thread.native_handle()) : CLOCK_THREAD_CPUTIME_ID,
                       via_proxy);
    uint64_t published = 0;
    Stopwatch sw;
    while (sw.elapsed_s() < seconds) {
        for (int i = 0; i < 64; ++i, ++published) {
            pub.send(zmq::str_buffer("bench.data"), zmq::send_flags::sndmore);
            pub.send(zmq::buffer(body), zmq::send_flags::none);
        }
    }
    pub.send(zmq::str_buffer("bench.end"), zmq::send_flags::sndmore);
    pub.send(zmq::str_buffer("x"), zmq::send_flags::none);
    sub_thread.join();
    rate.cpu = span.finish(sub_ns);
    rate.published = published;
    if (via_proxy) {
        control_out.send(zmq::str_buffer("TERMINATE"), zmq::send_flags::none);
        proxy_thread.join();
    }
    return rate;
}

std::vector<double> command_rtts(zmq::context_t& ctx, const bus::BrokerEndpoints& ep,
                                 const bus::ClientSecurity& keys, int n) {
    std::atomic<bool> stop{false};
    std::atomic<bool> ready{false};
    std::thread worker_thread([&] {
        bus::RpcWorker worker(ctx, {.endpoint = ep.rpc, .name = "kasmina/0", .security = keys});
        ready = true;
        while (!stop) {
            worker.poll(50,
                        [](schema::Envelope::Reader req, schema::Envelope::Payload::Builder rep) {
                            auto ack = rep.initCommandAck();
                            ack.setCommandId(req.getPayload().getCommand().getCommandId());
                            ack.setOutcome(schema::CommandOutcome::APPLIED);
                        });
        }
    });
    while (!ready) std::this_thread::yield();
    bus::RpcClient client(
        ctx, {.endpoint = ep.rpc, .sender = "tamiyo", .timeout_ms = 1000, .security = keys});
    std::vector<double> us;
    for (int i = -100; i < n; ++i) {  // the first 100 warm up (and wait for registration)
        std::string id = "cmd-" + std::to_string(i + 100);
        int64_t t0 = monotonic_ns();
        auto r = client.request("kasmina/0", id, [&](schema::Envelope::Payload::Builder p) {
            auto c = p.initCommand();
            c.setCommandId(id);
            c.initTransition().setToStage(schema::SeedStage::GRAFTING);
        });
        int64_t t1 = monotonic_ns();
        if (i >= 0 && r.ok()) us.push_back(static_cast<double>(t1 - t0) * 1e-3);
    }
    stop = true;
    worker_thread.join();
    std::sort(us.begin(), us.end());
    return us;
}

double percentile(const std::vector<double>& sorted, double p) {
    if (sorted.empty()) return -1;
    size_t i = static_cast<size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
    return sorted[std::min(i, sorted.size() - 1)];
}

// --publisher-cost: the CPU time of building one message and making it a frame, with the
// frames handed to another thread that frees them a little later (as ZeroMQ's I/O thread does
// once a frame is sent). Three ways: publish()'s (a FrameBuilder in blocks the publisher
// recycles), a FrameBuilder in fresh blocks (malloc/free per frame), and a MallocMessageBuilder
// copied into its frame by encode() (the path before zero-copy sends).
void publisher_cost(const std::vector<unsigned>& sizes, int messages, int repeat) {
    enum Way { kPooled, kFresh, kCopied };
    const char* names[] = {"pooled", "fresh", "copied"};
    for (unsigned n : sizes) {
        double best[3] = {0, 0, 0};
        for (int k = 0; k < repeat; ++k) {
            for (int w = kPooled; w <= kCopied; ++w) {
                std::mutex mutex;
                std::deque<zmq::message_t> queued;
                std::atomic<bool> stop{false};
                std::thread freer([&] {
                    while (!stop) {
                        std::deque<zmq::message_t> mine;
                        {
                            std::lock_guard<std::mutex> lock(mutex);
                            mine.swap(queued);
                        }
                        mine.clear();
                        std::this_thread::sleep_for(std::chrono::microseconds(50));
                    }
                });
                bus::FramePool::Handle pool = bus::FramePool::create();
                size_t words = 1024;  // then sized from the last message, as publish() does
                const int64_t cpu0 = cpu_ns(CLOCK_THREAD_CPUTIME_ID);
                for (int i = 0; i < messages; ++i) {
                    zmq::message_t frame;
                    if (w == kCopied) {
                        capnp::MallocMessageBuilder message(2 + n * 9 + 64);
                        auto env = message.initRoot<schema::Envelope>();
                        fill_batch(env.getPayload(), n, static_cast<uint64_t>(i));
                        bus::stamp_envelope(env, "bench", "b", static_cast<uint64_t>(i) + 1);
                        frame = bus::encode(message);
                    } else {
                        bus::FrameBuilder message(words, w == kPooled ? pool.get() : nullptr);
                        auto env = message.initRoot<schema::Envelope>();
                        fill_batch(env.getPayload(), n, static_cast<uint64_t>(i));
                        bus::stamp_envelope(env, "bench", "b", static_cast<uint64_t>(i) + 1);
                        const size_t used = message.size_words();
                        words = used + used / 8 + 16;
                        frame = message.release_frame();
                    }
                    std::lock_guard<std::mutex> lock(mutex);
                    queued.push_back(std::move(frame));
                }
                const double us =
                    static_cast<double>(cpu_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0) * 1e-3 / messages;
                stop = true;
                freer.join();
                if (best[w] == 0 || us < best[w]) best[w] = us;
            }
        }
        std::printf("publisher_cost seeds_per_msg=%u", n);
        for (int w = kPooled; w <= kCopied; ++w) std::printf(" %s_us=%.2f", names[w], best[w]);
        std::printf(" copied_over_pooled=%.2f\n",
                    best[kPooled] > 0 ? best[kCopied] / best[kPooled] : 0);
        std::fflush(stdout);
    }
}

std::vector<std::string> split(const std::string& list) {
    std::vector<std::string> out;
    for (size_t p = 0; p <= list.size();) {
        size_t c = list.find(',', p);
        if (c == std::string::npos) c = list.size();
        if (c > p) out.push_back(list.substr(p, c - p));
        p = c + 1;
    }
    return out;
}

// A bind address on `transport` with a port or path ZeroMQ picks (read back by last_endpoint).
std::string any_endpoint(const std::string& transport) {
    return transport == "ipc" ? "ipc://*" : "tcp://127.0.0.1:*";
}

struct Case {
    Rate esper, copy, raw, proxy, plain;
};

}  // namespace

int main(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "esper-bench-bus: %s needs a value\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--seconds") {
            o.seconds = std::atof(next().c_str());
        } else if (a == "--headline-seeds") {
            o.headline_seeds = static_cast<unsigned>(std::atoi(next().c_str()));
        } else if (a == "--commands") {
            o.commands = std::atoi(next().c_str());
        } else if (a == "--repeat") {
            o.repeat = std::max(1, std::atoi(next().c_str()));
        } else if (a == "--curve") {
            o.curve = true;
        } else if (a == "--copy-path") {
            o.copy_path = true;
        } else if (a == "--publisher-cost") {
            o.publisher_cost_messages = std::max(1, std::atoi(next().c_str()));
        } else if (a == "--hop-io-threads") {
            o.hop_io_threads = std::max(1, std::atoi(next().c_str()));
        } else if (a == "--shared-context") {
            o.shared_context = true;
        } else if (a == "--seeds") {
            o.seeds.clear();
            for (const auto& n : split(next()))
                o.seeds.push_back(static_cast<unsigned>(std::max(1, std::atoi(n.c_str()))));
        } else if (a == "--transport") {
            o.transports = split(next());
            for (const auto& t : o.transports) {
                if (t != "tcp" && t != "ipc") {
                    std::fprintf(stderr, "esper-bench-bus: --transport takes tcp and/or ipc\n");
                    return 2;
                }
            }
        } else if (a == "--only") {
            o.only = next();
        } else if (a == "--help" || a == "-h") {
            std::printf(
                "usage: esper-bench-bus [--seconds S] [--repeat N] [--seeds 16,64,256,1024]\n"
                "       [--headline-seeds N] [--transport tcp,ipc] [--copy-path] [--commands N]\n"
                "       [--hop-io-threads N] [--shared-context] [--curve]\n"
                "       [--only esper|copy|raw|proxy] [--publisher-cost N]\n"
                "Telemetry through the broker vs raw libzmq PUB/SUB (direct and via a bare\n"
                "proxy) at the same frame sizes, per transport, with CPU microseconds per\n"
                "delivered message by stage; then command round trips (on the first transport).\n"
                "Last line is JSON. --copy-path: also the publisher path that copies each\n"
                "message into its frame. --curve: the Esper cases on CURVE keys, beside the\n"
                "plain broker (ratio_vs_plain). Each role has a ZeroMQ context of its own,\n"
                "like separate processes: the broker and the bare proxy with --hop-io-threads\n"
                "I/O threads (2), publishers and subscribers with one; --shared-context: all\n"
                "on one context of two. --only: profile one case. --publisher-cost N: only\n"
                "the CPU time to build N messages into frames (pooled, fresh, copied).\n");
            return 0;
        } else {
            std::fprintf(stderr, "esper-bench-bus: unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    if (o.transports.empty() || o.seeds.empty()) {
        std::fprintf(stderr, "esper-bench-bus: empty --transport or --seeds\n");
        return 2;
    }
    if (o.publisher_cost_messages > 0) {
        publisher_cost(o.seeds, o.publisher_cost_messages, o.repeat);
        return 0;
    }
    zmq::context_t ctx(2);
    zmq::context_t own_hop_ctx(o.hop_io_threads), own_pub_ctx(1), own_sub_ctx(1);
    zmq::context_t& hop_ctx = o.shared_context ? ctx : own_hop_ctx;
    const Contexts clients{o.shared_context ? ctx : own_pub_ctx,
                           o.shared_context ? ctx : own_sub_ctx};
    std::atomic<bool> stop{false};
    // --curve: one agent key for every Esper socket, allowed by a second, CURVE broker; the plain
    // broker runs beside it and the two are measured interleaved, so ratio_vs_plain compares
    // like with like on a machine whose load drifts.
    bus::ServerSecurity server;
    bus::ClientSecurity keys;
    if (o.curve) {
        server.own = bus::generate_curve_key_pair();
        keys = {server.own.public_key, bus::generate_curve_key_pair()};
        server.lookup = [agent = keys.own.public_key](std::string_view k) {
            return k == agent ? std::optional<bus::AllowedKey>({bus::Role::kAgent, "bench"})
                              : std::nullopt;
        };
    }
    struct BrokerRef {
        bus::BrokerEndpoints ep;
        clockid_t clock;
    };
    std::vector<std::thread> brokers;
    auto start_broker = [&](const bus::ServerSecurity& security, const std::string& transport) {
        bus::BrokerEndpoints ep;
        std::atomic<bool> ready{false};
        const std::string any = any_endpoint(transport);
        brokers.emplace_back([&hop_ctx, &stop, &ep, &ready, security, any] {
            bus::Broker broker(hop_ctx, {.pub_endpoint = any,
                                         .sub_endpoint = any,
                                         .rpc_endpoint = any,
                                         .security = security});
            ep = broker.endpoints();
            ready = true;
            broker.run(stop);
        });
        while (!ready) std::this_thread::yield();
        return BrokerRef{ep, clock_of(brokers.back().native_handle())};
    };

    auto on = [&](const char* c) { return o.only.empty() || o.only == c; };
    auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
    auto best = [](Rate& into, const Rate& x) {
        if (x.msgs_per_s() > into.msgs_per_s()) into = x;
    };
    nlohmann::json per_transport = nlohmann::json::object();
    std::optional<Case> headline;
    BrokerRef first_plain{}, first_broker{};
    for (size_t t = 0; t < o.transports.size(); ++t) {
        const std::string& transport = o.transports[t];
        const BrokerRef plain_b = start_broker({}, transport);
        const BrokerRef broker = o.curve ? start_broker(server, transport) : plain_b;
        if (t == 0) first_plain = plain_b, first_broker = broker;
        nlohmann::json rows = nlohmann::json::array();
        for (unsigned n : o.seeds) {
            size_t frame_bytes = 0;
            uint64_t records = 0;
            Case c;
            for (int k = 0; k < o.repeat; ++k) {  // interleaved, so drifting load hits all alike
                if (on("esper") || frame_bytes == 0)
                    best(c.esper,
                         esper_run(clients, broker.ep, broker.clock, keys, n,
                                   on("esper") ? o.seconds : 0.01, false, frame_bytes, records));
                if (o.curve && on("esper"))
                    best(c.plain, esper_run(clients, plain_b.ep, plain_b.clock, {}, n, o.seconds,
                                            false, frame_bytes, records));
                if (o.copy_path && on("copy"))
                    best(c.copy, esper_run(clients, broker.ep, broker.clock, keys, n, o.seconds,
                                           true, frame_bytes, records));
                if (on("raw"))
                    best(c.raw, raw_run(clients, hop_ctx, any_endpoint(transport), frame_bytes,
                                        o.seconds, false));
                if (on("proxy"))
                    best(c.proxy, raw_run(clients, hop_ctx, any_endpoint(transport), frame_bytes,
                                          o.seconds, true));
            }
            const double e = c.esper.msgs_per_s(), r = c.raw.msgs_per_s();
            // Every Esper message carries n records and raw frames have the same size, so the
            // per-record ratio equals the per-message one; both are printed to say so.
            std::printf(
                "transport=%s seeds_per_msg=%u frame_bytes=%zu esper_msgs_per_s=%.0f "
                "records_per_s=%.0f raw_zmq_msgs_per_s=%.0f ratio_vs_raw=%.3f "
                "raw_records_per_s=%.0f records_ratio_vs_raw=%.3f raw_proxy_msgs_per_s=%.0f "
                "ratio_vs_raw_proxy=%.3f",
                transport.c_str(), n, frame_bytes, e, e * n, r, ratio(e, r), r * n,
                ratio(e * n, r * n), c.proxy.msgs_per_s(), ratio(e, c.proxy.msgs_per_s()));
            if (o.copy_path)
                std::printf(" copy_path_msgs_per_s=%.0f copy_path_ratio_vs_raw=%.3f",
                            c.copy.msgs_per_s(), ratio(c.copy.msgs_per_s(), r));
            if (o.curve)
                std::printf(" plain_msgs_per_s=%.0f ratio_vs_plain=%.3f", c.plain.msgs_per_s(),
                            ratio(e, c.plain.msgs_per_s()));
            std::printf("\n  cpu_us_per_delivered_msg esper=%s raw=%s proxy=%s",
                        c.esper.cpu_line().c_str(), c.raw.cpu_line().c_str(),
                        c.proxy.cpu_line().c_str());
            if (o.copy_path) std::printf(" copy_path=%s", c.copy.cpu_line().c_str());
            std::printf("\n  delivered/published esper=%llu/%llu raw=%llu/%llu proxy=%llu/%llu\n",
                        static_cast<unsigned long long>(c.esper.delivered),
                        static_cast<unsigned long long>(c.esper.published),
                        static_cast<unsigned long long>(c.raw.delivered),
                        static_cast<unsigned long long>(c.raw.published),
                        static_cast<unsigned long long>(c.proxy.delivered),
                        static_cast<unsigned long long>(c.proxy.published));
            std::fflush(stdout);
            nlohmann::json row = {{"seeds_per_msg", n},
                                  {"frame_bytes", frame_bytes},
                                  {"esper_msgs_per_s", e},
                                  {"raw_zmq_msgs_per_s", r},
                                  {"ratio_vs_raw", ratio(e, r)},
                                  {"raw_proxy_msgs_per_s", c.proxy.msgs_per_s()},
                                  {"ratio_vs_raw_proxy", ratio(e, c.proxy.msgs_per_s())}};
            if (o.copy_path) {
                row["copy_path_msgs_per_s"] = c.copy.msgs_per_s();
                row["copy_path_ratio_vs_raw"] = ratio(c.copy.msgs_per_s(), r);
            }
            rows.push_back(row);
            if (t == 0 && n == o.headline_seeds) headline = c;
            (void)records;
        }
        per_transport[transport] = rows;
    }
    auto rtts = command_rtts(ctx, first_broker.ep, keys, o.commands);
    std::vector<double> plain_rtts;
    if (o.curve) plain_rtts = command_rtts(ctx, first_plain.ep, {}, o.commands);
    stop = true;
    for (auto& t : brokers) t.join();
    std::printf("cmd_round_trips=%zu p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f\n",
                rtts.size(), percentile(rtts, 0.5), percentile(rtts, 0.9), percentile(rtts, 0.99),
                rtts.empty() ? -1.0 : rtts.back());
    const Case h = headline.value_or(Case{});
    nlohmann::json j = {{"records_per_s", h.esper.msgs_per_s() * o.headline_seeds},
                        {"esper_msgs_per_s", h.esper.msgs_per_s()},
                        {"raw_zmq_msgs_per_s", h.raw.msgs_per_s()},
                        {"ratio_vs_raw", ratio(h.esper.msgs_per_s(), h.raw.msgs_per_s())},
                        {"cmd_rtt_p50_us", percentile(rtts, 0.5)},
                        {"cmd_rtt_p99_us", percentile(rtts, 0.99)},
                        {"seeds_per_msg", o.headline_seeds},
                        {"transport", o.transports[0]},
                        {"raw_proxy_msgs_per_s", h.proxy.msgs_per_s()},
                        {"ratio_vs_raw_proxy", ratio(h.esper.msgs_per_s(), h.proxy.msgs_per_s())},
                        {"curve", o.curve},
                        {"hop_io_threads", o.shared_context ? 0 : o.hop_io_threads},
                        {"transports", per_transport}};
    if (o.curve) {
        std::printf("plain cmd_round_trips=%zu p50_us=%.1f p99_us=%.1f\n", plain_rtts.size(),
                    percentile(plain_rtts, 0.5), percentile(plain_rtts, 0.99));
        j["plain_msgs_per_s"] = h.plain.msgs_per_s();
        j["ratio_vs_plain"] = ratio(h.esper.msgs_per_s(), h.plain.msgs_per_s());
        j["plain_cmd_rtt_p50_us"] = percentile(plain_rtts, 0.5);
        j["plain_cmd_rtt_p99_us"] = percentile(plain_rtts, 0.99);
    }
    std::printf("%s\n", j.dump().c_str());
    return 0;
}
