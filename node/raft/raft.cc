// The Raft core. Structure follows etcd's raft (step functions per role, progress tracking,
// read-only queue); the membership rule follows the Raft thesis §4 (a configuration takes effect
// as soon as its entry is in the log; one change at a time; a leader changes membership only
// after committing an entry of its own term).
#include "node/raft/raft.h"

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <sstream>

#include "node/base/coding.h"
#include "node/base/log.h"
#include "node/raft/raft_log.h"

namespace constellation::raft {

const char* RoleName(Role role) {
  switch (role) {
    case Role::kFollower:
      return "follower";
    case Role::kPreCandidate:
      return "pre-candidate";
    case Role::kCandidate:
      return "candidate";
    case Role::kLeader:
      return "leader";
  }
  return "?";
}

Status RaftOptions::Validate() const {
  auto bad = [](const std::string& what) {
    return Status::InvalidArgument("raft options: " + what);
  };
  if (id.empty() || id.size() > kMaxNodeIdBytes) return bad("id must be 1..255 bytes");
  if (!storage) return bad("storage is required");
  if (heartbeat_ticks < 1) return bad("heartbeat_ticks must be >= 1");
  if (election_ticks <= heartbeat_ticks) return bad("election_ticks must exceed heartbeat_ticks");
  if (election_ticks > 1000000) return bad("election_ticks must be <= 1000000");
  if (max_append_bytes < 1 || max_append_bytes > kMaxChunkBytes) return bad("max_append_bytes");
  if (max_inflight_appends < 1 || max_inflight_appends > 65536) return bad("max_inflight_appends");
  if (max_entry_bytes < 1 || max_entry_bytes > kMaxEntryBytes) return bad("max_entry_bytes");
  if (max_uncommitted_bytes < max_entry_bytes)
    return bad("max_uncommitted_bytes < max_entry_bytes");
  if (max_committed_bytes < 1) return bad("max_committed_bytes");
  if (max_snapshot_chunk_bytes < 1 || max_snapshot_chunk_bytes > kMaxChunkBytes) {
    return bad("max_snapshot_chunk_bytes must be 1..64 MiB");
  }
  if (max_inflight_snapshot_chunks < 1 || max_inflight_snapshot_chunks > 1024) {
    return bad("max_inflight_snapshot_chunks must be 1..1024");
  }
  if (max_snapshot_bytes < 1 || max_snapshot_bytes > kMaxSnapshotBytes) {
    return bad("max_snapshot_bytes");
  }
  if (max_pending_reads < 1 || max_pending_reads > 1000000) return bad("max_pending_reads");
  return Status::Ok();
}

namespace {

constexpr uint64_t kConfigScanBytes = 4 << 20;

// A follower's replication state, kept by the leader (etcd's tracker.Progress).
struct Progress {
  enum State { kProbe, kReplicate, kSnapshot };
  uint64_t match = 0;
  uint64_t next = 1;
  State state = kProbe;
  bool probe_sent = false;  // kProbe: one append is out; wait for its answer or a heartbeat
  bool recent_active = false;
  bool learner = false;
  std::deque<uint64_t> inflights;  // kReplicate: last index of each append in flight
  // kSnapshot: the snapshot being streamed, in which attempt, and how far.
  SnapshotMeta snap;
  uint64_t snap_attempt = 0;  // unique within the leader's term; chunks and answers carry it
  uint64_t snap_next = 0;     // next offset to send
  uint64_t snap_acked = 0;    // bytes the follower holds
  // The offset last rewound to after a rejection: further rejections naming it (sent by chunks
  // already in flight) are ignored until the follower makes progress past it.
  std::optional<uint64_t> snap_rewind;
  bool snap_all_sent = false;
  int snap_idle_ticks = 0;

  void BecomeProbe() {
    if (state == kSnapshot) {
      next = std::max(match + 1, snap.index + 1);
    } else {
      next = match + 1;
    }
    state = kProbe;
    probe_sent = false;
    inflights.clear();
  }
  // Back to probing without the snapshot (it can no longer be sent): `next` still names
  // compacted entries, so the next append sends a snapshot again.
  void AbandonSnapshot() {
    state = kProbe;
    probe_sent = false;
    inflights.clear();
  }
  void BecomeReplicate() {
    state = kReplicate;
    next = match + 1;
    probe_sent = false;
    inflights.clear();
  }
  void BecomeSnapshot(const SnapshotMeta& meta, uint64_t attempt) {
    state = kSnapshot;
    snap = meta;
    snap_attempt = attempt;
    snap_rewind.reset();
    snap_next = snap_acked = 0;
    snap_all_sent = false;
    snap_idle_ticks = 0;
    probe_sent = false;
    inflights.clear();
  }
  bool MaybeUpdate(uint64_t n) {
    bool updated = false;
    if (match < n) {
      match = n;
      updated = true;
      probe_sent = false;
    }
    next = std::max(next, n + 1);
    return updated;
  }
  // A rejection of the append whose previous index was `rejected`; `hint` is where the follower
  // thinks the logs agree. False if the rejection is stale.
  bool MaybeDecrTo(uint64_t rejected, uint64_t hint) {
    if (state == kReplicate) {
      if (rejected <= match) return false;
      next = match + 1;
      return true;
    }
    if (next - 1 != rejected) return false;
    next = std::max(std::min(rejected, hint + 1), match + 1);
    probe_sent = false;
    return true;
  }
  bool IsPaused(size_t max_inflight) const {
    switch (state) {
      case kProbe:
        return probe_sent;
      case kReplicate:
        return inflights.size() >= max_inflight;
      case kSnapshot:
        return true;
    }
    return true;
  }
  const char* StateName() const {
    return state == kProbe ? "probe" : state == kReplicate ? "replicate" : "snapshot";
  }
};

// A ReadIndex request waiting for a quorum's heartbeat acknowledgement.
struct ReadRequest {
  uint64_t seq;  // leader-local; what heartbeats carry as context
  NodeId from;
  std::string context;
  uint64_t index;
  std::set<NodeId> acks;
};

std::string SeqContext(uint64_t seq) {
  Writer w;
  w.Varint(seq);
  return w.Take();
}

std::optional<uint64_t> ParseSeqContext(std::string_view ctx) {
  Reader r(ctx);
  uint64_t seq;
  if (!r.Varint(&seq) || !r.done()) return std::nullopt;
  return seq;
}

}  // namespace

class Raft::Impl {
 public:
  explicit Impl(RaftOptions o) : opts_(std::move(o)), log_(opts_.storage) {
    // Seed and id are mixed so that neither can cancel the other out.
    uint64_t h = 0xcbf29ce484222325ull;
    for (char c : opts_.id) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
    rng_ = opts_.seed * 0x9e3779b97f4a7c15ull;
    NextRandom();
    rng_ ^= h;
  }

  // ---- Logging: lines are built only when their level is enabled.
  class Line {
   public:
    Line(const Impl* r, LogLevel level) : r_(r), level_(level) { os_ << r->opts_.id << ' '; }
    ~Line() { r_->Emit(level_, os_.str()); }
    std::ostringstream& os() { return os_; }

