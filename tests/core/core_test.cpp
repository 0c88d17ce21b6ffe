// Tests of core/: errors, check macros' context, log level specs, clocks.
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <string>

#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"

TEST_CASE("esper::Error carries kind, message and location", "[core][error]") {
    try {
        ESPER_THROW(kIntegrity, "file ", "x.bin", " hash mismatch at byte ", 42);
        FAIL("did not throw");
    } catch (const esper::Error& e) {
        CHECK(e.kind() == esper::ErrorKind::kIntegrity);
        CHECK(std::string(e.what()) == "file x.bin hash mismatch at byte 42");
        CHECK(e.line() > 0);
        CHECK(esper::error_kind_name(e.kind()) == "integrity");
    }
}

TEST_CASE("ESPER_CHECK_INPUT throws invalid input only when the condition fails", "[core][error]") {
    CHECK_NOTHROW([] { ESPER_CHECK_INPUT(1 + 1 == 2, "never"); }());
    CHECK_THROWS_WITH([] { ESPER_CHECK_INPUT(false, "epochs: must be > 0"); }(),
                      "epochs: must be > 0");
}

TEST_CASE("log level specs apply by longest dotted prefix", "[core][log]") {
    esper::set_log_levels("warn,kasmina=debug,kasmina.seed=error");
    CHECK(esper::logger("bus").enabled(esper::LogLevel::kWarn));
    CHECK_FALSE(esper::logger("bus").enabled(esper::LogLevel::kInfo));
    CHECK(esper::logger("kasmina.trainer").enabled(esper::LogLevel::kDebug));
    CHECK_FALSE(esper::logger("kasmina.seed").enabled(esper::LogLevel::kWarn));
    CHECK(esper::logger("kasminax").enabled(esper::LogLevel::kWarn));
    CHECK_FALSE(esper::logger("kasminax").enabled(esper::LogLevel::kInfo));
    CHECK_THROWS_WITH(esper::set_log_levels("bus=loud"), Catch::Contains("unknown level 'loud'"));
    esper::set_log_levels("info");
}

TEST_CASE("log lines are one line in key=value form with location on warnings", "[core][log]") {
    std::FILE* tmp = std::tmpfile();
    REQUIRE(tmp != nullptr);
    esper::set_log_file(tmp);
    esper::Logger& lg = esper::logger("test.lines");
    ESPER_LOG_INFO(lg, "seed=", 17, " stage=training->grafting");
    ESPER_LOG_WARN(lg, "drops=", 3);
    esper::set_log_file(nullptr);
    std::rewind(tmp);
    char buf[512];
    std::string all;
    while (std::fgets(buf, sizeof buf, tmp)) all += buf;
    std::fclose(tmp);
    CHECK_THAT(all, Catch::Contains("INFO test.lines seed=17 stage=training->grafting\n"));
    CHECK_THAT(all, Catch::Contains("WARN test.lines drops=3 (core_test.cpp:"));
}

TEST_CASE("rate limiting suppresses repeats beyond the per-second budget", "[core][log]") {
    esper::Logger& lg = esper::logger("test.rate");
    int allowed = 0;
    for (int i = 0; i < 100; ++i) allowed += lg.allow_rate(5) ? 1 : 0;
    // All 100 calls may straddle a second boundary at most once.
    CHECK(allowed >= 5);
    CHECK(allowed <= 10);
    CHECK(lg.suppressed() == static_cast<uint64_t>(100 - allowed));
}

TEST_CASE("monotonic clock never goes back and stopwatches measure", "[core][clock]") {
    int64_t a = esper::monotonic_ns();
    esper::Stopwatch sw;
    volatile double x = 0;
    for (int i = 0; i < 100000; ++i) x = x + i;
    int64_t b = esper::monotonic_ns();
    CHECK(b >= a);
    CHECK(sw.elapsed_ns() > 0);
    CHECK(esper::wall_time_ns() > 1'700'000'000'000'000'000LL);
}

TEST_CASE("wall times print as ISO 8601 UTC with milliseconds", "[core][clock]") {
    CHECK(esper::utc_iso8601(0) == "1970-01-01T00:00:00.000Z");
    CHECK(esper::utc_iso8601(1733455292123456789) == "2024-12-06T03:21:32.123Z");
    CHECK(esper::utc_iso8601(-1) == "1969-12-31T23:59:59.999Z");
    CHECK(esper::utc_iso8601(-1000000) == "1969-12-31T23:59:59.999Z");
    CHECK(esper::utc_iso8601(-1000001) == "1969-12-31T23:59:59.998Z");
    // Any int64 can arrive in an envelope's timestamp; the ends used to overflow (UBSan).
    CHECK(esper::utc_iso8601(INT64_MIN) == "1677-09-21T00:12:43.145Z");
    CHECK(esper::utc_iso8601(INT64_MIN + 1) == "1677-09-21T00:12:43.145Z");
    CHECK(esper::utc_iso8601(INT64_MAX) == "2262-04-11T23:47:16.854Z");
}
