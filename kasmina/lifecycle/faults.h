// Test-only fault injection: every hook that makes a run fail on purpose, in one value (the
// `faults:` section of a run config, docs/kasmina.md). Tests and integration scripts set it to
// prove that the governor, the digest check and atomic checkpoints work; a real run leaves every
// field at -1 (off). The trainer reads it from its Config and hands each hook to the part that
// fails: the step (NaN), DistributedSync (digest), the checkpoint writer (crash).
#pragma once

#include <cstdint>

namespace esper::kasmina {

struct FaultInjection {
    // The loss and one host gradient of this 0-based optimizer step become NaN (the governor
    // trips and rolls back).
    int64_t nan_at_step = -1;
    // world > 1: this rank germinates a seed on its own once, a real seed-table divergence that
    // the digest comparison must catch.
    int64_t corrupt_digest_rank = -1;
    // A checkpoint write throws after writing this many tensor files, leaving its temporary
    // directory behind as a crashed writer would (CheckpointWriteOptions::crash_after_files).
    int64_t checkpoint_crash_after_files = -1;
    bool operator==(const FaultInjection&) const = default;
};

}  // namespace esper::kasmina
