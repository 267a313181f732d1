#include "node/state/replica.h"

#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "node/base/coding.h"
#include "node/base/log.h"
#include "node/base/thread_name.h"
#include "node/state/raft_storage.h"

namespace constellation {
namespace {

constexpr size_t kReadyRounds = 8;  // Readys handled per wake-up before new work is taken in
// How long the syncer lets kDeferred writes gather before it syncs them, unless a SyncBarrier
// waits: one fdatasync then covers a burst of metadata operations (fewer syncs, less CPU and disk
// time) and a power loss still loses at most the last couple of milliseconds of them.
constexpr int64_t kSyncGatherMs = 2;
// See CheckFreeSpace.
constexpr int64_t kFreeSpaceRecheckMs = 20;
constexpr uint64_t kFreeSpaceSlackBytes = uint64_t{1} << 30;

struct Waiter {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  Status verdict;
  std::string result;
  // ProposeAsync's: called instead of waking a thread, and when to give up (monotonic ms).
  Replica::ProposeDone callback;
  int64_t deadline_ms = 0;
};

// Answers a waiter; never with a replica lock held (a callback may propose again).
void Wake(const std::shared_ptr<Waiter>& w, const Status& verdict, std::string result = {}) {
  Replica::ProposeDone callback;
  {
    std::lock_guard<std::mutex> l(w->mu);
    if (w->done) return;
    w->done = true;
    if (w->callback) {
      callback = std::move(w->callback);
      w->callback = nullptr;
    } else {
      w->verdict = verdict;
      w->result = std::move(result);
      w->cv.notify_all();
    }
  }
  if (callback) callback(verdict, std::move(result));
}

size_t MessageBytes(const raft::Message& m) {
  size_t n = 128 + m.context.size() + m.chunk.size();
  for (const raft::Entry& e : m.entries) n += 32 + e.data.size();
  return n;
}

// A format-1 store (one voter; log entries without a type; the old hard-state encoding) is
// rewritten as format 2 in one synced batch: entries gain the normal type, the hard state takes
// raft's encoding, and a snapshot at the applied index covers the compacted prefix (a node that
// joins later may need it). Every format-1 entry has the same term (the single voter never
// changed terms).
Status UpgradeFormat1(KvStore* kv, const std::string& self) {
  std::string v;
  uint64_t term = 1, commit = 0;
  if (kv->Get(keys::kHardState, &v).ok()) {
    Reader r(v);
    std::string vote;
    uint64_t t = 0;
    if (!r.Fixed64(&t) || !r.Bytes(&vote, 4096) || !r.Fixed64(&commit)) {
      return Status::Corruption("format 1 upgrade: malformed hard state");
    }
    term = std::max<uint64_t>(t, 1);
  }
  uint64_t applied = 0, first = 1;
  if (kv->Get(keys::kApplied, &v).ok()) applied = FromBigEndian64(v);
  if (kv->Get(keys::kLogFirst, &v).ok()) first = FromBigEndian64(v);
  KvStore::Batch b;
  uint64_t last = first - 1;
  Status bad;
  CN_RETURN_IF_ERROR(kv->Scan(keys::kLogPrefix, "l0", [&](std::string_view k, std::string_view d) {
    uint64_t index = FromBigEndian64(k.substr(2));
    Reader r(d);
    uint64_t t = 0;
    if (index != last + 1 || !r.Fixed64(&t)) {
      bad = Status::Corruption("format 1 upgrade: gap or malformed entry at " +
                               std::to_string(index));
      return false;
    }
    b.Put(k, KvRaftStorage::EncodeEntry(
                 raft::Entry{index, t, raft::EntryType::kNormal, std::string(d.substr(8))}));
    last = index;
    return true;
  }));
  CN_RETURN_IF_ERROR(bad);
  if (applied + 1 < first || applied > last) {
    return Status::Corruption("format 1 upgrade: applied index " + std::to_string(applied) +
                              " outside the log " + std::to_string(first) + ".." +
                              std::to_string(last));
  }
  raft::Config config;
  config.voters = {self};
  if (applied > 0) {
    CN_RETURN_IF_ERROR(KvRaftStorage::StageStoreSnapshot(kv, applied, term, config, &b).status());
    if (first - 1 != applied) b.Put("r/prev_term", BigEndian64(term));
  } else {
    b.Put("r/snap", raft::EncodeSnapshotMeta(raft::SnapshotMeta{0, 0, config, 0}));
  }
  // Everything durable was committed: the single voter had it.
  b.Put(keys::kHardState, raft::EncodeHardState(raft::HardState{term, self, last}));
  b.Put(keys::kFormat, std::to_string(kStateFormatVersion));
  CN_RETURN_IF_ERROR(kv->Write(b, /*sync=*/true));
  CN_LOG(Info) << "upgraded the store from format 1 to " << kStateFormatVersion << " (log " << first
               << ".." << last << ", applied " << applied << ")";
  return Status::Ok();
}

}  // namespace

struct Replica::Impl {
  ReplicaOptions options;
  Env* env;
  std::unique_ptr<KvStore> kv;
  StateMachine state;
  EventHub events;
  std::unique_ptr<KvRaftStorage> storage;  // agent thread only (after Open)
  std::unique_ptr<raft::Raft> raft;        // agent thread only (after Open)

  mutable std::mutex mu;  // guards the fields below
  std::condition_variable work_cv;
  std::condition_variable applied_cv;
  struct Pending {
    Command command;
    bool deferred;
  };
  std::deque<Pending> pending;
  std::unordered_map<uint64_t, std::shared_ptr<Waiter>> waiters;
  size_t async_waiters = 0;  // of `waiters`, ProposeAsync's (deadline_ms set)
  std::deque<raft::Message> inbound;
  size_t inbound_bytes = 0;
  uint64_t inbound_dropped = 0;
  std::deque<uint64_t> new_reads;
  std::unordered_map<uint64_t, std::shared_ptr<Waiter>> read_waiters;
  uint64_t next_request_id = 1;
  uint64_t next_read_id = 1;
  bool stopping = false;
  // Deferred durability: the last log index written without a sync, the last known durable, and
  // the syncer thread that closes the gap.
  uint64_t written_index = 0;
  uint64_t synced_index = 0;
  uint64_t sync_failures = 0;
  int sync_barriers = 0;  // SyncBarrier calls waiting
  Status sync_error;
  bool syncer_stopping = false;
  bool syncer_idle = false;           // waiting for work, not gathering or syncing
  std::condition_variable sync_cv;    // to the syncer: work
  std::condition_variable synced_cv;  // from the syncer: progress
  bool compact_requested = false;
  // A snapshot's thread has finished writing its data (Build); compactions that failed, for
  // Compact's waiters, who also wait on compacted_cv for snapshot_index.
  bool build_done = false;
  uint64_t compact_failures = 0;
  Status compact_error;
  std::condition_variable compacted_cv;
  // Joining another cluster (PrepareJoin, ResetForJoin): the gate refuses new commands; the
  // requests are handled by the agent between rounds. sync_epoch counts resets, so a sync of the
  // old log never counts for the new one.
  bool join_gate = false;
  std::shared_ptr<Waiter> prepare_request;
  std::shared_ptr<Waiter> reset_request;
  std::map<std::string, std::string> reset_local;
  uint64_t sync_epoch = 0;
  // A mirror of raft's state for GetStatus.
  uint64_t term = 0;
  uint64_t commit_index = 0;
  uint64_t log_first = 1;
  uint64_t snapshot_index = 0;
  std::string leader;
  std::string role;
  raft::Config config;
  std::atomic<bool> sole_voter_leader{false};

