// The records the state machine keeps for the control tree (instances, nodes), their validation,
// and their stored encoding. Validation lives here, not in the FUSE front, so that every replica
// applying a command reaches the same verdict (apply is deterministic) and the reason returned to
// the writer is the one stored in its `error` file.
// Thread-safety: plain values and pure functions.
#ifndef CONSTELLATION_NODE_STATE_RECORDS_H_
#define CONSTELLATION_NODE_STATE_RECORDS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "node/base/status.h"

namespace constellation {

inline constexpr size_t kMaxNameBytes = 63;
inline constexpr size_t kMaxCmdBytes = 4096;
inline constexpr size_t kMaxEnvVars = 256;
inline constexpr size_t kMaxEnvLineBytes = 8192;
inline constexpr size_t kMaxListLines = 64;  // placement, secrets, labels
inline constexpr int64_t kMaxCpuPercent = 100000;
inline constexpr int64_t kMinRamMb = 4;
inline constexpr int64_t kMaxRamMb = 4194304;
inline constexpr int64_t kMaxDiskMb = 16777216;
inline constexpr int64_t kMaxPidsMax = 4194304;
inline constexpr size_t kMaxLabelValueBytes = 253;

struct InstanceRecord {
  std::string name;
  uint32_t uid = 0;  // owner
  uint32_t gid = 0;
  int64_t created_ms = 0;
  std::string cmd;
  std::vector<std::string> env;  // KEY=VALUE
  int64_t cpu_percent = 100;
  int64_t ram_mb = 256;
  int64_t disk_mb = 0;
  std::string restart = "never";
  std::string node;
  std::vector<std::string> placement;
  std::string ns = "default";
  std::vector<std::string> secrets;
  std::string network = "host";  // host | isolated (own network namespace, loopback only)
  int64_t pids_max = 0;          // processes and threads in the instance; 0 = the node's default
  std::string desired;           // "", "running", "stopped": what the last ctl verb asked for
  std::string state = "created";

  bool operator==(const InstanceRecord&) const = default;
};

struct NodeRecord {
  std::string name;
  std::string addr;
  int64_t cpu_cores = 0;
  int64_t ram_mb = 0;
  std::string version;
  std::vector<std::string> labels;  // key=value

  bool operator==(const NodeRecord&) const = default;
};

// `[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`; `what` names the thing in the message ("instance name").
Status ValidateName(std::string_view name, std::string_view what);

// The files of an instance that hold configuration, in the order `spec` shows them.
const std::vector<std::string>& InstanceConfigFields();
bool IsInstanceConfigField(std::string_view field);

// Validates `value` (one file's content, trailing newline already stripped) and stores it in
// `record`. On error `record` is unchanged and the message says what was wrong and what is allowed.
Status SetInstanceField(InstanceRecord* record, std::string_view field, std::string_view value);
// The content of a configuration file, newline-terminated (empty fields read as "").
std::string GetInstanceField(const InstanceRecord& record, std::string_view field);

// Applies `key=value` lines atomically: each named field is replaced (multi-line fields by all of
// their lines in the write), others are kept. On error `record` is unchanged.
Status ApplyInstanceSpec(InstanceRecord* record, std::string_view spec);
std::string FormatInstanceSpec(const InstanceRecord& record);

// `key=value` lines; replaces all labels.
Status ParseLabels(std::string_view value, std::vector<std::string>* labels);

std::string EncodeInstance(const InstanceRecord& record);
Result<InstanceRecord> DecodeInstance(std::string_view data);
std::string EncodeNode(const NodeRecord& record);
Result<NodeRecord> DecodeNode(std::string_view data);

// Splits on '\n', dropping empty lines and a trailing '\r' on each line.
std::vector<std::string> SplitLines(std::string_view text);

}  // namespace constellation

#endif  // CONSTELLATION_NODE_STATE_RECORDS_H_
