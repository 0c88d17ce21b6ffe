// The rendezvous key-value service of distributed runs (docs/distributed.md): an ordinary
// request/reply worker registered as "kv" behind the broker's router, so the broker itself never
// decodes a payload. kvSet stores bytes under a key (reply `none`), kvGet returns them
// (`kvValue {found, value}`); anything else is refused with a reason. Values are kept per run
// (the request envelope's runId) for as long as the service lives. `esper broker` hosts one on
// its own thread, with its own socket, connected through the broker's in-process endpoint.
#pragma once

#include <atomic>
#include <cstddef>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <zmq.hpp>

#include "schemas/envelope.capnp.h"

namespace esper::agents {

inline constexpr std::string_view kKvAgentName = "kv";

class KvService {
public:
    // An RpcWorker handler: answers one request.
    void handle(schema::Envelope::Reader request, schema::Envelope::Payload::Builder reply);
    // Keys stored, over all runs.
    size_t size() const;

private:
    // run id -> key -> value
    std::unordered_map<std::string, std::unordered_map<std::string, std::string>> runs_;
};

// Serves a KvService as agent "kv" on `rpc_endpoint` from a thread of its own (the worker's
// socket is created and used on that thread only). stop() (or the destructor) joins it.
class KvServiceThread {
public:
    KvServiceThread(zmq::context_t& context, std::string rpc_endpoint, int heartbeat_ms);
    ~KvServiceThread();
    KvServiceThread(const KvServiceThread&) = delete;
    KvServiceThread& operator=(const KvServiceThread&) = delete;

    void stop();

private:
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

}  // namespace esper::agents
