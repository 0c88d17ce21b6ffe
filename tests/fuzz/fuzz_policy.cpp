// libFuzzer harness: the rules-policy loader (tamiyo: YAML of conditions and actions, validated
// on load with line:column errors). A policy that loads is then run once on a small view, so its
// conditions are evaluated against real metrics. Refusals are esper::Error, nothing else.
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>

#include "core/error.h"
#include "tamiyo/policy_factory.h"
#include "tamiyo/view.h"
#include "tests/fuzz/quiet.h"

namespace {

const esper::tamiyo::View& view() {
    static const esper::tamiyo::View v = [] {
        using namespace esper::tamiyo;
        View out;
        for (uint32_t s = 0; s < 4; ++s) {
            SeedTelemetry t;
            t.layer = s % 2;
            t.seed = s;
            t.step = 100;
            t.stage = s == 3 ? esper::SeedStage::kTraining : esper::SeedStage::kDormant;
            t.metrics.health = 0.1 * s;
            t.metrics.contribution = 0.5 - 0.25 * s;
            t.chunk_width = 4;
            t.germination_params = {100, 20, 8};
            out.ingest_telemetry(t);
        }
        RunStatus st;
        st.step = 100;
        st.loss = 1.5;
        out.ingest_run_status(st);
        return out;
    }();
    return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        esper::tamiyo::PolicyPtr p = esper::tamiyo::make_rules_policy_from_text(text, "fuzz.yaml");
        (void)p->decide(view(), 100);
    } catch (const esper::Error&) {
    }
    return 0;
}
