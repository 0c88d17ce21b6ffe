// KvService and KvServiceThread; see kv_service.h.
#include "agents/kv_service.h"

#include <fmt/format.h>

#include <exception>

#include "bus/envelope.h"
#include "bus/rpc.h"
#include "core/log.h"

namespace esper::agents {

namespace {
Logger& kv_log() { return logger("agents.kv"); }
}  // namespace

void KvService::handle(schema::Envelope::Reader request, schema::Envelope::Payload::Builder rep) {
    auto reply = rep.initControlReply();
    auto p = request.getPayload();
    if (!p.isControlRequest()) {
        reply.setOk(false);
        reply.setError("the kv service takes controlRequest kvSet/kvGet");
        return;
    }
    const std::string run_id = request.getRunId().cStr();
    auto r = p.getControlRequest();
    switch (r.which()) {
        case schema::ControlRequest::KV_SET: {
            const std::string key = r.getKvSet().getKey().cStr();
            const auto v = r.getKvSet().getValue();
            if (key.size() > limits_.max_key_bytes || v.size() > limits_.max_value_bytes) {
                reply.setOk(false);
                reply.setError(fmt::format(
                    "kv: key of {} bytes or value of {} bytes over the cap "
                    "({} / {})",
                    key.size(), v.size(), limits_.max_key_bytes, limits_.max_value_bytes));
                return;
            }
            auto run_it = runs_.find(run_id);
            const Run* existing = run_it == runs_.end() ? nullptr : &run_it->second;
            size_t old_bytes = 0;
            if (existing != nullptr)
                if (auto it = existing->values.find(key); it != existing->values.end())
                    old_bytes = key.size() + it->second.size();
            const size_t new_bytes = key.size() + v.size();
            const size_t run_bytes = (existing ? existing->bytes : 0) - old_bytes + new_bytes;
            const size_t total = total_bytes_ - old_bytes + new_bytes;
            if (run_bytes > limits_.max_run_bytes || total > limits_.max_total_bytes) {
                reply.setOk(false);
                reply.setError(fmt::format(
                    "kv: store full: run {} would hold {} bytes (cap {}), all runs {} (cap {})",
                    run_id, run_bytes, limits_.max_run_bytes, total, limits_.max_total_bytes));
                ESPER_LOG_WARN_RATE(kv_log(), 1, "write refused run=", run_id,
                                    " run_bytes=", run_bytes, " total_bytes=", total);
                return;
            }
            Run& run = runs_[run_id];
            run.values[key] = std::string(reinterpret_cast<const char*>(v.begin()), v.size());
            run.bytes = run_bytes;
            total_bytes_ = total;
            reply.setOk(true);
            reply.setNone();
            break;
        }
        case schema::ControlRequest::KV_GET: {
            reply.setOk(true);
            auto out = reply.initKvValue();
            auto run_it = runs_.find(run_id);
            if (run_it == runs_.end()) break;
            if (auto it = run_it->second.values.find(r.getKvGet().cStr());
                it != run_it->second.values.end()) {
                out.setFound(true);
                out.setValue(capnp::Data::Reader(
                    reinterpret_cast<const capnp::byte*>(it->second.data()), it->second.size()));
            }
            break;
        }
        default:
            reply.setOk(false);
            reply.setUnimplemented("request not served by the kv service");
            break;
    }
}

std::optional<std::string> KvService::authorize(const bus::Peer& peer,
                                                schema::Envelope::Reader request) {
    auto p = request.getPayload();
    if (!p.isControlRequest()) return std::nullopt;  // answered "not served" by handle()
    switch (p.getControlRequest().which()) {
        case schema::ControlRequest::KV_SET:
            if (!peer.allowed({bus::Role::kAgent}))
                return "kv writes need an agent key; this is " +
                       std::string(bus::role_name(peer.role)) + " " + peer.name;
            return std::nullopt;
        case schema::ControlRequest::KV_GET:
            if (!peer.allowed({bus::Role::kAgent, bus::Role::kOperator}))
                return "kv reads need an agent or operator key; this is " +
                       std::string(bus::role_name(peer.role)) + " " + peer.name;
            return std::nullopt;
        default:
            return std::nullopt;
    }
}

size_t KvService::size() const {
    size_t n = 0;
    for (const auto& [id, run] : runs_) n += run.values.size();
    return n;
}

KvServiceThread::KvServiceThread(zmq::context_t& context, std::string rpc_endpoint,
                                 int heartbeat_ms) {
    thread_ = std::thread([this, &context, endpoint = std::move(rpc_endpoint), heartbeat_ms] {
        try {
            KvService service;
            bus::RpcWorker worker(context, {.endpoint = endpoint,
                                            .name = std::string(kKvAgentName),
                                            .heartbeat_ms = heartbeat_ms,
                                            .dedup_capacity = 0,
                                            .authorize = &KvService::authorize});
            auto handler = [&service](schema::Envelope::Reader req,
                                      schema::Envelope::Payload::Builder rep) {
                service.handle(req, rep);
            };
            while (!stop_.load(std::memory_order_relaxed)) worker.poll(50, handler);
            ESPER_LOG_INFO(kv_log(), "stopped keys=", service.size(),
                           " requests=", worker.stats().requests);
        } catch (const std::exception& e) {
            // Report and exit: requests to "kv" are then answered "unknown agent kv".
            ESPER_LOG_ERROR(kv_log(), "kv service failed: ", e.what());
        }
    });
}

KvServiceThread::~KvServiceThread() { stop(); }

void KvServiceThread::stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
}

}  // namespace esper::agents
