// Raft: a pure consensus core in the style of etcd's raft (DESIGN.md §2.1, §5). It never touches
// sockets, clocks, threads or disks. Inputs: Step(message), Tick(), Propose(data),
// ProposeConfChange(change), ReadIndex(context), Campaign(). Output: a Ready describing the work
// to do, which the agent performs in this order and then acknowledges with Advance():
//
//   1. persist `snapshot` (if set: it replaces the state machine and the log up to its index),
//      then `entries` (stored entries at or after entries[0].index are replaced) and `hard_state`,
//      durably (synced), in one atomic write if it can;
//   2. send `messages` (only after step 1: votes and acknowledgements promise durable state);
//   3. apply the snapshot's data to the state machine, then `committed_entries` in order
//      (entries of type kConfChange carry an encoded ConfChange for the application's records;
//      Raft has already applied them to its configuration; empty kNormal entries are a new
//      leader's no-op);
//   4. answer reads: a ReadState is safe to serve once the state machine has applied its index;
//   5. Advance().
//
// If step 1 fails, call PersistFailed() instead of Advance(): do not send the messages and do not
// apply the snapshot; `committed_entries` were durable before this Ready and may still be applied.
// Raft then returns to what its storage holds (a leader steps down; a sole voter re-elects itself).
//
// Features: leader election with pre-vote and check-quorum (leases against disruptive nodes);
// randomized election timeouts from an injected seed; log replication with pipelining (optimistic
// next index, bounded inflight window) and batching (bounded bytes per append); commit by counting
// only for entries of the current term; snapshots streamed in bounded chunks with a window,
// reassembled by the follower; single-server membership changes (one at a time, configuration
// takes effect when appended, as in the Raft thesis §4) with learners; linearizable reads via
// ReadIndex, served by followers and learners too (they ask the leader); follower proposals are
// forwarded to the leader.
//
// Thread-safety: Raft is not thread-safe: one agent thread owns it. Between GetReady() and
// Advance()/PersistFailed() no other method may be called except the const accessors. The
// encoding functions are pure and safe from any thread. MemoryStorage is not thread-safe.
#ifndef CONSTELLATION_NODE_RAFT_RAFT_H_
#define CONSTELLATION_NODE_RAFT_RAFT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "node/base/log.h"
#include "node/base/status.h"

