#include "tests/sim/sim.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <queue>
#include <set>
#include <sstream>
#include <vector>

#include "node/raft/raft.h"
#include "tests/sim/kv.h"
#include "tests/sim/linearizability.h"

namespace constellation::sim {
namespace {

using raft::ConfChange;
using raft::ConfChangeType;
using raft::Config;
using raft::Entry;
using raft::EntryType;
using raft::MemoryStorage;
using raft::Message;
using raft::Raft;
using raft::RaftOptions;
using raft::Ready;
using raft::Role;
using raft::Snapshot;

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x2545f4914f6cdd1dull + 0x9e3779b97f4a7c15ull) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : Next() % n; }
  int64_t Range(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(Below(hi - lo + 1)); }
  bool Chance(double p) { return p > 0 && static_cast<double>(Next() >> 11) * 0x1.0p-53 < p; }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[Below(v.size())];
  }

 private:
  uint64_t s_;
};

uint64_t HashBytes(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

constexpr int64_t kMaxExtraQuietMs = 2000;

class Simulation {
 public:
  explicit Simulation(const SimOptions& o) : o_(o), rng_(o.seed) {}

  SimResult Run() {
    Setup();
    const int64_t quiet_start = o_.duration_ms - o_.quiet_ms;
    // The quiet period is extended (bounded) until the cluster is live again: without pre-vote
    // a node with a stale log may keep disrupting elections for a few unlucky rounds.
    auto live = [&] { return !CurrentLeader().empty() && last_success_ >= quiet_start; };
    for (now_ = 0; failure_.empty() &&
                   (now_ < o_.duration_ms || (now_ < o_.duration_ms + kMaxExtraQuietMs && !live()));
         ++now_) {
      if (now_ < quiet_start) {
        Faults();
      } else if (now_ == quiet_start) {
        Quiet();
      }
      Restarts();
      Ticks();
      Deliver();
      Clients();
      Readies();
      if (now_ % 50 == 0) CheckLogMatching();
    }
    if (failure_.empty()) Finish(quiet_start);
    SimResult r;
    r.ok = failure_.empty();
    r.failure = failure_;
    r.summary = Summary();
    r.lin_gave_up = lin_gave_up_;
    return r;
  }

 private:
  struct Node {
    std::string id;
    std::unique_ptr<MemoryStorage> storage;  // durable across crashes
    std::unique_ptr<Raft> raft;              // null while down
    KvState kv;                              // volatile
    uint64_t applied = 0;
    int64_t tick_interval = 10;
    int64_t tick_phase = 0;
    int64_t restart_at = -1;
    enum CrashPoint { kNone, kBeforePersist, kAfterPersist, kAfterSend } crash_point = kNone;
    std::set<std::pair<uint32_t, uint64_t>> proposed;  // (client, op) proposed here
    struct PendingRead {
      uint32_t client;
      uint64_t op_id;
      std::string key;
      uint64_t index = 0;
    };
    std::map<std::string, PendingRead> reads;  // by context: waiting for the read index
    std::vector<PendingRead> ready_reads;      // read index known: waiting to apply it
    uint64_t commit_seen = 0;
    uint64_t led_term = 0;
  };

  struct Client {
    uint32_t id = 0;
    uint64_t next_op = 1;
    bool busy = false;
    int64_t next_at = 0;
    int64_t deadline = 0;
    uint64_t op_id = 0;
    size_t hist = 0;
  };

  struct HistOp {
    std::string key;
    LinOp op;
    bool dropped = false;  // a read that never answered: no information, left out
  };

  struct InFlight {
    int64_t at;
    uint64_t seq;
    uint8_t from;  // node indexes (cheaper to move around the heap than names)
    uint8_t to;
    std::string bytes;
    bool operator>(const InFlight& o) const { return at != o.at ? at > o.at : seq > o.seq; }
  };

  // ---- Setup.
  void Setup() {
    int n = static_cast<int>(rng_.Pick(std::vector<int64_t>{3, 3, 4, 5, 5, 5, 7}));
    int voters = n <= 3 ? n : (rng_.Chance(0.5) ? std::min(n, 5) : 3);
    loss_ = rng_.Pick(std::vector<double>{0, 0.01, 0.05, 0.1});
    dup_ = rng_.Pick(std::vector<double>{0, 0.01, 0.05});
    long_delay_ = rng_.Pick(std::vector<double>{0, 0.02, 0.1});
    partition_gap_ = rng_.Pick(std::vector<int64_t>{0, 300, 600});
    crash_gap_ = rng_.Pick(std::vector<int64_t>{0, 250, 500});
    conf_gap_ = rng_.Pick(std::vector<int64_t>{0, 400, 800});
    isolate_new_leader_ = rng_.Pick(std::vector<double>{0, 0, 0.3});
    isolate_on_commit_ = rng_.Pick(std::vector<double>{0, 0, 0.02});
    persist_fail_ = rng_.Pick(std::vector<double>{0, 0, 0.003});
    padding_ = static_cast<size_t>(rng_.Pick(std::vector<int64_t>{0, 100, 600}));
    compact_every_ = rng_.Pick(std::vector<int64_t>{10, 30, 100});
    compact_keep_ = rng_.Pick(std::vector<int64_t>{0, 0, 5});
    base_.election_ticks = 10;
    base_.heartbeat_ticks = 2;
    base_.max_append_bytes = static_cast<size_t>(rng_.Pick(std::vector<int64_t>{1, 64, 1 << 20}));
    base_.max_inflight_appends = static_cast<size_t>(rng_.Pick(std::vector<int64_t>{1, 4, 256}));
    base_.max_snapshot_chunk_bytes =
        static_cast<size_t>(rng_.Pick(std::vector<int64_t>{16, 64, 256}));
    base_.max_inflight_snapshot_chunks =
        static_cast<size_t>(rng_.Pick(std::vector<int64_t>{1, 2, 4}));
    // Without check-quorum a cut-off leader keeps leading: ReadIndex must not rely on leases.
    // Without both, a node removed while unreachable disrupts the cluster forever (thesis
    // §4.2.3), so at most one is off.
    switch (rng_.Below(5)) {
      case 0:
        base_.check_quorum = false;
        break;
      case 1:
        base_.pre_vote = false;
        break;
      default:
        break;
    }
    base_.unsafe_commit_previous_terms = o_.broken;
    base_.min_log_level = o_.verbose ? LogLevel::kInfo : LogLevel::kFatal;
    base_.logger = [this](LogLevel, const std::string& line) {
      if (o_.verbose) std::printf("%6lld raft %s\n", static_cast<long long>(now_), line.c_str());
    };
    if (o_.broken) {
      // The fault profile that sets up Figure 8 of the Raft paper most often: five voters,
      // one entry per append (so an old-term entry can reach a majority alone), leaders crashing
      // or cut off right after they append, and lossy links.
      n = 5;
      voters = 5;
      base_.max_append_bytes = 1;
      loss_ = 0.02;
      crash_gap_ = 0;
      partition_gap_ = 0;
      conf_gap_ = 0;
      isolate_new_leader_ = 0.9;
      isolate_on_commit_ = 0.8;
    }
    keys_ = static_cast<int>(rng_.Range(1, 3));
    int clients = static_cast<int>(rng_.Range(2, 5));

    Config initial;
    for (int i = 1; i <= n; ++i) {
      std::string id = std::to_string(i);
      (i <= voters ? initial.voters : initial.learners).push_back(id);
    }
    std::sort(initial.voters.begin(), initial.voters.end());
    std::sort(initial.learners.begin(), initial.learners.end());
    for (int i = 1; i <= n; ++i) {
      nodes_.emplace_back();
      Node& node = nodes_.back();
      node.id = std::to_string(i);
      node.storage = std::make_unique<MemoryStorage>(initial);
      node.tick_interval = rng_.Range(9, 11);
      node.tick_phase = rng_.Range(0, node.tick_interval - 1);
      order_.push_back(node.id);
      Start(node);
    }
    for (int i = 0; i < clients; ++i) {
      Client c;
      c.id = static_cast<uint32_t>(i + 1);
      c.next_at = rng_.Range(0, 50);
      clients_.push_back(c);
    }
    next_partition_ = partition_gap_ ? rng_.Range(100, partition_gap_ + 100) : INT64_MAX;
    next_crash_ = crash_gap_ ? rng_.Range(100, crash_gap_ + 100) : INT64_MAX;
    next_conf_ = conf_gap_ ? rng_.Range(200, conf_gap_ + 200) : INT64_MAX;
    std::ostringstream os;
    os << n << " nodes (" << voters << " voters), " << clients << " clients, " << keys_ << " keys, "
       << (base_.pre_vote ? "" : "no ") << "pre-vote, " << (base_.check_quorum ? "" : "no ")
       << "check-quorum, loss " << loss_ << ", dup " << dup_ << ", long delays " << long_delay_
       << ", partitions/" << partition_gap_ << "ms, crashes/" << crash_gap_ << "ms, conf/"
       << conf_gap_ << "ms, isolate new leaders " << isolate_new_leader_ << ", disk faults "
       << persist_fail_ << ", append " << base_.max_append_bytes << "B x"
       << base_.max_inflight_appends << ", chunks " << base_.max_snapshot_chunk_bytes << "B x"
       << base_.max_inflight_snapshot_chunks << ", compact every " << compact_every_;
    setup_ = os.str();
    Trace("setup: " + setup_);
  }

  void Trace(const std::string& s) {
    if (o_.verbose) std::printf("%6lld sim %s\n", static_cast<long long>(now_), s.c_str());
  }

  void Fail(const std::string& what) {
    if (!failure_.empty()) return;
    std::ostringstream os;
    os << "at t=" << now_ << "ms: " << what;
    failure_ = os.str();
    Trace("FAILURE " + failure_);
  }

  Node* Find(const std::string& id) {
    size_t i = id.size() == 1 ? static_cast<size_t>(id[0] - '1') : nodes_.size();
    return i < nodes_.size() ? &nodes_[i] : nullptr;
  }
  Node& N(const std::string& id) { return *Find(id); }

  // ---- Node lifecycle.
  void Start(Node& node) {
    node.kv = KvState();
    node.applied = 0;
    const Snapshot& snap = node.storage->snapshot();
    if (snap.meta.index > 0) {
      if (!node.kv.Decode(snap.data, snap.meta.index, padding_)) {
        Fail("node " + node.id + ": stored snapshot data is corrupt");
        return;
      }
      node.applied = snap.meta.index;
    }
    RaftOptions opts = base_;
    opts.id = node.id;
    opts.storage = node.storage.get();
    opts.seed = o_.seed * 131 + std::stoull(node.id) * 7 + restarts_;
    opts.applied = node.applied;
    Result<std::unique_ptr<Raft>> r = Raft::New(opts);
    if (!r.ok()) {
      Fail("node " + node.id + " cannot restart: " + r.status().ToString());
      return;
    }
    node.raft = std::move(*r);
    node.restart_at = -1;
    CheckNode(node);
  }

  void Crash(Node& node, const char* how) {
    Trace("crash " + node.id + " (" + how + ")");
    ++crashes_;
    node.raft.reset();
    node.kv = KvState();
    node.proposed.clear();
    node.reads.clear();
    node.ready_reads.clear();
    node.crash_point = Node::kNone;
    node.restart_at = now_ + rng_.Range(20, 400);
  }

  void Restarts() {
    for (const std::string& id : order_) {
      Node& node = N(id);
      if (!node.raft && node.restart_at >= 0 && now_ >= node.restart_at) {
        Trace("restart " + id);
        ++restarts_;
        Start(node);
      }
    }
  }

  // ---- Faults.
  void Faults() {
    if (isolate_at_ >= 0 && now_ >= isolate_at_) {
      // A leader elected moments ago is cut off: its first entries stay on a minority.
      isolate_at_ = -1;
      if (N(isolate_id_).raft) {
        cut_ = Cut();
        std::set<std::string> side{isolate_id_};
        Partition(side, false);
        heal_at_ = now_ + rng_.Range(200, 500);
      }
    }
    if (cut_.any && now_ >= heal_at_) {
      Trace("heal partition");
      cut_ = Cut();
      next_partition_ =
          partition_gap_ ? now_ + rng_.Range(partition_gap_ / 2, partition_gap_) : INT64_MAX;
    }
    if (!cut_.any && now_ >= next_partition_) {
      MakePartition();
      heal_at_ = now_ + rng_.Range(100, 500);
    }
    if (now_ >= next_crash_) {
      next_crash_ = now_ + rng_.Range(crash_gap_ / 2, crash_gap_);
      std::vector<std::string> up;
      for (const std::string& id : order_) {
        if (N(id).raft) up.push_back(id);
      }
      if (!up.empty()) {
        // Prefer the leader now and then: leader crashes are the interesting ones.
        std::string victim =
            rng_.Chance(leader_bias_) && !CurrentLeader().empty() ? CurrentLeader() : rng_.Pick(up);
        Node& node = N(victim);
        switch (rng_.Below(4)) {
          case 0:
            Crash(node, "between steps");
            break;
          case 1:
            node.crash_point = Node::kBeforePersist;
            break;
          case 2:
            node.crash_point = Node::kAfterPersist;
            break;
          default:
            node.crash_point = Node::kAfterSend;
            break;
        }
      }
    }
    if (now_ >= next_conf_) {
      next_conf_ = now_ + rng_.Range(conf_gap_ / 2, conf_gap_);
      ProposeConfChange();
    }
  }

  void MakePartition() {
    std::set<std::string> side;
    bool one_way = rng_.Chance(0.3);
    std::string lead = CurrentLeader();
    if (!lead.empty() && rng_.Chance(isolate_leader_)) {
      side.insert(lead);  // Jepsen's favourite: cut the leader off (it keeps taking proposals)
    } else {
      for (const std::string& id : order_) {
        if (rng_.Chance(0.4)) side.insert(id);
      }
    }
    if (side.empty()) side.insert(rng_.Pick(order_));
    Partition(side, one_way);
  }

  // Cuts `side` off from the rest (with one_way, only messages from `side` are lost).
  void Partition(const std::set<std::string>& side, bool one_way) {
    for (const std::string& a : order_) {
      for (const std::string& b : order_) {
        if (side.count(a) && !side.count(b)) cut_.Block(N(a), N(b), nodes_);
        if (!one_way && !side.count(a) && side.count(b)) cut_.Block(N(a), N(b), nodes_);
      }
    }
    std::string s;
    for (const std::string& id : side) s += id + " ";
    Trace(std::string("partition ") + (one_way ? "(one way, outbound) " : "") + "{ " + s + "}");
    ++partitions_;
  }

  void ProposeConfChange() {
    std::string lead = CurrentLeader();
    if (lead.empty()) return;
    Raft& r = *N(lead).raft;
    const Config& c = r.config();
    std::vector<ConfChange> options;
    for (const std::string& id : order_) {
      if (!c.Contains(id)) options.push_back(ConfChange{ConfChangeType::kAddLearner, id});
      if (c.IsLearner(id)) options.push_back(ConfChange{ConfChangeType::kAddVoter, id});
      if (c.IsVoter(id) && c.voters.size() > 3) {
        options.push_back(ConfChange{ConfChangeType::kRemoveNode, id});
      }
      if (c.IsLearner(id) && rng_.Chance(0.2)) {
        options.push_back(ConfChange{ConfChangeType::kRemoveNode, id});
      }
    }
    if (options.empty()) return;
    ConfChange cc = rng_.Pick(options);
    Status s = r.ProposeConfChange(cc);
    static const char* kNames[] = {"add-voter", "add-learner", "remove"};
    Trace(std::string("conf change ") + kNames[static_cast<int>(cc.type)] + " " + cc.node +
          " via " + lead + ": " + s.ToString());
    if (s.ok()) ++conf_changes_;
    CheckNode(N(lead));
  }

  void Quiet() {
    Trace("quiet period: healing, restarting, no more faults");
    quiet_ = true;
    isolate_at_ = -1;
    cut_ = Cut();
    loss_ = dup_ = long_delay_ = persist_fail_ = 0;
    for (const std::string& id : order_) {
      Node& node = N(id);
      node.crash_point = Node::kNone;
      if (!node.raft) node.restart_at = now_;
    }
  }

  // ---- Time.
  void Ticks() {
    for (const std::string& id : order_) {
      Node& node = N(id);
      if (!node.raft || (now_ + node.tick_phase) % node.tick_interval != 0) continue;
      node.raft->Tick();
      CheckNode(node);
    }
  }

  // ---- Network.
  void Send(const Message& m) {
    ++sent_;
    if (m.type == raft::MessageType::kSnapshot) ++snapshot_chunks_;
    if (rng_.Chance(loss_)) return;
    std::string bytes = raft::EncodeMessage(m);
    int copies = rng_.Chance(dup_) ? 2 : 1;
    for (int i = 0; i < copies; ++i) {
      int64_t delay = rng_.Chance(long_delay_) ? rng_.Range(10, 150) : rng_.Range(1, 5);
      Node* from = Find(m.from);
      Node* to = Find(m.to);
      if (!from || !to) return;  // addressed to no node of this cluster
      net_.push(InFlight{now_ + delay, ++msg_seq_, static_cast<uint8_t>(from - nodes_.data()),
                         static_cast<uint8_t>(to - nodes_.data()), bytes});
    }
  }

  void Deliver() {
    while (!net_.empty() && net_.top().at <= now_ && failure_.empty()) {
      // The queue's top is const; the element is moved out just before it is popped.
      InFlight f = std::move(const_cast<InFlight&>(net_.top()));
      net_.pop();
      Node* to = &nodes_[f.to];
      if (cut_.blocked[f.from][f.to] || !to->raft) continue;
      Result<Message> m = raft::DecodeMessage(f.bytes);
      if (!m.ok()) {
        Fail("a message failed to decode: " + m.status().ToString());
        return;
      }
      Status s = to->raft->Step(*m);
      if (!s.ok()) {
        Fail("node " + to->id + " refused " + raft::DescribeMessage(*m) + ": " + s.ToString());
        return;
      }
      CheckNode(*to);
    }
  }

  // ---- Ready.
  void Readies() {
    for (int round = 0; round < 16 && failure_.empty(); ++round) {
      bool any = false;
      for (const std::string& id : order_) {
        Node& node = N(id);
        if (node.raft && node.raft->HasReady()) {
          ProcessReady(node);
          any = true;
        }
      }
      if (!any) return;
    }
  }

  void ProcessReady(Node& node) {
    Ready rd = node.raft->GetReady();
    bool writes = rd.snapshot || !rd.entries.empty() || rd.hard_state;
    if (node.crash_point == Node::kBeforePersist && writes) {
      Crash(node, "before persisting a Ready");
      return;
    }
    if (writes && rng_.Chance(persist_fail_)) {
      // The disk refused the write: nothing is persisted or sent. Committed entries were
      // durable before this Ready, so they are applied (the contract allows it).
      Trace("disk refused node " + node.id + "'s write");
      ++persist_failures_;
      ApplyEntries(node, rd.committed_entries);
      node.raft->PersistFailed();
      CheckNode(node);
      return;
    }
    if (rd.snapshot) node.storage->ApplySnapshot(*rd.snapshot);
    node.storage->Append(rd.entries);
    if (rd.hard_state) node.storage->SetHardState(*rd.hard_state);
    if (node.crash_point == Node::kAfterPersist && writes) {
      Crash(node, "after persisting, before sending");
      return;
    }
    for (const Message& m : rd.messages) Send(m);
    if (node.crash_point == Node::kAfterSend && !rd.committed_entries.empty()) {
      Crash(node, "after sending, before applying");
      return;
    }
    if (rd.snapshot) {
      KvState kv;
      if (!kv.Decode(rd.snapshot->data, rd.snapshot->meta.index, padding_)) {
        Fail("node " + node.id + " received a corrupt snapshot " +
             std::to_string(rd.snapshot->meta.index));
        return;
      }
      ++snapshots_installed_;
      node.kv = std::move(kv);
      node.applied = rd.snapshot->meta.index;
      CheckStateHash(node, node.applied);
    }
    ApplyEntries(node, rd.committed_entries);
    for (const raft::ReadState& rs : rd.read_states) {
      auto it = node.reads.find(rs.context);
      if (it == node.reads.end()) continue;
      it->second.index = rs.index;
      node.ready_reads.push_back(it->second);
      node.reads.erase(it);
    }
    node.raft->Advance();
    if (node.raft->applied_index() != node.applied) {
      Fail("node " + node.id + ": raft says applied " + std::to_string(node.raft->applied_index()) +
           ", state machine is at " + std::to_string(node.applied));
      return;
    }
    ServeReads(node);
    MaybeCompact(node);
    CheckNode(node);
  }

  void ApplyEntries(Node& node, const std::vector<Entry>& entries) {
    for (const Entry& e : entries) {
      if (e.index != node.applied + 1) {
        Fail("node " + node.id + " was handed entry " + std::to_string(e.index) + " after " +
             std::to_string(node.applied));
        return;
      }
      Record(node, e, "applied");
      if (e.type == EntryType::kNormal && !e.data.empty()) {
        std::optional<KvOp> op = DecodeOp(e.data);
        if (!op) {
          Fail("node " + node.id + " applied a malformed entry " + std::to_string(e.index));
          return;
        }
        KvState::Applied a = node.kv.Apply(*op);
        if (!a.duplicate && node.proposed.erase({op->client, op->op_id})) {
          CompleteWrite(op->client, op->op_id, a.ok);
        }
      }
      node.applied = e.index;
      CheckStateHash(node, e.index);
    }
  }

  void ServeReads(Node& node) {
    std::vector<Node::PendingRead> waiting;
    for (Node::PendingRead& r : node.ready_reads) {
      if (r.index <= node.applied) {
        CompleteRead(r.client, r.op_id, node.kv.Get(r.key));
      } else {
        waiting.push_back(std::move(r));
      }
    }
    node.ready_reads = std::move(waiting);
  }

  void MaybeCompact(Node& node) {
    if (node.applied < node.storage->FirstIndex() + static_cast<uint64_t>(compact_every_)) return;
    if (node.applied <= node.storage->snapshot().meta.index) return;
    Status s = node.storage->CreateSnapshot(node.applied, node.raft->applied_config(),
                                            node.kv.Encode(node.applied, padding_),
                                            static_cast<uint64_t>(compact_keep_));
    if (!s.ok()) Fail("node " + node.id + " could not compact: " + s.ToString());
  }

  // ---- Clients.
  std::string CurrentLeader() {
    std::string best;
    uint64_t term = 0;
    for (const std::string& id : order_) {
      Node& n = N(id);
      if (n.raft && n.raft->role() == Role::kLeader && n.raft->term() >= term) {
        best = id;
        term = n.raft->term();
      }
    }
    return best;
  }

  void Clients() {
    for (Client& c : clients_) {
      if (c.busy && now_ >= c.deadline) {
        HistOp& h = history_[c.hist];
        if (h.op.kind == LinOp::kGet) {
          h.dropped = true;
        }  // writes stay with ret = kNeverReturned: outcome unknown
        ++ops_unknown_;
        c.busy = false;
        c.next_at = now_ + rng_.Range(1, 20);
      }
      if (!c.busy && now_ >= c.next_at) Issue(c);
    }
  }

  void Issue(Client& c) {
    std::string target = CurrentLeader();
    if (target.empty() || rng_.Chance(0.35)) target = rng_.Pick(order_);
    Node& node = N(target);
    if (!node.raft) {
      c.next_at = now_ + 5;
      return;
    }
    std::string key = std::string(1, 'k') + static_cast<char>('0' + rng_.Below(keys_));
    uint64_t op_id = c.next_op++;
    HistOp h;
    h.key = key;
    h.op.client = static_cast<int>(c.id);
    h.op.call = ++event_seq_;
    uint64_t kind = rng_.Below(10);
    Status s;
    if (kind < 4) {
      h.op.kind = LinOp::kGet;
      std::string ctx = std::to_string(c.id) + "." + std::to_string(op_id);
      s = node.raft->ReadIndex(ctx);
      if (s.ok()) node.reads[ctx] = Node::PendingRead{c.id, op_id, key, 0};
    } else {
      KvOp op;
      op.client = c.id;
      op.op_id = op_id;
      op.key = key;
      op.value = std::to_string(c.id) + "." + std::to_string(op_id);
      if (kind < 8) {
        op.kind = KvOp::kPut;
        h.op.kind = LinOp::kPut;
      } else {
        op.kind = KvOp::kCas;
        h.op.kind = LinOp::kCas;
        const std::vector<std::string>& recent = written_[key];
        op.expect = recent.empty() || rng_.Chance(0.2) ? "" : recent[rng_.Below(recent.size())];
        h.op.expect = op.expect;
      }
      h.op.value = op.value;
      auto& w = written_[key];
      w.push_back(op.value);
      if (w.size() > 3) w.erase(w.begin());
      s = node.raft->Propose(EncodeOp(op));
      if (s.ok()) node.proposed.insert({c.id, op_id});
    }
    CheckNode(node);
    if (!s.ok()) {
      // Refused before entering the log: it never happened.
      ++ops_refused_;
      c.next_at = now_ + rng_.Range(5, 30);
      return;
    }
    c.busy = true;
    c.op_id = op_id;
    c.deadline = now_ + 500;
    c.hist = history_.size();
    history_.push_back(std::move(h));
  }

  void CompleteWrite(uint32_t client, uint64_t op_id, bool ok) {
    Client& c = clients_[client - 1];
    if (!c.busy || c.op_id != op_id) return;
    HistOp& h = history_[c.hist];
    h.op.ret = ++event_seq_;
    h.op.out_ok = ok;
    Done(c);
  }

  void CompleteRead(uint32_t client, uint64_t op_id, const std::string& value) {
    Client& c = clients_[client - 1];
    if (!c.busy || c.op_id != op_id) return;
    HistOp& h = history_[c.hist];
    h.op.ret = ++event_seq_;
    h.op.out_value = value;
    Done(c);
  }

  void Done(Client& c) {
    c.busy = false;
    c.next_at = now_ + rng_.Range(1, 20);
    ++ops_ok_;
    last_success_ = now_;
  }

  // ---- Invariants.
  // Every entry known committed (seen below some node's commit index, or applied) is recorded;
  // a different entry at a recorded index is a safety violation.
  void Record(Node& node, const Entry& e, const char* how) {
    uint64_t h = HashBytes(e.data) ^ (static_cast<uint64_t>(e.type) << 63);
    // The term it was committed in is at most the observer's: a node learns a commit from the
    // leader that made it, or later.
    uint64_t seen_term = node.raft ? node.raft->term() : UINT64_MAX;
    auto [it, inserted] = committed_.emplace(e.index, Committed{e.term, h, seen_term});
    if (inserted) return;
    it->second.seen_term = std::min(it->second.seen_term, seen_term);
    if (it->second.term != e.term || it->second.hash != h) {
      Fail("state machine safety: node " + node.id + " " + how + " entry " +
           std::to_string(e.term) + "/" + std::to_string(e.index) + " but " +
           std::to_string(it->second.term) + "/" + std::to_string(e.index) +
           " was committed before");
    }
  }

  void CheckStateHash(Node& node, uint64_t index) {
    uint64_t h = node.kv.Hash();
    auto [it, inserted] = state_hash_.emplace(index, h);
    if (!inserted && it->second != h) {
      Fail("state machine safety: node " + node.id + "'s state after index " +
           std::to_string(index) + " differs from another node's");
    }
  }

  void CheckNode(Node& node) {
    if (!node.raft || !failure_.empty()) return;
    Raft& r = *node.raft;
    // Committed prefix.
    uint64_t c = r.commit_index();
    if (c > node.commit_seen) {
      uint64_t lo = std::max(node.commit_seen + 1, r.first_index());
      if (lo <= c) {
        std::vector<Entry> ents;
        Status s = r.Entries(lo, c + 1, &ents);
        if (!s.ok()) {
          Fail("node " + node.id + ": reading committed entries: " + s.ToString());
          return;
        }
        for (const Entry& e : ents) Record(node, e, "committed");
        // A leader whose commit index lands on an older term's entry committed it by counting
        // (only the broken raft does that).
        if (r.role() == Role::kLeader && !ents.empty() && ents.back().index == c &&
            ents.back().term != r.term()) {
          ++old_term_commits_;
        }
        if (r.role() == Role::kLeader && !quiet_ && isolate_at_ < 0 &&
            rng_.Chance(isolate_on_commit_)) {
          isolate_at_ = now_ + rng_.Range(0, 2);
          isolate_id_ = node.id;
        }
      }
      node.commit_seen = c;
    }
    if (r.role() != Role::kLeader) return;
    // Election safety: one leader per term.
    auto [it, inserted] = leaders_.emplace(r.term(), node.id);
    if (!inserted && it->second != node.id) {
      Fail("election safety: " + node.id + " and " + it->second + " both lead term " +
           std::to_string(r.term()));
      return;
    }
    if (node.led_term == r.term()) return;
    node.led_term = r.term();
    Trace(node.id + " leads term " + std::to_string(r.term()));
    if (!quiet_ && isolate_at_ < 0 && rng_.Chance(isolate_new_leader_)) {
      isolate_at_ = now_ + rng_.Pick(std::vector<int64_t>{0, 0, 2, 5, 10});
      isolate_id_ = node.id;
    }
    // Leader completeness: a new leader holds every entry committed in an earlier term. (A leader
    // of an old term can come to power after a newer leader committed entries: node 1 wins term 1
    // with a vote that arrives late, while node 3 leads term 2.)
    uint64_t known = 0;
    for (auto it = committed_.rbegin(); it != committed_.rend(); ++it) {
      if (it->second.seen_term < r.term()) {
        known = it->first;
        break;
      }
    }
    if (known == 0) return;
    if (r.last_index() < known) {
      Fail("leader completeness: " + node.id + " leads term " + std::to_string(r.term()) +
           " with log ending at " + std::to_string(r.last_index()) + " but entry " +
           std::to_string(known) + " is committed");
      return;
    }
    uint64_t lo = r.first_index();
    if (lo > known) return;
    std::vector<Entry> ents;
    if (!r.Entries(lo, known + 1, &ents).ok()) return;
    for (const Entry& e : ents) {
      auto ci = committed_.find(e.index);
      if (ci == committed_.end() || ci->second.seen_term >= r.term()) continue;
      uint64_t h = HashBytes(e.data) ^ (static_cast<uint64_t>(e.type) << 63);
      if (ci->second.term != e.term || ci->second.hash != h) {
        Fail("leader completeness: " + node.id + " leads term " + std::to_string(r.term()) +
             " with entry " + std::to_string(e.term) + "/" + std::to_string(e.index) + " where " +
             std::to_string(ci->second.term) + "/" + std::to_string(e.index) + " is committed");
        return;
      }
    }
  }

  // Log matching: if two logs hold an entry with the same index and term, they are identical up
  // to it.
  void CheckLogMatching() {
    std::vector<std::pair<std::string, std::vector<Entry>>> logs;
    for (const std::string& id : order_) {
      Node& n = N(id);
      if (!n.raft) continue;
      std::vector<Entry> ents;
      if (n.raft->last_index() >= n.raft->first_index()) {
        if (!n.raft->Entries(n.raft->first_index(), n.raft->last_index() + 1, &ents).ok()) continue;
      }
      logs.emplace_back(id, std::move(ents));
    }
    for (size_t a = 0; a < logs.size(); ++a) {
      for (size_t b = a + 1; b < logs.size(); ++b) {
        const auto& la = logs[a].second;
        const auto& lb = logs[b].second;
        if (la.empty() || lb.empty()) continue;
        uint64_t lo = std::max(la.front().index, lb.front().index);
        uint64_t hi = std::min(la.back().index, lb.back().index);
        if (lo > hi) continue;
        auto at = [](const std::vector<Entry>& l, uint64_t i) -> const Entry& {
          return l[i - l.front().index];
        };
        uint64_t match = 0;
        for (uint64_t i = hi; i >= lo; --i) {
          if (at(la, i).term == at(lb, i).term) {
            match = i;
            break;
          }
          if (i == lo) break;
        }
        for (uint64_t i = lo; i <= match; ++i) {
          if (!(at(la, i) == at(lb, i))) {
            Fail("log matching: nodes " + logs[a].first + " and " + logs[b].first +
                 " agree on entry " + std::to_string(at(la, match).term) + "/" +
                 std::to_string(match) + " but differ at " + std::to_string(i));
            return;
          }
        }
      }
    }
  }

  // ---- End of run.
  void Finish(int64_t quiet_start) {
    if (CurrentLeader().empty()) {
      Fail("liveness: no leader at the end of the quiet period");
      return;
    }
    if (last_success_ < quiet_start) {
      Fail("liveness: no client operation completed in the quiet period");
      return;
    }
    CheckLogMatching();
    std::map<std::string, std::vector<LinOp>> by_key;
    for (const HistOp& h : history_) {
      if (!h.dropped) by_key[h.key].push_back(h.op);
    }
    for (auto& [key, ops] : by_key) {
      // Reads still waiting carry no information.
      std::vector<LinOp> kept;
      for (const LinOp& op : ops) {
        if (op.kind == LinOp::kGet && op.ret == kNeverReturned) continue;
        kept.push_back(op);
      }
      LinResult r = CheckRegister(kept);
      if (r.gave_up) {
        lin_gave_up_ = true;
        Trace("linearizability check of " + key + " gave up: " + r.explanation);
        continue;
      }
      if (!r.ok) {
        Fail("linearizability of key " + key + ": " + r.explanation);
        return;
      }
    }
  }

  std::string Summary() const {
    std::ostringstream os;
    uint64_t max_commit = committed_.empty() ? 0 : committed_.rbegin()->first;
    os << setup_ << " | " << ops_ok_ << " ops ok, " << ops_unknown_ << " timed out, "
       << ops_refused_ << " refused, " << leaders_.size() << " terms with leaders, commit "
       << max_commit << ", " << crashes_ << " crashes, " << partitions_ << " partitions, "
       << conf_changes_ << " conf changes, " << persist_failures_ << " disk faults, "
       << snapshot_chunks_ << " snapshot chunks, " << snapshots_installed_
       << " snapshots installed, " << sent_ << " messages";
    if (o_.broken) os << ", " << old_term_commits_ << " commits of older terms' entries";
    return os.str();
  }

  SimOptions o_;
  Rng rng_;
  int64_t now_ = 0;
  RaftOptions base_;
  std::vector<Node> nodes_;  // node "i" is nodes_[i - 1]
  std::vector<std::string> order_;
  std::vector<Client> clients_;
  std::vector<HistOp> history_;
  std::map<std::string, std::vector<std::string>> written_;
  std::priority_queue<InFlight, std::vector<InFlight>, std::greater<InFlight>> net_;
  struct Cut {
    bool any = false;
    bool blocked[8][8] = {};  // [from][to], by node index
    void Block(const Node& a, const Node& b, const std::vector<Node>& nodes) {
      blocked[&a - nodes.data()][&b - nodes.data()] = true;
      any = true;
    }
  };
  Cut cut_;  // links cut by the current partition
  struct Committed {
    uint64_t term;
    uint64_t hash;  // of the entry's data and type
    // The lowest term a node was in when it saw the entry committed (>= the term it was
    // committed in).
    uint64_t seen_term;
  };
  std::map<uint64_t, Committed> committed_;  // by index
  std::map<uint64_t, uint64_t> state_hash_;
  std::map<uint64_t, std::string> leaders_;
  std::string failure_;
  std::string setup_;
  bool lin_gave_up_ = false;

  double loss_ = 0, dup_ = 0, long_delay_ = 0, persist_fail_ = 0, leader_bias_ = 0.4,
         isolate_leader_ = 0.3;
  int64_t partition_gap_ = 0, crash_gap_ = 0, conf_gap_ = 0;
  int64_t next_partition_ = 0, next_crash_ = 0, next_conf_ = 0, heal_at_ = 0;
  int64_t isolate_at_ = -1;  // when to cut off isolate_id_, a leader just elected
  std::string isolate_id_;
  double isolate_new_leader_ = 0, isolate_on_commit_ = 0;
  bool quiet_ = false;
  size_t padding_ = 0;
  int64_t compact_every_ = 100, compact_keep_ = 0;
  int keys_ = 1;
  uint64_t msg_seq_ = 0, event_seq_ = 0;
  uint64_t restarts_ = 0, crashes_ = 0, partitions_ = 0, conf_changes_ = 0, persist_failures_ = 0;
  uint64_t sent_ = 0, snapshot_chunks_ = 0, snapshots_installed_ = 0;
  uint64_t ops_ok_ = 0, ops_unknown_ = 0, ops_refused_ = 0, old_term_commits_ = 0;
  int64_t last_success_ = -1;
};

}  // namespace

SimResult RunSimulation(const SimOptions& options) { return Simulation(options).Run(); }

}  // namespace constellation::sim
