// Key files and key directories of a secured bus (docs/bus.md "Keys and roles"). `esper keygen`
// writes NAME.pub (the public half, shareable) and NAME.secret (both halves, mode 0600), each a
// small YAML file naming the key's role (observer, operator, agent, or broker for the broker's
// own pair). A keys directory holds broker.pub and the secret keys of whoever uses it; a broker's
// allowlist is a directory of .pub files, re-read when it changes. A secret key that group or
// others may read is refused (like ssh).
//
//   auto sec = agents::client_security("keys/", {bus::Role::kOperator});   // esper ctl --keys
//   auto srv = agents::server_security("keys/", "keys/");                 // esper broker --keys
#pragma once

#include <filesystem>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "bus/security.h"

namespace esper::agents {

inline constexpr const char* kBrokerKeyName = "broker";

struct KeyFile {
    std::string role;        // "observer", "operator", "agent" or "broker"
    std::string name;        // the file's stem
    bus::CurveKeyPair pair;  // secret_key empty for a .pub file
};

// Writes DIR/NAME.pub and DIR/NAME.secret (0600) for a fresh key pair; DIR is created (0700
// when new). Refuses to overwrite existing files unless `overwrite`. Returns the paths written.
std::vector<std::filesystem::path> write_key_pair(const std::filesystem::path& dir,
                                                  const std::string& name, const std::string& role,
                                                  bool overwrite = false);
// The key set of one run: broker, agent, operator and observer pairs in DIR.
void write_run_keys(const std::filesystem::path& dir, bool overwrite = false);

// Reads a .pub or .secret file; errors name the file and what is wrong. A .secret file readable
// by group or others is refused with the chmod that fixes it.
KeyFile read_key_file(const std::filesystem::path& path);

// The client side of `--keys DIR`: DIR/broker.pub and our own secret key, the first of
// DIR/<role>.secret for `roles` in order, else the only DIR/*.secret whose role is one of them.
bus::ClientSecurity client_security(const std::filesystem::path& dir,
                                    std::initializer_list<bus::Role> roles);

// Every DIR/*.pub whose role is a client role, by public key; re-read when the directory's
// modification time changes, so a key added (or removed) takes effect at the next handshake.
class Allowlist {
public:
    explicit Allowlist(std::filesystem::path dir);
    std::optional<bus::AllowedKey> lookup(std::string_view public_key);
    size_t size();

private:
    void refresh();
    std::filesystem::path dir_;
    std::filesystem::file_time_type seen_{};
    bool loaded_ = false;
    std::unordered_map<std::string, bus::AllowedKey> keys_;
};

// The broker side of `--keys DIR [--allow ALLOW]`: DIR/broker.secret and the allowlist in
// ALLOW (default DIR).
bus::ServerSecurity server_security(const std::filesystem::path& dir,
                                    const std::filesystem::path& allow_dir);

}  // namespace esper::agents