namespace constellation::raft {

// A node's name (what the transport addresses and HardState.vote records). Empty means none.
using NodeId = std::string;

// ---- Wire limits. The decoder refuses anything beyond these; Step refuses inconsistent input.
inline constexpr uint8_t kProtocolVersion = 1;
inline constexpr size_t kMaxNodeIdBytes = 255;
inline constexpr size_t kMaxEntryBytes = size_t{64} << 20;
inline constexpr size_t kMaxEntriesPerMessage = 65536;
inline constexpr size_t kMaxContextBytes = 4096;  // ReadIndex contexts
inline constexpr size_t kMaxConfigNodes = 4096;
inline constexpr size_t kMaxChunkBytes = size_t{64} << 20;
inline constexpr uint64_t kMaxSnapshotBytes = uint64_t{1} << 40;

enum class EntryType : uint8_t { kNormal = 0, kConfChange = 1 };

struct Entry {
  uint64_t index = 0;
  uint64_t term = 0;
  EntryType type = EntryType::kNormal;
  std::string data;
  bool operator==(const Entry&) const = default;
};

// What must be durable before this node sends anything that depends on it.
struct HardState {
  uint64_t term = 0;
  NodeId vote;
  uint64_t commit = 0;
  bool operator==(const HardState&) const = default;
};

// The cluster's membership. Both lists are sorted and disjoint.
struct Config {
  std::vector<NodeId> voters;
  std::vector<NodeId> learners;
  bool IsVoter(const NodeId& id) const;
  bool IsLearner(const NodeId& id) const;
  bool Contains(const NodeId& id) const { return IsVoter(id) || IsLearner(id); }
  // "voters=(1 2 3) learners=(4)"
  std::string ToString() const;
  bool operator==(const Config&) const = default;
};

// Single-server changes. Adding a voter that is a learner promotes it. Demoting a voter to a
// learner is two changes (remove, then add as learner).
enum class ConfChangeType : uint8_t { kAddVoter = 0, kAddLearner = 1, kRemoveNode = 2 };

struct ConfChange {
  ConfChange() = default;
  ConfChange(ConfChangeType t, NodeId n, Config c = {})
      : type(t), node(std::move(n)), config(std::move(c)) {}
  ConfChangeType type = ConfChangeType::kAddVoter;
  NodeId node;
  // The whole configuration once the change is made. The leader fills it in when it proposes
  // (callers leave it empty), so a node that joins knowing no configuration learns it from the
  // entry that adds it.
  Config config;
  bool operator==(const ConfChange&) const = default;
};

// `config` with the change applied (lenient: a change that is already in effect, or removes a
// non-member, leaves the config as it is; the leader refuses those before proposing).
Config ApplyConfChange(const Config& config, const ConfChange& cc);

struct SnapshotMeta {
  uint64_t index = 0;  // the last entry the snapshot covers
  uint64_t term = 0;   // that entry's term
  Config config;       // the configuration as of `index`
  uint64_t size = 0;   // bytes of state-machine data
  bool operator==(const SnapshotMeta&) const = default;
};

struct Snapshot {
  SnapshotMeta meta;
  std::string data;
};

enum class MessageType : uint8_t {
  kPreVote = 1,    // term: the term the sender would campaign in; index/log_term: its last entry
  kPreVoteResp,    // term: the request's term if granted, else the voter's; reject
  kVote,           // as kPreVote, in the sender's current term
  kVoteResp,       //
  kAppend,         // index/log_term: the entry before `entries`; commit: the leader's
  kAppendResp,     // index: matched up to (or, with reject, the rejected index); reject_hint and
                   // log_term: the follower's guess of where the logs agree
  kHeartbeat,      // commit; context: the newest pending ReadIndex context
  kHeartbeatResp,  // context echoed
  kSnapshot,       // one chunk: snapshot (meta), offset, chunk; index: the stream's attempt
                   // (a leader restarting a stream from offset 0 uses a new, larger one)
  kSnapshotResp,   // index: the attempt; offset: bytes held; reject: a chunk is missing
  kPropose,        // a follower forwards entries to the leader (term 0)
  kReadIndex,      // a follower asks the leader for a read index (term 0); context
  kReadIndexResp,  // index: the read index; context
};
const char* MessageTypeName(MessageType type);

struct Message {
  MessageType type = MessageType::kHeartbeat;
  NodeId from;
  NodeId to;
  uint64_t term = 0;
  uint64_t log_term = 0;
  uint64_t index = 0;
  uint64_t commit = 0;
  bool reject = false;
  uint64_t reject_hint = 0;
  std::string context;
  std::vector<Entry> entries;  // kAppend, kPropose
  // kSnapshot only.
  SnapshotMeta snapshot;
  uint64_t offset = 0;
  std::string chunk;
  bool operator==(const Message&) const = default;
};

// A linearizable read may be served once the state machine has applied `index`.
struct ReadState {
  uint64_t index = 0;
  std::string context;
  bool operator==(const ReadState&) const = default;
};

struct Ready {
  std::optional<Snapshot> snapshot;      // persist, then apply, before everything else
  std::vector<Entry> entries;            // persist (replacing stored entries from entries[0])
  std::optional<HardState> hard_state;   // persist with them
  std::vector<Message> messages;         // send once persisted
  std::vector<Entry> committed_entries;  // apply in order
  std::vector<ReadState> read_states;    // serve once applied >= index
  bool empty() const {
    return !snapshot && entries.empty() && !hard_state && messages.empty() &&
           committed_entries.empty() && read_states.empty();
  }
};

// ---- Encoding. Versioned (kProtocolVersion first), bounded, canonical: whatever decodes
// re-encodes to an equal value. Malformed input gives Corruption; another version NotSupported.
std::string EncodeMessage(const Message& m);
Result<Message> DecodeMessage(std::string_view in);
std::string EncodeConfChange(const ConfChange& cc);
Result<ConfChange> DecodeConfChange(std::string_view in);
std::string EncodeSnapshotMeta(const SnapshotMeta& meta);
Result<SnapshotMeta> DecodeSnapshotMeta(std::string_view in);
std::string EncodeHardState(const HardState& hs);
Result<HardState> DecodeHardState(std::string_view in);

// One line of text, for logs and golden tests: `1->2 MsgApp Term:2 Log:1/5 Commit:4 Entries:[...]`.
std::string DescribeMessage(const Message& m);
std::string DescribeEntry(const Entry& e);

// ---- Storage. The core keeps entries it has not yet seen persisted in memory (the unstable
// log) and reads everything older through this interface, which the agent implements over its
// durable store. The agent writes to it while performing a Ready (and compacts it after applying);
// the core only reads. A storage failure on read is fatal (CN_CHECK): the durable log is gone.
class RaftStorage {
 public:
  virtual ~RaftStorage() = default;
  // The durable hard state (all zero for a new node).
  virtual HardState InitialHardState() const = 0;
  // The latest snapshot's metadata. A new node has {0, 0, initial config, 0}: the configuration
  // a cluster is bootstrapped with (empty for a node that will join an existing cluster).
  virtual SnapshotMeta SnapshotMetadata() const = 0;
  // The first stored entry's index (snapshot index + 1 when nothing is stored past it).
  virtual uint64_t FirstIndex() const = 0;
  // The last stored entry's index (the snapshot's index when there are none).
  virtual uint64_t LastIndex() const = 0;
  // The term of entry i, for FirstIndex()-1 <= i <= LastIndex(); OutOfRange otherwise.
  virtual Result<uint64_t> Term(uint64_t i) const = 0;
  // Appends entries [lo, hi) to `out`, FirstIndex() <= lo < hi <= LastIndex()+1: at least one,
  // then more while their data stays within max_bytes in total.
  virtual Status Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                         std::vector<Entry>* out) const = 0;
  // Up to max_bytes of the data of the snapshot at `index`, from `offset` (< its size, or 0).
  // NotFound if that snapshot has been replaced by a newer one.
  virtual Status SnapshotChunk(uint64_t index, uint64_t offset, size_t max_bytes,
                               std::string* out) const = 0;
  // Whether the latest snapshot's data can be read (SnapshotChunk). A storage may compact its log
  // behind metadata alone, the state machine's own state standing for the data, and write the
  // data only when a follower needs it: it answers false until then, and takes the question as
  // the request to write it. Raft sends no snapshot meanwhile and asks again at the follower's
  // next heartbeat answer.
  virtual bool SnapshotDataReady() const { return true; }
};