  // Agent thread only.
  struct Held {
    uint64_t id;
    std::string data;
    bool deferred = false;
  };
  std::deque<Held> held;  // proposals waiting for a leader, in request-id order
  struct Inflight {
    std::string data;
    int64_t at_ms;
    std::string leader;
  };
  std::map<uint64_t, Inflight> inflight;  // proposed, not yet applied
  struct Read {
    bool issued = false;
    int64_t at_ms = 0;
    std::string leader;
    std::optional<uint64_t> index;
  };
  std::map<uint64_t, Read> reads;
  std::unordered_set<uint64_t> deferred_indexes;  // log indexes of this leader's kDeferred entries
  std::vector<raft::Entry> unapplied;             // committed but not yet applied
  int64_t apply_backoff_ms = 0;
  // CheckFreeSpace's last look (agent thread only).
  int64_t free_checked_ms = 0;
  uint64_t free_seen_bytes = 0;
  std::string last_leader;
  raft::HardState durable_hs;
  // A snapshot whose data a thread of its own is writing from a view of the store (kWrite), then
  // (kTrim) deleting the log entries its installation dropped (MaybeCompact); `result` is set
  // before build_done.
  struct Build {
    enum class Phase { kWrite, kTrim } phase = Phase::kWrite;
    std::thread thread;
    uint64_t index = 0;  // the applied index it covers
    uint64_t keep = 0;
    Result<raft::SnapshotMeta> result = Status::Internal("not written yet");
    Status trimmed;
    std::unique_ptr<KvStore::View> view;  // kWrite: what it copies, until copied
  };
  std::unique_ptr<Build> build;
  bool force_pending = false;  // a Compact() that came during a build: once it is installed
  bool data_wanted = false;    // a follower waits for the data of the bare snapshot
  // Snapshot data reads seen (KvRaftStorage::chunk_reads), and when they last moved (or when a
  // snapshot with data was installed).
  uint64_t seen_chunk_reads = 0;
  int64_t chunk_read_ms = 0;
  std::thread agent;
  std::thread syncer;

  Impl(const ReplicaOptions& o)
      : options(o),
        env(o.env ? o.env : DefaultEnv()),
        state(StateMachineOptions{o.audit_keep, o.on_instance_changes, o.on_fs_changes}),
        events(o.event_capacity) {}

  // Raft over `store`, which has applied up to `applied`.
  Result<std::unique_ptr<raft::Raft>> NewRaft(KvRaftStorage* store, uint64_t applied) {
    raft::RaftOptions ro;
    ro.id = options.node_name;
    ro.storage = store;
    ro.applied = applied;
    ro.election_ticks = options.election_ticks;
    ro.heartbeat_ticks = 1;
    ro.seed = env->random->Next();
    ro.max_entry_bytes = kMaxCommandValueBytes + 6 * kMaxCommandNameBytes + 64;
    return raft::Raft::New(ro);
  }

  // Replica::CheckAlone's rule, for configuration `c`.
  Status CheckAlone(const raft::Config& c) const {
    const std::string& self = options.node_name;
    std::set<std::string> others;
    for (const std::string& n : c.voters) others.insert(n);
    for (const std::string& n : c.learners) others.insert(n);
    for (const MemberRecord& m : state.ListMembers()) others.insert(m.name);
    for (const std::string& n : state.ListNodes()) others.insert(n);
    others.erase(self);
    if (!others.empty()) {
      std::string names;
      for (const std::string& n : others) names += (names.empty() ? "" : ", ") + n;
      return Status::Busy("this node is already in a cluster with other nodes (" + names +
                          "); join needs a fresh node");
    }
    if (c.voters.size() != 1 || c.voters[0] != self) {
      return Status::Busy(
          "this node has no cluster of its own (it is joining one); join needs a "
          "fresh node");
    }
    std::vector<std::string> instances = state.ListInstances();
    if (!instances.empty()) {
      return Status::Busy("this node's cluster has state (" + std::to_string(instances.size()) +
                          " instances, e.g. " + instances[0] + "); join needs a fresh node");
    }
    size_t inodes = 0;
    std::string root = std::string("f/i/") + BigEndian64(kFsRootIno);
    CN_RETURN_IF_ERROR(kv->Scan("f/i/", "f/i0", [&](std::string_view k, std::string_view) {
      inodes += k != root ? 1 : 0;
      return true;
    }));
    if (inodes > 0) {
      return Status::Busy("this node's cluster has state (" + std::to_string(inodes) +
                          " files or directories in cluster/); join needs a fresh node");
    }
    return Status::Ok();
  }

  // The agent's side of PrepareJoin and ResetForJoin, between rounds.
  void HandleJoinRequests() {
    std::shared_ptr<Waiter> prepare, reset;
    std::map<std::string, std::string> local;
    {
      std::lock_guard<std::mutex> l(mu);
      if (prepare_request && Quiet()) prepare = std::move(prepare_request);
      if (reset_request) {
        reset = std::move(reset_request);
        local = std::move(reset_local);
      }
    }
    if (prepare) Wake(prepare, CheckAlone(raft->config()));
    if (reset) Wake(reset, ResetNow(local));
  }

  // Nothing in hand: no command queued, held, in flight or waiting to be applied (mu held).
  bool Quiet() const {
    return pending.empty() && held.empty() && inflight.empty() && unapplied.empty() &&
           !raft->HasReady();
  }

  Status ResetNow(const std::map<std::string, std::string>& local) {
    CN_RETURN_IF_ERROR(CheckAlone(raft->config()));
    AbandonBuild();
    KvStore::Batch b;
    std::vector<std::string> doomed;
    CN_RETURN_IF_ERROR(kv->Scan("", "", [&](std::string_view k, std::string_view) {
      if (k != keys::kFormat && k.substr(0, 2) != keys::kLocalPrefix) doomed.emplace_back(k);
      return true;
    }));
    for (const std::string& k : doomed) b.Delete(k);
    // Written, not left to KvRaftStorage::Open: a store without it would bootstrap anew.
    KvRaftStorage::StageNew(raft::Config{}, &b);
    for (const auto& [k, v] : local) {
      if (k.substr(0, 2) != keys::kLocalPrefix) {
        return Status::InvalidArgument("ResetForJoin: " + k + " is not a local key");
      }
      b.Put(k, v);
    }
    std::string old_cluster = state.cluster_id();
    CN_RETURN_IF_ERROR(kv->Write(b, /*sync=*/true));
    // From here the store is the new one; the objects over it follow.
    Result<std::unique_ptr<KvRaftStorage>> st = KvRaftStorage::Open(kv.get(), raft::Config{});
    CN_CHECK(st.ok()) << "reopening the raft storage after the reset: " << st.status().ToString();
    Result<std::unique_ptr<raft::Raft>> r = NewRaft(st->get(), 0);
    CN_CHECK(r.ok()) << "a new raft after the reset: " << r.status().ToString();
    raft = std::move(r).value();
    storage = std::move(st).value();
    Status load = state.Load(kv.get());
    CN_CHECK(load.ok()) << "loading the state after the reset: " << load.ToString();
    // What waited belonged to the old cluster.
    Status gone =
        Status::Unavailable("this node left its cluster to join another; retry once it has joined");
    std::vector<uint64_t> ids;
    for (const Held& h : held) ids.push_back(h.id);
    for (const auto& [id, f] : inflight) ids.push_back(id);
    held.clear();
    inflight.clear();
    std::vector<std::shared_ptr<Waiter>> readers;
    {
      std::lock_guard<std::mutex> l(mu);
      for (const Pending& p : pending) ids.push_back(p.command.request_id);
      pending.clear();
      for (auto& [id, w] : read_waiters) readers.push_back(std::move(w));
      read_waiters.clear();
      new_reads.clear();
      inbound.clear();
      inbound_bytes = 0;
      written_index = synced_index = 0;
      ++sync_epoch;
      compact_requested = false;
      join_gate = false;
    }
    for (uint64_t id : ids) Finish(id, gone);
    for (const auto& w : readers) Wake(w, gone);
    reads.clear();
    unapplied.clear();
    deferred_indexes.clear();
    apply_backoff_ms = 0;
    durable_hs = storage->InitialHardState();
    last_leader.clear();
    synced_cv.notify_all();
    if (options.on_fs_changes) options.on_fs_changes({}, /*reset=*/true);
    UpdateStatus();
    applied_cv.notify_all();
    CN_LOG(Info) << "left cluster " << old_cluster
                 << " to join another: its log and state are discarded";
    return Status::Ok();
  }

