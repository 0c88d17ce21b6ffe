// CURVE encryption and key-based roles on the bus (DESIGN §16). With keys configured every
// endpoint of the broker is a CURVE server; clients (publishers, subscribers, request/reply
// clients and workers) hold a key pair and the broker's public key. The broker's ZAP handler
// (bus/broker.cpp) looks each client key up in an allowlist that gives it a role:
//   observer  subscribe and ask for status only
//   operator  also send commands, load policies, publish (esper ctl/policy/pub)
//   agent     Kasmina and Tamiyo: register a name, answer requests, publish, use the kv store
// Without keys nothing is authenticated and every peer has Role::kNone. Keys are Z85 text (40
// characters), as zmq_curve_keypair writes them; files and directories are agents/keys.h.
#pragma once

#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <zmq.hpp>

namespace esper::bus {

enum class Role { kNone, kObserver, kOperator, kAgent };
std::string_view role_name(Role role);  // "none", "observer", "operator", "agent"
std::optional<Role> parse_role(std::string_view name);

// True when this libzmq was built with CURVE (libsodium).
bool curve_available();

struct CurveKeyPair {
    std::string public_key{};  // Z85, 40 characters
    std::string secret_key{};  // Z85, 40 characters
};
// A fresh key pair; throws esper::Error when libzmq has no CURVE.
CurveKeyPair generate_curve_key_pair();
// The public half of a Z85 secret key (to check a key file's halves belong together).
std::string curve_public_of(std::string_view secret_key);
bool is_z85_key(std::string_view text);

// A client socket's keys: the broker's public key and our own pair. Empty = no security.
struct ClientSecurity {
    std::string server_key{};
    CurveKeyPair own{};
    bool enabled() const { return !server_key.empty(); }
};
// Makes `socket` a CURVE client when `security` is enabled; call before connect().
void apply_client_security(zmq::socket_t& socket, const ClientSecurity& security);

// What the allowlist says about one client key.
struct AllowedKey {
    Role role = Role::kNone;
    std::string name{};  // the key's name (its file name), for logs; no spaces
};
// Looks a Z85 public key up in the allowlist; nullopt = unknown key (refused at the handshake).
using KeyLookup = std::function<std::optional<AllowedKey>(std::string_view public_key)>;

// The broker's side: its own pair and the allowlist. Empty = no security.
struct ServerSecurity {
    CurveKeyPair own{};
    KeyLookup lookup{};
    bool enabled() const { return !own.secret_key.empty(); }
};

// The sender of a request as the broker authenticated it. The broker passes it to the worker
// with every request (RpcWorker::peer()), so agents decide on roles, never on fields a client
// wrote into the envelope.
struct Peer {
    Role role = Role::kNone;   // kNone: the broker has no keys, nothing is authenticated
    std::string name{};        // key name ("operator", "alice"); "internal" for in-process peers
    std::string key{};         // Z85 public key; empty without keys
    std::string connection{};  // the broker's routing id of the client's connection (bytes)

    bool authenticated() const { return role != Role::kNone; }
    // A stable name for "who sent this": the public key when authenticated (it survives a
    // reconnect), else the connection. Meant for idempotency keys: (identity, commandId).
    std::string identity() const { return authenticated() ? "key:" + key : "conn:" + connection; }
    // True when nothing is authenticated (no keys: loopback trust) or the peer's role is one of
    // `roles`. Roles do not nest: an agent key (on every node) may not load a policy.
    bool allowed(std::initializer_list<Role> roles) const;
};

// The peer frame the broker appends to a forwarded request: "ROLE NAME KEY", or "" when nothing
// is authenticated. decode_peer() returns kNone for anything it cannot read.
std::string encode_peer(const Peer& peer);
Peer decode_peer(std::string_view frame, std::string_view connection);

}  // namespace esper::bus