// An in-memory RaftStorage for tests and the simulator. Everything written to it counts as
// durable (the simulator drops a node's Raft and keeps its MemoryStorage to model a crash).
class MemoryStorage : public RaftStorage {
 public:
  // A new node; `initial` is the bootstrap configuration (see SnapshotMetadata()).
  explicit MemoryStorage(Config initial = {});

  HardState InitialHardState() const override { return hard_state_; }
  SnapshotMeta SnapshotMetadata() const override { return snapshot_.meta; }
  uint64_t FirstIndex() const override { return offset_; }
  uint64_t LastIndex() const override { return offset_ + entries_.size() - 1; }
  Result<uint64_t> Term(uint64_t i) const override;
  Status Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                 std::vector<Entry>* out) const override;
  Status SnapshotChunk(uint64_t index, uint64_t offset, size_t max_bytes,
                       std::string* out) const override;
  bool SnapshotDataReady() const override {
    if (!data_ready_) ++data_asks_;
    return data_ready_;
  }
  // For tests of a storage that writes snapshot data on demand: while false, SnapshotDataReady
  // answers false (and counts the questions: data_asks()).
  void SetSnapshotDataReady(bool ready) { data_ready_ = ready; }
  int data_asks() const { return data_asks_; }

  // ---- What an agent does while performing a Ready.
  void SetHardState(const HardState& hs) { hard_state_ = hs; }
  // Replaces stored entries from entries[0].index on (which must be within [FirstIndex(),
  // LastIndex()+1]) with `entries`.
  void Append(const std::vector<Entry>& entries);
  // Installs a snapshot received from a leader: the log is replaced by it.
  void ApplySnapshot(Snapshot snapshot);

  // ---- What an agent does after applying.
  // Records a snapshot of the state machine as of `index` (applied, <= LastIndex(), newer than
  // the current snapshot) and drops the entries it covers, keeping the newest `keep` of them.
  Status CreateSnapshot(uint64_t index, const Config& config, std::string data, uint64_t keep = 0);
  const Snapshot& snapshot() const { return snapshot_; }

 private:
  HardState hard_state_;
  Snapshot snapshot_;
  uint64_t offset_ = 1;         // index of entries_[0]
  uint64_t prev_term_ = 0;      // term of entry offset_ - 1
  std::vector<Entry> entries_;  // entries [offset_, LastIndex()]
  bool data_ready_ = true;
  mutable int data_asks_ = 0;
};

enum class Role : uint8_t { kFollower, kPreCandidate, kCandidate, kLeader };
const char* RoleName(Role role);

struct RaftOptions {
  NodeId id;                       // this node; non-empty, at most kMaxNodeIdBytes
  RaftStorage* storage = nullptr;  // not owned; outlives the Raft
  // The state machine's applied index at start (durable state machines resume there; 0: from
  // the snapshot). Entries up to it are not handed out again.
  uint64_t applied = 0;

  int election_ticks = 10;   // followers campaign after [election_ticks, 2*election_ticks) ticks
  int heartbeat_ticks = 1;   // < election_ticks
  uint64_t seed = 1;         // randomizes election timeouts (deterministically)
  bool pre_vote = true;      // campaign only after a pre-vote a quorum would grant
  bool check_quorum = true;  // leaders step down without a quorum's contact; leases for votes