  // Queues a proposal for the agent with its waiter (Propose, ProposeAsync).
  Status Enqueue(Command* command, Durability durability, const std::shared_ptr<Waiter>& waiter,
                 uint64_t* id);

  bool HasWaiter(uint64_t id) {
    std::lock_guard<std::mutex> l(mu);
    return waiters.count(id) > 0;
  }

  void Finish(uint64_t request_id, const Status& verdict, std::string result = {}) {
    inflight.erase(request_id);
    std::shared_ptr<Waiter> w;
    {
      std::lock_guard<std::mutex> l(mu);
      auto it = waiters.find(request_id);
      if (it == waiters.end()) return;
      w = std::move(it->second);
      waiters.erase(it);
      if (w->deadline_ms != 0) --async_waiters;
    }
    Wake(w, verdict, std::move(result));
  }

  // Applies `entries` in one batch. On a storage failure nothing is applied and the entries stay
  // queued for the next round.
  Status ApplyEntries(std::vector<raft::Entry>* entries) {
    if (entries->empty()) return Status::Ok();
    KvStore::Batch batch;
    std::vector<std::string> lines;
    struct Answer {
      uint64_t request_id;
      Status verdict;
      std::string result;
    };
    std::vector<Answer> answers;
    for (const raft::Entry& e : *entries) {
      if (e.type != raft::EntryType::kNormal || e.data.empty()) {
        // A new leader's no-op or a configuration change (raft has applied it to its
        // configuration already): only the applied index moves.
        if (e.type == raft::EntryType::kConfChange) {
          Result<raft::ConfChange> cc = raft::DecodeConfChange(e.data);
          if (cc.ok()) {
            CN_LOG(Info) << "configuration at " << e.index << ": " << cc->config.ToString();
          }
        }
        Command noop;
        noop.type = CommandType::kNoop;
        (void)state.Apply(e.index, noop, &batch, &lines, nullptr);
        continue;
      }
      Result<Command> c = DecodeCommand(e.data);
      CN_CHECK(c.ok()) << "log entry " << e.index << " cannot be applied: " << c.status().ToString()
                       << " (was it written by a newer daemon? upgrade this node)";
      std::string result;
      Status verdict = state.Apply(e.index, *c, &batch, &lines, &result);
      if (c->node == options.node_name && c->request_id != 0) {
        answers.push_back(Answer{c->request_id, verdict, std::move(result)});
      }
    }
    state.StageInto(&batch);
    Status s = kv->Write(batch, /*sync=*/false);
    if (!s.ok()) {
      state.DropStaged();
      return s;
    }
    state.CommitStaged();
    entries->clear();
    applied_cv.notify_all();
    events.Publish(lines, env->clock->NowUnixMs());
    for (Answer& a : answers) Finish(a.request_id, a.verdict, std::move(a.result));
    AnswerReads();
    return Status::Ok();
  }

  // The leader of a configuration of this node alone (no other voter, no learner): only then may
  // entries be answered before their sync (Durability::kDeferred).
  bool Solo() const {
    const raft::Config& c = raft->config();
    return raft->role() == raft::Role::kLeader && c.voters.size() == 1 &&
           c.voters[0] == options.node_name && c.learners.empty();
  }

  // Syncs what was written without a sync, at once and on this thread. False when that failed.
  bool SyncDeferredNow() {
    uint64_t target;
    {
      std::lock_guard<std::mutex> l(mu);
      if (written_index <= synced_index) return true;
      target = written_index;
    }
    Status s = kv->Sync();
    if (!s.ok()) {
      CN_LOG(Error) << "syncing the log before messages to other members failed: " << s.ToString();
      return false;
    }
    {
      std::lock_guard<std::mutex> l(mu);
      synced_index = std::max(synced_index, target);
    }
    synced_cv.notify_all();
    return true;
  }

  // Refuses new commands while free space is below the reserve. Checked once per batch, but while
  // the last look saw plenty of room (kFreeSpaceSlackBytes beyond the reserve) at most every
  // kFreeSpaceRecheckMs: a statvfs per command was a tenth of this thread's time under a metadata
  // load, and no writer fills that slack in that time.
  Status CheckFreeSpace() {
    if (!env->free_bytes || options.reserve_bytes == 0) return Status::Ok();
    int64_t now_ms = env->clock->MonotonicMs();
    // free_seen_bytes is 0 before the first look and after a failed one: those always look.
    if (now_ms - free_checked_ms < kFreeSpaceRecheckMs &&
        free_seen_bytes >= options.reserve_bytes + kFreeSpaceSlackBytes) {
      return Status::Ok();
    }
    Result<uint64_t> free = env->free_bytes(options.data_dir);
    free_checked_ms = now_ms;
    free_seen_bytes = free.ok() ? *free : 0;
    if (!free.ok() || *free >= options.reserve_bytes) return Status::Ok();
    return Status::NoSpace("the data dir's file system has " + std::to_string(*free >> 20) +
                           " MiB free, below the " + std::to_string(options.reserve_bytes >> 20) +
                           " MiB kept for applying committed entries; free some space");
  }

  // A committed entry could not be applied (the store refused the batch): wait before retrying,
  // doubling up to a second, and log once per retry rather than in a hot loop.
  void ApplyFailed(const Status& s) {
    apply_backoff_ms = apply_backoff_ms == 0 ? 10 : std::min<int64_t>(apply_backoff_ms * 2, 1000);
    CN_LOG(Error) << "applying committed entries failed, retrying in " << apply_backoff_ms
                  << " ms: " << s.ToString();
    std::unique_lock<std::mutex> l(mu);
    work_cv.wait_for(l, std::chrono::milliseconds(apply_backoff_ms), [&] { return stopping; });
  }

  void ApplyUnapplied() {
    if (unapplied.empty()) return;
    Status s = ApplyEntries(&unapplied);
    if (s.ok()) {
      apply_backoff_ms = 0;
    } else {
      ApplyFailed(s);
    }
  }

  // Proposes the held proposals, in order, until raft refuses one. A proposal whose proposer gave
  // up waiting is dropped (it was never proposed, so it never applies).
  void ProposeHeld(int64_t now) {
    while (!held.empty()) {
      std::vector<std::string> data;
      std::vector<uint64_t> ids;
      for (Held& h : held) {
        if (!HasWaiter(h.id)) continue;
        ids.push_back(h.id);
        data.push_back(h.data);
      }
      if (ids.empty()) {
        held.clear();
        return;
      }
      Status refused;
      uint64_t last_before = raft->last_index();
      size_t n = raft->ProposeBatch(data, &refused);
      std::string lead = raft->leader();
      // A sole voter appends what it accepts at last_before + 1, ...: remember which may skip the
      // sync (HandleReady decides per Ready).
      bool local = Solo() && raft->last_index() == last_before + n;
      std::deque<Held> rest;
      size_t k = 0;
      for (Held& h : held) {
        if (k < ids.size() && ids[k] == h.id) {
          if (k < n) {
            if (local && h.deferred) deferred_indexes.insert(last_before + 1 + k);
            inflight[h.id] = Inflight{std::move(h.data), now, lead};
          } else {
            rest.push_back(std::move(h));
          }
          ++k;
        }
      }
      held = std::move(rest);
      if (n == ids.size() || refused.code() == Code::kUnavailable) return;
      // Refused for good (too large): answer it and go on with the rest.
      uint64_t id = held.front().id;
      held.pop_front();
      Finish(id, refused);
    }
  }

