// Key files (agents/keys.h): keygen writes a public and a 0600 secret file per key, a secret
// readable by others is refused, a tampered file is refused, --keys picks the broker's public key
// and the tool's own secret by role, and the allowlist follows its directory.
#include "agents/keys.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"

using namespace esper;
namespace fs = std::filesystem;

namespace {

struct TempDir {
    fs::path path;
    TempDir() {
        path = fs::temp_directory_path() / ("esper-keys-test-" + std::to_string(::getpid()) + "-" +
                                            std::to_string(reinterpret_cast<uintptr_t>(this)));
        fs::remove_all(path);
    }
    ~TempDir() { fs::remove_all(path); }
};

mode_t mode_of(const fs::path& p) {
    struct stat st {};
    REQUIRE(::stat(p.c_str(), &st) == 0);
    return st.st_mode & 0777;
}

}  // namespace

TEST_CASE("keygen writes a 0644 public file and a 0600 secret file that read back",
          "[agents][keys]") {
    TempDir d;
    auto paths = agents::write_key_pair(d.path, "alice", "operator");
    REQUIRE(paths.size() == 2);
    CHECK(mode_of(d.path) == 0700);
    CHECK(mode_of(d.path / "alice.pub") == 0644);
    CHECK(mode_of(d.path / "alice.secret") == 0600);
    agents::KeyFile pub = agents::read_key_file(d.path / "alice.pub");
    agents::KeyFile sec = agents::read_key_file(d.path / "alice.secret");
    CHECK(pub.role == "operator");
    CHECK(pub.name == "alice");
    CHECK(pub.pair.secret_key.empty());
    CHECK(sec.pair.public_key == pub.pair.public_key);
    CHECK(bus::curve_public_of(sec.pair.secret_key) == pub.pair.public_key);
    CHECK_THROWS_WITH(agents::write_key_pair(d.path, "alice", "operator"),
                      Catch::Contains("already exists"));
    CHECK_NOTHROW(agents::write_key_pair(d.path, "alice", "operator", true));
    CHECK_THROWS_WITH(agents::write_key_pair(d.path, "bob", "root"),
                      Catch::Contains("role 'root'"));
    CHECK_THROWS_WITH(agents::write_key_pair(d.path, "../x", "agent"), Catch::Contains("key name"));
}

TEST_CASE("a secret key readable by others or not matching its public half is refused",
          "[agents][keys]") {
    TempDir d;
    agents::write_key_pair(d.path, "agent", "agent");
    const fs::path sec = d.path / "agent.secret";
    ::chmod(sec.c_str(), 0644);
    CHECK_THROWS_WITH(agents::read_key_file(sec),
                      Catch::Contains("readable by others (mode 0644); run: chmod 600"));
    ::chmod(sec.c_str(), 0640);
    CHECK_THROWS_AS(agents::read_key_file(sec), Error);
    ::chmod(sec.c_str(), 0600);
    CHECK_NOTHROW(agents::read_key_file(sec));
    // Another key's secret half under this public key.
    const bus::CurveKeyPair other = bus::generate_curve_key_pair();
    const agents::KeyFile k = agents::read_key_file(sec);
    {
        std::ofstream out(sec);
        out << "role: agent\npublic: \"" << k.pair.public_key << "\"\nsecret: \""
            << other.secret_key << "\"\n";
    }
    CHECK_THROWS_WITH(agents::read_key_file(sec), Catch::Contains("not the secret half"));
    {
        std::ofstream out(d.path / "junk.pub");
        out << "just: [text";
    }
    CHECK_THROWS_WITH(agents::read_key_file(d.path / "junk.pub"), Catch::Contains("junk.pub"));
}

TEST_CASE("a tool's --keys DIR picks the broker's public key and its secret key by role",
          "[agents][keys]") {
    TempDir d;
    agents::write_run_keys(d.path);
    const auto broker = agents::read_key_file(d.path / "broker.pub");
    auto op = agents::client_security(d.path, {bus::Role::kOperator, bus::Role::kObserver});
    CHECK(op.server_key == broker.pair.public_key);
    CHECK(op.own.public_key == agents::read_key_file(d.path / "operator.pub").pair.public_key);
    auto obs = agents::client_security(d.path, {bus::Role::kObserver, bus::Role::kOperator});
    CHECK(obs.own.public_key == agents::read_key_file(d.path / "observer.pub").pair.public_key);
    // A key named after its owner is found by its role when it is the only one.
    TempDir alice;
    fs::create_directories(alice.path);
    fs::copy_file(d.path / "broker.pub", alice.path / "broker.pub");
    agents::write_key_pair(alice.path, "alice", "operator");
    auto a = agents::client_security(alice.path, {bus::Role::kOperator});
    CHECK(a.own.public_key == agents::read_key_file(alice.path / "alice.pub").pair.public_key);
    CHECK_THROWS_WITH(agents::client_security(alice.path, {bus::Role::kAgent}),
                      Catch::Contains("no secret key with role agent"));
    agents::write_key_pair(alice.path, "carol", "operator");
    CHECK_THROWS_WITH(agents::client_security(alice.path, {bus::Role::kOperator}),
                      Catch::Contains("2 secret keys"));
}

TEST_CASE("the allowlist holds client keys with their roles and follows its directory",
          "[agents][keys]") {
    TempDir d;
    agents::write_run_keys(d.path);
    agents::Allowlist allow(d.path);
    CHECK(allow.size() == 3);  // agent, operator, observer; never the broker's own key
    const auto op = agents::read_key_file(d.path / "operator.pub");
    auto found = allow.lookup(op.pair.public_key);
    REQUIRE(found);
    CHECK(found->role == bus::Role::kOperator);
    CHECK(found->name == "operator");
    CHECK_FALSE(allow.lookup(agents::read_key_file(d.path / "broker.pub").pair.public_key));
    fs::remove(d.path / "operator.pub");
    CHECK_FALSE(allow.lookup(op.pair.public_key));  // removed: refused at the next handshake
    auto server = agents::server_security(d.path, d.path);
    CHECK(server.enabled());
    CHECK(server.lookup(agents::read_key_file(d.path / "agent.pub").pair.public_key)->role ==
          bus::Role::kAgent);
}
