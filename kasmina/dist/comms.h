// The collectives of one rank of a data-parallel run (DESIGN §8), built in one place from where
// the rank sits: Gloo over TCP for the host-side sync (seed state, digests, loss, telemetry; the
// CPU gradients) on every rank, and on a rank that trains on its GPU an NCCL communicator for
// the device gradients. Peers meet through a KvStore under "<run id>/<attempt>/gloo" and
// "<run id>/<attempt>/nccl", so a restarted attempt never reads the previous one's keys.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "kasmina/dist/collectives.h"

namespace esper::kasmina {

class NcclComm;

struct CommsConfig {
    int rank = 0;
    int world = 1;
    int local_rank = 0;  // the GPU this rank trains on
    std::string run_id;
    std::string attempt = "0";               // restart count of the job (ESPER_ATTEMPT)
    std::string node_address = "127.0.0.1";  // where Gloo listens (ESPER_NODE_ADDR)
    std::chrono::milliseconds timeout{120000};
    bool cuda = false;           // the run trains on CUDA (trainer_uses_cuda)
    bool cuda_required = false;  // run.device is `cuda`: no CPU fallback for a rank without GPU
    int cuda_devices = 0;        // devices this process sees
};

// Frees an NcclComm where its type is complete (comms.cpp; NCCL builds only make one).
struct NcclCommDeleter {
    void operator()(NcclComm* comm) const;
};

struct Comms {
    std::unique_ptr<Collectives> collectives;         // world > 1: Gloo; null for one rank
    std::unique_ptr<NcclComm, NcclCommDeleter> nccl;  // declared after: destroyed first
    bool cuda = false;  // this rank trains on its GPU (else on the CPU)
    const char* grads() const { return nccl ? "nccl" : "gloo"; }
};

// One rank (world 1): no collectives; `cuda` as configured. Several ranks: joins the Gloo group
// through `store` (required then; must outlive the Comms) and, when the run trains on CUDA and
// this rank has a GPU (local_rank < cuda_devices) in an NCCL build, the NCCL communicator on
// device local_rank (cudaSetDevice). A CUDA run's rank without a GPU trains on the CPU, unless
// cuda_required. Throws esper::Error(kInvalidInput) when the build cannot serve the request,
// Error(kDisconnected) when peers do not arrive within the timeout.
Comms make_comms(const CommsConfig& config, KvStore* store);

}  // namespace esper::kasmina
