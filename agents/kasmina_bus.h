// The Kasmina executor in bus mode (`esper kasmina` without --standalone): owns the training
// loop of a kasmina::Trainer and connects it to the broker. Training never waits on the bus: at
// each step boundary the agent handles the commands already queued (applied through the same
// validator as every other entry point, acked with outcome, reason and seed-table digest),
// publishes lifecycle events (control class; they are also in events.jsonl), and every
// run.telemetry_interval_steps the per-layer seed telemetry and the run status (metrics class,
// never blocks, drops counted). It registers as `kasmina/<rank>` and heartbeats; at startup rank 0
// publishes the effective config (RunConfig) on `config.<run>`.
#pragma once

#include <atomic>
#include <string>

#include "bus/security.h"
#include "kasmina/io/config.h"
#include "kasmina/train/trainer.h"

namespace esper::agents {

struct KasminaBusOptions {
    std::string rpc_endpoint;  // broker request/reply endpoint
    std::string pub_endpoint;  // broker XSUB endpoint (we publish)
    std::string run_id;
    int rank = 0;
    int world = 1;                   // > 1: rank 0 serves commands, the others train and heartbeat
    std::string run_dir;             // where the final checkpoint goes ("" = none)
    std::string config_path;         // the run config file (published with the effective config)
    bus::ClientSecurity security{};  // CURVE agent key (--keys); commands then need a role
};

// Trains until the trainer is done or `stop` becomes true; rank 0 writes a final checkpoint
// into run_dir/checkpoints/<step>. Returns the process exit code.
int run_kasmina_bus(kasmina::Trainer& trainer, const KasminaBusOptions& options,
                    const std::atomic<bool>& stop);

// One human line per finished epoch on stdout (both loops of `esper kasmina`; kasmina_main.cpp).
void print_epoch_summary(const kasmina::EpochSummary& summary);

}  // namespace esper::agents
