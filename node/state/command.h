// Commands: the only way state changes (DESIGN.md §2.2). Every mutation of the tree is encoded as
// a Command, appended to the log, and applied in log order by the StateMachine on every replica.
//
// Wire format (versioned, little-endian, see node/base/coding.h):
//   Fixed16 version | Fixed16 type | Fixed64 time_ms | Fixed32 uid | Fixed32 gid | Fixed32 pid |
//   Fixed64 request_id | Bytes node | Bytes op | Bytes path | Bytes object | Bytes field |
//   Bytes value | Bytes result
// A decoder accepts versions up to kCommandVersion and refuses newer ones (NotSupported), so a node
// never misapplies a command it does not understand. Every string has a bound (kMax*).
// Thread-safety: plain values and pure functions.
#ifndef CONSTELLATION_NODE_STATE_COMMAND_H_
#define CONSTELLATION_NODE_STATE_COMMAND_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "node/base/status.h"

namespace constellation {

inline constexpr uint16_t kCommandVersion = 1;
// Control-file values are limited to 64 KiB by the FUSE front; file-system commands carry extent
// lists, which grow with the file.
inline constexpr size_t kMaxCommandValueBytes = 16 << 20;
inline constexpr size_t kMaxCommandNameBytes = 4096;  // node, op, path, object, field, result

enum class CommandType : uint16_t {
  kBootstrap = 1,       // value = cluster id; first entry of a new cluster
  kNodeUpdate = 2,      // object = node; value = NodeInfo lines (addr, cpu_cores, ram_mb, version)
  kNodeSetLabels = 3,   // object = node; value = label lines
  kInstanceCreate = 4,  // object = instance; uid/gid = owner
  kInstanceRemove = 5,  // object = instance
  kInstanceSet = 6,     // object = instance; field; value
  kInstanceSpec = 7,    // object = instance; value = spec lines
  kInstanceCtl = 8,     // object = instance; value = verb [arg]
  kAuditOnly = 9,       // a write refused before it reached the log: recorded in audit only
  kNoop = 10,           // changes nothing (leader confirmation, tests)
  kFs = 11,             // value = an encoded FsOp (node/dfs/meta.h): cluster/ metadata
  kNodeAdmit = 12,      // object = node; value = "key=<Z85 public key>\naddr=<host:port>": the
                        // node may connect (its key passes every node's ZAP check) and join raft
};
inline constexpr uint16_t kMaxCommandType = 12;

struct Command {
  CommandType type = CommandType::kNoop;
  int64_t time_ms = 0;  // proposer's wall clock; apply uses it, never its own clock
  uint32_t uid = 0;
  uint32_t gid = 0;
  int32_t pid = 0;
  uint64_t request_id = 0;  // proposer-local; lets the proposer match the applied result
  std::string node;         // proposing node
  std::string op;           // audit operation: write, mkdir, rmdir ("" = not audited)
  std::string path;         // tree path, relative to constellation/, for audit
  std::string object;
  std::string field;
  std::string value;
  std::string result;  // kAuditOnly: errno name of the refusal

  bool operator==(const Command&) const = default;
};

std::string EncodeCommand(const Command& command);
// Corruption for malformed input; NotSupported for a newer version or unknown type.
Result<Command> DecodeCommand(std::string_view data);

}  // namespace constellation

#endif  // CONSTELLATION_NODE_STATE_COMMAND_H_
