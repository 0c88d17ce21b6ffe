// Frame tags of the broker's request/reply protocol (see broker.h for the frame layouts).
// Shared by the broker, RpcClient and RpcWorker; change all three together.
#pragma once

#include <string_view>

namespace esper::bus::proto {

inline constexpr std::string_view kHello = "HELLO";
inline constexpr std::string_view kBye = "BYE";
inline constexpr std::string_view kRequest = "REQ";
inline constexpr std::string_view kReply = "REP";
inline constexpr std::string_view kError = "ERR";
// broker -> worker: "REFUSED name reason", a HELLO that did not register (the name is held by
// another live connection, or the key lacks the agent role).
inline constexpr std::string_view kRefused = "REFUSED";
// broker -> worker: "PING", a liveness probe when another connection asks for its name;
// workers ignore it (only its delivery matters).
inline constexpr std::string_view kPing = "PING";

}  // namespace esper::bus::proto
