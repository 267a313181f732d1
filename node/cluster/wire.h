// The cluster's wire format between nodes (DESIGN.md §5), inside the ZeroMQ transport's payload:
//   U8 version (kWireVersion) | U8 kind | body
// kRaft: a raft message (node/raft's own versioned encoding). kJoinRequest: Bytes name | Bytes addr
// | Bytes key (a node asking to be admitted, sent under the join key). kJoinReply: U8 ok | Bytes
// error | Bytes cluster id | Varint n | n x (Bytes name | Bytes key | Bytes addr). kMembership: a
// SWIM message (node/membership's own versioned encoding).
// Decoders never trust a length: every field has a bound, trailing bytes are refused, and another
// version is NotSupported. Also the join token: "cn1." + hex(server public key) + hex(join
// secret key), 132 characters a shell needs no quotes for.
// Thread-safety: pure functions.
#ifndef CONSTELLATION_NODE_CLUSTER_WIRE_H_
#define CONSTELLATION_NODE_CLUSTER_WIRE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "node/base/status.h"
#include "node/membership/membership.h"
#include "node/raft/raft.h"
#include "node/state/state_machine.h"

namespace constellation {

inline constexpr uint8_t kWireVersion = 1;
inline constexpr size_t kMaxJoinMembers = 4096;
inline constexpr size_t kMaxJoinErrorBytes = 4096;

enum class WireKind : uint8_t { kRaft = 1, kJoinRequest = 2, kJoinReply = 3, kMembership = 4 };

struct JoinRequest {
  std::string name;
  std::string addr;
  std::string key;  // the node's own public key (Z85)
  bool operator==(const JoinRequest&) const = default;
};

struct JoinReply {
  bool ok = false;
  std::string error;
  std::string cluster_id;
  std::vector<MemberRecord> members;  // every admitted node, the new one included
  bool operator==(const JoinReply&) const = default;
};

struct WireMessage {
  WireKind kind = WireKind::kRaft;
  raft::Message raft;
  JoinRequest join_request;
  JoinReply join_reply;
  membership::Message membership;
};

std::string EncodeRaftWire(const raft::Message& m);
std::string EncodeJoinRequest(const JoinRequest& r);
std::string EncodeJoinReply(const JoinReply& r);
std::string EncodeMembershipWire(const membership::Message& m);
// Corruption for malformed input, NotSupported for another version.
Result<WireMessage> DecodeWire(std::string_view in);

struct JoinToken {
  std::string server_key;   // Z85 public key of the node that issued the token
  std::string join_secret;  // Z85 secret of that node's join key
};
std::string FormatJoinToken(const JoinToken& t);
// InvalidArgument (with what is wrong) for anything but a well-formed token.
Result<JoinToken> ParseJoinToken(std::string_view token);

}  // namespace constellation

#endif  // CONSTELLATION_NODE_CLUSTER_WIRE_H_
