// BusKvStore (see bus_kv_store.h).
#include "agents/bus_kv_store.h"

#include <thread>

#include "agents/kv_service.h"
#include "core/error.h"
#include "schemas/control.capnp.h"

namespace esper::agents {

namespace {

// The control reply of a kv request; throws kDisconnected/kFailed with the reason.
schema::ControlReply::Reader control_reply(const bus::RpcReply& r, const std::string& endpoint,
                                           const std::string& what) {
    if (!r.ok())
        ESPER_THROW(kDisconnected, "rendezvous ", what, " via broker ", endpoint, ": ",
                    bus::rpc_status_name(r.status), " ", r.error);
    auto p = r.reply->envelope().getPayload();
    if (!p.isControlReply()) ESPER_THROW(kFailed, "rendezvous ", what, ": unexpected reply");
    auto c = p.getControlReply();
    if (!c.getOk())
        ESPER_THROW(kFailed, "rendezvous ", what, ": ", c.getError().cStr(),
                    c.isUnimplemented() ? c.getUnimplemented().cStr() : "");
    return c;
}
}  // namespace

BusKvStore::BusKvStore(std::string rpc_endpoint, std::string sender, std::string run_id,
                       bus::ClientSecurity security)
    : endpoint_(rpc_endpoint) {
    bus::RpcClientConfig c;
    c.endpoint = std::move(rpc_endpoint);
    c.sender = std::move(sender);
    c.run_id = std::move(run_id);
    c.timeout_ms = 1000;
    c.max_attempts = 10;
    c.security = std::move(security);
    client_ = std::make_unique<bus::RpcClient>(context_, c);
}

void BusKvStore::set(const std::string& key, std::span<const std::uint8_t> value) {
    std::lock_guard<std::mutex> lock(mutex_);
    // Idempotent (same key, same value), so retries need no deduplication key.
    bus::RpcReply r = client_->request(kKvAgentName, "", [&](schema::Envelope::Payload::Builder p) {
        auto s = p.initControlRequest().initKvSet();
        s.setKey(key);
        s.setValue(capnp::Data::Reader(value.data(), value.size()));
    });
    control_reply(r, endpoint_, "set " + key);
}

std::optional<kasmina::Bytes> BusKvStore::get(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    bus::RpcReply r = client_->request(kKvAgentName, "", [&](schema::Envelope::Payload::Builder p) {
        p.initControlRequest().setKvGet(key);
    });
    auto c = control_reply(r, endpoint_, "get " + key);
    if (!c.isKvValue() || !c.getKvValue().getFound()) return std::nullopt;
    auto v = c.getKvValue().getValue();
    return kasmina::Bytes(v.begin(), v.end());
}

bool BusKvStore::wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (const std::string& key : keys) {
        while (!get(key)) {
            if (std::chrono::steady_clock::now() >= deadline) return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }
    return true;
}

}  // namespace esper::agents
