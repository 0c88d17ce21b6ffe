// Included by every harness once: the code under test logs what it refuses (rate-limited in
// production), which would flood the fuzzer's output and slow it; logging is off while fuzzing.
#pragma once

#include "core/log.h"

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
    esper::set_log_levels("off");
    return 0;
}
