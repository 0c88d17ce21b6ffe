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

}  // namespace esper::bus::proto