  void IssueRead(uint64_t id, Read& r, int64_t now) {
    Status s = raft->ReadIndex(BigEndian64(id));
    r.issued = s.ok();
    r.at_ms = now;
    r.leader = raft->leader();
  }

  void AnswerReads() {
    uint64_t applied = state.applied_index();
    for (auto it = reads.begin(); it != reads.end();) {
      if (it->second.index && *it->second.index <= applied) {
        std::shared_ptr<Waiter> w;
        {
          std::lock_guard<std::mutex> l(mu);
          auto wi = read_waiters.find(it->first);
          if (wi != read_waiters.end()) {
            w = std::move(wi->second);
            read_waiters.erase(wi);
          }
        }
        if (w) Wake(w, Status::Ok());
        it = reads.erase(it);
      } else {
        ++it;
      }
    }
  }

  // ProposeAsync's waiters past their deadline get what a blocking Propose's timeout returns.
  void ExpireAsyncWaiters(int64_t now) {
    std::vector<std::shared_ptr<Waiter>> expired;
    std::string lead;
    {
      std::lock_guard<std::mutex> l(mu);
      if (async_waiters == 0) return;
      for (auto it = waiters.begin(); it != waiters.end();) {
        if (it->second->deadline_ms != 0 && it->second->deadline_ms <= now) {
          expired.push_back(std::move(it->second));
          it = waiters.erase(it);
          --async_waiters;
        } else {
          ++it;
        }
      }
      lead = leader;
    }
    for (const auto& w : expired) Wake(w, TimedOut(lead));
  }

  Status TimedOut(const std::string& lead) const {
    return Status::Unavailable(
        "the command was not applied within " + std::to_string(options.propose_timeout_ms) +
        " ms (" +
        (lead.empty() ? std::string("no leader known: no quorum reachable?") : "leader " + lead) +
        "); it may still be applied later");
  }

  // Once per tick: proposals and reads that may have been lost with a leader are sent again, and
  // the leader plans the next membership change.
  void OnTick(int64_t now) {
    ExpireAsyncWaiters(now);
    const std::string& lead = raft->leader();
    if (!lead.empty()) {
      std::vector<Held> again;
      for (auto it = inflight.begin(); it != inflight.end();) {
        Inflight& f = it->second;
        bool lost = f.leader != lead;
        bool slow = lead != options.node_name && now - f.at_ms >= options.reforward_ms;
        if (!HasWaiter(it->first)) {
          it = inflight.erase(it);
        } else if (lost || slow) {
          again.push_back(Held{it->first, std::move(f.data)});
          it = inflight.erase(it);
        } else {
          ++it;
        }
      }
      if (!again.empty()) {
        CN_LOG(Debug) << "proposing " << again.size() << " commands again (leader " << lead << ")";
        for (auto it = again.rbegin(); it != again.rend(); ++it) held.push_front(std::move(*it));
      }
    }
    for (auto it = reads.begin(); it != reads.end();) {
      bool gone;
      {
        std::lock_guard<std::mutex> l(mu);
        gone = read_waiters.count(it->first) == 0;
      }
      if (gone) {
        it = reads.erase(it);
        continue;
      }
      Read& r = it->second;
      if (!r.index && (!r.issued || r.leader != lead || now - r.at_ms >= options.reforward_ms)) {
        IssueRead(it->first, r, now);
      }
      ++it;
    }
    if (raft->role() == raft::Role::kLeader && options.plan_membership) {
      ReplicaOptions::ClusterView view;
      view.config = raft->config();
      view.progress = raft->progress();
      view.last_index = raft->last_index();
      view.commit_index = raft->commit_index();
      std::optional<raft::ConfChange> cc = options.plan_membership(view);
      if (cc) {
        Status s = raft->ProposeConfChange(*cc);
        if (s.ok()) {
          CN_LOG(Info) << "proposed a membership change: "
                       << (cc->type == raft::ConfChangeType::kAddVoter     ? "add voter "
                           : cc->type == raft::ConfChangeType::kAddLearner ? "add learner "
                                                                           : "remove ")
                       << cc->node;
        } else {
          CN_LOG(Debug) << "membership change for " << cc->node
                        << " not proposed: " << s.ToString();
        }
      }
    }
  }

