// The rendezvous key-value service of distributed runs (docs/distributed.md): an ordinary
// request/reply worker registered as "kv" behind the broker's router, so the broker itself never
// decodes a payload. kvSet stores bytes under a key (reply `none`), kvGet returns them
// (`kvValue {found, value}`); anything else is refused with a reason. Values are kept per run
// (the request envelope's runId) for as long as the service lives, within caps (KvLimits): a
// write past them is refused with a reason. With keys, only `agent` keys may write and agent or
// operator keys read (KvService::authorize, from the role the broker authenticated). `esper
// broker` hosts one on its own thread, with its own socket, connected through the broker's
// in-process endpoint.
#pragma once

#include <atomic>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <zmq.hpp>

#include "bus/security.h"
#include "schemas/envelope.capnp.h"

namespace esper::agents {

inline constexpr std::string_view kKvAgentName = "kv";

// Rendezvous values are small (a Gloo address, an NCCL id): a few hundred bytes per rank.
struct KvLimits {
    size_t max_run_bytes = size_t{8} << 20;     // keys + values of one run
    size_t max_total_bytes = size_t{64} << 20;  // all runs together
    size_t max_value_bytes = size_t{1} << 20;
    size_t max_key_bytes = 1024;
};

class KvService {
public:
    explicit KvService(KvLimits limits = {}) : limits_(limits) {}
    // An RpcWorker handler: answers one request.
    void handle(schema::Envelope::Reader request, schema::Envelope::Payload::Builder reply);
    // RpcWorkerConfig::authorize: writes need an agent key, reads an agent or operator key.
    static std::optional<std::string> authorize(const bus::Peer& peer,
                                                schema::Envelope::Reader request);
    // Keys stored, over all runs.
    size_t size() const;
    size_t bytes() const { return total_bytes_; }

private:
    struct Run {
        std::unordered_map<std::string, std::string> values;
        size_t bytes = 0;
    };
    KvLimits limits_;
    std::unordered_map<std::string, Run> runs_;  // by run id
    size_t total_bytes_ = 0;
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
