// StateMachine: applies committed commands, in log order, to the replicated state (instances,
// nodes, cluster id, audit trail) kept in a KvStore, with an in-memory copy for reads.
//
// Apply is deterministic: its outcome depends only on the state and the command (the time comes
// from the command), so every replica reaches the same state and the same verdict. Apply stages its
// changes; the caller writes the batch (which also carries the applied index, so state and index
// are durable together or not at all) and then calls CommitStaged(), or DropStaged() if the write
// failed. Reads never see staged changes.
// Thread-safety: Load/Apply/CommitStaged/DropStaged from one thread (the agent); the read methods
// from any thread.
#ifndef CONSTELLATION_NODE_STATE_STATE_MACHINE_H_
#define CONSTELLATION_NODE_STATE_STATE_MACHINE_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "node/dfs/meta.h"
#include "node/env/env.h"
#include "node/state/command.h"
#include "node/state/records.h"

namespace constellation {

// 2: log entries carry a raft entry type, raft hard state and snapshot metadata (Replica::Open
// upgrades a version-1 store in place).
inline constexpr uint64_t kStateFormatVersion = 2;

// Key layout (see docs/architecture.md).
namespace keys {
inline constexpr char kFormat[] = "m/format";
inline constexpr char kApplied[] = "m/applied";
inline constexpr char kCluster[] = "m/cluster";
inline constexpr char kAuditSeq[] = "m/audit_seq";
inline constexpr char kLogFirst[] = "m/log_first";
inline constexpr char kHardState[] = "r/hard";
inline constexpr char kInstancePrefix[] = "i/";
inline constexpr char kNodePrefix[] = "n/";
inline constexpr char kAuditPrefix[] = "a/";
inline constexpr char kLogPrefix[] = "l/";
inline constexpr char kMemberPrefix[] = "k/";   // admitted nodes (kNodeAdmit)
inline constexpr char kRequestPrefix[] = "q/";  // newest applied request id per proposing node
// Keys that belong to this node, not to the replicated state: the log, raft's records, the format
// and anything under "j/" (join bookkeeping). A state-machine snapshot holds every other key.
inline constexpr char kRaftPrefix[] = "r/";
inline constexpr char kLocalPrefix[] = "j/";
bool IsLocal(std::string_view key);
}  // namespace keys

// A node the cluster admitted: its CURVE public key (Z85, 40 characters) and its address.
struct MemberRecord {
  std::string name;
  std::string key;
  std::string addr;
  bool operator==(const MemberRecord&) const = default;
};

// An applied change of one instance record, for the node agent (node/agent) that brings the
// instance's process in line with it.
struct InstanceChange {
  std::string name;
  // The ctl verb the command carried ("start", "stop", "restart", "kill 9"), or "" for a change of
  // the record itself (created, configured, removed): read the record for its new value.
  std::string verb;
  // The record once the batch that made the change was applied: whether it exists, and the node
  // it is placed on. A later batch may have changed it again by the time this is read.
  bool exists = false;
  std::string node;
};

// An applied file-system op, for the node's ClusterFs to drop what it and the kernel cache of the
// inodes and names the op changed (when another node proposed it).
struct FsChange {
  std::string node;  // the proposing node
  FsOp op;
  FsResult result;
};

struct StateMachineOptions {
  uint64_t audit_keep = 100000;  // newest audit lines kept
  // Called at the end of CommitStaged, on the applying thread, with the instance changes of the
  // committed entries in apply order (refused commands are not changes). The committed state is
  // readable when it runs. Must not block: it holds up every later commit.
  std::function<void(const std::vector<InstanceChange>&)> on_instance_changes;
  // Called at the end of CommitStaged, on the applying thread, with the file-system ops the
  // committed entries applied (refused ones are not), in order; and with `reset` true after Load
  // replaced the whole state (a snapshot was installed): then any cached view may be stale. Must
  // not block (it must not wait for a commit, nor take a lock held across one).
  std::function<void(const std::vector<FsChange>& changes, bool reset)> on_fs_changes;
};

class StateMachine {
 public:
  explicit StateMachine(StateMachineOptions options = {});