  void HandleReady() {
    raft::Ready rd = raft->GetReady();
    // Committed entries were durable before this Ready, so they need not wait for its log write;
    // when they are applied is chosen by what waits for what. A leader applies (and answers) them
    // once this Ready's appends are on their way, so the followers' syncs overlap the apply. A
    // follower's acknowledgements, which the leader's commit waits for, go first unless something
    // of its own waits for the apply (a write proposed here, a read); a snapshot's Ready applies
    // what came before it first.
    for (raft::Entry& e : rd.committed_entries) unapplied.push_back(std::move(e));
    enum class ApplyAt { kFirst, kAfterAppends, kAfterWrite };
    ApplyAt apply_at = ApplyAt::kFirst;
    if (!rd.snapshot && raft->role() == raft::Role::kLeader) {
      apply_at = ApplyAt::kAfterAppends;
    } else if (!rd.snapshot && inflight.empty() && reads.empty()) {
      apply_at = ApplyAt::kAfterWrite;
    }
    if (apply_at == ApplyAt::kFirst) ApplyUnapplied();
    // A hard state that only moves the commit index is not written on its own: raft learns the
    // commit index again after a restart (from the leader, or by committing its own entries), and
    // it goes along with the next entries anyway.
    bool vote_changed = rd.hard_state && (rd.hard_state->term != durable_hs.term ||
                                          rd.hard_state->vote != durable_hs.vote);
    // A Ready of nothing but this sole voter's kDeferred entries is written without a sync (the
    // syncer follows at once); anything else — a vote, a snapshot, a synced command, a leader's
    // no-op — is synced, and with it everything written before.
    bool defer = !rd.entries.empty() && !rd.snapshot && !vote_changed && Solo();
    // Entries answered before their sync were committed by this node alone. Once the cluster has
    // another member, nothing may leave before they are durable: a member that applied them must
    // never see them vanish with a power loss here.
    if (options.send && !Solo() && !SyncDeferredNow()) rd.messages.clear();
    for (const raft::Entry& e : rd.entries) {
      defer = defer && deferred_indexes.count(e.index) > 0;
      deferred_indexes.erase(e.index);
    }
    if (raft->role() != raft::Role::kLeader) deferred_indexes.clear();
    // A leader's appends and heartbeats promise nothing about its own disk (it counts itself
    // towards a commit only once its entries are durable: Advance), so they go out before its
    // log write, and the followers' syncs overlap the leader's (Raft thesis §10.2.1). Every
    // other message (votes, acknowledgements) waits for the write.
    bool sent_entries_early = false;
    if (options.send && raft->role() == raft::Role::kLeader) {
      std::vector<raft::Message> later;
      for (raft::Message& m : rd.messages) {
        if (m.type == raft::MessageType::kAppend || m.type == raft::MessageType::kHeartbeat) {
          sent_entries_early |= !m.entries.empty();
          options.send(m);
        } else {
          later.push_back(std::move(m));
        }
      }
      rd.messages = std::move(later);
    }
    if (apply_at == ApplyAt::kAfterAppends) ApplyUnapplied();
    if (rd.snapshot || !rd.entries.empty() || vote_changed) {
      KvStore::Batch batch;
      Status s;
      if (rd.snapshot) {
        AbandonBuild();  // of the state this one replaces
        s = storage->StageSnapshot(*rd.snapshot, &batch);
      }
      storage->StageEntries(rd.entries, &batch);
      if (rd.hard_state) storage->StageHardState(*rd.hard_state, &batch);
      if (s.ok()) s = kv->Write(batch, /*sync=*/!defer);
      if (!s.ok()) {
        CN_LOG(Error) << "log write failed: " << s.ToString();
        if (apply_at == ApplyAt::kAfterWrite) ApplyUnapplied();  // raft counts them applied
        storage->DropStaged();
        raft->PersistFailed();  // nothing more of this Ready is sent
        // The writers of the lost entries get the error — unless the entries already went to
        // followers, which may still commit them: then they wait for the outcome (or time out).
        for (const raft::Entry& e : rd.entries) {
          if (sent_entries_early) break;
          if (e.type != raft::EntryType::kNormal || e.data.empty()) continue;
          Result<Command> c = DecodeCommand(e.data);
          if (c.ok() && c->node == options.node_name) Finish(c->request_id, s);
        }
        UpdateStatus();
        return;
      }
      storage->Persisted();
      if (rd.hard_state) durable_hs = *rd.hard_state;
      if (!rd.entries.empty()) {
        bool wake_syncer = false;
        {
          std::lock_guard<std::mutex> l(mu);
          written_index = std::max(written_index, rd.entries.back().index);
          if (defer) {
            // Only an idle syncer needs the news; one gathering wakes on its own (a wake-up per
            // operation would cost more than the sync it saves on this machine).
            wake_syncer = syncer_idle;
          } else {
            synced_index = std::max(synced_index, written_index);
          }
        }
        if (wake_syncer) {
          sync_cv.notify_one();
        } else {
          synced_cv.notify_all();
        }
      }
      if (rd.snapshot) {
        // The store now holds the snapshot's state: reload the state machine's view of it.
        unapplied.clear();
        Status load = state.Load(kv.get());
        CN_CHECK(load.ok()) << "loading the state of snapshot " << rd.snapshot->meta.index << ": "
                            << load.ToString();
        if (options.on_fs_changes) options.on_fs_changes({}, /*reset=*/true);
        CN_LOG(Info) << "installed snapshot " << rd.snapshot->meta.index << " ("
                     << rd.snapshot->meta.size << " bytes)";
        applied_cv.notify_all();
        events.Publish({std::to_string(env->clock->NowUnixMs()) + " snapshot_installed " +
                        options.node_name + " index=" + std::to_string(rd.snapshot->meta.index)},
                       env->clock->NowUnixMs());
      }
    }
    if (options.send) {
      for (const raft::Message& m : rd.messages) options.send(m);
    }
    if (apply_at == ApplyAt::kAfterWrite) ApplyUnapplied();
    for (const raft::ReadState& rs : rd.read_states) {
      if (rs.context.size() != 8) continue;
      auto it = reads.find(FromBigEndian64(rs.context));
      if (it != reads.end() && !it->second.index) it->second.index = rs.index;
    }
    if (!rd.read_states.empty()) AnswerReads();
    raft->Advance();
    UpdateStatus();
  }

  void UpdateStatus() {
    std::string lead = raft->leader();
    const raft::Config& c = raft->config();
    bool sole = c.voters.size() == 1 && c.voters[0] == options.node_name &&
                raft->role() == raft::Role::kLeader;
    sole_voter_leader.store(sole);
    {
      std::lock_guard<std::mutex> l(mu);
      term = raft->term();
      commit_index = raft->commit_index();
      leader = lead;
      role = raft::RoleName(raft->role());
      config = c;
      log_first = storage->FirstIndex();
      snapshot_index = storage->snapshot_meta().index;
    }
    if (lead != last_leader) {
      last_leader = lead;
      if (!lead.empty()) {
        CN_LOG(Info) << "leader is " << lead << " (term " << raft->term() << ")";
        int64_t now = env->clock->NowUnixMs();
        events.Publish({std::to_string(now) + " leader_changed " + lead +
                        " term=" + std::to_string(raft->term())},
                       now);
      }
    }
  }

  // Compacts the log when 2 x log_keep entries have been applied since the last snapshot (keeping
  // log_keep of them for followers slightly behind), or at once (keeping none) when asked to,
  // behind a bare snapshot: the store's state is the snapshot's, nothing is copied, and the
  // entries are deleted by a thread of their own. Only when a follower needs the data of a bare
  // snapshot (TakeDataWanted) is a snapshot with data made, of the applied index then: the copy
  // is written by a thread of its own from a view of the store (the agent goes on committing: a
  // copy of a large state took it hundreds of ms), and this thread installs it the next time it
  // comes here.
  void MaybeCompact() {
    if (build) {
      bool done;
      {
        std::lock_guard<std::mutex> l(mu);
        done = build_done;
        // A Compact() now wants a snapshot of what is applied now, after this one.
        force_pending = force_pending || compact_requested;
        compact_requested = false;
      }
      if (!done) return;
      FinishBuild();
      if (build) return;  // its log entries are being deleted
    }
    bool force;
    {
      std::lock_guard<std::mutex> l(mu);
      force = compact_requested || force_pending;
      compact_requested = false;
    }
    force_pending = false;
    data_wanted = storage->TakeDataWanted() || data_wanted;
    if (!unapplied.empty()) {
      if (force) {
        std::lock_guard<std::mutex> l(mu);
        compact_requested = true;  // after the retry
      }
      return;
    }
    if (storage->chunk_reads() != seen_chunk_reads) {
      seen_chunk_reads = storage->chunk_reads();
      chunk_read_ms = env->clock->MonotonicMs();
    }
    uint64_t applied = state.applied_index();
    const raft::SnapshotMeta& snap = storage->snapshot_meta();
    bool materialize = data_wanted && snap.index > 0 && snap.size == 0;
    data_wanted = false;
    uint64_t keep = force ? 0 : options.log_keep;
    if (!materialize) {
      if (applied <= snap.index || (!force && applied < snap.index + 2 * options.log_keep)) {
        if (force) compacted_cv.notify_all();  // nothing new to cover
        return;
      }
      // A snapshot being sent stays until the send has been quiet for a while (see
      // snapshot_send_quiet_ms).
      if (!force && snap.size > 0 && chunk_read_ms != 0 &&
          env->clock->MonotonicMs() - chunk_read_ms < options.snapshot_send_quiet_ms) {
        return;
      }
    }
    Result<uint64_t> term = storage->Term(applied);
    if (!term.ok()) {
      Compacted(term.status(), applied);
      return;
    }
    if (!materialize) {
      raft::SnapshotMeta bare{applied, *term, raft->applied_config(), 0};
      KvRaftStorage::LogRange dropped;
      Status s =
          storage->InstallSnapshot(bare, keep, options.snapshot_in_background ? &dropped : nullptr);
      Compacted(s, applied);
      if (s.ok() && dropped.from != dropped.to) Trim(std::make_unique<Build>(), dropped);
      return;
    }
    if (!options.snapshot_in_background) {
      Compacted(storage->CreateSnapshot(applied, *term, raft->applied_config(), keep), applied);
      return;
    }
    Result<std::unique_ptr<KvStore::View>> view = kv->NewView();
    if (!view.ok()) {
      Compacted(view.status(), applied);
      return;
    }
    build = std::make_unique<Build>();
    build->index = applied;
    build->keep = keep;
    build->view = std::move(view).value();
    StartBuildThread([this, applied, t = *term, c = raft->applied_config()](Build* b) {
      b->result = KvRaftStorage::WriteSnapshotData(kv.get(), b->view.get(), applied, t, c);
      b->view.reset();  // the store's view goes before the store can
    });
  }

