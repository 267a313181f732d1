// Replica: the replicated-state core of a node (DESIGN.md §2, §5). Callers propose Commands; the
// agent thread orders them through Raft (node/raft; a one-node cluster is a raft cluster of one
// voter), persists the log (one synced write per batch: group commit), sends raft's messages,
// applies committed entries to the StateMachine in one batch that also records the applied index,
// and then answers the proposers. Raft's storage is KvRaftStorage, on the same store.
//
// Durability contract: Propose returns OK only after the command is committed (durable on a quorum
// of voters) and applied on this node. After a crash, committed entries past the stored applied
// index are applied again from the log, so nothing acknowledged is lost and nothing is applied
// twice.
//
// Cluster: a follower's proposals go to the leader (raft forwards them); the proposer waits until
// its own node has applied the command. A proposal not applied after a leader change (or
// reforward_ms on a follower) is proposed again; the state machine skips the second copy by its
// request id (StateMachine::LastRequest), so a retry never applies a command twice. Without a
// quorum nothing commits and Propose returns Unavailable after propose_timeout_ms.
// Thread-safety: every public method is safe from any thread.
#ifndef CONSTELLATION_NODE_STATE_REPLICA_H_
#define CONSTELLATION_NODE_STATE_REPLICA_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "node/env/env.h"
#include "node/raft/raft.h"
#include "node/state/command.h"
#include "node/state/event_hub.h"
#include "node/state/state_machine.h"

namespace constellation {

// How durable a command must be before Propose returns.
enum class Durability {
  // Committed: durable (synced) on a quorum of voters.
  kSynced,
  // On a node that is its cluster's only member (no other voter, no learner), while it leads:
  // answered once written to the log, where it survives a crash of the daemon (kill -9) but not
  // yet a power loss; a background sync (after letting writes gather for 2 ms) makes it durable,
  // and SyncBarrier waits for that. On any other node the same as kSynced. For file-system
  // operations, whose durability POSIX ties to fsync and close (as ext4's journal does): the log
  // stays a prefix, so a power loss can only lose the last few such operations, together and in
  // order.
  kDeferred,
};

struct ReplicaOptions {
  std::string data_dir;   // the key-value store lives in data_dir/state
  std::string node_name;  // this node
  Env* env = nullptr;
  size_t max_pending = 4096;           // proposals queued before Propose returns Unavailable
  size_t max_batch = 1024;             // proposals per log write
  int64_t propose_timeout_ms = 10000;  // longest a proposer waits for its command to apply
  uint64_t log_keep = 10000;           // applied entries kept in the log before compaction
  // Snapshots are written by a thread of their own from a view of the store, so the agent thread
  // goes on committing meanwhile (false: on the agent thread, for tests of when they are taken).
  bool snapshot_in_background = true;
  // A snapshot with data (written for a follower) is not replaced by a compaction until this long
  // after it was installed or last read: replacing it would restart its send, and a follower
  // slower than the compactions would never catch up.
  int64_t snapshot_send_quiet_ms = 10000;
  // The agent thread's nice value (-20..19; 0 leaves it as inherited). Every commit of the node
  // passes through that one thread, and each answer it sends wakes a client that would otherwise
  // preempt it on a busy CPU, stalling every request behind it. Raising it needs CAP_SYS_NICE;
  // without, a warning is logged and the thread runs as inherited.
  int agent_nice = 0;
  uint64_t audit_keep = 100000;
  // New commands are refused (NoSpace) while the data dir's file system has less free space than
  // this, so that entries already committed can always be applied.
  uint64_t reserve_bytes = 64ull << 20;
  size_t event_capacity = 4096;

