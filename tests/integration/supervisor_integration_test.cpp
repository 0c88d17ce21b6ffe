// The supervisor with the real binary: `esper broker` on ephemeral ports reports its endpoints
// through the ready pipe, and by then its kv worker answers; a broker that refuses to start is
// reported with its log.
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <zmq.hpp>

#include "agents/supervisor.h"
#include "bus/rpc.h"
#include "schemas/control.capnp.h"
#include "tests/integration/fixtures.h"

using namespace esper;
using namespace esper::test;
using esper::agents::BrokerLaunch;
using esper::agents::ReadyStatus;
using esper::agents::Supervisor;

TEST_CASE("esper broker started by the supervisor reports its endpoints through the ready pipe",
          "[integration][supervisor]") {
    std::filesystem::path dir = scratch_dir();
    {
        Supervisor supervisor(dir);
        BrokerLaunch launch{.pub_port = 0, .sub_port = 0, .rpc_port = 0};
        auto broker = supervisor.start_ready("broker", launch.argv(kEsper), milliseconds(10000));
        INFO(agents::describe_failure(broker.child, broker.readiness));
        REQUIRE(broker.readiness.ok());
        auto endpoints = agents::broker_endpoints(broker.readiness.line);
        REQUIRE(endpoints);
        CHECK_THAT(endpoints->rpc, Catch::StartsWith("tcp://127.0.0.1:"));
        CHECK_THAT(endpoints->rpc, !Catch::EndsWith(":0") && !Catch::EndsWith(":*"));
        // Ready means the kv worker is registered: the first request, with no retry, is served.
        zmq::context_t ctx;
        bus::RpcClient client(
            ctx,
            {.endpoint = endpoints->rpc, .sender = "t", .timeout_ms = 2000, .max_attempts = 1});
        bus::RpcReply r = client.request("kv", "", [](schema::Envelope::Payload::Builder p) {
            p.initControlRequest().setKvGet("nothing");
        });
        REQUIRE(r.ok());
        CHECK(r.reply->envelope().getPayload().getControlReply().getOk());
        // The humans' line is still on stdout.
        bool printed = false;
        for (const auto& line : read_lines(dir / "broker.log"))
            printed = printed || line == "broker pub=" + endpoints->pub + " sub=" + endpoints->sub +
                                             " rpc=" + endpoints->rpc;
        CHECK(printed);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
}

TEST_CASE("a broker that exits before it is ready is reported with the last lines of its log",
          "[integration][supervisor]") {
    std::filesystem::path dir = scratch_dir();
    {
        Supervisor supervisor(dir);
        // A non-loopback bind without --insecure is refused before anything binds.
        BrokerLaunch launch{.bind = "192.0.2.1", .pub_port = 0, .sub_port = 0, .rpc_port = 0};
        auto broker = supervisor.start_ready("broker", launch.argv(kEsper), milliseconds(10000));
        CHECK(broker.readiness.status == ReadyStatus::kExited);
        CHECK(broker.readiness.exit_status == 2);
        const std::string report = agents::describe_failure(broker.child, broker.readiness);
        CHECK_THAT(report, Catch::StartsWith("broker exited (status 2) before it was ready"));
        CHECK_THAT(report, Catch::Contains("| ") && Catch::Contains("192.0.2.1"));
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
}
