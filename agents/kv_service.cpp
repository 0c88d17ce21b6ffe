// KvService and KvServiceThread; see kv_service.h.
#include "agents/kv_service.h"

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
    auto& store = runs_[request.getRunId().cStr()];
    auto r = p.getControlRequest();
    switch (r.which()) {
        case schema::ControlRequest::KV_SET: {
            const auto v = r.getKvSet().getValue();
            store[r.getKvSet().getKey().cStr()] =
                std::string(reinterpret_cast<const char*>(v.begin()), v.size());
            reply.setOk(true);
            reply.setNone();
            break;
        }
        case schema::ControlRequest::KV_GET: {
            reply.setOk(true);
            auto out = reply.initKvValue();
            if (auto it = store.find(r.getKvGet().cStr()); it != store.end()) {
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

size_t KvService::size() const {
    size_t n = 0;
    for (const auto& [run, store] : runs_) n += store.size();
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
                                            .dedup_capacity = 0});
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