  // ---- Cluster.
  // A new store bootstraps a cluster with this node as its only voter (and proposes the cluster
  // id); with `join` it starts with no configuration and waits for a leader to add it.
  bool join = false;
  // Sends a raft message to its `to` node. Called on the agent thread, after the state the message
  // depends on is durable; must not block. Null: no network (a one-node cluster).
  std::function<void(const raft::Message& m)> send;
  // Called on the agent thread once per tick while this node leads: the next membership change to
  // propose, if any (node/cluster/voters.h). Null: the membership never changes by itself.
  struct ClusterView {
    raft::Config config;
    std::vector<raft::PeerProgress> progress;
    uint64_t last_index = 0;
    uint64_t commit_index = 0;
  };
  std::function<std::optional<raft::ConfChange>(const ClusterView&)> plan_membership;
  int64_t tick_ms = 100;
  int election_ticks = 10;    // election timeout: [1, 2) x election_ticks x tick_ms
  size_t max_inbound = 4096;  // received raft messages queued for the agent
  size_t max_inbound_bytes = 256 << 20;
  int64_t reforward_ms = 2000;  // a follower's proposal not applied by then is sent again
  // See StateMachineOptions::on_instance_changes. Also called while Open replays the log.
  std::function<void(const std::vector<InstanceChange>&)> on_instance_changes;
  // See StateMachineOptions::on_fs_changes; also called (with reset) after a snapshot is installed.
  std::function<void(const std::vector<FsChange>& changes, bool reset)> on_fs_changes;
};

struct ReplicaStatus {
  std::string cluster_id;
  std::string node;
  std::string leader;
  uint64_t term = 0;
  uint64_t commit_index = 0;
  uint64_t applied_index = 0;
  uint64_t log_first_index = 0;
  std::string role;  // follower | pre-candidate | candidate | leader
  std::vector<std::string> voters;
  std::vector<std::string> learners;
  uint64_t snapshot_index = 0;
  uint64_t inbound_dropped = 0;  // raft messages dropped because the inbound queue was full
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
  Status Propose(Command command, std::string* result = nullptr,
                 Durability durability = Durability::kSynced);
  // Propose without waiting: `done` is called exactly once with what Propose would have returned
  // (the verdict, and the result) — on the calling thread when the command is refused at once, else
  // on the agent thread once it applied or after propose_timeout_ms. `done` runs with no lock of
  // the replica held; it must not block (it holds up every command behind it) and must not call
  // Propose, SyncBarrier, ReadBarrier or Compact, which wait for the agent thread it runs on; it
  // may call ProposeAsync. Whoever registers `done` must outlive its call (the destructor calls the
  // ones still waiting, with Unavailable).
  using ProposeDone = std::function<void(Status verdict, std::string result)>;
  void ProposeAsync(Command command, Durability durability, ProposeDone done);
  // Returns once every command answered before the call is durable on this node (kDeferred ones
  // included). Immediate when none is waiting for its sync. IoError/NoSpace when the sync fails,
  // Unavailable after propose_timeout_ms.
  Status SyncBarrier();

  const StateMachine& state() const;
  // The store, for reads of committed state (file-system metadata). Thread-safe.
  KvStore* store();
  EventHub* events();
  ReplicaStatus GetStatus() const;
  Status ReadAudit(std::string* out) const;
  // Takes a snapshot of the state machine now and drops every applied log entry (a node that is
  // behind then catches up from the snapshot). Returns once a snapshot covers every entry applied
  // before the call; Unavailable after propose_timeout_ms (it goes on), or the snapshot's error.
  Status Compact();

  // A raft message from a peer (already decoded and authenticated). Queued for the agent; dropped
  // (and counted) when the inbound queue is full — raft recovers from lost messages.
  void Deliver(raft::Message m);
  // ---- Giving up this node's cluster to join another at run time (ClusterNode::JoinCluster).
  // Allowed only while the cluster holds nothing but this node's own bootstrap: the configuration
  // is this node alone, no member or node record names another node, there is no instance, and
  // cluster/ has no inode but its root (the root's own attributes are not kept).
  // Checks that from any thread, without waiting: Busy with what is there.
  Status CheckAlone() const;
  // Closes the gate for new commands (Propose fails with Unavailable until ResetForJoin or
  // CancelJoin), lets the agent finish the commands in hand, and checks CheckAlone's rule with
  // nothing in flight. Busy when it does not hold or another join is being prepared, Unavailable
  // when the commands in hand did not finish within propose_timeout_ms; the gate is open again
  // after any error.
  Status PrepareJoin();
  // After PrepareJoin: discards this node's cluster — log, raft state, replicated state — in one
  // synced write that also stores `local` (keys::IsLocal keys only: what the joining needs kept)
  // and leaves the store like a new one opened with `join`: without a configuration, waiting for
  // a leader to fill it in (whatever opens it later, with or without `join`). Commands and reads
  // waiting are answered Unavailable; cluster/'s caches are reset (on_fs_changes). Opens the gate.
  // On an error nothing changed and the gate stays closed (CancelJoin).
  Status ResetForJoin(const std::map<std::string, std::string>& local);
  // After PrepareJoin, when the join did not happen: opens the gate. Nothing changed.
  void CancelJoin();

  // A linearizable read point (ReadIndex): returns once this node has applied everything committed
  // when it was called, so a read after it sees every write acknowledged before. Immediate on a
  // node that is its cluster's only voter. Unavailable after `timeout_ms` (0: propose_timeout_ms)
  // without a quorum.
  Status ReadBarrier(int64_t timeout_ms = 0);

 private:
  struct Impl;
  explicit Replica(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace constellation

#endif  // CONSTELLATION_NODE_STATE_REPLICA_H_