  // Runs `work` for the build in flight on a thread of its own, at the process's priority (this
  // thread's may be raised), and wakes this thread (build_done) once it is done.
  void StartBuildThread(std::function<void(Build*)> work) {
    {
      std::lock_guard<std::mutex> l(mu);
      build_done = false;
    }
    build->thread = std::thread([this, b = build.get(), work = std::move(work)] {
      SetThreadName("cn-snapshot");
      TakeProcessNice();
      work(b);
      {
        std::lock_guard<std::mutex> l(mu);
        build_done = true;
      }
      work_cv.notify_one();
    });
  }

  // The build's thread has finished: installs the snapshot it wrote and has the log entries that
  // dropped deleted by another (kWrite), or ends the build (kTrim).
  void FinishBuild() {
    build->thread.join();
    {
      std::lock_guard<std::mutex> l(mu);
      build_done = false;
    }
    if (build->phase == Build::Phase::kTrim) {
      if (!build->trimmed.ok()) {
        CN_LOG(Warning) << "deleting compacted log entries failed (the next start deletes them): "
                        << build->trimmed.ToString();
      }
      build.reset();
      return;
    }
    if (!build->result.ok()) {
      Compacted(build->result.status(), build->index);
      build.reset();
      return;
    }
    KvRaftStorage::LogRange dropped;
    Status s = storage->InstallSnapshot(*build->result, build->keep, &dropped);
    // Made for a follower: it stays until its send has been quiet for a while, as if read now.
    if (s.ok()) chunk_read_ms = env->clock->MonotonicMs();
    Compacted(s, build->result->index);
    if (!s.ok() || dropped.from == dropped.to) {
      build.reset();
      return;
    }
    Trim(std::move(build), dropped);
  }

  // Has `dropped`'s log entries deleted by a thread of its own, as `b` (the build in flight).
  void Trim(std::unique_ptr<Build> b, KvRaftStorage::LogRange dropped) {
    // As many keys as entries since the last snapshot: on this thread, tens of ms per 100,000.
    build = std::move(b);
    build->phase = Build::Phase::kTrim;
    StartBuildThread([this, dropped](Build* b) {
      b->trimmed = KvRaftStorage::DeleteLogEntries(kv.get(), dropped.from, dropped.to);
    });
  }

  // Waits for the build in flight, if any, and deletes the data it wrote: the store is about to be
  // replaced (a snapshot from the leader, a reset to join another cluster) or closed.
  void AbandonBuild() {
    if (!build) return;
    build->thread.join();
    std::unique_ptr<Build> b = std::move(build);
    {
      std::lock_guard<std::mutex> l(mu);
      build_done = false;
    }
    // Not installed: its data goes (else Open deletes it). Installed (kTrim): the entries left
    // are deleted at the next start.
    if (b->phase == Build::Phase::kWrite && b->result.ok()) {
      storage->DiscardSnapshotData(*b->result).ok();
    }
  }

  void Compacted(const Status& s, uint64_t index) {
    if (!s.ok()) {
      CN_LOG(Warning) << "snapshot at " << index << " failed: " << s.ToString();
      {
        std::lock_guard<std::mutex> l(mu);
        ++compact_failures;
        compact_error = s;
      }
      compacted_cv.notify_all();
      return;
    }
    if (storage->snapshot_meta().size == 0) {
      CN_LOG(Info) << "log compacted up to " << index << " (a bare snapshot); it now starts at "
                   << storage->FirstIndex();
    } else {
      CN_LOG(Info) << "snapshot at " << index << " (" << storage->snapshot_meta().size
                   << " bytes, for a follower); the log now starts at " << storage->FirstIndex();
    }
    {
      std::lock_guard<std::mutex> l(mu);
      log_first = storage->FirstIndex();
      snapshot_index = storage->snapshot_meta().index;
    }
    compacted_cv.notify_all();
  }

  // `last_tick`: the clock when the replica was opened, so ticks are counted from then and not
  // from whenever this thread first runs.
  void Run(int64_t last_tick) {
    for (;;) {
      std::deque<Pending> batch;
      std::deque<raft::Message> msgs;
      std::deque<uint64_t> reads_new;
      bool stop;
      {
        std::unique_lock<std::mutex> l(mu);
        work_cv.wait_for(l, std::chrono::milliseconds(options.tick_ms), [&] {
          return stopping || !pending.empty() || !inbound.empty() || !new_reads.empty() ||
                 raft->HasReady() || !unapplied.empty() || compact_requested || build_done ||
                 reset_request || (prepare_request && Quiet());
        });
        while (!pending.empty() && batch.size() < options.max_batch) {
          batch.push_back(std::move(pending.front()));
          pending.pop_front();
        }
        msgs.swap(inbound);
        inbound_bytes = 0;
        reads_new.swap(new_reads);
        stop = stopping && pending.empty();
      }
      for (const raft::Message& m : msgs) {
        Status s = raft->Step(m);
        if (!s.ok()) CN_LOG(Debug) << s.ToString();
      }
      int64_t now = env->clock->MonotonicMs();
      if (now - last_tick >= options.tick_ms) {
        raft->Tick();
        last_tick = now;
        OnTick(now);
      }
      if (!batch.empty()) {
        Status room = CheckFreeSpace();
        for (Pending& p : batch) {
          if (room.ok()) {
            held.push_back(Held{p.command.request_id, EncodeCommand(p.command), p.deferred});
          } else {
            Finish(p.command.request_id, room);
          }
        }
      }
      ProposeHeld(now);
      for (uint64_t id : reads_new) IssueRead(id, reads[id], now);
      ApplyUnapplied();
      for (size_t i = 0; i < kReadyRounds && raft->HasReady(); ++i) HandleReady();
      if (!stop) MaybeCompact();  // stopping: a build in flight is abandoned below
      HandleJoinRequests();
      if (stop && !raft->HasReady() && unapplied.empty()) {
        AbandonBuild();
        return;
      }
    }
  }

  // Makes kDeferred entries durable: syncs the store whenever something was written without a
  // sync, back to back under load, so a deferred command is durable about one sync after its
  // answer. Exits once the agent has stopped and nothing is left to sync.
  void SyncLoop() {
    int64_t backoff_ms = 0;
    for (;;) {
      uint64_t target, epoch;
      {
        std::unique_lock<std::mutex> l(mu);
        syncer_idle = true;
        sync_cv.wait(l, [&] { return syncer_stopping || written_index > synced_index; });
        syncer_idle = false;
        if (written_index <= synced_index) return;  // stopping, nothing left
        sync_cv.wait_for(l, std::chrono::milliseconds(kSyncGatherMs),
                         [&] { return syncer_stopping || sync_barriers > 0; });
        target = written_index;
        epoch = sync_epoch;
      }
      Status s = kv->Sync();
      {
        std::lock_guard<std::mutex> l(mu);
        if (s.ok()) {
          if (epoch == sync_epoch) synced_index = std::max(synced_index, target);
        } else {
          ++sync_failures;
          sync_error = s;
        }
      }
      synced_cv.notify_all();
      if (s.ok()) {
        backoff_ms = 0;
        continue;
      }
      backoff_ms = backoff_ms == 0 ? 10 : std::min<int64_t>(backoff_ms * 2, 1000);
      CN_LOG(Error) << "syncing the log failed, retrying in " << backoff_ms
                    << " ms: " << s.ToString();
      std::unique_lock<std::mutex> l(mu);
      if (syncer_stopping) return;
      sync_cv.wait_for(l, std::chrono::milliseconds(backoff_ms), [&] { return syncer_stopping; });
    }
  }

