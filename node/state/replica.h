// Replica: the replicated-state core of a node (DESIGN.md §2). Callers propose Commands; the
// agent thread orders them through Consensus, persists the log (one synced write per batch: group
// commit), applies committed entries to the StateMachine in one batch that also records the
// applied index, and then answers the proposers.
//
// Durability contract: Propose returns OK only after the command's log entry is synced and the
// command is applied. After a crash, Open replays the durable log past the stored applied index, so
// nothing acknowledged is lost and nothing is applied twice.
// Thread-safety: every public method is safe from any thread.
#ifndef CONSTELLATION_NODE_STATE_REPLICA_H_
#define CONSTELLATION_NODE_STATE_REPLICA_H_

#include <memory>
#include <string>

#include "node/env/env.h"
#include "node/state/command.h"
#include "node/state/event_hub.h"
#include "node/state/state_machine.h"

namespace constellation {

struct ReplicaOptions {
  std::string data_dir;   // the key-value store lives in data_dir/state
  std::string node_name;  // this node
  Env* env = nullptr;
  size_t max_pending = 4096;           // proposals queued before Propose returns Unavailable
  size_t max_batch = 1024;             // proposals per log write
  int64_t propose_timeout_ms = 10000;  // longest a proposer waits for its command to apply
  uint64_t log_keep = 10000;           // applied entries kept in the log before compaction
  uint64_t audit_keep = 100000;
  // New commands are refused (NoSpace) while the data dir's file system has less free space than
  // this, so that entries already committed can always be applied.
  uint64_t reserve_bytes = 64ull << 20;
  size_t event_capacity = 4096;
  // See StateMachineOptions::on_instance_changes. Also called while Open replays the log.
  std::function<void(const std::vector<InstanceChange>&)> on_instance_changes;
};

struct ReplicaStatus {
  std::string cluster_id;
  std::string node;
  std::string leader;
  uint64_t term = 0;
  uint64_t commit_index = 0;
  uint64_t applied_index = 0;
  uint64_t log_first_index = 0;
};

class Replica {
 public:
  // Opens the store (Busy if another process holds it, NotSupported for another format version),
  // replays the log, starts the agent thread, and bootstraps a new cluster id if there is none.
  static Result<std::unique_ptr<Replica>> Open(const ReplicaOptions& options);
  ~Replica();  // stops the agent after it has finished the work in hand

  // Fills in time_ms, node and request_id, and waits until the command is applied. Returns the
  // command's verdict (e.g. InvalidArgument with the reason), Unavailable when the queue is full or
  // the wait times out, NoSpace/IoError when the log could not be written.
  // `result`, when given, receives what the command produced for its proposer (file-system
  // commands: an encoded FsResult).
  Status Propose(Command command, std::string* result = nullptr);

  const StateMachine& state() const;
  // The store, for reads of committed state (file-system metadata). Thread-safe.
  KvStore* store();
  EventHub* events();
  ReplicaStatus GetStatus() const;
  Status ReadAudit(std::string* out) const;
  // Drops every applied log entry (the state machine holds their effect).
  Status Compact();

 private:
  struct Impl;
  explicit Replica(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace constellation

#endif  // CONSTELLATION_NODE_STATE_REPLICA_H_
