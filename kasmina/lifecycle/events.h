// A lifecycle event: one seed's transition, as the lifecycle engine emits it (SeedManager) and
// the agents publish it, and the sink it is written to as it happens (events.jsonl:
// kasmina/io/event_log.h).
#pragma once

#include <cstdint>
#include <string>

#include "kasmina/lifecycle/lifecycle.h"

namespace esper::kasmina {

struct LifecycleEvent {
    int64_t step = 0;
    int32_t layer = 0;
    int32_t seed = 0;
    SeedStage from = SeedStage::kDormant;
    SeedStage to = SeedStage::kDormant;
    std::string reason;
    TransitionOrigin origin = TransitionOrigin::kAuto;
    bool operator==(const LifecycleEvent&) const = default;
};

// Where the lifecycle engine writes each event as it happens (io/event_log.h writes a file).
class EventSink {
public:
    virtual ~EventSink() = default;
    // Throws esper::Error(kFailed) when the event cannot be recorded.
    virtual void write(const LifecycleEvent& e) = 0;
};

}  // namespace esper::kasmina