  // Waits until the state machine has applied `index`.
  bool WaitApplied(uint64_t index, int64_t timeout_ms) {
    std::unique_lock<std::mutex> l(mu);
    return applied_cv.wait_for(l, std::chrono::milliseconds(timeout_ms),
                               [&] { return state.applied_index() >= index; });
  }
};

Result<std::unique_ptr<Replica>> Replica::Open(const ReplicaOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  Impl& m = *impl;
  CN_ASSIGN_OR_RETURN(m.kv, m.env->open_kv(options.data_dir + "/state"));
  std::string format;
  if (m.kv->Get(keys::kFormat, &format).ok() && format == "1") {
    CN_RETURN_IF_ERROR(UpgradeFormat1(m.kv.get(), options.node_name));
  }
  CN_RETURN_IF_ERROR(m.state.Load(m.kv.get()));
  raft::Config initial;
  if (!options.join) initial.voters = {options.node_name};
  CN_ASSIGN_OR_RETURN(m.storage, KvRaftStorage::Open(m.kv.get(), initial));
  uint64_t applied = m.state.applied_index();
  if (applied < m.storage->snapshot_meta().index || applied > m.storage->LastIndex()) {
    return Status::Corruption("the state machine's applied index " + std::to_string(applied) +
                              " is outside the log " + std::to_string(m.storage->FirstIndex()) +
                              ".." + std::to_string(m.storage->LastIndex()));
  }
  CN_ASSIGN_OR_RETURN(m.raft, m.NewRaft(m.storage.get(), applied));
  // Request ids grow across restarts, so a retried proposal is told from a new one
  // (StateMachine::LastRequest) and an old entry applied late never answers a new proposer. Each
  // start takes ids from above the floor the last start recorded (a start never uses 2^40 ids),
  // above any applied one, and from the clock (for a data dir made anew under an old name).
  {
    constexpr char kFloorKey[] = "j/request_floor";
    constexpr uint64_t kIdsPerStart = uint64_t{1} << 40;
    std::string v;
    uint64_t floor = m.kv->Get(kFloorKey, &v).ok() ? FromBigEndian64(v) : 0;
    m.next_request_id = std::max<uint64_t>({static_cast<uint64_t>(m.env->clock->NowUnixMs()) << 20,
                                            floor, m.state.LastRequest(options.node_name) + 1});
    KvStore::Batch b;
    b.Put(kFloorKey, BigEndian64(m.next_request_id + kIdsPerStart));
    CN_RETURN_IF_ERROR(m.kv->Write(b, /*sync=*/true));
  }
  m.durable_hs = m.storage->InitialHardState();
  // What Open waits to have applied: every durable entry when this node is its only voter (it
  // commits them itself at once), else the entries it knows to be committed.
  const raft::Config& c = m.raft->config();
  bool sole = c.voters.size() == 1 && c.voters[0] == options.node_name;
  uint64_t wait_for = sole ? m.storage->LastIndex() : m.raft->commit_index();
  m.UpdateStatus();
  std::unique_ptr<Replica> replica(new Replica(std::move(impl)));
  Impl* p = replica->impl_.get();
  int64_t opened_ms = p->env->clock->MonotonicMs();
  p->agent = std::thread([p, opened_ms] {
    SetThreadName("cn-raft");
    int nice = p->options.agent_nice;
    if (nice != 0 && setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), nice) != 0) {
      CN_LOG(Warning) << "could not give the agent thread nice " << nice << " ("
                      << std::strerror(errno) << "); it runs at the inherited priority";
    }
    p->Run(opened_ms);
  });
  p->syncer = std::thread([p] {
    SetThreadName("cn-sync");
    p->SyncLoop();
  });
  if (!p->WaitApplied(wait_for, options.propose_timeout_ms)) {
    return Status::Unavailable("could not apply the log up to " + std::to_string(wait_for) +
                               " within " + std::to_string(options.propose_timeout_ms) + " ms");
  }
  if (wait_for > applied) {
    CN_LOG(Info) << "applied log entries " << applied + 1 << ".." << wait_for;
  }
  // A store without a configuration (opened with `join`, now or before) waits for a leader.
  if (!options.join && sole && p->state.cluster_id().empty()) {
    char id[17];
    snprintf(id, sizeof id, "%016llx", static_cast<unsigned long long>(p->env->random->Next()));
    Command cmd;
    cmd.type = CommandType::kBootstrap;
    cmd.value = id;
    CN_RETURN_IF_ERROR(replica->Propose(std::move(cmd)));
  }
  return replica;
}

Replica::Replica(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Replica::~Replica() {
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    impl_->stopping = true;
  }
  impl_->work_cv.notify_all();
  impl_->compacted_cv.notify_all();
  if (impl_->agent.joinable()) impl_->agent.join();
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    impl_->syncer_stopping = true;
  }
  impl_->sync_cv.notify_all();
  if (impl_->syncer.joinable()) impl_->syncer.join();
  // Answered without the lock: an asynchronous proposer's callback may propose again (refused
  // now: stopping).
  std::vector<std::shared_ptr<Waiter>> left;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    for (auto* map : {&impl_->waiters, &impl_->read_waiters}) {
      for (auto& [id, w] : *map) left.push_back(std::move(w));
      map->clear();
    }
    impl_->async_waiters = 0;
    for (auto* w : {&impl_->prepare_request, &impl_->reset_request}) {
      if (*w) left.push_back(std::move(*w));
    }
  }
  for (const auto& w : left) Wake(w, Status::Unavailable("daemon is shutting down"));
}

Status Replica::Impl::Enqueue(Command* command, Durability durability,
                              const std::shared_ptr<Waiter>& waiter, uint64_t* id) {
  command->time_ms = env->clock->NowUnixMs();
  command->node = options.node_name;
  {
    std::lock_guard<std::mutex> l(mu);
    if (stopping) return Status::Unavailable("daemon is shutting down");
    if (join_gate) {
      return Status::Unavailable(
          "this node is joining another cluster; retry once the join has finished");
    }
    if (pending.size() >= options.max_pending) {
      return Status::Unavailable("commit queue is full (" + std::to_string(options.max_pending) +
                                 " proposals waiting); retry");
    }
    *id = command->request_id = next_request_id++;
    waiters[*id] = waiter;
    if (waiter->deadline_ms != 0) ++async_waiters;
    pending.push_back(Pending{std::move(*command), durability == Durability::kDeferred});
  }
  work_cv.notify_one();
  return Status::Ok();
}

Status Replica::Propose(Command command, std::string* result, Durability durability) {
  Impl& m = *impl_;
  auto waiter = std::make_shared<Waiter>();
  uint64_t id = 0;
  CN_RETURN_IF_ERROR(m.Enqueue(&command, durability, waiter, &id));
  std::unique_lock<std::mutex> l(waiter->mu);
  if (!waiter->cv.wait_for(l, std::chrono::milliseconds(m.options.propose_timeout_ms),
                           [&] { return waiter->done; })) {
    l.unlock();
    std::string lead;
    {
      std::lock_guard<std::mutex> ml(m.mu);
      m.waiters.erase(id);
      lead = m.leader;
    }
    return m.TimedOut(lead);
  }
  if (result != nullptr) *result = std::move(waiter->result);
  return waiter->verdict;
}

