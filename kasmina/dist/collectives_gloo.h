// GlooCollectives: CPU ranks over Gloo's TCP transport (Debian libgloo-dev). Peers find each
// other through a KvStore (keys "<key_prefix>/<rank>"), so the prefix must be unique per job
// attempt when the store outlives one (the agent uses "<run-id>/<attempt>/gloo").
// Every operation has an end-to-end timeout: a dead or missing peer becomes
// esper::Error(kDisconnected), never a hang. Gloo types stay out of this header.
// Built only when Gloo is found (ESPER_HAVE_GLOO is defined for users of esper::kasmina).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "kasmina/dist/collectives.h"

namespace esper::kasmina {

struct GlooConfig {
    int rank = 0;
    int world = 1;
    // Address to listen on and advertise to peers: a hostname or IP of this host. Ignored when
    // `iface` is set. Loopback ("127.0.0.1") only works when all ranks share a host.
    std::string hostname = "127.0.0.1";
    // Network interface to use instead ("eth0", "ib0", a veth in a namespace ...).
    std::string iface;
    std::string key_prefix = "gloo";
    // Bounds the rendezvous, the connection of every pair and each collective.
    std::chrono::milliseconds timeout{30000};
};

class GlooCollectives final : public Collectives {
public:
    // Joins the group: publishes this rank's address, waits for every peer and connects a full
    // mesh. Throws Error(kDisconnected) when a peer does not join within the timeout and
    // Error(kInvalidInput) for a bad rank/world/interface.
    GlooCollectives(const GlooConfig& config, KvStore& store);
    ~GlooCollectives() override;
    GlooCollectives(const GlooCollectives&) = delete;
    GlooCollectives& operator=(const GlooCollectives&) = delete;

    int rank() const override { return rank_; }
    int world() const override { return world_; }
    void all_reduce_sum(float* data, std::size_t n) override;
    void all_reduce_sum(double* data, std::size_t n) override;
    void broadcast(void* data, std::size_t bytes, int root) override;
    void barrier() override;
    // Drops the connections. Call from the thread that issues collectives (Gloo pairs are not
    // safe to tear down under a running operation); peers then fail fast or at their timeout.
    void abort() override;
    bool aborted() const override { return impl_ == nullptr; }
    const char* backend_name() const override { return "gloo"; }

private:
    struct Impl;
    template <typename T>
    void all_reduce_impl(T* data, std::size_t n);
    Impl& live(const char* op);

    int rank_;
    int world_;
    std::chrono::milliseconds timeout_;
    std::uint32_t next_tag_ = 0;
    std::unique_ptr<Impl> impl_;
};

}  // namespace esper::kasmina
