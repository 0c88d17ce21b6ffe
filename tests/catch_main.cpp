// Shared Catch2 main for every esper_<folder>_tests binary: Catch's own session, plus the exit
// code 4 (ctest's SKIP_RETURN_CODE) when every test case that ran was skipped
// (tests/support/skip.h), e.g. a [gpu] case on a machine without a CUDA device.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "tests/support/skip.h"

namespace {

int g_cases_run = 0;

struct CaseCounter : Catch::TestEventListenerBase {
    using TestEventListenerBase::TestEventListenerBase;
    void testCaseStarting(const Catch::TestCaseInfo&) override { ++g_cases_run; }
};

}  // namespace

CATCH_REGISTER_LISTENER(CaseCounter)

int main(int argc, char** argv) {
    const int rc = Catch::Session().run(argc, argv);
    const int skipped = esper::testing::skipped_cases();
    if (skipped > 0) std::fprintf(stderr, "%d test case(s) skipped\n", skipped);
    if (rc == 0 && skipped > 0 && skipped == g_cases_run) return 4;
    return rc;
}
