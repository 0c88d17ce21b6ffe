// GlooCollectives over Gloo's TCP transport; see collectives_gloo.h.
// Gloo reports failures by throwing its own exceptions (gloo::IoException for timeouts and lost
// peers, gloo::EnforceNotMet for misuse); they are converted to esper::Error at each call, the
// way ESPER_NCCL_CHECK converts status codes, and the group is then considered aborted.
#include "kasmina/dist/collectives_gloo.h"

#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <csignal>
#include <exception>
#include <utility>

#include "core/check.h"
#include "core/error.h"
#include "core/log.h"

namespace esper::kasmina {

namespace {

Logger& log_dist() {
    static Logger& lg = logger("kasmina.dist");
    return lg;
}

// gloo::rendezvous::Store over our KvStore, with every key under `prefix/`.
class StoreAdapter final : public gloo::rendezvous::Store {
public:
    StoreAdapter(KvStore& store, std::string prefix, std::chrono::milliseconds timeout)
        : store_(store), prefix_(std::move(prefix)), timeout_(timeout) {}

    void set(const std::string& key, const std::vector<char>& data) override {
        store_.set(full(key),
                   std::span(reinterpret_cast<const std::uint8_t*>(data.data()), data.size()));
    }
    std::vector<char> get(const std::string& key) override {
        Bytes value = wait_get(store_, full(key), timeout_);
        return std::vector<char>(value.begin(), value.end());
    }
    void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
    void wait(const std::vector<std::string>& keys,
              const std::chrono::milliseconds& timeout) override {
        std::vector<std::string> full_keys;
        for (const auto& k : keys) full_keys.push_back(full(k));
        if (!store_.wait(full_keys, timeout)) {
            ESPER_THROW(kDisconnected, "gloo rendezvous: peers did not join within ",
                        timeout.count(), " ms (waiting for ", full_keys.front(),
                        full_keys.size() > 1 ? ", ..." : "", ")");
        }
    }

private:
    std::string full(const std::string& key) const { return prefix_ + "/" + key; }
    KvStore& store_;
    std::string prefix_;
    std::chrono::milliseconds timeout_;
};

}  // namespace

struct GlooCollectives::Impl {
    std::shared_ptr<gloo::transport::Device> device;
    std::shared_ptr<gloo::rendezvous::Context> context;
};

// Runs one Gloo call; converts its exceptions and drops the group on failure.
#define ESPER_GLOO_CALL(op, ...)                                                                   \
    do {                                                                                           \
        try {                                                                                      \
            __VA_ARGS__;                                                                           \
        } catch (const ::gloo::IoException& e) {                                                   \
            impl_.reset();                                                                         \
            ESPER_THROW(kDisconnected, "gloo ", op, " rank=", rank_, "/", world_, ": ", e.what()); \
        } catch (const ::gloo::Exception& e) {                                                     \
            impl_.reset();                                                                         \
            ESPER_THROW(kDisconnected, "gloo ", op, " rank=", rank_, "/", world_, ": ", e.what()); \
        } catch (const ::gloo::EnforceNotMet& e) {                                                 \
            impl_.reset();                                                                         \
            ESPER_THROW(kFailed, "gloo ", op, " rank=", rank_, "/", world_, ": ", e.what());       \
        }                                                                                          \
    } while (0)

namespace {

// Gloo's TCP transport writes to its peers' sockets without MSG_NOSIGNAL, so a write to a peer
// that has gone (a rank that crashed or aborted) raises SIGPIPE, whose default action kills this
// process before Gloo can report the broken pipe — the survivor would die by a signal instead of
// failing with kDisconnected. Ignored for the process, unless the program installed a handler.
void ignore_sigpipe() {
    struct sigaction old {};
    if (sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL)
        std::signal(SIGPIPE, SIG_IGN);
}

}  // namespace

GlooCollectives::GlooCollectives(const GlooConfig& config, KvStore& store)
    : rank_(config.rank), world_(config.world), timeout_(config.timeout) {
    ignore_sigpipe();
    ESPER_CHECK_INPUT(config.world >= 1, "gloo: world size must be >= 1, got ", config.world);
    ESPER_CHECK_INPUT(config.rank >= 0 && config.rank < config.world, "gloo: rank ", config.rank,
                      " is outside world size ", config.world);
    ESPER_CHECK_INPUT(config.timeout.count() > 0, "gloo: timeout must be > 0 ms");
    ESPER_CHECK_INPUT(!config.iface.empty() || !config.hostname.empty(),
                      "gloo: set a hostname or a network interface");
    impl_ = std::make_unique<Impl>();
    gloo::transport::tcp::attr attr;
    if (!config.iface.empty()) {
        attr.iface = config.iface;
    } else {
        attr.hostname = config.hostname;
    }
    ESPER_GLOO_CALL("device", impl_->device = gloo::transport::tcp::CreateDevice(attr));
    impl_->context = std::make_shared<gloo::rendezvous::Context>(rank_, world_);
    impl_->context->setTimeout(timeout_);
    StoreAdapter adapter(store, config.key_prefix, timeout_);
    try {
        ESPER_GLOO_CALL("connect", impl_->context->connectFullMesh(adapter, impl_->device));
    } catch (...) {
        impl_.reset();
        throw;
    }
    ESPER_LOG_INFO(log_dist(), "gloo joined rank=", rank_, " world=", world_,
                   " device=", impl_->device->str(), " prefix=", config.key_prefix);
}

GlooCollectives::~GlooCollectives() = default;

GlooCollectives::Impl& GlooCollectives::live(const char* op) {
    if (!impl_) ESPER_THROW(kDisconnected, "gloo ", op, " rank=", rank_, ": group was aborted");
    return *impl_;
}

template <typename T>
void GlooCollectives::all_reduce_impl(T* data, std::size_t n) {
    Impl& impl = live("all_reduce");
    if (n == 0 || world_ == 1) return;
    gloo::AllreduceOptions opts(impl.context);
    opts.setOutput(data, n);
    opts.setReduceFunction(
        static_cast<void (*)(void*, const void*, const void*, std::size_t)>(&gloo::sum<T>));
    opts.setTag(next_tag_++);
    opts.setTimeout(timeout_);
    ESPER_GLOO_CALL("all_reduce", gloo::allreduce(opts));
}

void GlooCollectives::all_reduce_sum(float* data, std::size_t n) { all_reduce_impl(data, n); }
void GlooCollectives::all_reduce_sum(double* data, std::size_t n) { all_reduce_impl(data, n); }

void GlooCollectives::broadcast(void* data, std::size_t bytes, int root) {
    ESPER_REQUIRE(root >= 0 && root < world_, "root=", root, " world=", world_);
    Impl& impl = live("broadcast");
    if (bytes == 0 || world_ == 1) return;
    gloo::BroadcastOptions opts(impl.context);
    opts.setOutput(static_cast<std::uint8_t*>(data), bytes);
    opts.setRoot(root);
    opts.setTag(next_tag_++);
    opts.setTimeout(timeout_);
    ESPER_GLOO_CALL("broadcast", gloo::broadcast(opts));
}

void GlooCollectives::barrier() {
    Impl& impl = live("barrier");
    if (world_ == 1) return;
    gloo::BarrierOptions opts(impl.context);
    opts.setTag(next_tag_++);
    opts.setTimeout(timeout_);
    ESPER_GLOO_CALL("barrier", gloo::barrier(opts));
}

void GlooCollectives::abort() {
    if (impl_) ESPER_LOG_WARN(log_dist(), "gloo abort rank=", rank_, " world=", world_);
    impl_.reset();
}

}  // namespace esper::kasmina
