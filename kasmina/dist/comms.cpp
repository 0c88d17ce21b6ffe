// The collectives factory (see comms.h). The only place that knows which collectives this build
// has (Gloo, NCCL).
#include "kasmina/dist/comms.h"

#include "core/check.h"
#include "core/error.h"
#if ESPER_HAVE_GLOO
#include "kasmina/dist/collectives_gloo.h"
#endif
#if ESPER_HAVE_NCCL
#include "kasmina/dist/collectives_nccl.h"
#endif

namespace esper::kasmina {

namespace {
#if ESPER_HAVE_NCCL
constexpr bool kHaveNccl = true;
#else
constexpr bool kHaveNccl = false;
#endif
}  // namespace

void NcclCommDeleter::operator()(NcclComm* comm) const {
#if ESPER_HAVE_NCCL
    delete comm;
#else
    ESPER_ASSERT(comm == nullptr, "an NcclComm in a build without NCCL");
#endif
}

Comms make_comms(const CommsConfig& config, KvStore* store) {
    Comms out;
    out.cuda = config.cuda;
    if (config.world <= 1) return out;
    ESPER_REQUIRE(store != nullptr, "world ", config.world, " needs a rendezvous store");
    const std::string prefix = config.run_id + "/" + config.attempt;
#if ESPER_HAVE_GLOO
    GlooConfig gc;
    gc.rank = config.rank;
    gc.world = config.world;
    gc.hostname = config.node_address;
    gc.key_prefix = prefix + "/gloo";
    gc.timeout = config.timeout;
    out.collectives = std::make_unique<GlooCollectives>(gc, *store);
#else
    ESPER_THROW(kInvalidInput, "world ", config.world, ": this build has no Gloo (libgloo-dev)");
#endif
    if (!config.cuda) return out;
    const bool gpu_rank = kHaveNccl && config.local_rank < config.cuda_devices;
    if (gpu_rank) {
#if ESPER_HAVE_NCCL
        NcclConfig nc;
        nc.rank = config.rank;
        nc.world = config.world;
        nc.device = config.local_rank;  // NcclComm's constructor calls cudaSetDevice
        nc.key_prefix = prefix + "/nccl";
        nc.timeout = config.timeout;
        out.nccl.reset(new NcclComm(nc, *store));
#endif
        return out;
    }
    ESPER_CHECK_INPUT(!config.cuda_required, "run.device: cuda: rank ", config.rank,
                      " has LOCAL_RANK=", config.local_rank, " but ", config.cuda_devices,
                      " CUDA device(s) are visible",
                      kHaveNccl ? "" : " and this build has no NCCL");
    out.cuda = false;  // auto: this rank trains on the CPU
    return out;
}

}  // namespace esper::kasmina
