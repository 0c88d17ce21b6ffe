// RpcClient, AsyncRpcClient and RpcWorker; see rpc.h and the frame layouts in broker.h.
#include "bus/rpc.h"

#include <kj/exception.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <iterator>
#include <thread>
#include <vector>
#include <zmq_addon.hpp>

#include "bus/pubsub.h"
#include "bus/rpc_protocol.h"
#include "core/check.h"
#include "core/clock.h"
#include "core/log.h"

namespace esper::bus {

namespace {

Logger& rpc_log() { return logger("bus.rpc"); }

zmq::message_t frame(std::string_view s) { return zmq::message_t(s.data(), s.size()); }

std::string_view view(const zmq::message_t& m) {
    return std::string_view(static_cast<const char*>(m.data()), m.size());
}

bool send_all(zmq::socket_t& socket, std::vector<zmq::message_t>& frames) {
    for (size_t i = 0; i < frames.size(); ++i) {
        auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
        if (!socket.send(frames[i], flags | zmq::send_flags::dontwait)) return false;
    }
    return true;
}

}  // namespace

std::string_view rpc_status_name(RpcStatus status) {
    switch (status) {
        case RpcStatus::kOk:
            return "ok";
        case RpcStatus::kTimeout:
            return "timeout";
        case RpcStatus::kUnknownAgent:
            return "unknown_agent";
        case RpcStatus::kMalformedReply:
            return "malformed_reply";
    }
    return "unknown";
}

// ---- client ----

RpcClient::RpcClient(zmq::context_t& context, RpcClientConfig config)
    : config_(std::move(config)), socket_(context, zmq::socket_type::dealer) {
    ESPER_REQUIRE(!config_.endpoint.empty(), "rpc client needs an endpoint");
    ESPER_REQUIRE(config_.max_attempts >= 1, "max_attempts=", config_.max_attempts);
    socket_.set(zmq::sockopt::linger, 0);
    apply_client_security(socket_, config_.security);
    socket_.connect(config_.endpoint);
}

RpcClient::Wait RpcClient::wait_for(uint64_t request_no, int64_t deadline_ns, RpcReply& out) {
    std::string prefix = std::to_string(request_no) + ".";
    for (;;) {
        std::vector<zmq::message_t> in;
        while (zmq::recv_multipart(socket_, std::back_inserter(in), zmq::recv_flags::dontwait)) {
            // REP req_id envelope | ERR req_id reason; replies to earlier requests are stale.
            if (in.size() == 3 && view(in[1]).starts_with(prefix)) {
                if (view(in[0]) == proto::kReply) {
                    DecodeResult d = decode(std::move(in[2]), config_.limits);
                    if (!d.ok()) {
                        out.status = RpcStatus::kMalformedReply;
                        out.error = std::string(decode_status_name(d.status)) + ": " + d.detail;
                        return Wait::kError;
                    }
                    out.status = RpcStatus::kOk;
                    out.reply.emplace(std::move(*d.value));
                    return Wait::kReply;
                }
                if (view(in[0]) == proto::kError) {
                    out.status = RpcStatus::kUnknownAgent;
                    out.error = in[2].to_string();
                    return Wait::kError;
                }
            }
            in.clear();
        }
        int64_t left_ms = (deadline_ns - monotonic_ns() + 999999) / 1000000;
        if (left_ms <= 0) return Wait::kNothing;
        if (!poll_in(socket_, static_cast<long>(left_ms))) return Wait::kNothing;
    }
}

RpcReply RpcClient::request_message(std::string_view agent, std::string_view idempotency_key,
                                    capnp::MallocMessageBuilder& message) {
    auto envelope = message.getRoot<schema::Envelope>();
    stamp_envelope(envelope, config_.sender, config_.run_id, ++sequence_, idempotency_key);
    zmq::message_t body = encode(message);
    uint64_t request_no = ++request_no_;
    RpcReply out;
    int backoff_ms = config_.backoff_initial_ms;
    for (int attempt = 1; attempt <= config_.max_attempts; ++attempt) {
        out.attempts = attempt;
        std::vector<zmq::message_t> frames;
        frames.push_back(frame(proto::kRequest));
        frames.push_back(frame(agent));
        frames.push_back(frame(std::to_string(request_no) + "." + std::to_string(attempt)));
        frames.emplace_back(body.data(), body.size());
        if (!send_all(socket_, frames)) {
            out.status = RpcStatus::kTimeout;
            out.error = "send queue full";
        } else {
            int64_t deadline = monotonic_ns() + int64_t{config_.timeout_ms} * 1000000;
            Wait w = wait_for(request_no, deadline, out);
            if (w == Wait::kReply || out.status == RpcStatus::kMalformedReply) return out;
            if (w == Wait::kNothing) {
                out.status = RpcStatus::kTimeout;
                out.error = "no reply from " + std::string(agent) + " within " +
                            std::to_string(config_.timeout_ms) + " ms";
            }
        }
        if (attempt == config_.max_attempts) break;
        ESPER_LOG_DEBUG(rpc_log(), "agent=", agent, " key=", idempotency_key, " attempt=", attempt,
                        " status=", rpc_status_name(out.status), " backoff_ms=", backoff_ms);
        // Back off, but take a late reply to this request if one arrives meanwhile.
        RpcReply late;
        if (wait_for(request_no, monotonic_ns() + int64_t{backoff_ms} * 1000000, late) ==
            Wait::kReply) {
            late.attempts = attempt;
            return late;
        }
        backoff_ms = std::min(backoff_ms * 2, config_.backoff_max_ms);
    }
    return out;
}

// ---- non-blocking client ----

AsyncRpcClient::AsyncRpcClient(zmq::context_t& context, EventLoop& loop, RpcClientConfig config)
    : config_(std::move(config)),
      loop_(loop),
      socket_(context, zmq::socket_type::dealer),
      timer_(loop.context()) {
    ESPER_REQUIRE(!config_.endpoint.empty(), "rpc client needs an endpoint");
    ESPER_REQUIRE(config_.max_attempts >= 1, "max_attempts=", config_.max_attempts);
    ESPER_REQUIRE(config_.max_in_flight >= 1, "max_in_flight=", config_.max_in_flight);
    socket_.set(zmq::sockopt::linger, 0);
    apply_client_security(socket_, config_.security);
    socket_.connect(config_.endpoint);
    loop_.watch(socket_, [this] { on_readable(); });
}

AsyncRpcClient::~AsyncRpcClient() {
    loop_.unwatch(socket_);
    alive_.reset();
    timer_.cancel();
}

bool AsyncRpcClient::send_message(std::string_view agent, std::string_view idempotency_key,
                                  capnp::MallocMessageBuilder& message, Callback done) {
    if (queue_.size() >= config_.max_queued) {
        ++stats_.refused;
        ESPER_LOG_WARN_RATE(rpc_log(), 5, "agent=", agent, " key=", idempotency_key,
                            " refused: ", queue_.size(), " requests already queued");
        return false;
    }
    auto envelope = message.getRoot<schema::Envelope>();
    stamp_envelope(envelope, config_.sender, config_.run_id, ++sequence_, idempotency_key);
    zmq::message_t body = encode(message);
    Request r;
    r.request_no = ++request_no_;
    r.agent = agent;
    r.key = idempotency_key;
    r.body.assign(static_cast<const char*>(body.data()), body.size());
    r.done = std::move(done);
    r.backoff_ms = config_.backoff_initial_ms;
    queue_.push_back(std::move(r));
    pump();
    return true;
}

void AsyncRpcClient::pump() {
    // The first queued request of a free agent is that agent's oldest: order per agent holds.
    while (active_.size() < config_.max_in_flight) {
        auto it = std::find_if(queue_.begin(), queue_.end(), [this](const Request& r) {
            return busy_agents_.count(r.agent) == 0;
        });
        if (it == queue_.end()) break;
        busy_agents_.insert(it->agent);
        const uint64_t no = it->request_no;
        Request& r = active_.emplace(no, std::move(*it)).first->second;
        queue_.erase(it);
        transmit(r);
    }
    arm_timer();
}

void AsyncRpcClient::transmit(Request& r) {
    ++r.attempt;
    ++stats_.attempts;
    if (r.attempt > 1) ++stats_.retries;
    std::vector<zmq::message_t> frames;
    frames.push_back(frame(proto::kRequest));
    frames.push_back(frame(r.agent));
    frames.push_back(frame(std::to_string(r.request_no) + "." + std::to_string(r.attempt)));
    frames.push_back(frame(r.body));
    if (!send_all(socket_, frames)) {
        failed_attempt(r, RpcStatus::kTimeout, "send queue full");
        return;
    }
    r.waiting_reply = true;
    r.deadline = Clock::now() + std::chrono::milliseconds(config_.timeout_ms);
}

void AsyncRpcClient::failed_attempt(Request& r, RpcStatus status, std::string error) {
    r.last.status = status;
    r.last.error = std::move(error);
    r.last.attempts = r.attempt;
    r.waiting_reply = false;
    if (r.attempt >= config_.max_attempts) {
        // Finished by the timer at once: a callback never runs inside send() or mid-pump.
        r.deadline = Clock::now();
        return;
    }
    ESPER_LOG_DEBUG(rpc_log(), "agent=", r.agent, " key=", r.key, " attempt=", r.attempt,
                    " status=", rpc_status_name(status), " backoff_ms=", r.backoff_ms);
    // Back off, but take a late reply to this request if one arrives meanwhile.
    r.deadline = Clock::now() + std::chrono::milliseconds(r.backoff_ms);
    r.backoff_ms = std::min(r.backoff_ms * 2, config_.backoff_max_ms);
}

void AsyncRpcClient::finish(uint64_t request_no, RpcReply reply) {
    auto it = active_.find(request_no);
    ESPER_ASSERT(it != active_.end(), "request_no=", request_no);
    Callback done = std::move(it->second.done);
    busy_agents_.erase(it->second.agent);
    active_.erase(it);
    ++stats_.completed;
    pump();  // the agent's next request goes out before the callback queues more behind it
    if (done) done(std::move(reply));
}

void AsyncRpcClient::on_readable() {
    for (;;) {
        std::vector<zmq::message_t> in;
        if (!zmq::recv_multipart(socket_, std::back_inserter(in), zmq::recv_flags::dontwait)) break;
        // REP req_id envelope | ERR req_id reason, req_id = "<request_no>.<attempt>"
        if (in.size() != 3) continue;
        std::string_view id = view(in[1]);
        uint64_t no = 0;
        int attempt = 0;
        auto dot = id.find('.');
        if (dot == std::string_view::npos ||
            std::from_chars(id.data(), id.data() + dot, no).ec != std::errc() ||
            std::from_chars(id.data() + dot + 1, id.data() + id.size(), attempt).ec != std::errc())
            continue;
        auto it = active_.find(no);
        if (it == active_.end()) {
            ++stats_.stale;
            continue;
        }
        Request& r = it->second;
        if (view(in[0]) == proto::kReply) {
            // Any attempt's reply will do: they all carry the same key.
            RpcReply out;
            out.attempts = r.attempt;
            DecodeResult d = decode(std::move(in[2]), config_.limits);
            if (d.ok()) {
                out.status = RpcStatus::kOk;
                out.reply.emplace(std::move(*d.value));
            } else {
                out.status = RpcStatus::kMalformedReply;
                out.error = std::string(decode_status_name(d.status)) + ": " + d.detail;
            }
            finish(no, std::move(out));
        } else if (view(in[0]) == proto::kError && r.waiting_reply && attempt == r.attempt) {
            failed_attempt(r, RpcStatus::kUnknownAgent, in[2].to_string());
        }
    }
    arm_timer();
}

void AsyncRpcClient::on_timer() {
    on_readable();  // a reply already queued beats its own deadline (an edge may have been missed)
    const auto now = Clock::now();
    std::vector<uint64_t> due;
    for (const auto& [no, r] : active_)
        if (r.deadline <= now) due.push_back(no);
    for (uint64_t no : due) {
        auto it = active_.find(no);
        if (it == active_.end()) continue;  // finished by a callback's side effect
        Request& r = it->second;
        if (r.waiting_reply) {
            ++stats_.timeouts;
            failed_attempt(r, RpcStatus::kTimeout,
                           "no reply from " + r.agent + " within " +
                               std::to_string(config_.timeout_ms) + " ms");
        } else if (r.attempt >= config_.max_attempts) {
            finish(no, std::move(r.last));
        } else {
            transmit(r);
        }
    }
    arm_timer();
}

void AsyncRpcClient::arm_timer() {
    if (active_.empty()) return;
    Clock::time_point next = Clock::time_point::max();
    for (const auto& [no, r] : active_) next = std::min(next, r.deadline);
    if (timer_armed_ && timer_.expiry() == next) return;  // already waiting for it
    timer_armed_ = true;
    timer_.expires_at(next);  // cancels the previous wait
    timer_.async_wait(
        [this, alive = std::weak_ptr<int>(alive_)](const boost::system::error_code& ec) {
            if (ec || alive.expired()) return;
            timer_armed_ = false;
            on_timer();
        });
}

// ---- worker ----

RpcWorker::RpcWorker(zmq::context_t& context, RpcWorkerConfig config)
    : config_(std::move(config)), socket_(context, zmq::socket_type::dealer) {
    ESPER_REQUIRE(!config_.endpoint.empty() && !config_.name.empty(), "rpc worker needs both");
    socket_.set(zmq::sockopt::linger, 200);
    apply_client_security(socket_, config_.security);
    socket_.connect(config_.endpoint);
    drops_left_ = config_.drop_first_replies;
    heartbeat();
}

RpcWorker::~RpcWorker() {
    std::vector<zmq::message_t> frames;
    frames.push_back(frame(proto::kBye));
    frames.push_back(frame(config_.name));
    try {
        (void)send_all(socket_, frames);
    } catch (const zmq::error_t& e) {
        ESPER_LOG_WARN(rpc_log(), "worker=", config_.name, " bye failed: ", e.what());
    }
}

void RpcWorker::heartbeat() {
    std::vector<zmq::message_t> frames;
    frames.push_back(frame(proto::kHello));
    frames.push_back(frame(config_.name));
    (void)send_all(socket_, frames);
    last_heartbeat_ns_ = monotonic_ns();
}

int RpcWorker::poll(int timeout_ms, const Handler& handler) {
    int handled = process(handler);
    if (handled > 0) return handled;
    int64_t deadline = monotonic_ns() + int64_t{timeout_ms} * 1000000;
    for (;;) {
        int64_t left_ms = (deadline - monotonic_ns()) / 1000000;
        int64_t to_heartbeat_ms =
            (last_heartbeat_ns_ + int64_t{config_.heartbeat_ms} * 1000000 - monotonic_ns()) /
            1000000;
        long wait = static_cast<long>(std::max<int64_t>(0, std::min(left_ms, to_heartbeat_ms)));
        if (!poll_in(socket_, wait)) return 0;
        handled = process(handler);
        if (handled > 0 || monotonic_ns() >= deadline) return handled;
    }
}

int RpcWorker::process(const Handler& handler) {
    if (monotonic_ns() - last_heartbeat_ns_ >= int64_t{config_.heartbeat_ms} * 1000000) heartbeat();
    int answered = 0;
    for (;;) {
        std::vector<zmq::message_t> in;
        if (!zmq::recv_multipart(socket_, std::back_inserter(in), zmq::recv_flags::dontwait))
            return answered;
        if (!in.empty() && view(in[0]) == proto::kPing) continue;  // the broker's liveness probe
        if (in.size() == 3 && view(in[0]) == proto::kRefused) {
            ++stats_.refused;
            refusal_ = in[2].to_string();
            ESPER_LOG_WARN_RATE(rpc_log(), 1, "worker=", config_.name,
                                " not registered by the broker: ", refusal_);
            continue;
        }
        ++stats_.requests;
        // REQ client_id req_id envelope [peer]
        if ((in.size() != 4 && in.size() != 5) || view(in[0]) != proto::kRequest) {
            ++stats_.malformed;
            ESPER_LOG_WARN_RATE(rpc_log(), 5, "worker=", config_.name,
                                " dropped frame parts=", in.size());
            continue;
        }
        answer(in, handler);
        ++answered;
    }
}

void RpcWorker::reply_error(schema::Envelope::Builder reply, std::string_view why) {
    ++stats_.handler_errors;
    ESPER_LOG_WARN_RATE(rpc_log(), 5, "worker=", config_.name, " handler failed: ", why);
    auto r = reply.getPayload().initControlReply();
    r.setOk(false);
    set_text(why, [&](unsigned n) { return r.initError(n); });
}

void RpcWorker::answer(std::vector<zmq::message_t>& in, const Handler& handler) {
    // A broker without keys sends no peer frame (or an empty one): nothing is authenticated.
    peer_ = decode_peer(in.size() == 5 ? view(in[4]) : std::string_view(), view(in[1]));
    DecodeResult d = decode(std::move(in[3]), config_.limits);
    capnp::MallocMessageBuilder message;
    auto reply = message.initRoot<schema::Envelope>();
    std::string key;
    std::optional<std::string> refused;
    if (d.ok() && config_.authorize) refused = config_.authorize(peer_, d.value->envelope());
    if (refused) {
        // Before the dedup window: a replayed frame from a key without the role is refused and
        // counted, and its answer is never cached under the key.
        ++stats_.forbidden;
        ESPER_LOG_WARN_RATE(rpc_log(), 5, "worker=", config_.name, " forbidden: ", *refused,
                            " from=", role_name(peer_.role), "/", peer_.name,
                            " forbidden_total=", stats_.forbidden);
        auto r = reply.getPayload().initControlReply();
        r.setOk(false);
        set_text("forbidden: " + *refused, [&](unsigned n) { return r.initError(n); });
    } else if (!d.ok()) {
        ++stats_.malformed;
        ESPER_LOG_WARN_RATE(rpc_log(), 5, "worker=", config_.name,
                            " malformed request: ", decode_status_name(d.status), " ", d.detail);
        auto r = reply.getPayload().initControlReply();
        r.setOk(false);
        std::string why = "malformed request: " + std::string(decode_status_name(d.status));
        set_text(why, [&](unsigned n) { return r.initError(n); });
    } else {
        auto request = d.value->envelope();
        key = request.getCorrelationId().cStr();
        if (!key.empty()) {
            if (auto it = replies_.find(key); it != replies_.end()) {
                ++stats_.duplicates;
                send_reply(in[1], in[2], it->second);
                return;
            }
        }
        ++stats_.handled;
        try {
            handler(request, reply.getPayload());
        } catch (const std::exception& e) {
            // The request came from the bus: a failure to handle it is answered, not fatal.
            reply_error(reply, e.what());
        } catch (const kj::Exception& e) {
            // A payload field that fails capnp's lazy checks (e.g. a Text without its NUL).
            reply_error(reply, e.getDescription().cStr());
        }
    }
    stamp_envelope(reply, config_.name, config_.run_id, ++sequence_, key);
    zmq::message_t body = encode(message);
    std::string bytes(static_cast<const char*>(body.data()), body.size());
    if (!key.empty()) remember(key, bytes);
    send_reply(in[1], in[2], bytes);
}

void RpcWorker::send_reply(const zmq::message_t& client, const zmq::message_t& req_id,
                           const std::string& body) {
    if (drops_left_ > 0) {  // fault injection (tests): the reply is lost on the way
        --drops_left_;
        return;
    }
    std::vector<zmq::message_t> frames;
    frames.push_back(frame(proto::kReply));
    frames.emplace_back(client.data(), client.size());
    frames.emplace_back(req_id.data(), req_id.size());
    frames.push_back(frame(body));
    if (!send_all(socket_, frames))
        ESPER_LOG_WARN_RATE(rpc_log(), 5, "worker=", config_.name, " reply dropped: queue full");
}

void RpcWorker::remember(std::string key, std::string body) {
    if (config_.dedup_capacity == 0) return;
    while (order_.size() >= config_.dedup_capacity) {
        replies_.erase(order_.front());
        order_.pop_front();
    }
    order_.push_back(key);
    replies_.emplace(std::move(key), std::move(body));
}

}  // namespace esper::bus