  // Loads the state from `kv`. Refuses (NotSupported) a store written by another format version;
  // marks an empty store with this version.
  Status Load(KvStore* kv);

  // Applies entry `index`; adds its writes to `batch` and event lines to `events`, and puts what
  // the proposer needs back (for file-system commands, an encoded FsResult) in `result`. The
  // returned Status is the command's verdict (what the proposer sees), not a failure of the
  // machine.
  Status Apply(uint64_t index, const Command& command, KvStore::Batch* batch,
               std::vector<std::string>* events, std::string* result);
  // Adds what Apply staged for the whole batch — the file system's writes, the applied index, the
  // last request id of each node, the audit sequence — to `batch`. Call once, after the last Apply
  // and before writing the batch: without it the batch does not record what it applied.
  void StageInto(KvStore::Batch* batch);
  void CommitStaged();
  void DropStaged();

  uint64_t applied_index() const;
  std::string cluster_id() const;
  std::optional<InstanceRecord> GetInstance(const std::string& name) const;
  std::vector<std::string> ListInstances() const;
  std::optional<NodeRecord> GetNode(const std::string& name) const;
  std::vector<std::string> ListNodes() const;
  std::optional<MemberRecord> GetMember(const std::string& name) const;
  std::vector<MemberRecord> ListMembers() const;
  // The newest request id applied from `node` (0: none). Commands carry increasing ids per node;
  // one at or below it is a duplicate (a proposal retried after a leader change) and is skipped.
  uint64_t LastRequest(const std::string& node) const;
  // Audit lines, oldest first, newline-terminated.
  Status ReadAudit(KvStore* kv, std::string* out) const;

 private:
  struct Staged {
    std::map<std::string, std::optional<InstanceRecord>> instances;
    std::map<std::string, std::optional<NodeRecord>> nodes;
    std::optional<std::string> cluster_id;
    std::optional<uint64_t> applied;
    std::optional<uint64_t> audit_seq;
    std::map<std::string, MemberRecord> members;
    std::map<std::string, uint64_t> requests;
    std::vector<InstanceChange> changes;
    std::vector<FsChange> fs_changes;
  };

  Status ApplyCommand(const Command& c, KvStore::Batch* batch, std::vector<std::string>* events);
  void CommitStagedLocked();  // mu_ held
  std::optional<InstanceRecord> StagedInstance(const std::string& name) const;
  std::optional<NodeRecord> StagedNode(const std::string& name) const;
  std::optional<MemberRecord> StagedMember(const std::string& name) const;
  uint64_t StagedLastRequest(const std::string& node) const;
  void PutInstance(const InstanceRecord& r, KvStore::Batch* batch);
  void PutNode(const NodeRecord& r, KvStore::Batch* batch);
  void Audit(const Command& c, const Status& verdict, KvStore::Batch* batch);

  const StateMachineOptions options_;
  mutable std::shared_mutex mu_;  // guards the live state below
  std::map<std::string, InstanceRecord> instances_;
  std::map<std::string, NodeRecord> nodes_;
  std::map<std::string, MemberRecord> members_;
  std::map<std::string, uint64_t> requests_;
  std::string cluster_id_;
  uint64_t applied_ = 0;
  uint64_t audit_seq_ = 0;
  Staged staged_;                  // agent thread only
  std::unique_ptr<KvOverlay> fs_;  // file-system writes staged by Apply (agent thread only)
};

// Parses and checks a kNodeAdmit value ("key=...\naddr=..."); fills `out` except its name.
Status ParseMemberValue(std::string_view value, MemberRecord* out);
std::string FormatMemberValue(const MemberRecord& m);

// The audit line for a command: "<unix_ms> <uid> <pid> <node> <path> <op> <result> <value>".
std::string FormatAuditLine(const Command& c, const Status& verdict);

}  // namespace constellation

#endif  // CONSTELLATION_NODE_STATE_STATE_MACHINE_H_