   private:
    const Impl* r_;
    LogLevel level_;
    std::ostringstream os_;
  };
  bool LogOn(LogLevel level) const {
    return level >= opts_.min_log_level && (opts_.logger || LogEnabled(level));
  }
  void Emit(LogLevel level, const std::string& line) const {
    if (opts_.logger) {
      opts_.logger(level, line);
      return;
    }
    switch (level) {
      case LogLevel::kDebug:
        CN_LOG(Debug) << "raft " << line;
        break;
      case LogLevel::kInfo:
        CN_LOG(Info) << "raft " << line;
        break;
      case LogLevel::kWarning:
        CN_LOG(Warning) << "raft " << line;
        break;
      default:
        CN_LOG(Error) << "raft " << line;
        break;
    }
  }
  // An expression (like CN_LOG), so it is safe in an unbraced if/else.
#define RLOG(level)                    \
  !LogOn(LogLevel::k##level) ? (void)0 \
                             : ::constellation::LogVoidify() & Line(this, LogLevel::k##level).os()

  // ---- Start-up.
  Status Init() {
    RaftStorage* st = opts_.storage;
    HardState hs = st->InitialHardState();
    SnapshotMeta snap = st->SnapshotMetadata();
    if (st->FirstIndex() > snap.index + 1) {
      return Status::Corruption("raft storage: entries missing between the snapshot at " +
                                std::to_string(snap.index) + " and the first entry " +
                                std::to_string(st->FirstIndex()));
    }
    if (hs.commit > st->LastIndex()) {
      return Status::Corruption("raft storage: commit " + std::to_string(hs.commit) +
                                " beyond the last entry " + std::to_string(st->LastIndex()));
    }
    if (opts_.applied > st->LastIndex()) {
      return Status::Corruption("raft: applied index " + std::to_string(opts_.applied) +
                                " beyond the last entry " + std::to_string(st->LastIndex()));
    }
    term_ = hs.term;
    vote_ = hs.vote;
    prev_hs_ = hs;
    durable_commit_ = hs.commit;
    applied_ = std::max(snap.index, opts_.applied);
    applying_ = applied_;
    // Applied entries were committed, whether or not the commit index was persisted.
    log_.SetCommitted(std::max({hs.commit, snap.index, applied_}));
    RebuildConfig();
    BecomeFollower(term_, "");
    RLOG(Info) << "started: term " << term_ << ", log " << log_.FirstIndex() << ".."
               << log_.LastIndex() << ", commit " << log_.committed() << ", applied " << applied_
               << ", " << config().ToString();
    if (IsSoleVoter()) StartCampaign(false);
    return Status::Ok();
  }

  // ---- Configuration (thesis §4.1: the newest configuration in the log is in effect).
  const Config& config() const { return configs_.empty() ? base_config_ : configs_.back().second; }
  bool Promotable() const { return config().IsVoter(opts_.id); }
  bool IsSoleVoter() const {
    const Config& c = config();
    return c.voters.size() == 1 && c.voters[0] == opts_.id;
  }
  size_t Quorum() const { return config().voters.size() / 2 + 1; }

  // The configuration as of the commit index.
  Config CommittedConfig() const {
    Config c = base_config_;
    for (const auto& [index, cfg] : configs_) {
      if (index <= log_.committed()) c = cfg;
    }
    return c;
  }

  Config AppliedConfig() const {
    Config c = base_config_;
    for (const auto& [index, cfg] : configs_) {
      if (index <= applied_) c = cfg;
    }
    return c;
  }

  void RebuildConfig() {
    RaftStorage* st = opts_.storage;
    SnapshotMeta snap = st->SnapshotMetadata();
    base_config_ = snap.config;
    configs_.clear();
    // Entries kept from before the snapshot are already reflected in its configuration.
    uint64_t lo = std::max(st->FirstIndex(), snap.index + 1), hi = st->LastIndex() + 1;
    while (lo < hi) {
      std::vector<Entry> ents;
      Status s = st->Entries(lo, hi, kConfigScanBytes, &ents);
      CN_CHECK(s.ok() && !ents.empty()) << "raft storage: reading the log: " << s.ToString();
      for (const Entry& e : ents) NoteConfEntry(e);
      lo = ents.back().index + 1;
    }
  }

  // Records the configuration a conf-change entry brings (it takes effect now).
  bool NoteConfEntry(const Entry& e) {
    if (e.type != EntryType::kConfChange) return false;
    Result<ConfChange> cc = DecodeConfChange(e.data);
    if (!cc.ok()) {
      RLOG(Error) << "ignoring malformed configuration entry " << e.index << ": "
                  << cc.status().ToString();
      return false;
    }
    // The entry carries the resulting configuration: no dependence on knowing the one before.
    configs_.emplace_back(e.index, std::move(cc->config));
    return true;
  }

  // Appends to the log, keeping the configuration in step with the log's content.
  void AppendToLog(std::vector<Entry> ents) {
    if (ents.empty()) return;
    uint64_t from = ents.front().index;
    bool changed = false;
    while (!configs_.empty() && configs_.back().first >= from) {
      configs_.pop_back();
      changed = true;
    }
    for (const Entry& e : ents) changed |= NoteConfEntry(e);
    log_.Append(std::move(ents));
    if (changed) ConfigChanged();
  }

  void ConfigChanged() {
    RLOG(Info) << "configuration is now " << config().ToString();
    if (role_ == Role::kLeader) SyncProgress(true);
  }

  // Gives every member a Progress (the leader's view) and drops departed ones. `active`: whether
  // a newcomer counts as recently heard from (a grace period before check-quorum counts it).
  //
  // A node being removed keeps its Progress until the removal commits: it should receive the
  // entry that removes it, so that it stops campaigning. It no longer counts for any quorum
  // (quorums use the newest configuration only).
  void SyncProgress(bool active) {
    const Config& c = config();
    const Config committed = CommittedConfig();
    for (auto it = prs_.begin(); it != prs_.end();) {
      if (!c.Contains(it->first) && !committed.Contains(it->first)) {
        it = prs_.erase(it);
      } else {
        it->second.learner = c.IsLearner(it->first);
        ++it;
      }
    }
    auto add = [&](const NodeId& id, bool learner) {
      if (prs_.count(id)) return;
      Progress& p = prs_[id];
      p.next = log_.LastIndex() + 1;
      p.learner = learner;
      p.recent_active = active;
      if (id == opts_.id) {
        p.match = log_.StableLast();
        p.state = Progress::kReplicate;  // shown as such; the leader never sends to itself
      }
    };
    for (const NodeId& v : c.voters) add(v, false);
    for (const NodeId& l : c.learners) add(l, true);
  }

  // ---- Role changes.
  void Reset(uint64_t term) {
    if (term != term_) {
      term_ = term;
      vote_.clear();
    }
    lead_.clear();
    election_elapsed_ = 0;
    heartbeat_elapsed_ = 0;
    randomized_timeout_ =
        opts_.election_ticks + static_cast<int>(NextRandom() % opts_.election_ticks);
    votes_.clear();
    prs_.clear();
    reads_.clear();
    reads_before_commit_.clear();
    uncommitted_.clear();
    uncommitted_bytes_ = 0;
  }

  void BecomeFollower(uint64_t term, const NodeId& lead) {
    bool changed = role_ != Role::kFollower || term != term_;
    Reset(term);
    lead_ = lead;
    role_ = Role::kFollower;
    if (changed) RLOG(Info) << "became follower at term " << term_;
  }

  void BecomePreCandidate() {
    CN_CHECK(role_ != Role::kLeader);
    votes_.clear();
    lead_.clear();
    role_ = Role::kPreCandidate;
    RLOG(Info) << "became pre-candidate at term " << term_;
  }

  void BecomeCandidate() {
    CN_CHECK(role_ != Role::kLeader);
    Reset(term_ + 1);
    vote_ = opts_.id;
    role_ = Role::kCandidate;
    RLOG(Info) << "became candidate at term " << term_;
  }

  void BecomeLeader() {
    CN_CHECK(role_ != Role::kFollower);
    Reset(term_);
    lead_ = opts_.id;
    role_ = Role::kLeader;
    SyncProgress(false);
    RLOG(Info) << "became leader at term " << term_;
    // The no-op entry of the new term: committing it commits everything before it (§5.4.2).
    AppendEntries({Entry{}});
  }

  uint64_t NextRandom() {
    // splitmix64: deterministic for a given seed and node id.
    uint64_t z = (rng_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  // ---- Elections.
  void StartCampaign(bool pre_vote) {
    if (!Promotable()) {
      RLOG(Debug) << "is not a voter and cannot campaign";
      return;
    }
    if (role_ == Role::kLeader) return;
    MessageType type;
    uint64_t term;
    if (pre_vote) {
      BecomePreCandidate();
      type = MessageType::kPreVote;
      term = term_ + 1;
    } else {
      BecomeCandidate();
      type = MessageType::kVote;
      term = term_;
    }
    if (Poll(opts_.id, true) == kWon) {
      // A sole voter wins at once.
      if (pre_vote) {
        StartCampaign(false);
      } else {
        BecomeLeader();
      }
      return;
    }
    uint64_t li = log_.LastIndex(), lt = log_.LastTerm();
    for (const NodeId& v : config().voters) {
      if (v == opts_.id) continue;
      RLOG(Debug) << "sent " << MessageTypeName(type) << " for term " << term << " to " << v;
      Message m;
      m.type = type;
      m.to = v;
      m.term = term;
      m.index = li;
      m.log_term = lt;
      Send(std::move(m));
    }
  }

  enum VoteResult { kPending, kWon, kLost };
  VoteResult Poll(const NodeId& from, bool granted) {
    const Config& c = config();
    if (c.IsVoter(from)) votes_.emplace(from, granted);
    size_t yes = 0, no = 0;
    for (const NodeId& v : c.voters) {
      auto it = votes_.find(v);
      if (it == votes_.end()) continue;
      (it->second ? yes : no)++;
    }
    if (yes >= Quorum()) return kWon;
    if (no > c.voters.size() - Quorum()) return kLost;
    return kPending;
  }

  void Send(Message m) {
    m.from = opts_.id;
    switch (m.type) {
      case MessageType::kPreVote:
      case MessageType::kPreVoteResp:
      case MessageType::kVote:
      case MessageType::kVoteResp:
        break;  // term set by the caller
      case MessageType::kPropose:
      case MessageType::kReadIndex:
        m.term = 0;
        break;
      default:
        m.term = term_;
    }
    msgs_.push_back(std::move(m));
  }

  // ---- Input validation: a peer's message must be self-consistent before it touches state.
  Status Validate(const Message& m) const {
    auto bad = [&](const std::string& why) {
      return Status::InvalidArgument("raft: dropped " + std::string(MessageTypeName(m.type)) +
                                     " from " + m.from + ": " + why);
    };
    if (m.to != opts_.id) return bad("addressed to " + m.to);
    if (m.from.empty() || m.from == opts_.id || m.from.size() > kMaxNodeIdBytes) {
      return bad("bad sender");
    }
    bool local = m.type == MessageType::kPropose || m.type == MessageType::kReadIndex;
    if (local != (m.term == 0)) return bad("term 0 only for forwarded requests");
    if (m.context.size() > kMaxContextBytes) return bad("context too long");
    if (!m.entries.empty() && m.type != MessageType::kAppend && m.type != MessageType::kPropose) {
      return bad("unexpected entries");
    }
    if (m.entries.size() > kMaxEntriesPerMessage) return bad("too many entries");
    switch (m.type) {
      case MessageType::kAppend: {
        if (m.log_term > m.term) return bad("previous term beyond the message's term");
        uint64_t prev_term = m.log_term;
        for (size_t i = 0; i < m.entries.size(); ++i) {
          const Entry& e = m.entries[i];
          if (e.index != m.index + 1 + i) return bad("entries not contiguous");
          if (e.term < prev_term || e.term > m.term) return bad("entry terms out of order");
          if (e.data.size() > kMaxEntryBytes) return bad("entry too large");
          prev_term = e.term;
        }
        if (m.index + m.entries.size() < m.index) return bad("index overflow");
        break;
      }
      case MessageType::kPropose:
        if (m.entries.empty()) return bad("no entries");
        for (const Entry& e : m.entries) {
          if (e.type != EntryType::kNormal) return bad("only normal entries are forwarded");
          if (e.data.size() > opts_.max_entry_bytes) return bad("entry too large");
        }
        break;
      case MessageType::kPreVote:
      case MessageType::kVote:
        if (m.log_term > m.term) return bad("last log term beyond the vote's term");
        break;
      case MessageType::kSnapshot:
        if (m.snapshot.index == 0 || m.snapshot.term == 0 || m.snapshot.term > m.term) {
          return bad("bad snapshot metadata");
        }
        if (m.snapshot.size > kMaxSnapshotBytes || m.offset > m.snapshot.size ||
            m.chunk.size() > m.snapshot.size - m.offset || m.chunk.size() > kMaxChunkBytes) {
          return bad("chunk beyond the snapshot");
        }
        break;
      default:
        break;
    }
    return Status::Ok();
  }

  // ---- Step.
  Status Step(const Message& m) {
    CN_CHECK(!ready_outstanding_) << "Step between GetReady and Advance";
    CN_RETURN_IF_ERROR(Validate(m));
    if (m.term == 0) {
      // Forwarded requests carry no term.
    } else if (m.term > term_) {
      if (m.type == MessageType::kPreVote || m.type == MessageType::kVote) {
        bool in_lease =
            opts_.check_quorum && !lead_.empty() && election_elapsed_ < opts_.election_ticks;
        if (in_lease) {
          // Thesis §4.2.3: a node that hears from a leader ignores disruptive candidates.
          RLOG(Info) << "ignored " << MessageTypeName(m.type) << " from " << m.from << " for term "
                     << m.term << ": leader " << lead_ << " is alive";
          return Status::Ok();
        }
      }
      if (m.type == MessageType::kPreVote || (m.type == MessageType::kPreVoteResp && !m.reject)) {
        // Pre-votes never change terms; a granted pre-vote carries the term it is for.
      } else {
        RLOG(Info) << "received " << MessageTypeName(m.type) << " from " << m.from
                   << " with higher term " << m.term;
        bool from_leader = m.type == MessageType::kAppend || m.type == MessageType::kHeartbeat ||
                           m.type == MessageType::kSnapshot;
        int elapsed = election_elapsed_;
        BecomeFollower(m.term, from_leader ? m.from : NodeId());
        // A candidate's term does not restart the election timer: only a leader's message or a
        // granted vote does (Figure 2 of the Raft paper; HandleVote resets it when it grants).
        // Otherwise candidates with stale logs whose clocks run fast, campaigning in turn, keep
        // the one node that could win from ever timing out (without pre-vote; found by the
        // simulator, seed 5043056).
        if (m.type == MessageType::kVote) election_elapsed_ = elapsed;
      }
    } else if (m.term < term_) {
      if ((opts_.check_quorum || opts_.pre_vote) &&
          (m.type == MessageType::kHeartbeat || m.type == MessageType::kAppend)) {
        // A stale leader (perhaps cut off and unable to learn of the new term, since pre-vote
        // keeps others' terms from rising): tell it the current term so it steps down.
        Message r;
        r.type = MessageType::kAppendResp;
        r.to = m.from;
        Send(std::move(r));
      } else if (m.type == MessageType::kPreVote) {
        Message r;
        r.type = MessageType::kPreVoteResp;
        r.to = m.from;
        r.term = term_;
        r.reject = true;
        Send(std::move(r));
      } else {
        RLOG(Debug) << "ignored " << MessageTypeName(m.type) << " from " << m.from
                    << " with lower term " << m.term;
      }
      return Status::Ok();
    }

    if (m.type == MessageType::kPreVote || m.type == MessageType::kVote) {
      HandleVote(m);
      return Status::Ok();
    }
    switch (role_) {
      case Role::kLeader:
        StepLeader(m);
        break;
      case Role::kPreCandidate:
      case Role::kCandidate:
        StepCandidate(m);
        break;
      case Role::kFollower:
        StepFollower(m);
        break;
    }
    return Status::Ok();
  }

  void HandleVote(const Message& m) {
    bool pre = m.type == MessageType::kPreVote;
    bool can_vote = vote_ == m.from || (vote_.empty() && lead_.empty()) || (pre && m.term > term_);
    Message r;
    r.type = pre ? MessageType::kPreVoteResp : MessageType::kVoteResp;
    r.to = m.from;
    if (can_vote && log_.IsUpToDate(m.index, m.log_term)) {
      RLOG(Info) << "cast " << MessageTypeName(m.type) << " for " << m.from << " at term "
                 << m.term;
      r.term = m.term;
      if (!pre) {
        election_elapsed_ = 0;
        vote_ = m.from;  // persisted (hard state) before the response is sent
      }
    } else {
      RLOG(Info) << "rejected " << MessageTypeName(m.type) << " from " << m.from << " at term "
                 << m.term << " (voted for '" << vote_ << "', log " << log_.LastTerm() << '/'
                 << log_.LastIndex() << " vs " << m.log_term << '/' << m.index << ")";
      r.term = term_;
      r.reject = true;
    }
    Send(std::move(r));
  }

  void StepCandidate(const Message& m) {
    MessageType mine =
        role_ == Role::kPreCandidate ? MessageType::kPreVoteResp : MessageType::kVoteResp;
    switch (m.type) {
      case MessageType::kAppend:
        BecomeFollower(m.term, m.from);
        HandleAppend(m);
        return;
      case MessageType::kHeartbeat:
        BecomeFollower(m.term, m.from);
        HandleHeartbeat(m);
        return;
      case MessageType::kSnapshot:
        BecomeFollower(m.term, m.from);
        HandleSnapshotChunk(m);
        return;
      default:
        break;
    }
    if (m.type != mine) {
      RLOG(Debug) << "ignored " << MessageTypeName(m.type) << " from " << m.from << " as "
                  << RoleName(role_);
      return;
    }
    VoteResult v = Poll(m.from, !m.reject);
    RLOG(Debug) << "got " << (m.reject ? "rejection" : "vote") << " from " << m.from;
    if (v == kWon) {
      if (role_ == Role::kPreCandidate) {
        StartCampaign(false);
      } else {
        BecomeLeader();
        BroadcastAppend();
      }
    } else if (v == kLost) {
      BecomeFollower(term_, "");
    }
  }

  void StepFollower(const Message& m) {
    switch (m.type) {
      case MessageType::kPropose:
        if (lead_.empty()) {
          RLOG(Debug) << "dropped forwarded proposal: no leader";
          return;
        }
        Forward(m.entries);
        return;
      case MessageType::kReadIndex:
        // Misrouted (the sender thought this node leads): the answer could not find its way
        // back, so drop it; the sender retries with the leader it learns of.
        RLOG(Debug) << "dropped MsgReadIndex from " << m.from << ": not the leader";
        return;
      case MessageType::kAppend:
        election_elapsed_ = 0;
        lead_ = m.from;
        HandleAppend(m);
        return;
      case MessageType::kHeartbeat:
        election_elapsed_ = 0;
        lead_ = m.from;
        HandleHeartbeat(m);
        return;
      case MessageType::kSnapshot:
        election_elapsed_ = 0;
        lead_ = m.from;
        HandleSnapshotChunk(m);
        return;
      case MessageType::kReadIndexResp:
        read_states_.push_back(ReadState{m.index, m.context});
        return;
      default:
        RLOG(Debug) << "ignored " << MessageTypeName(m.type) << " from " << m.from
                    << " as follower";
    }
  }

  void Forward(const std::vector<Entry>& entries) {
    // Coalesce with a forward already queued this round.
    if (!msgs_.empty() && msgs_.back().type == MessageType::kPropose && msgs_.back().to == lead_ &&
        msgs_.back().entries.size() + entries.size() <= kMaxEntriesPerMessage) {
      uint64_t bytes = 0;
      for (const Entry& e : msgs_.back().entries) bytes += e.data.size();
      for (const Entry& e : entries) bytes += e.data.size();
      if (bytes <= opts_.max_append_bytes) {
        for (const Entry& e : entries) msgs_.back().entries.push_back(e);
        return;
      }
    }
    Message f;
    f.type = MessageType::kPropose;
    f.to = lead_;
    f.entries = entries;
    Send(std::move(f));
  }

  // ---- Follower handlers.
  void HandleAppend(const Message& m) {
    Message r;
    r.type = MessageType::kAppendResp;
    r.to = m.from;
    if (m.index < log_.committed()) {
      r.index = log_.committed();
      Send(std::move(r));
      return;
    }
    if (log_.MatchTerm(m.index, m.log_term)) {
      uint64_t last_new = m.index + m.entries.size();
      uint64_t conflict = log_.FindConflict(m.entries);
      if (conflict != 0) {
        CN_CHECK(conflict > log_.committed())
            << "entry " << conflict << " conflicts with a committed entry (commit "
            << log_.committed() << ")";
        if (conflict <= log_.LastIndex()) {
          RLOG(Info) << "truncating the log from " << conflict << " (was " << log_.FirstIndex()
                     << ".." << log_.LastIndex() << ") for " << m.from << "'s entries";
        }
        std::vector<Entry> tail(m.entries.begin() + (conflict - m.index - 1), m.entries.end());
        AppendToLog(std::move(tail));
      }
      log_.CommitTo(std::min(m.commit, last_new));
      r.index = last_new;
      Send(std::move(r));
      return;
    }
    uint64_t hint = std::min(m.index, log_.LastIndex());
    hint = log_.FindConflictByTerm(hint, m.log_term);
    RLOG(Debug) << "rejected MsgApp " << m.log_term << '/' << m.index << " from " << m.from
                << " (hint " << hint << ")";
    r.index = m.index;
    r.reject = true;
    r.reject_hint = hint;
    r.log_term = log_.Term(hint).value_or(0);
    Send(std::move(r));
  }

  void HandleHeartbeat(const Message& m) {
    log_.CommitTo(m.commit);
    Message r;
    r.type = MessageType::kHeartbeatResp;
    r.to = m.from;
    r.context = m.context;
    Send(std::move(r));
  }

  void HandleSnapshotChunk(const Message& m) {
    const SnapshotMeta& meta = m.snapshot;
    auto reply = [&](uint64_t have, bool reject) {
      Message r;
      r.type = MessageType::kSnapshotResp;
      r.to = m.from;
      r.index = m.index;
      r.offset = have;
      r.reject = reject;
      Send(std::move(r));
    };
    if (meta.index <= log_.committed()) {
      // Already have it (or newer): tell the leader where this log stands.
      assembly_.reset();
      Message r;
      r.type = MessageType::kAppendResp;
      r.to = m.from;
      r.index = log_.committed();
      Send(std::move(r));
      return;
    }
    if (meta.size > opts_.max_snapshot_bytes) {
      RLOG(Error) << "refused a snapshot of " << meta.size << " bytes from " << m.from
                  << " (max_snapshot_bytes is " << opts_.max_snapshot_bytes << ")";
      return;
    }
    if (assembly_ && (assembly_->from != m.from || assembly_->term != term_)) assembly_.reset();
    if (assembly_ && assembly_->attempt != m.index) {
      if (m.index < assembly_->attempt) return;  // a chunk of an abandoned attempt
      assembly_.reset();                         // the leader started over
    }
    if (!assembly_) {
      if (m.offset != 0) {
        reply(0, true);
        return;
      }
      assembly_ = Assembly{m.from, term_, m.index, meta, {}};
    }
    uint64_t have = assembly_->data.size();
    if (m.offset != have) {
      reply(have, m.offset > have);  // a gap: ask for what is missing; a duplicate: just ack
      return;
    }
    assembly_->data.append(m.chunk);
    if (assembly_->data.size() < meta.size) {
      reply(assembly_->data.size(), false);
      return;
    }
    Snapshot snap{meta, std::move(assembly_->data)};
    assembly_.reset();
    Message r;
    r.type = MessageType::kAppendResp;
    r.to = m.from;
    if (Restore(std::move(snap))) {
      r.index = log_.LastIndex();
    } else {
      r.index = log_.committed();
    }
    Send(std::move(r));
  }

  bool Restore(Snapshot s) {
    if (s.meta.index <= log_.committed()) return false;
    if (log_.MatchTerm(s.meta.index, s.meta.term)) {
      RLOG(Info) << "fast-forwarded commit to " << s.meta.index << " (snapshot " << s.meta.term
                 << '/' << s.meta.index << " matches the log)";
      log_.CommitTo(s.meta.index);
      return false;
    }
    RLOG(Info) << "restoring snapshot " << s.meta.term << '/' << s.meta.index << " (" << s.meta.size
               << " bytes, " << s.meta.config.ToString() << ")";
    base_config_ = s.meta.config;
    configs_.clear();
    log_.Restore(std::move(s));
    return true;
  }

  // ---- Leader.
  void StepLeader(const Message& m) {
    switch (m.type) {
      case MessageType::kPropose: {
        std::vector<Entry> ents;
        uint64_t bytes = uncommitted_bytes_;
        for (const Entry& e : m.entries) {
          if (bytes > 0 && bytes + e.data.size() > opts_.max_uncommitted_bytes) {
            RLOG(Warning) << "dropped proposals forwarded by " << m.from
                          << ": too much uncommitted data";
            break;
          }
          bytes += e.data.size();
          ents.push_back(Entry{0, 0, EntryType::kNormal, e.data});
        }
        if (!ents.empty()) {
          AppendEntries(std::move(ents));
          BroadcastAppend();
        }
        return;
      }
      case MessageType::kReadIndex:
        (void)HandleReadIndex(m.from, m.context);
        return;
      case MessageType::kAppend:
      case MessageType::kHeartbeat:
      case MessageType::kSnapshot:
        RLOG(Error) << "ignored " << MessageTypeName(m.type) << " from " << m.from
                    << " claiming to lead term " << m.term << " (this node leads it)";
        return;
      default:
        break;
    }
    auto it = prs_.find(m.from);
    if (it == prs_.end()) {
      RLOG(Debug) << "ignored " << MessageTypeName(m.type) << " from non-member " << m.from;
      return;
    }
    Progress& pr = it->second;
    switch (m.type) {
      case MessageType::kAppendResp:
        HandleAppendResp(m, pr);
        break;
      case MessageType::kHeartbeatResp:
        pr.recent_active = true;
        pr.probe_sent = false;
        if (pr.state == Progress::kReplicate && pr.inflights.size() >= opts_.max_inflight_appends) {
          pr.inflights.pop_front();  // an append may be lost: let one more through
        }
        if (pr.match < log_.LastIndex()) SendAppend(m.from, true);
        if (!m.context.empty()) ReadAck(m.from, m.context);
        break;
      case MessageType::kSnapshotResp:
        HandleSnapshotResp(m, pr);
        break;
      default:
        RLOG(Debug) << "ignored " << MessageTypeName(m.type) << " from " << m.from << " as leader";
    }
  }

  void HandleSnapshotResp(const Message& m, Progress& pr) {
    if (pr.state != Progress::kSnapshot || m.index != pr.snap_attempt) return;
    pr.recent_active = true;
    uint64_t have = std::min(m.offset, pr.snap.size);
    if (have > pr.snap_acked) {
      pr.snap_acked = have;
      pr.snap_idle_ticks = 0;
      if (pr.snap_rewind && have > *pr.snap_rewind) pr.snap_rewind.reset();
    }
    if (pr.snap_next < pr.snap_acked) pr.snap_next = pr.snap_acked;
    if (m.reject) {
      // The follower lost a chunk: it holds `have` bytes. Resend from there, once.
      if (pr.snap_rewind && *pr.snap_rewind == have) return;
      pr.snap_rewind = have;
      pr.snap_next = have;
      pr.snap_all_sent = false;
    }
    SendSnapshotChunks(m.from, pr);
  }

  void HandleAppendResp(const Message& m, Progress& pr) {
    if (!m.reject && m.index > log_.LastIndex()) {
      RLOG(Error) << "ignored MsgAppResp from " << m.from << " acknowledging " << m.index
                  << " beyond the last index " << log_.LastIndex();
      return;
    }
    pr.recent_active = true;
    if (m.reject) {
      uint64_t next_probe = m.reject_hint;
      if (m.log_term > 0) next_probe = log_.FindConflictByTerm(m.reject_hint, m.log_term);
      if (pr.MaybeDecrTo(m.index, next_probe)) {
        RLOG(Debug) << "decreased next for " << m.from << " to " << pr.next;
        if (pr.state == Progress::kReplicate) pr.BecomeProbe();
        SendAppend(m.from, true);
      }
      return;
    }
    bool was_paused = pr.IsPaused(opts_.max_inflight_appends);
    if (!pr.MaybeUpdate(m.index)) {
      if (pr.state == Progress::kSnapshot && m.index >= pr.snap.index) {
        pr.BecomeProbe();
        SendAppend(m.from, true);
      }
      return;
    }
    switch (pr.state) {
      case Progress::kProbe:
        pr.BecomeReplicate();
        break;
      case Progress::kSnapshot:
        // An acknowledgement from before the stream (delivered late) that still leaves the
        // follower behind the log's start: keep streaming the snapshot rather than restart it.
        if (pr.match < pr.snap.index && pr.match + 1 < log_.FirstIndex()) break;
        // Caught up by the snapshot (or already had it): replicate from here, or stream a newer
        // snapshot if the log has been compacted past it meanwhile.
        pr.BecomeProbe();
        if (pr.match + 1 >= log_.FirstIndex()) pr.BecomeReplicate();
        break;
      case Progress::kReplicate:
        while (!pr.inflights.empty() && pr.inflights.front() <= m.index) pr.inflights.pop_front();
        break;
    }
    if (MaybeCommit()) {
      BroadcastAppend();
    } else if (was_paused) {
      SendAppend(m.from, true);
    }
    // Pipeline: keep sending while there is more and the window allows.
    auto it = prs_.find(m.from);
    if (it == prs_.end()) return;  // removed by a configuration change just committed
    while (SendAppend(m.from, false)) {
    }
  }

  // Sends `to` the entries from its next index (or a snapshot if they are compacted). With
  // send_if_empty false, sends nothing when there is nothing new. True if something was sent.
  bool SendAppend(const NodeId& to, bool send_if_empty) {
    auto it = prs_.find(to);
    if (it == prs_.end() || to == opts_.id) return false;
    Progress& pr = it->second;
    if (pr.IsPaused(opts_.max_inflight_appends)) return false;
    uint64_t prev = pr.next - 1;
    std::optional<uint64_t> prev_term = log_.Term(prev);
    std::vector<Entry> ents;
    if (prev_term && pr.next <= log_.LastIndex()) {
      if (!log_.Entries(pr.next, log_.LastIndex() + 1, opts_.max_append_bytes, &ents).ok()) {
        prev_term.reset();
      }
    }
    if (!prev_term) return SendSnapshot(to, pr);
    if (ents.empty() && !send_if_empty) return false;
    Message m;
    m.type = MessageType::kAppend;
    m.to = to;
    m.index = prev;
    m.log_term = *prev_term;
    m.commit = log_.committed();
    uint64_t last = ents.empty() ? 0 : ents.back().index;
    m.entries = std::move(ents);
    Send(std::move(m));
    if (pr.state == Progress::kReplicate) {
      if (last != 0) {
        pr.next = last + 1;
        pr.inflights.push_back(last);
      }
    } else {
      pr.probe_sent = true;
    }
    return true;
  }

  bool SendSnapshot(const NodeId& to, Progress& pr) {
    if (!pr.recent_active) {
      RLOG(Debug) << "not sending a snapshot to " << to << ": not recently active";
      return false;
    }
    SnapshotMeta meta = opts_.storage->SnapshotMetadata();
    CN_CHECK(meta.index > 0) << "entries are compacted but there is no snapshot";
    if (!opts_.storage->SnapshotDataReady()) {
      RLOG(Debug) << "the snapshot for " << to << " waits for its data";
      return false;
    }
    RLOG(Info) << "sending snapshot " << meta.term << '/' << meta.index << " (" << meta.size
               << " bytes) to " << to << " (next " << pr.next << ", first index "
               << log_.FirstIndex() << ")";
    pr.BecomeSnapshot(meta, ++snap_attempts_);
    SendSnapshotChunks(to, pr);
    return true;
  }

  void SendSnapshotChunks(const NodeId& to, Progress& pr) {
    const uint64_t window = opts_.max_inflight_snapshot_chunks * opts_.max_snapshot_chunk_bytes;
    int restarts = 0;
    while (!pr.snap_all_sent && pr.snap_next - pr.snap_acked < window) {
      std::string chunk;
      Status s = opts_.storage->SnapshotChunk(pr.snap.index, pr.snap_next,
                                              opts_.max_snapshot_chunk_bytes, &chunk);
      if (s.code() == Code::kNotFound && restarts++ < 2) {
        // A newer snapshot replaced it: stream that one from the start, once it has data.
        if (!opts_.storage->SnapshotDataReady()) {
          RLOG(Debug) << "the snapshot for " << to << " was replaced by one without data yet";
          pr.AbandonSnapshot();
          return;
        }
        pr.BecomeSnapshot(opts_.storage->SnapshotMetadata(), ++snap_attempts_);
        continue;
      }
      CN_CHECK(s.ok()) << "raft storage: reading snapshot " << pr.snap.index << ": "
                       << s.ToString();
      uint64_t left = pr.snap.size - pr.snap_next;
      CN_CHECK(chunk.size() <= left && (chunk.size() > 0 || left == 0))
          << "raft storage: snapshot chunk of " << chunk.size() << " bytes with " << left
          << " left";
      Message m;
      m.type = MessageType::kSnapshot;
      m.to = to;
      m.index = pr.snap_attempt;
      m.snapshot = pr.snap;
      m.offset = pr.snap_next;
      pr.snap_next += chunk.size();
      m.chunk = std::move(chunk);
      if (pr.snap_next == pr.snap.size) pr.snap_all_sent = true;
      Send(std::move(m));
    }
  }

  void BroadcastAppend() {
    for (auto& [id, pr] : prs_) {
      if (id != opts_.id) SendAppend(id, true);
    }
  }

  void BroadcastHeartbeat() {
    std::string ctx = reads_.empty() ? std::string() : SeqContext(reads_.back().seq);
    for (auto& [id, pr] : prs_) {
      if (id == opts_.id) continue;
      Message m;
      m.type = MessageType::kHeartbeat;
      m.to = id;
      // Never tell a follower to commit past what it is known to hold.
      m.commit = std::min(pr.match, log_.committed());
      m.context = ctx;
      Send(std::move(m));
    }
  }

  void AppendEntries(std::vector<Entry> ents) {
    uint64_t li = log_.LastIndex();
    for (size_t i = 0; i < ents.size(); ++i) {
      ents[i].term = term_;
      ents[i].index = li + 1 + i;
      uncommitted_.emplace_back(ents[i].index, ents[i].data.size());
      uncommitted_bytes_ += ents[i].data.size();
    }
    AppendToLog(std::move(ents));
  }

  bool MaybeCommit() {
    const Config& c = config();
    if (c.voters.empty()) return false;
    std::vector<uint64_t> matches;
    for (const NodeId& v : c.voters) {
      auto it = prs_.find(v);
      matches.push_back(it == prs_.end() ? 0 : it->second.match);
    }
    std::sort(matches.rbegin(), matches.rend());
    uint64_t mci = matches[Quorum() - 1];
    if (mci <= log_.committed()) return false;
    // §5.4.2: only an entry of the current term is committed by counting replicas.
    if (!opts_.unsafe_commit_previous_terms && log_.Term(mci) != term_) return false;
    uint64_t before = log_.committed();
    log_.CommitTo(mci);
    Committed(before);
    return true;
  }

  // The leader's commit index advanced.
  void Committed(uint64_t before) {
    for (const auto& [index, cfg] : configs_) {
      if (index > before && index <= log_.committed()) {
        SyncProgress(true);  // a removal committed: stop replicating to the removed node
        break;
      }
    }
    while (!uncommitted_.empty() && uncommitted_.front().first <= log_.committed()) {
      uncommitted_bytes_ -= uncommitted_.front().second;
      uncommitted_.pop_front();
    }
    if (!reads_before_commit_.empty() && log_.Term(log_.committed()) == term_) {
      auto waiting = std::move(reads_before_commit_);
      reads_before_commit_.clear();
      for (auto& [from, ctx] : waiting) (void)HandleReadIndex(from, ctx);
    }
    // A leader removed from the configuration leads until the removal commits (thesis §4.2.2).
    if (!config().IsVoter(opts_.id) &&
        (configs_.empty() || configs_.back().first <= log_.committed())) {
      RLOG(Info) << "stepping down: removed from the configuration";
      BecomeFollower(term_, "");
    }
  }

  bool QuorumActive() {
    size_t active = 0;
    for (const NodeId& v : config().voters) {
      auto it = prs_.find(v);
      if (v == opts_.id || (it != prs_.end() && it->second.recent_active)) ++active;
    }
    for (auto& [id, pr] : prs_) {
      if (id != opts_.id) pr.recent_active = false;
    }
    return active >= Quorum();
  }

  // ---- Reads.
  Status HandleReadIndex(const NodeId& from, const std::string& ctx) {
    if (reads_.size() + reads_before_commit_.size() >= opts_.max_pending_reads) {
      return Status::Unavailable("raft: too many pending reads");
    }
    if (log_.Term(log_.committed()) != term_) {
      // The commit index may lag until the leader commits an entry of its term.
      reads_before_commit_.emplace_back(from, ctx);
      return Status::Ok();
    }
    ReadRequest req{++read_seq_, from, ctx, log_.committed(), {}};
    if (config().IsVoter(opts_.id)) req.acks.insert(opts_.id);
    reads_.push_back(std::move(req));
    if (reads_.back().acks.size() >= Quorum()) {
      ReleaseReads(reads_.back().seq);
    } else {
      BroadcastHeartbeat();
    }
    return Status::Ok();
  }

  void ReadAck(const NodeId& from, const std::string& ctx) {
    std::optional<uint64_t> seq = ParseSeqContext(ctx);
    if (!seq || !config().IsVoter(from)) return;
    // A heartbeat answered for request `seq` proves leadership after every earlier request too.
    uint64_t release = 0;
    for (ReadRequest& r : reads_) {
      if (r.seq > *seq) break;
      r.acks.insert(from);
      if (r.acks.size() >= Quorum()) release = r.seq;
    }
    if (release) ReleaseReads(release);
  }

  void ReleaseReads(uint64_t upto) {
    while (!reads_.empty() && reads_.front().seq <= upto) {
      ReadRequest& r = reads_.front();
      if (r.from == opts_.id) {
        read_states_.push_back(ReadState{r.index, std::move(r.context)});
      } else {
        Message m;
        m.type = MessageType::kReadIndexResp;
        m.to = r.from;
        m.index = r.index;
        m.context = std::move(r.context);
        Send(std::move(m));
      }
      reads_.pop_front();
    }
  }

  // ---- Ticks.
  void Tick() {
    CN_CHECK(!ready_outstanding_) << "Tick between GetReady and Advance";
    if (role_ == Role::kLeader) {
      TickLeader();
      return;
    }
    if (election_elapsed_ < (1 << 30)) ++election_elapsed_;
    if (Promotable() && election_elapsed_ >= randomized_timeout_) {
      election_elapsed_ = 0;
      RLOG(Info) << "election timeout at term " << term_;
      StartCampaign(opts_.pre_vote);
    }
  }

  void TickLeader() {
    ++heartbeat_elapsed_;
    ++election_elapsed_;
    if (election_elapsed_ >= opts_.election_ticks) {
      election_elapsed_ = 0;
      if (opts_.check_quorum && !QuorumActive()) {
        RLOG(Info) << "stepping down: no quorum heard from in an election timeout";
        BecomeFollower(term_, "");
        return;
      }
    }
    if (heartbeat_elapsed_ >= opts_.heartbeat_ticks) {
      heartbeat_elapsed_ = 0;
      BroadcastHeartbeat();
    }
    for (auto& [id, pr] : prs_) {
      if (pr.state != Progress::kSnapshot || ++pr.snap_idle_ticks < opts_.election_ticks) continue;
      // No acknowledgement for a while: chunks (or the final answer) were lost; resend.
      pr.snap_idle_ticks = 0;
      pr.snap_next = pr.snap_acked;
      pr.snap_rewind.reset();
      pr.snap_all_sent = false;
      SendSnapshotChunks(id, pr);
    }
  }

  // ---- Proposals.
  Status Propose(std::string data) {
    CN_CHECK(!ready_outstanding_) << "Propose between GetReady and Advance";
    if (data.size() > opts_.max_entry_bytes) {
      return Status::TooLarge("raft: entry of " + std::to_string(data.size()) +
                              " bytes exceeds max_entry_bytes (" +
                              std::to_string(opts_.max_entry_bytes) + ")");
    }
    if (role_ != Role::kLeader) {
      if (lead_.empty()) return Status::Unavailable("raft: no leader; retry");
      Forward({Entry{0, 0, EntryType::kNormal, std::move(data)}});
      return Status::Ok();
    }
    if (uncommitted_bytes_ > 0 && uncommitted_bytes_ + data.size() > opts_.max_uncommitted_bytes) {
      return Status::Unavailable("raft: too much uncommitted data; retry");
    }
    AppendEntries({Entry{0, 0, EntryType::kNormal, std::move(data)}});
    BroadcastAppend();
    return Status::Ok();
  }

  size_t ProposeBatch(std::vector<std::string> data, Status* refused) {
    CN_CHECK(!ready_outstanding_) << "ProposeBatch between GetReady and Advance";
    std::vector<Entry> ents;
    uint64_t bytes = uncommitted_bytes_;
    *refused = Status::Ok();
    for (std::string& d : data) {
      if (d.size() > opts_.max_entry_bytes) {
        *refused = Status::TooLarge("raft: entry of " + std::to_string(d.size()) +
                                    " bytes exceeds max_entry_bytes (" +
                                    std::to_string(opts_.max_entry_bytes) + ")");
        break;
      }
      if (role_ != Role::kLeader && lead_.empty()) {
        *refused = Status::Unavailable("raft: no leader; retry");
        break;
      }
      if (role_ == Role::kLeader && bytes > 0 && bytes + d.size() > opts_.max_uncommitted_bytes) {
        *refused = Status::Unavailable("raft: too much uncommitted data; retry");
        break;
      }
      bytes += d.size();
      ents.push_back(Entry{0, 0, EntryType::kNormal, std::move(d)});
    }
    size_t taken = ents.size();
    if (taken == 0) return 0;
    if (role_ != Role::kLeader) {
      // Forward in messages of at most max_append_bytes (and at least one entry).
      std::vector<Entry> part;
      uint64_t part_bytes = 0;
      for (Entry& e : ents) {
        if (!part.empty() && (part_bytes + e.data.size() > opts_.max_append_bytes ||
                              part.size() >= kMaxEntriesPerMessage)) {
          Forward(part);
          part.clear();
          part_bytes = 0;
        }
        part_bytes += e.data.size();
        part.push_back(std::move(e));
      }
      if (!part.empty()) Forward(part);
      return taken;
    }
    AppendEntries(std::move(ents));
    BroadcastAppend();
    return taken;
  }

  Status ProposeConfChange(const ConfChange& cc) {
    CN_CHECK(!ready_outstanding_) << "ProposeConfChange between GetReady and Advance";
    if (role_ != Role::kLeader) {
      return Status::NotPermitted("raft: membership changes go to the leader (" +
                                  (lead_.empty() ? std::string("unknown") : lead_) + ")");
    }
    if (cc.node.empty() || cc.node.size() > kMaxNodeIdBytes) {
      return Status::InvalidArgument("raft: node id must be 1..255 bytes");
    }
    if (log_.Term(log_.committed()) != term_) {
      return Status::Busy("raft: the new leader has not committed an entry of its term yet");
    }
    if (!configs_.empty() && configs_.back().first > log_.committed()) {
      return Status::Busy("raft: a membership change is in progress");
    }
    const Config& c = config();
    switch (cc.type) {
      case ConfChangeType::kAddVoter:
        if (c.IsVoter(cc.node)) return Status::InvalidArgument("raft: " + cc.node + " is a voter");
        break;
      case ConfChangeType::kAddLearner:
        if (c.IsVoter(cc.node)) {
          return Status::InvalidArgument("raft: " + cc.node +
                                         " is a voter (remove it first to demote it)");
        }
        if (c.IsLearner(cc.node)) {
          return Status::InvalidArgument("raft: " + cc.node + " is a learner");
        }
        break;
      case ConfChangeType::kRemoveNode:
        if (!c.Contains(cc.node)) {
          return Status::InvalidArgument("raft: " + cc.node + " is not a member");
        }
        if (c.IsVoter(cc.node) && c.voters.size() == 1) {
          return Status::InvalidArgument("raft: cannot remove the last voter");
        }
        break;
    }
    if (c.voters.size() + c.learners.size() >= kMaxConfigNodes &&
        cc.type != ConfChangeType::kRemoveNode) {
      return Status::InvalidArgument("raft: too many members");
    }
    ConfChange full = cc;
    full.config = ApplyConfChange(c, cc);
    AppendEntries({Entry{0, 0, EntryType::kConfChange, EncodeConfChange(full)}});
    BroadcastAppend();
    return Status::Ok();
  }

  Status ReadIndex(std::string ctx) {
    CN_CHECK(!ready_outstanding_) << "ReadIndex between GetReady and Advance";
    if (ctx.size() > kMaxContextBytes) return Status::InvalidArgument("raft: context too long");
    if (role_ == Role::kLeader) return HandleReadIndex(opts_.id, ctx);
    if (lead_.empty()) return Status::Unavailable("raft: no leader; retry");
    Message m;
    m.type = MessageType::kReadIndex;
    m.to = lead_;
    m.context = std::move(ctx);
    Send(std::move(m));
    return Status::Ok();
  }

  // ---- Ready.
  HardState CurrentHardState() const { return HardState{term_, vote_, log_.committed()}; }

  uint64_t CommittedLimit() const {
    // Only entries already durable here are handed out to apply, so a failed persist never
    // takes back an entry that was applied.
    if (log_.unstable_snapshot()) return applying_;
    return std::min(log_.committed(), log_.StableLast());
  }

  bool HasReady() const {
    if (ready_outstanding_) return false;
    if (!msgs_.empty() || !log_.unstable_entries().empty() || log_.unstable_snapshot() ||
        !read_states_.empty()) {
      return true;
    }
    if (HardStateChanged()) return true;
    return applying_ < CommittedLimit();
  }

  // Cheaper than building a HardState to compare (HasReady runs often).
  bool HardStateChanged() const {
    return !prev_hs_ || prev_hs_->term != term_ || prev_hs_->commit != log_.committed() ||
           prev_hs_->vote != vote_;
  }

  Ready GetReady() {
    CN_CHECK(!ready_outstanding_) << "GetReady twice without Advance";
    Ready rd;
    rd.snapshot = log_.unstable_snapshot();
    rd.entries = log_.unstable_entries();
    if (HardStateChanged()) rd.hard_state = CurrentHardState();
    rd.messages = std::move(msgs_);
    msgs_.clear();
    uint64_t hi = CommittedLimit();
    if (applying_ < hi) {
      Status s =
          log_.Entries(applying_ + 1, hi + 1, opts_.max_committed_bytes, &rd.committed_entries);
      CN_CHECK(s.ok()) << "committed entries from " << applying_ + 1 << ": " << s.ToString();
    }
    rd.read_states = std::move(read_states_);
    read_states_.clear();
    pending_ = PendingReady{};
    if (rd.snapshot) pending_.snapshot_index = rd.snapshot->meta.index;
    if (!rd.entries.empty()) {
      pending_.has_entries = true;
      pending_.last_index = rd.entries.back().index;
      pending_.last_term = rd.entries.back().term;
    }
    pending_.hard_state = rd.hard_state;
    pending_.applying =
        rd.committed_entries.empty() ? applying_ : rd.committed_entries.back().index;
    ready_outstanding_ = true;
    return rd;
  }

  void Advance() {
    CN_CHECK(ready_outstanding_) << "Advance without GetReady";
    ready_outstanding_ = false;
    if (pending_.snapshot_index) {
      log_.StableSnapTo(*pending_.snapshot_index);
      applied_ = applying_ = std::max(applied_, *pending_.snapshot_index);
    }
    if (pending_.has_entries) log_.StableTo(pending_.last_index, pending_.last_term);
    if (pending_.hard_state) {
      prev_hs_ = pending_.hard_state;
      durable_commit_ = pending_.hard_state->commit;
    }
    applied_ = applying_ = std::max(applying_, pending_.applying);
    FoldAppliedConfigs();
    if (role_ == Role::kLeader) {
      auto self = prs_.find(opts_.id);
      if (self != prs_.end() && self->second.MaybeUpdate(log_.StableLast()) && MaybeCommit()) {
        BroadcastAppend();
      }
    }
  }

  void PersistFailed() {
    CN_CHECK(ready_outstanding_) << "PersistFailed without GetReady";
    ready_outstanding_ = false;
    RLOG(Error) << "persisting failed: returning to the durable state (log "
                << opts_.storage->FirstIndex() << ".." << opts_.storage->LastIndex() << ", commit "
                << durable_commit_ << ")";
    // The committed entries handed out were durable before this Ready: they count as applied.
    applied_ = applying_ = std::max(applying_, pending_.applying);
    assembly_.reset();
    log_.ResetToStorage();
    log_.SetCommitted(std::min(log_.LastIndex(), std::max(durable_commit_, applied_)));
    RebuildConfig();
    prev_hs_.reset();  // whatever was written is unknown: write the hard state again
    BecomeFollower(term_, "");
    if (IsSoleVoter()) StartCampaign(false);
  }

  void FoldAppliedConfigs() {
    size_t k = 0;
    while (k < configs_.size() && configs_[k].first <= applied_) ++k;
    if (k == 0) return;
    base_config_ = configs_[k - 1].second;
    configs_.erase(configs_.begin(), configs_.begin() + k);
  }

  // ---- Accessors.
  std::vector<PeerProgress> Progresses() const {
    std::vector<PeerProgress> out;
    if (role_ != Role::kLeader) return out;
    for (const auto& [id, pr] : prs_) {
      out.push_back(PeerProgress{id, pr.match, pr.next, pr.StateName(), pr.learner,
                                 pr.recent_active, pr.inflights.size()});
    }
    return out;
  }

  RaftOptions opts_;
  RaftLog log_;
  uint64_t rng_;
  uint64_t term_ = 0;
  NodeId vote_;
  NodeId lead_;
  Role role_ = Role::kFollower;
  int election_elapsed_ = 0;
  int heartbeat_elapsed_ = 0;
  int randomized_timeout_ = 0;
  std::map<NodeId, bool> votes_;
  std::map<NodeId, Progress> prs_;                    // leader: every member, self included
  Config base_config_;                                // as of the snapshot or the last folded entry
  std::vector<std::pair<uint64_t, Config>> configs_;  // conf-change entries after it
  std::vector<Message> msgs_;
  std::vector<ReadState> read_states_;
  std::deque<ReadRequest> reads_;
  std::deque<std::pair<NodeId, std::string>> reads_before_commit_;
  uint64_t read_seq_ = 0;
  uint64_t snap_attempts_ = 0;                           // leader: snapshot streams started
  std::deque<std::pair<uint64_t, size_t>> uncommitted_;  // leader: (index, bytes) this term
  uint64_t uncommitted_bytes_ = 0;
  uint64_t applied_ = 0;              // applied as of the last Advance
  uint64_t applying_ = 0;             // handed out for applying
  std::optional<HardState> prev_hs_;  // the durable hard state, if known
  uint64_t durable_commit_ = 0;

  struct Assembly {
    NodeId from;
    uint64_t term;
    uint64_t attempt;
    SnapshotMeta meta;
    std::string data;
  };
  std::optional<Assembly> assembly_;  // follower: a snapshot being received

  struct PendingReady {
    std::optional<uint64_t> snapshot_index;
    bool has_entries = false;
    uint64_t last_index = 0;
    uint64_t last_term = 0;
    std::optional<HardState> hard_state;
    uint64_t applying = 0;
  };
  PendingReady pending_;
  bool ready_outstanding_ = false;
#undef RLOG
};

Result<std::unique_ptr<Raft>> Raft::New(RaftOptions options) {
  CN_RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>(std::move(options));
  CN_RETURN_IF_ERROR(impl->Init());
  return std::unique_ptr<Raft>(new Raft(std::move(impl)));
}

Raft::Raft(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Raft::~Raft() = default;

Status Raft::Step(const Message& m) { return impl_->Step(m); }
void Raft::Tick() { impl_->Tick(); }
Status Raft::Campaign() {
  CN_CHECK(!impl_->ready_outstanding_);
  if (!impl_->Promotable()) return Status::NotPermitted("raft: not a voter");
  if (impl_->role_ == Role::kLeader) return Status::Ok();
  impl_->StartCampaign(impl_->opts_.pre_vote);
  return Status::Ok();
}
Status Raft::Propose(std::string data) { return impl_->Propose(std::move(data)); }
size_t Raft::ProposeBatch(std::vector<std::string> data, Status* refused) {
  return impl_->ProposeBatch(std::move(data), refused);
}
Status Raft::ProposeConfChange(const ConfChange& cc) { return impl_->ProposeConfChange(cc); }
Status Raft::ReadIndex(std::string context) { return impl_->ReadIndex(std::move(context)); }
bool Raft::HasReady() const { return impl_->HasReady(); }
Ready Raft::GetReady() { return impl_->GetReady(); }
void Raft::Advance() { impl_->Advance(); }
void Raft::PersistFailed() { impl_->PersistFailed(); }

const NodeId& Raft::id() const { return impl_->opts_.id; }
uint64_t Raft::term() const { return impl_->term_; }
Role Raft::role() const { return impl_->role_; }
const NodeId& Raft::leader() const { return impl_->lead_; }
uint64_t Raft::commit_index() const { return impl_->log_.committed(); }
uint64_t Raft::applied_index() const { return impl_->applied_; }
uint64_t Raft::first_index() const { return impl_->log_.FirstIndex(); }
uint64_t Raft::last_index() const { return impl_->log_.LastIndex(); }
HardState Raft::hard_state() const { return impl_->CurrentHardState(); }
const Config& Raft::config() const { return impl_->config(); }
Config Raft::applied_config() const { return impl_->AppliedConfig(); }
std::vector<PeerProgress> Raft::progress() const { return impl_->Progresses(); }

Status Raft::Entries(uint64_t lo, uint64_t hi, std::vector<Entry>* out) const {
  const RaftLog& log = impl_->log_;
  if (lo < log.FirstIndex() || hi > log.LastIndex() + 1 || lo > hi) {
    return Status::OutOfRange("raft: entries [" + std::to_string(lo) + ", " + std::to_string(hi) +
                              ") outside the log " + std::to_string(log.FirstIndex()) + ".." +
                              std::to_string(log.LastIndex()));
  }
  while (lo < hi) {
    size_t before = out->size();
    CN_RETURN_IF_ERROR(log.Entries(lo, hi, UINT64_MAX, out));
    lo += out->size() - before;
  }
  return Status::Ok();
}

}  // namespace constellation::raft
