// The supervisor's ready pipe with stand-in children (/bin/sh): a ready line is read and parsed,
// and a child that exits first, stays silent past the timeout, closes the pipe without a line or
// writes something that is not a JSON object is reported with the last lines of its log. Also
// the argv the launch structs build. (tests/integration starts a real `esper broker` this way.)
#include "agents/supervisor.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <string>

#include "tests/support/paths.h"

namespace fs = std::filesystem;
using esper::testing::scratch_dir;
using namespace esper::agents;
using std::chrono::milliseconds;

namespace {

// `sh -c SCRIPT sh --ready-fd 3`: the script sees the descriptor as $2.
std::vector<std::string> shell(const std::string& script) {
    return {"/bin/sh", "-c", script, "sh"};
}

}  // namespace

TEST_CASE("a child's ready line comes through the pipe it inherits", "[agents][supervisor]") {
    fs::path dir = scratch_dir("ready");
    Supervisor supervisor(dir);
    auto s = supervisor.start_ready(
        "child", shell("echo starting; echo '{\"agent\":\"x\",\"fd\":'$2'}' >&$2; exec sleep 5"),
        milliseconds(5000));
    INFO(describe_failure(s.child, s.readiness));
    REQUIRE(s.readiness.ok());
    CHECK(s.readiness.line["agent"] == "x");
    CHECK(s.readiness.line["fd"] == ChildProcess::kInheritedFd);
    CHECK(s.child.running());
    CHECK(s.child.stop(milliseconds(2000)) != 0);
    fs::remove_all(dir);
}

TEST_CASE("a child that exits before it is ready is reported with its log",
          "[agents][supervisor]") {
    fs::path dir = scratch_dir("exit");
    Supervisor supervisor(dir);
    auto s = supervisor.start_ready("child", shell("echo 'cannot bind: address in use'; exit 3"),
                                    milliseconds(5000));
    CHECK(s.readiness.status == ReadyStatus::kExited);
    CHECK(s.readiness.exit_status == 3);
    const std::string report = describe_failure(s.child, s.readiness);
    CHECK_THAT(report, Catch::StartsWith("child exited (status 3) before it was ready"));
    CHECK_THAT(report, Catch::Contains("  | cannot bind: address in use"));
    fs::remove_all(dir);
}

TEST_CASE("a child that never gets ready times out and stays the caller's to stop",
          "[agents][supervisor]") {
    fs::path dir = scratch_dir("timeout");
    Supervisor supervisor(dir);
    auto started = std::chrono::steady_clock::now();
    auto s =
        supervisor.start_ready("child", shell("echo waiting; exec sleep 30"), milliseconds(300));
    CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(5));
    CHECK(s.readiness.status == ReadyStatus::kTimedOut);
    CHECK_THAT(describe_failure(s.child, s.readiness),
               Catch::Contains("was not ready within 300 ms") && Catch::Contains("| waiting"));
    CHECK(s.child.running());
    s.child.stop(milliseconds(2000));
    fs::remove_all(dir);
}

TEST_CASE("a ready pipe closed without a JSON object line is a bad line", "[agents][supervisor]") {
    fs::path dir = scratch_dir("bad");
    Supervisor supervisor(dir);
    SECTION("not JSON") {
        auto s = supervisor.start_ready("child", shell("echo 'pub=tcp://x' >&$2; exec sleep 5"),
                                        milliseconds(5000));
        CHECK(s.readiness.status == ReadyStatus::kBadLine);
        CHECK_THAT(s.readiness.detail, Catch::Contains("not a JSON object: pub=tcp://x"));
    }
    SECTION("closed without a line") {
        auto s = supervisor.start_ready("child", shell("eval \"exec $2>&-\"; exec sleep 5"),
                                        milliseconds(5000));
        CHECK(s.readiness.status == ReadyStatus::kBadLine);
        CHECK_THAT(s.readiness.detail, Catch::Contains("without writing a line"));
    }
    fs::remove_all(dir);
}

TEST_CASE("launch structs build the argv of each agent", "[agents][supervisor]") {
    BrokerLaunch broker{.bind = "0.0.0.0", .pub_port = 0, .insecure = true};
    CHECK(broker.argv("/x/esper") ==
          std::vector<std::string>{"/x/esper", "broker", "--bind", "0.0.0.0", "--pub-port", "0",
                                   "--sub-port", "5556", "--rpc-port", "5557", "--agent-expiry-ms",
                                   "3000", "--insecure"});
    BusEndpoints bus{"tcp://h:1", "tcp://h:2", "tcp://h:3"};
    TamiyoLaunch tamiyo{.bus = bus, .run_id = "r", .config = "c.yaml", .policy = "heuristic"};
    CHECK(tamiyo.argv("esper") ==
          std::vector<std::string>{"esper", "tamiyo", "--bus-pub", "tcp://h:1", "--bus-sub",
                                   "tcp://h:2", "--bus", "tcp://h:3", "--run-id", "r", "--config",
                                   "c.yaml", "--policy", "heuristic"});
    KasminaLaunch kasmina{.bus = bus,
                          .run_id = "r",
                          .config = "c.yaml",
                          .run_dir = "runs/r",
                          .max_steps = "10",
                          .world = 2,
                          .rank = 1};
    CHECK(kasmina.argv("esper") ==
          std::vector<std::string>{"esper",     "kasmina",   "--config", "c.yaml",    "--run-dir",
                                   "runs/r",    "--run-id",  "r",        "--bus-pub", "tcp://h:1",
                                   "--bus-sub", "tcp://h:2", "--bus",    "tcp://h:3", "--max-steps",
                                   "10",        "--world",   "2",        "--rank",    "1"});
    CHECK(kasmina.env() == std::vector<std::string>{"LOCAL_RANK=1"});
    kasmina.world = 1;
    CHECK(kasmina.env().empty());
    CHECK(broker_endpoints({{"pub", "a"}, {"sub", "b"}, {"rpc", "c"}})->rpc == "c");
    CHECK_FALSE(broker_endpoints({{"pub", "a"}, {"sub", "b"}}));
    CHECK_FALSE(broker_endpoints({{"pub", "a"}, {"sub", "b"}, {"rpc", 3}}));
}