  size_t max_append_bytes = size_t{1} << 20;          // entry data per append message (>= 1 entry)
  size_t max_inflight_appends = 256;                  // appends in flight to one follower
  size_t max_uncommitted_bytes = size_t{64} << 20;    // proposals beyond: Unavailable
  size_t max_entry_bytes = size_t{16} << 20;          // one proposal; <= kMaxEntryBytes
  size_t max_committed_bytes = size_t{16} << 20;      // committed entry data per Ready (>= 1 entry)
  size_t max_snapshot_chunk_bytes = size_t{1} << 20;  // <= kMaxChunkBytes
  size_t max_inflight_snapshot_chunks = 4;
  uint64_t max_snapshot_bytes = uint64_t{1} << 30;  // a follower refuses larger snapshots
  size_t max_pending_reads = 4096;  // ReadIndex requests waiting; beyond: Unavailable

  // Where the core's log lines go: `line` already starts with this node's id. Null: the daemon
  // log (CN_LOG). Lines below min_log_level are not even formatted.
  std::function<void(LogLevel level, const std::string& line)> logger;
  LogLevel min_log_level = LogLevel::kInfo;

  // TEST ONLY: commit entries of earlier terms by counting replicas (Raft §5.4.2 forbids this;
  // the simulator proves its checker catches the resulting lost commits).
  bool unsafe_commit_previous_terms = false;

  Status Validate() const;
};

// A follower's replication state as the leader sees it.
struct PeerProgress {
  NodeId id;
  uint64_t match = 0;
  uint64_t next = 0;
  const char* state = "";  // "probe", "replicate" or "snapshot"
  bool learner = false;
  bool recent_active = false;
  size_t inflight = 0;
};

class Raft {
 public:
  // Restores from storage: hard state, log, configuration (snapshot's, then every configuration
  // entry in the log). A node that is the only voter becomes leader at once.
  static Result<std::unique_ptr<Raft>> New(RaftOptions options);
  ~Raft();
  Raft(const Raft&) = delete;
  Raft& operator=(const Raft&) = delete;

  // A message from the network (decoded). InvalidArgument for a message that is not for this
  // node or is inconsistent (it is dropped; nothing changes).
  Status Step(const Message& m);
  // One unit of logical time; the agent calls it at a fixed interval.
  void Tick();
  // Starts an election now (tests, tools). NotPermitted for a non-voter.
  Status Campaign();
  // Appends `data` as a normal entry (leader) or forwards it to the leader (follower). OK means
  // accepted, not committed: watch committed_entries. Unavailable: no leader known, or too much
  // uncommitted data. TooLarge: over max_entry_bytes.
  Status Propose(std::string data);
  // Propose for several entries at once: one round of append messages for all of them (batching).
  // Entries are taken in order until one is refused; returns how many were taken and, when fewer
  // than all, sets `refused` to why.
  size_t ProposeBatch(std::vector<std::string> data, Status* refused);
  // Leader only (NotPermitted otherwise). Busy while an earlier change is uncommitted or this
  // leader has not yet committed an entry of its term (the thesis' one-at-a-time rule and its
  // fix). InvalidArgument when the change makes no sense for the current configuration (adding a
  // voter twice, removing a non-member or the last voter, demoting a voter to learner).
  Status ProposeConfChange(const ConfChange& cc);
  // Asks for a read index; the answer comes as a ReadState with this context (unique among
  // pending reads, at most kMaxContextBytes). Requests are dropped when leadership changes
  // (callers time out and retry). Unavailable: no leader known, or too many pending.
  Status ReadIndex(std::string context);

  bool HasReady() const;
  Ready GetReady();
  void Advance();
  void PersistFailed();

  const NodeId& id() const;
  uint64_t term() const;
  Role role() const;
  const NodeId& leader() const;  // empty when unknown
  uint64_t commit_index() const;
  uint64_t applied_index() const;  // as of the last Advance
  uint64_t first_index() const;
  uint64_t last_index() const;
  HardState hard_state() const;
  const Config& config() const;   // the newest configuration in the log (in effect)
  Config applied_config() const;  // the configuration as of applied_index() (for snapshots)
  std::vector<PeerProgress> progress() const;  // leader only; sorted by id
  // Entries [lo, hi) of the whole log (stable and unstable), for tools and invariant checks.
  Status Entries(uint64_t lo, uint64_t hi, std::vector<Entry>* out) const;

  class Impl;

 private:
  explicit Raft(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace constellation::raft

#endif  // CONSTELLATION_NODE_RAFT_RAFT_H_
