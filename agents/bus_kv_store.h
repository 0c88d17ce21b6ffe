// BusKvStore: the rendezvous KvStore (kasmina/dist/collectives.h) over the key-value worker
// that `esper broker` hosts: kvSet/kvGet control requests addressed to the agent "kv"
// (agents/kv_service.h). Lets ranks on different hosts find each other with nothing but the
// broker's request/reply endpoint. wait() polls get() until the keys exist.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <zmq.hpp>

#include "bus/rpc.h"
#include "kasmina/dist/collectives.h"

namespace esper::agents {

class BusKvStore final : public kasmina::KvStore {
public:
    // `rpc_endpoint`: the broker's request/reply endpoint; `sender`: this agent's name;
    // `security`: the agent's CURVE keys when the bus has them (writes need an agent key).
    BusKvStore(std::string rpc_endpoint, std::string sender, std::string run_id,
               bus::ClientSecurity security = {});
    // Throws esper::Error(kDisconnected) when the broker does not answer.
    void set(const std::string& key, std::span<const std::uint8_t> value) override;
    std::optional<kasmina::Bytes> get(const std::string& key) override;
    bool wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) override;

private:
    std::mutex mutex_;
    zmq::context_t context_;
    std::unique_ptr<bus::RpcClient> client_;
    std::string endpoint_;
};

}  // namespace esper::agents
