// Roles, CURVE key pairs, client sockets and the peer frame; see security.h.
#include "bus/security.h"

#include <algorithm>
#include <array>

#include "core/error.h"

namespace esper::bus {

namespace {

constexpr std::array<std::pair<Role, std::string_view>, 4> kRoleNames = {{
    {Role::kNone, "none"},
    {Role::kObserver, "observer"},
    {Role::kOperator, "operator"},
    {Role::kAgent, "agent"},
}};

}  // namespace

std::string_view role_name(Role role) {
    for (const auto& [r, name] : kRoleNames)
        if (r == role) return name;
    return "unknown";
}

std::optional<Role> parse_role(std::string_view name) {
    for (const auto& [r, n] : kRoleNames)
        if (n == name && r != Role::kNone) return r;
    return std::nullopt;
}

bool curve_available() { return zmq_has("curve") != 0; }

CurveKeyPair generate_curve_key_pair() {
    if (!curve_available())
        ESPER_THROW(kUnimplemented, "this libzmq has no CURVE support (built without libsodium)");
    std::array<char, 41> pub{}, sec{};
    if (zmq_curve_keypair(pub.data(), sec.data()) != 0)
        ESPER_THROW(kFailed, "zmq_curve_keypair failed: ", zmq_strerror(zmq_errno()));
    return {std::string(pub.data(), 40), std::string(sec.data(), 40)};
}

std::string curve_public_of(std::string_view secret_key) {
    ESPER_CHECK_INPUT(is_z85_key(secret_key), "not a Z85 CURVE key (40 characters)");
    std::string secret(secret_key);
    std::array<char, 41> pub{};
    if (zmq_curve_public(pub.data(), secret.c_str()) != 0)
        ESPER_THROW(kInvalidInput, "not a CURVE secret key: ", zmq_strerror(zmq_errno()));
    return std::string(pub.data(), 40);
}

bool is_z85_key(std::string_view text) {
    // The Z85 alphabet (ZeroMQ RFC 32); 40 characters encode 32 bytes.
    static constexpr std::string_view kAlphabet =
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
    return text.size() == 40 && std::all_of(text.begin(), text.end(), [](char c) {
               return kAlphabet.find(c) != std::string_view::npos;
           });
}

void apply_client_security(zmq::socket_t& socket, const ClientSecurity& security) {
    if (!security.enabled()) return;
    ESPER_CHECK_INPUT(is_z85_key(security.server_key), "broker public key is not a Z85 key");
    ESPER_CHECK_INPUT(is_z85_key(security.own.public_key) && is_z85_key(security.own.secret_key),
                      "client key pair is not two Z85 keys");
    socket.set(zmq::sockopt::curve_serverkey, security.server_key);
    socket.set(zmq::sockopt::curve_publickey, security.own.public_key);
    socket.set(zmq::sockopt::curve_secretkey, security.own.secret_key);
}

bool Peer::allowed(std::initializer_list<Role> roles) const {
    if (!authenticated()) return true;
    return std::find(roles.begin(), roles.end(), role) != roles.end();
}

std::string encode_peer(const Peer& peer) {
    if (!peer.authenticated()) return {};
    return std::string(role_name(peer.role)) + " " + peer.name + " " + peer.key;
}

Peer decode_peer(std::string_view frame, std::string_view connection) {
    Peer p;
    p.connection = std::string(connection);
    const size_t a = frame.find(' ');
    const size_t b = a == std::string_view::npos ? a : frame.find(' ', a + 1);
    if (b == std::string_view::npos) return p;
    const auto role = parse_role(frame.substr(0, a));
    if (!role) return p;
    p.role = *role;
    p.name = std::string(frame.substr(a + 1, b - a - 1));
    p.key = std::string(frame.substr(b + 1));
    return p;
}

}  // namespace esper::bus