void Replica::ProposeAsync(Command command, Durability durability, ProposeDone done) {
  Impl& m = *impl_;
  auto waiter = std::make_shared<Waiter>();
  waiter->callback = std::move(done);
  // At least 1: 0 marks a blocking proposer's waiter.
  waiter->deadline_ms =
      std::max<int64_t>(1, m.env->clock->MonotonicMs() + m.options.propose_timeout_ms);
  uint64_t id = 0;
  Status s = m.Enqueue(&command, durability, waiter, &id);
  if (!s.ok()) Wake(waiter, s);
}

Status Replica::SyncBarrier() {
  Impl& m = *impl_;
  std::unique_lock<std::mutex> l(m.mu);
  uint64_t target = m.written_index;
  uint64_t failures = m.sync_failures;
  uint64_t epoch = m.sync_epoch;
  if (m.synced_index >= target) return Status::Ok();
  ++m.sync_barriers;
  m.sync_cv.notify_one();
  bool done = m.synced_cv.wait_for(l, std::chrono::milliseconds(m.options.propose_timeout_ms), [&] {
    return m.synced_index >= target || m.sync_failures != failures || m.sync_epoch != epoch;
  });
  --m.sync_barriers;
  // The log waited for was discarded by a join: nothing of it is left to make durable.
  if (m.sync_epoch != epoch) {
    return Status::Unavailable("this node left its cluster to join another; retry");
  }
  if (m.synced_index >= target) return Status::Ok();
  if (!done) {
    return Status::Unavailable("the log was not synced within " +
                               std::to_string(m.options.propose_timeout_ms) + " ms");
  }
  return m.sync_error;
}

Status Replica::ReadBarrier(int64_t timeout_ms) {
  Impl& m = *impl_;
  if (timeout_ms <= 0) timeout_ms = m.options.propose_timeout_ms;
  if (m.sole_voter_leader.load()) return Status::Ok();
  auto waiter = std::make_shared<Waiter>();
  uint64_t id;
  {
    std::lock_guard<std::mutex> l(m.mu);
    if (m.stopping) return Status::Unavailable("daemon is shutting down");
    if (m.read_waiters.size() >= m.options.max_pending) {
      return Status::Unavailable("too many reads waiting for the leader; retry");
    }
    id = m.next_read_id++;
    m.read_waiters[id] = waiter;
    m.new_reads.push_back(id);
  }
  m.work_cv.notify_one();
  std::unique_lock<std::mutex> l(waiter->mu);
  if (!waiter->cv.wait_for(l, std::chrono::milliseconds(timeout_ms),
                           [&] { return waiter->done; })) {
    l.unlock();
    std::lock_guard<std::mutex> ml(m.mu);
    m.read_waiters.erase(id);
    return Status::Unavailable("no read index from a leader within " + std::to_string(timeout_ms) +
                               " ms: no quorum reachable from this node?");
  }
  return waiter->verdict;
}

Status Replica::CheckAlone() const {
  raft::Config c;
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    c = impl_->config;
  }
  return impl_->CheckAlone(c);
}

Status Replica::PrepareJoin() {
  Impl& m = *impl_;
  auto w = std::make_shared<Waiter>();
  {
    std::lock_guard<std::mutex> l(m.mu);
    if (m.stopping) return Status::Unavailable("daemon is shutting down");
    if (m.join_gate) return Status::Busy("a join is already in progress on this node");
  }
  CN_RETURN_IF_ERROR(CheckAlone());  // the common refusal, without closing the gate
  {
    std::lock_guard<std::mutex> l(m.mu);
    if (m.join_gate) return Status::Busy("a join is already in progress on this node");
    m.join_gate = true;
    m.prepare_request = w;
  }
  m.work_cv.notify_one();
  Status s;
  {
    std::unique_lock<std::mutex> l(w->mu);
    if (w->cv.wait_for(l, std::chrono::milliseconds(m.options.propose_timeout_ms),
                       [&] { return w->done; })) {
      s = w->verdict;
    } else {
      s = Status::Unavailable("the commands in hand did not finish within " +
                              std::to_string(m.options.propose_timeout_ms) + " ms; retry");
    }
  }
  if (!s.ok()) {
    std::lock_guard<std::mutex> l(m.mu);
    if (m.prepare_request == w) m.prepare_request.reset();
    m.join_gate = false;
  }
  return s;
}

Status Replica::ResetForJoin(const std::map<std::string, std::string>& local) {
  Impl& m = *impl_;
  auto w = std::make_shared<Waiter>();
  {
    std::lock_guard<std::mutex> l(m.mu);
    if (m.stopping) return Status::Unavailable("daemon is shutting down");
    if (!m.join_gate) return Status::Internal("ResetForJoin without PrepareJoin");
    m.reset_request = w;
    m.reset_local = local;
  }
  m.work_cv.notify_one();
  // Not bounded: the agent answers within a round (or the destructor does), and a reset that
  // happened after its caller stopped waiting would leave the caller wrong about the store.
  std::unique_lock<std::mutex> l(w->mu);
  w->cv.wait(l, [&] { return w->done; });
  return w->verdict;
}

void Replica::CancelJoin() {
  std::lock_guard<std::mutex> l(impl_->mu);
  impl_->prepare_request.reset();
  impl_->join_gate = false;
}

void Replica::Deliver(raft::Message msg) {
  Impl& m = *impl_;
  size_t bytes = MessageBytes(msg);
  {
    std::lock_guard<std::mutex> l(m.mu);
    if (m.stopping || m.inbound.size() >= m.options.max_inbound ||
        m.inbound_bytes + bytes > m.options.max_inbound_bytes) {
      ++m.inbound_dropped;
      return;
    }
    m.inbound_bytes += bytes;
    m.inbound.push_back(std::move(msg));
  }
  m.work_cv.notify_one();
}

const StateMachine& Replica::state() const { return impl_->state; }
EventHub* Replica::events() { return &impl_->events; }
KvStore* Replica::store() { return impl_->kv.get(); }

ReplicaStatus Replica::GetStatus() const {
  ReplicaStatus s;
  s.cluster_id = impl_->state.cluster_id();
  s.node = impl_->options.node_name;
  s.applied_index = impl_->state.applied_index();
  std::lock_guard<std::mutex> l(impl_->mu);
  s.leader = impl_->leader;
  s.term = impl_->term;
  s.commit_index = impl_->commit_index;
  s.log_first_index = impl_->log_first;
  s.role = impl_->role;
  s.voters = impl_->config.voters;
  s.learners = impl_->config.learners;
  s.snapshot_index = impl_->snapshot_index;
  s.inbound_dropped = impl_->inbound_dropped;
  return s;
}

Status Replica::ReadAudit(std::string* out) const {
  return impl_->state.ReadAudit(impl_->kv.get(), out);
}

Status Replica::Compact() {
  Impl& m = *impl_;
  uint64_t want = m.state.applied_index();
  std::unique_lock<std::mutex> l(m.mu);
  if (m.stopping) return Status::Unavailable("daemon is shutting down");
  uint64_t failures = m.compact_failures;
  m.compact_requested = true;
  m.work_cv.notify_one();
  m.compacted_cv.wait_for(l, std::chrono::milliseconds(m.options.propose_timeout_ms), [&] {
    return m.snapshot_index >= want || m.stopping || m.compact_failures != failures;
  });
  if (m.snapshot_index >= want) return Status::Ok();
  if (m.compact_failures != failures) return m.compact_error;
  if (m.stopping) return Status::Unavailable("daemon is shutting down");
  return Status::Unavailable("the snapshot was not finished within " +
                             std::to_string(m.options.propose_timeout_ms) +
                             " ms; it goes on in the background");
}

}  // namespace constellation
