// The SWIM + Lifeguard core. See membership.h for the protocol and its rules.
//
// Internal time: timers run on a local clock that stops while the agent is stalled (local = now -
// the sum of detected stalls), so a paused process does not wake up to a burst of expired
// timers and declare its healthy peers dead.
#include "node/membership/membership.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <set>

#include "node/base/log.h"

namespace constellation::membership {
namespace {

bool ValidName(std::string_view n) { return !n.empty() && n.size() <= kMaxNameBytes; }
bool ValidAddr(std::string_view a) { return !a.empty() && a.size() <= kMaxAddrBytes; }

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
  // The first `k` elements of `v` become a uniform random sample of it.
  template <typename T>
  void Sample(std::vector<T>* v, size_t k) {
    for (size_t i = 0; i < k && i < v->size(); ++i) {
      std::swap((*v)[i], (*v)[i + Below(v->size() - i)]);
    }
    if (v->size() > k) v->resize(k);
  }

 private:
  uint64_t s_;
};

}  // namespace

int64_t SuspicionTimeoutMs(int64_t min_ms, int64_t max_ms, int confirmations, int k) {
  if (max_ms <= min_ms) return min_ms;
  // No confirmation can come (fewer than three live members): nothing will shorten the wait, and
  // the suspicion rests on one prober without relays; take the middle of the range.
  if (k <= 0) return min_ms + (max_ms - min_ms) / 2;
  const double frac = std::log(static_cast<double>(std::min(confirmations, k)) + 1.0) /
                      std::log(static_cast<double>(k) + 1.0);
  const auto t = static_cast<int64_t>(
      std::floor(static_cast<double>(max_ms) - frac * static_cast<double>(max_ms - min_ms)));
  return std::max(min_ms, t);
}

Status Options::Validate() const {
  auto bad = [](const std::string& what) {
    return Status::InvalidArgument("membership options: " + what);
  };
  if (!ValidName(name)) return bad("name must be 1.." + std::to_string(kMaxNameBytes) + " bytes");
  if (!ValidAddr(addr)) return bad("addr must be 1.." + std::to_string(kMaxAddrBytes) + " bytes");
  if (probe_interval_ms < 10 || probe_interval_ms > 600000) {
    return bad("probe_interval_ms must be 10..600000");
  }
  if (probe_timeout_ms < 1 || probe_timeout_ms >= probe_interval_ms) {
    return bad("probe_timeout_ms must be at least 1 and below probe_interval_ms");
  }
  if (indirect_checks < 0 || indirect_checks > 16) return bad("indirect_checks must be 0..16");
  if (!(suspicion_mult >= 0.5 && suspicion_mult <= 100)) return bad("suspicion_mult: 0.5..100");
  if (!(suspicion_max_mult >= 1 && suspicion_max_mult <= 100)) {
    return bad("suspicion_max_mult must be 1..100");
  }
  if (suspicion_confirmations < 0 || suspicion_confirmations > 64) {
    return bad("suspicion_confirmations must be 0..64");
  }
  if (retransmit_mult < 1 || retransmit_mult > 64) return bad("retransmit_mult must be 1..64");
  if (awareness_max_multiplier < 1 || awareness_max_multiplier > 64) {
    return bad("awareness_max_multiplier must be 1..64");
  }
  if (gossip_interval_ms < 1 || gossip_interval_ms > 600000) {
    return bad("gossip_interval_ms must be 1..600000");
  }
  if (gossip_fanout < 1 || gossip_fanout > 64) return bad("gossip_fanout must be 1..64");
  if (gossip_to_dead_ms < 0) return bad("gossip_to_dead_ms must be >= 0");
  if (push_pull_interval_ms < 0 || reconnect_interval_ms < 0 || reconnect_timeout_ms < 0) {
    return bad("push-pull and reconnect intervals must be >= 0");
  }
  if (join_retry_ms < 1) return bad("join_retry_ms must be >= 1");
  if (stall_threshold_ms < 2) return bad("stall_threshold_ms must be >= 2");
  if (max_members < 2 || max_members > kMaxMembers) {
    return bad("max_members must be 2.." + std::to_string(kMaxMembers));
  }
  if (max_piggyback_updates < 1 || max_piggyback_updates > kMaxPiggyback) {
    return bad("max_piggyback_updates must be 1.." + std::to_string(kMaxPiggyback));
  }
  if (max_piggyback_bytes < 1 || max_piggyback_bytes > kMaxMessageBytes) {
    return bad("max_piggyback_bytes out of range");
  }
  if (max_relays < 1 || max_outbox < 1 || max_events < 1) {
    return bad("max_relays, max_outbox and max_events must be >= 1");
  }
  return Status::Ok();
}

class Membership::Impl {
 public:
  Impl(Options o, int64_t now_ms) : o_(std::move(o)), rng_(o_.seed), now_ms_(now_ms) {
    t_ = now_ms;
    Rec self;
    self.m = Member{o_.name, o_.addr, State::kAlive, 0, now_ms};
    members_.emplace(o_.name, std::move(self));
    PushEvent(members_.at(o_.name).m, true);
    QueueBroadcast(Update{State::kAlive, o_.name, o_.addr, 0, ""});
    next_probe_t_ = t_ + static_cast<int64_t>(rng_.Below(o_.probe_interval_ms));
    next_gossip_t_ = t_ + o_.gossip_interval_ms;
    next_push_pull_t_ = t_ + o_.push_pull_interval_ms;
    next_reconnect_t_ = t_ + o_.reconnect_interval_ms;
  }

  // ---- Inputs.

  Status Join(const std::vector<std::string>& seeds, int64_t now_ms) {
    Advance(now_ms);
    if (left_) return Status::NotPermitted("membership: this node has left the cluster");
    if (seeds.empty()) return Status::InvalidArgument("membership: join needs a seed address");
    for (const std::string& s : seeds) {
      if (!ValidAddr(s)) return Status::InvalidArgument("membership: bad seed address");
    }
    seeds_ = seeds;
    joining_ = true;
    join_attempt_ = 0;
    SendJoin();
    return Status::Ok();
  }

  Status Leave(int64_t now_ms) {
    Advance(now_ms);
    if (left_) return Status::Ok();
    left_ = true;
    joining_ = false;
    probe_.reset();
    confirm_.reset();
    Rec& self = Self();
    self.m.state = State::kLeft;
    self.m.state_change_ms = now_ms_;
    PushEvent(self.m, false);
    QueueBroadcast(Update{State::kLeft, o_.name, o_.addr, self.m.incarnation, o_.name});
    GossipRound();  // at once: the agent may stop us soon
    return Status::Ok();
  }

  Status Step(const Message& m, int64_t now_ms) {
    Advance(now_ms);
    ++stats_.messages_in;
    Status s = Validate(m);
    if (!s.ok()) {
      ++stats_.messages_refused;
      return s;
    }
    const bool full_state =
        m.type == MessageType::kPushPull || m.type == MessageType::kPushPullResp;
    if (!full_state && members_.find(m.from) == members_.end() && t_ >= next_unknown_sync_t_) {
      // A member we never heard of (its alive updates were lost): ask it for its state. At most
      // one such push-pull per probe interval.
      next_unknown_sync_t_ = t_ + o_.probe_interval_ms;
      Message pp;
      pp.type = MessageType::kPushPull;
      pp.updates = FullState();
      Send(m.from, m.from_addr, std::move(pp));
    }
    if (full_state) {
      for (const Update& u : m.updates) Merge(u, m.from);
    } else {
      for (const Update& u : m.updates) Apply(u);
    }
    switch (m.type) {
      case MessageType::kPing: {
        Message ack;
        ack.type = MessageType::kAck;
        ack.seq = m.seq;
        Send(m.from, m.from_addr, std::move(ack));
        break;
      }
      case MessageType::kPingReq:
        Relay(m);
        break;
      case MessageType::kAck:
        OnAck(m);
        break;
      case MessageType::kNack:
        for (std::optional<Probe>* slot : {&probe_, &confirm_}) {
          Probe* p = slot->has_value() ? &**slot : nullptr;
          if (p && m.seq == p->seq && p->relays.count(m.from)) p->nacks.insert(m.from);
        }
        break;
      case MessageType::kGossip:
        break;
      case MessageType::kPushPull: {
        Message resp;
        resp.type = MessageType::kPushPullResp;
        resp.join = m.join;  // what tells a joiner that a seed (not a peer's sync) answered
        resp.updates = FullState();
        Send(m.from, m.from_addr, std::move(resp));
        break;
      }
      case MessageType::kPushPullResp:
        if (joining_ && m.join) {
          joining_ = false;
          joined_ = true;
          SyncWithOtherSeeds(m.from_addr);
        }
        break;
    }
    return Status::Ok();
  }

  void Tick(int64_t now_ms) {
    Advance(now_ms);
    // Probe: ping-req after the timeout, suspect at the end of the interval, then the next one.
    for (std::optional<Probe>* slot : {&probe_, &confirm_}) {
      if (!*slot) continue;
      if (!(*slot)->indirect && t_ >= (*slot)->timeout_at) SendIndirect(&**slot);
      // Over at the end of its interval, or as soon as every relay said the target is silent.
      const Probe& p = **slot;
      if (t_ >= p.end_at || (p.indirect && !p.relays.empty() && p.nacks == p.relays)) {
        ProbeFailed(slot);
      }
    }
    if (!probe_ && t_ >= next_probe_t_) StartProbe();
    if (!confirm_) StartConfirm();
    // Relays: nack when the target stays silent; forget after the origin gave up.
    for (auto it = relays_.begin(); it != relays_.end();) {
      RelayState& r = it->second;
      if (!r.nacked && t_ >= r.nack_at) {
        r.nacked = true;
        Message nack;
        nack.type = MessageType::kNack;
        nack.seq = r.origin_seq;
        Send(r.origin, r.origin_addr, std::move(nack));
      }
      it = t_ >= r.expire_at ? relays_.erase(it) : std::next(it);
    }
    // Suspicion timeouts.
    std::vector<NodeName> expired;
    for (const auto& [name, rec] : members_) {
      if (rec.suspicion && t_ >= Deadline(*rec.suspicion)) expired.push_back(name);
    }
    for (const NodeName& name : expired) {
      Rec& rec = members_.at(name);
      Update u{State::kDead, name, "", rec.m.incarnation, o_.name};
      SetState(&rec, State::kDead, u.incarnation);
      ++stats_.deaths;
      QueueBroadcast(u);
    }
    if (t_ >= next_gossip_t_) {
      next_gossip_t_ = t_ + o_.gossip_interval_ms;
      last_gossip_t_ = t_;
      GossipRound();
    }
    if (o_.push_pull_interval_ms > 0 && t_ >= next_push_pull_t_) {
      next_push_pull_t_ = t_ + o_.push_pull_interval_ms;
      PushPullWith([&](const Rec& r) { return r.m.state == State::kAlive; });
    }
    if (o_.reconnect_interval_ms > 0 && t_ >= next_reconnect_t_) {
      next_reconnect_t_ = t_ + o_.reconnect_interval_ms;
      PushPullWith([&](const Rec& r) {
        return r.m.state == State::kDead && now_ms_ - r.m.state_change_ms < o_.reconnect_timeout_ms;
      });
    }
    if (joining_ && t_ >= next_join_t_) SendJoin();
    CheckInvariants();
  }

  int64_t NextTickMs() const {
    int64_t next = next_probe_t_;
    for (const std::optional<Probe>* slot : {&probe_, &confirm_}) {
      if (*slot) next = std::min(next, (*slot)->indirect ? (*slot)->end_at : (*slot)->timeout_at);
    }
    for (const auto& [seq, r] : relays_) next = std::min(next, r.nacked ? r.expire_at : r.nack_at);
    for (const auto& [name, rec] : members_) {
      if (rec.suspicion) next = std::min(next, Deadline(*rec.suspicion));
    }
    if (!broadcasts_.empty()) next = std::min(next, next_gossip_t_);
    if (o_.push_pull_interval_ms > 0) next = std::min(next, next_push_pull_t_);
    if (o_.reconnect_interval_ms > 0) next = std::min(next, next_reconnect_t_);
    if (joining_) next = std::min(next, next_join_t_);
    next = std::max(next, t_) + stall_ms_;
    // Called at least this often, the core can tell a stalled agent from an idle one.
    return std::min(next, now_ms_ + o_.stall_threshold_ms / 2);
  }

  bool HasReady() const { return !outbox_.empty() || !events_.empty(); }
  Ready GetReady() {
    Ready rd;
    rd.messages = std::move(outbox_);
    rd.events.assign(std::make_move_iterator(events_.begin()),
                     std::make_move_iterator(events_.end()));
    outbox_.clear();
    events_.clear();
    return rd;
  }

  // ---- Accessors.

  const NodeName& name() const { return o_.name; }
  uint64_t incarnation() const { return members_.at(o_.name).m.incarnation; }
  bool joined() const { return joined_; }
  bool left() const { return left_; }
  int health_score() const { return health_; }
  std::vector<Member> members() const {
    std::vector<Member> out;
    out.reserve(members_.size());
    for (const auto& [name, rec] : members_) out.push_back(rec.m);
    return out;
  }
  std::optional<Member> member(const NodeName& name) const {
    auto it = members_.find(name);
    if (it == members_.end()) return std::nullopt;
    return it->second.m;
  }
  size_t live_members() const {
    size_t n = 0;
    for (const auto& [name, rec] : members_) n += Live(rec) ? 1 : 0;
    return n;
  }
  size_t pending_broadcasts() const { return broadcasts_.size(); }
  std::optional<int64_t> suspicion_timeout_ms(const NodeName& name) const {
    auto it = members_.find(name);
    if (it == members_.end() || !it->second.suspicion) return std::nullopt;
    const Suspicion& s = *it->second.suspicion;
    return SuspicionTimeoutMs(s.min_ms, s.max_ms, static_cast<int>(s.confirmations.size()), s.k);
  }
  const Stats& stats() const { return stats_; }

 private:
  struct Suspicion {
    int64_t start = 0;  // local time
    int64_t min_ms = 0;
    int64_t max_ms = 0;
    int k = 0;
    NodeName from;                     // who started it: not a confirmation
    std::set<NodeName> confirmations;  // at most k
  };
  struct Rec {
    Member m;
    std::optional<Suspicion> suspicion;  // set exactly while m.state is suspect
  };
  struct Broadcast {
    Update u;
    int transmits = 0;
    uint64_t id = 0;  // newer updates first among equals
  };
  struct Probe {
    NodeName target;
    uint64_t seq = 0;
    int64_t timeout_at = 0;
    int64_t end_at = 0;
    bool indirect = false;
    std::set<NodeName> relays;
    std::set<NodeName> nacks;
  };
  struct RelayState {
    NodeName origin;
    std::string origin_addr;
    uint64_t origin_seq = 0;
    NodeName target;
    int64_t nack_at = 0;
    int64_t expire_at = 0;
    bool nacked = false;
  };

  static bool Live(const Rec& r) {
    return r.m.state == State::kAlive || r.m.state == State::kSuspect;
  }
  Rec& Self() { return members_.at(o_.name); }
  int64_t Scale(int64_t ms) const { return ms * (health_ + 1); }
  static int64_t Deadline(const Suspicion& s) {
    return s.start +
           SuspicionTimeoutMs(s.min_ms, s.max_ms, static_cast<int>(s.confirmations.size()), s.k);
  }

  void Advance(int64_t now_ms) {
    CN_CHECK(now_ms >= now_ms_) << "membership: time went backwards (" << now_ms << " < " << now_ms_
                                << ")";
    const int64_t gap = now_ms - now_ms_;
    if (gap > o_.stall_threshold_ms) {
      stall_ms_ += gap;
      ++stats_.stalls;
      AdjustHealth(1);
    }
    now_ms_ = now_ms;
    t_ = now_ms_ - stall_ms_;
  }

  void AdjustHealth(int delta) {
    health_ = std::clamp(health_ + delta, 0, o_.awareness_max_multiplier - 1);
  }

  Status Validate(const Message& m) const {
    auto bad = [&](const std::string& why) {
      return Status::InvalidArgument("membership: " + std::string(MessageTypeName(m.type)) +
                                     " from " + m.from.substr(0, 64) + ": " + why);
    };
    if (!ValidName(m.from)) return bad("bad sender name");
    if (m.from == o_.name) return bad("sent under our own name");
    if (!ValidAddr(m.from_addr)) return bad("bad sender address");
    const bool join = m.type == MessageType::kPushPull && m.join;
    if (m.to != o_.name && !(join && m.to.empty())) return bad("addressed to " + m.to);
    const bool full_state =
        m.type == MessageType::kPushPull || m.type == MessageType::kPushPullResp;
    if (m.join && !full_state) return bad("join flag on a message other than a push-pull");
    if (m.updates.size() > (full_state ? kMaxMembers : kMaxPiggyback)) {
      return bad("too many updates");
    }
    if (m.type == MessageType::kPingReq) {
      if (!ValidName(m.target) || m.target == o_.name || m.target == m.from) {
        return bad("bad ping-req target");
      }
      if (!ValidAddr(m.target_addr)) return bad("bad ping-req target address");
    }
    for (const Update& u : m.updates) {
      if (!ValidName(u.node) || u.addr.size() > kMaxAddrBytes || u.from.size() > kMaxNameBytes) {
        return bad("bad update");
      }
      if (u.state == State::kAlive && u.addr.empty()) return bad("alive update without address");
    }
    return Status::Ok();
  }

  // ---- Output.

  void PushEvent(const Member& m, bool is_new) {
    if (events_.size() >= o_.max_events) {
      events_.pop_front();
      ++stats_.events_dropped;
    }
    events_.push_back(Event{m.name, m.addr, m.state, m.incarnation, is_new, now_ms_});
  }

  // Sends `m` to `to` at `addr`, filling in the header and the piggybacked updates. Returns false
  // when a gossip message would carry nothing (it is not sent).
  bool Send(const NodeName& to, const std::string& addr, Message m) {
    m.from = o_.name;
    m.from_addr = o_.addr;
    m.to = to;
    if (m.type != MessageType::kPushPull && m.type != MessageType::kPushPullResp) {
      Piggyback(to, &m.updates);
      if (m.type == MessageType::kGossip && m.updates.empty()) return false;
    }
    if (outbox_.size() >= o_.max_outbox) {
      ++stats_.outbox_dropped;
      return false;
    }
    ++stats_.messages_out;
    outbox_.push_back(Outgoing{addr, std::move(m)});
    return true;
  }

  int RetransmitLimit() const {
    const double n = static_cast<double>(live_members());
    return o_.retransmit_mult * static_cast<int>(std::ceil(std::log10(n + 1)));
  }

  void QueueBroadcast(const Update& u) {
    CN_CHECK(members_.count(u.node)) << "broadcast about unknown member " << u.node;
    broadcasts_[u.node] = Broadcast{u, 0, ++broadcast_id_};
    // Failure news travels at once (on the next Tick) instead of waiting for the gossip interval:
    // every hop saved shortens detection. At most four rounds per interval.
    if (u.state != State::kAlive) {
      next_gossip_t_ =
          std::min(next_gossip_t_, std::max(t_, last_gossip_t_ + o_.gossip_interval_ms / 4));
    }
  }

  void Piggyback(const NodeName& to, std::vector<Update>* out) {
    size_t bytes = 0;
    auto add = [&](const Update& u) {
      const size_t b = EncodedUpdateBytes(u);
      if (!out->empty() &&
          (out->size() >= o_.max_piggyback_updates || bytes + b > o_.max_piggyback_bytes)) {
        return false;
      }
      bytes += b;
      out->push_back(u);
      return true;
    };
    // Lifeguard's buddy system: the recipient hears first that we suspect it (or hold it dead).
    auto it = members_.find(to);
    const bool buddy = it != members_.end() && (it->second.m.state == State::kSuspect ||
                                                it->second.m.state == State::kDead);
    if (buddy) {
      const Rec& r = it->second;
      add(Update{r.m.state, to, "", r.m.incarnation, r.suspicion ? r.suspicion->from : o_.name});
    }
    if (broadcasts_.empty()) return;
    std::vector<Broadcast*> order;
    order.reserve(broadcasts_.size());
    for (auto& [name, b] : broadcasts_) {
      if (name != to) order.push_back(&b);  // it knows itself (buddy above covers the rest)
    }
    std::sort(order.begin(), order.end(), [](const Broadcast* a, const Broadcast* b) {
      return a->transmits != b->transmits ? a->transmits < b->transmits : a->id > b->id;
    });
    const int limit = RetransmitLimit();
    for (Broadcast* b : order) {
      if (!add(b->u)) break;
      if (++b->transmits >= limit) broadcasts_.erase(b->u.node);
    }
  }

  std::vector<Update> FullState() const {
    std::vector<Update> out;
    out.reserve(members_.size());
    for (const auto& [name, rec] : members_) {
      out.push_back(Update{rec.m.state, name, rec.m.addr, rec.m.incarnation, ""});
    }
    return out;
  }

  // ---- Applying updates (the precedence rules in membership.h).

  void Apply(const Update& u) {
    auto it = members_.find(u.node);
    if (it != members_.end() && Overrides(it->second.m, u) && !broadcasts_.count(u.node)) {
      // The sender missed newer news (typically a refutation or a leave lost to the network):
      // spread ours again rather than let its stale view linger (or its suspicion run out).
      const Member& m = it->second.m;
      const auto& susp = it->second.suspicion;
      QueueBroadcast(Update{m.state, m.name, m.state == State::kAlive ? m.addr : "", m.incarnation,
                            m.state == State::kLeft ? m.name
                            : susp                  ? susp->from
                                                    : o_.name});
      ++stats_.stale_corrected;
      return;
    }
    switch (u.state) {
      case State::kAlive:
        return ApplyAlive(u);
      case State::kSuspect:
        return ApplySuspect(u);
      case State::kDead:
        return ApplyDead(u);
      case State::kLeft:
        return ApplyLeft(u);
    }
  }

  // Whether what we hold about a member makes update `u` about it stale: an older incarnation,
  // or the same one in a weaker state (alive < suspect < dead < left).
  static bool Overrides(const Member& m, const Update& u) {
    if (u.incarnation != m.incarnation) return u.incarnation < m.incarnation;
    return static_cast<int>(u.state) < static_cast<int>(m.state);
  }

  // A push-pull entry from `sender`: its dead is our suspect (memberlist's mergeState).
  void Merge(const Update& u, const NodeName& sender) {
    if (u.state != State::kAlive && u.node != o_.name && members_.find(u.node) == members_.end()) {
      // A member that died or left before we joined is listed (so every member's table agrees),
      // not disseminated; one under suspicion there is alive to us until we suspect it ourselves.
      if (!MakeRoom()) {
        ++stats_.members_refused;
        return;
      }
      Rec rec;
      rec.m = Member{u.node, u.addr, u.state == State::kSuspect ? State::kAlive : u.state,
                     u.incarnation, now_ms_};
      PushEvent(members_.emplace(u.node, std::move(rec)).first->second.m, true);
      AddToRing(u.node);
      return;
    }
    Update v = u;
    v.from = sender;
    if (v.state == State::kDead) v.state = State::kSuspect;
    if (v.state == State::kLeft) v.from = v.node;
    Apply(v);
  }

  void Refute(uint64_t incarnation) {
    Rec& self = Self();
    self.m.incarnation = std::max(self.m.incarnation, incarnation) + 1;
    ++stats_.refutations;
    QueueBroadcast(Update{State::kAlive, o_.name, o_.addr, self.m.incarnation, ""});
  }

  void SetState(Rec* rec, State state, uint64_t incarnation) {
    const bool changed = rec->m.state != state;
    rec->m.state = state;
    rec->m.incarnation = incarnation;
    if (state != State::kSuspect) rec->suspicion.reset();
    if (changed) {
      rec->m.state_change_ms = now_ms_;
      PushEvent(rec->m, false);
    }
  }

  // Room for one more member: evicts the member dead or left the longest when the table is full.
  bool MakeRoom() {
    if (members_.size() < o_.max_members) return true;
    auto victim = members_.end();
    for (auto it = members_.begin(); it != members_.end(); ++it) {
      if (Live(it->second) || it->first == o_.name) continue;
      if (victim == members_.end() ||
          it->second.m.state_change_ms < victim->second.m.state_change_ms) {
        victim = it;
      }
    }
    if (victim == members_.end()) return false;
    broadcasts_.erase(victim->first);
    RemoveFromRing(victim->first);
    members_.erase(victim);
    return true;
  }

  void ApplyAlive(const Update& u) {
    if (u.node == o_.name) {
      const Rec& self = Self();
      if (left_ || o_.unsafe_no_refute) return;
      // Someone holds a newer incarnation of us (we restarted), or our name at another address.
      if (u.incarnation > self.m.incarnation ||
          (u.incarnation == self.m.incarnation && u.addr != self.m.addr)) {
        Refute(u.incarnation);
      }
      return;
    }
    auto it = members_.find(u.node);
    if (it == members_.end()) {
      if (!MakeRoom()) {
        ++stats_.members_refused;
        return;
      }
      Rec rec;
      rec.m = Member{u.node, u.addr, State::kAlive, u.incarnation, now_ms_};
      members_.emplace(u.node, std::move(rec));
      PushEvent(members_.at(u.node).m, true);
      AddToRing(u.node);
      QueueBroadcast(Update{State::kAlive, u.node, u.addr, u.incarnation, ""});
      return;
    }
    Rec& rec = it->second;
    if (u.incarnation <= rec.m.incarnation) return;
    const bool moved = rec.m.addr != u.addr;
    rec.m.addr = u.addr;
    if (moved && rec.m.state == State::kAlive) PushEvent(rec.m, false);
    SetState(&rec, State::kAlive, u.incarnation);
    QueueBroadcast(Update{State::kAlive, u.node, u.addr, u.incarnation, ""});
  }

  void ApplySuspect(const Update& u) {
    auto it = members_.find(u.node);
    if (it == members_.end()) return;
    Rec& rec = it->second;
    if (u.incarnation < rec.m.incarnation) return;
    if (u.node == o_.name) {
      if (left_ || o_.unsafe_no_refute) return;
      Refute(u.incarnation);
      AdjustHealth(1);  // being suspected is a hint that we are the slow one (Lifeguard)
      return;
    }
    const NodeName from = u.from.empty() ? o_.name : u.from;
    if (rec.m.state == State::kSuspect && u.incarnation > rec.m.incarnation) {
      // A suspicion of a newer incarnation is a new suspicion: the member refuted the old one
      // (we missed its alive), so the old timer and confirmations no longer apply.
      rec.m.incarnation = u.incarnation;
      rec.suspicion = NewSuspicion(from);
      ++stats_.suspicions;
      QueueBroadcast(Update{State::kSuspect, u.node, "", u.incarnation, from});
      return;
    }
    if (rec.m.state == State::kSuspect) {
      bool news = false;
      Suspicion& s = *rec.suspicion;
      if (from != s.from && static_cast<int>(s.confirmations.size()) < s.k &&
          s.confirmations.insert(from).second) {
        news = true;  // an independent confirmation: pass it on so others shrink their timers
      }
      if (news) QueueBroadcast(Update{State::kSuspect, u.node, "", rec.m.incarnation, from});
      return;
    }
    if (rec.m.state != State::kAlive) return;
    rec.suspicion = NewSuspicion(from);
    SetState(&rec, State::kSuspect, u.incarnation);
    // Probe it at once, beside the regular probe: our own verdict is an independent
    // confirmation (or, through the buddy system, the news that lets it refute), and
    // confirmations are what shorten the timeout.
    if (from != o_.name && probe_first_.size() < o_.max_members) {
      probe_first_.push_back(u.node);
      if (!confirm_) StartConfirm();
    }
    ++stats_.suspicions;
    QueueBroadcast(Update{State::kSuspect, u.node, "", u.incarnation, from});
  }

  Suspicion NewSuspicion(const NodeName& from) const {
    const size_t n = live_members();
    Suspicion s;
    s.start = t_;
    const double scale = std::max(1.0, std::log10(static_cast<double>(std::max<size_t>(n, 1))));
    s.min_ms =
        static_cast<int64_t>(o_.suspicion_mult * scale * static_cast<double>(o_.probe_interval_ms));
    s.max_ms = static_cast<int64_t>(o_.suspicion_max_mult * static_cast<double>(s.min_ms));
    s.k = std::clamp(static_cast<int>(n) - 2, 0, o_.suspicion_confirmations);
    s.from = from;
    return s;
  }

  void ApplyDead(const Update& u) {
    auto it = members_.find(u.node);
    if (it == members_.end()) return;
    Rec& rec = it->second;
    if (u.incarnation < rec.m.incarnation) return;
    if (u.node == o_.name) {
      if (left_ || o_.unsafe_no_refute) return;
      Refute(u.incarnation);
      AdjustHealth(1);
      return;
    }
    if (rec.m.state == State::kDead || rec.m.state == State::kLeft) return;
    SetState(&rec, State::kDead, u.incarnation);
    ++stats_.deaths;
    QueueBroadcast(Update{State::kDead, u.node, "", u.incarnation, u.from});
  }

  void ApplyLeft(const Update& u) {
    auto it = members_.find(u.node);
    if (it == members_.end()) return;
    Rec& rec = it->second;
    if (u.incarnation < rec.m.incarnation) return;
    if (u.node == o_.name) {
      // A leave of ours from before a restart: we are back.
      if (!left_ && !o_.unsafe_no_refute) Refute(u.incarnation);
      return;
    }
    if (rec.m.state == State::kLeft) return;
    SetState(&rec, State::kLeft, u.incarnation);
    QueueBroadcast(Update{State::kLeft, u.node, "", u.incarnation, u.node});
  }

  // ---- Probing.

  std::optional<NodeName> NextProbeTarget() {
    // Every other probe goes to our successor in name order: each live member is probed by its
    // predecessor every two intervals, which bounds the time until someone notices a crash
    // (the random ring alone only bounds it per prober, at n - 1 intervals).
    if (o_.successor_probes && probe_count_++ % 2 == 0) {
      auto it = members_.upper_bound(o_.name);
      for (size_t i = 0; i < members_.size(); ++i, ++it) {
        if (it == members_.end()) it = members_.begin();
        if (it->first != o_.name && Live(it->second)) return it->first;
      }
    }
    // One pass around the ring: its order is fixed (random insertion), so each member is probed
    // exactly once per n - 1 probes: a crashed member waits at most n - 1 intervals for each
    // prober (a reshuffled order can make that 2(n - 1)).
    for (size_t i = 0; i < ring_.size(); ++i) {
      if (ring_index_ >= ring_.size()) ring_index_ = 0;
      const NodeName& name = ring_[ring_index_++];
      auto it = members_.find(name);
      if (it != members_.end() && Live(it->second)) return name;
    }
    return std::nullopt;
  }

  void AddToRing(const NodeName& name) {
    const size_t at = static_cast<size_t>(rng_.Below(ring_.size() + 1));
    ring_.insert(ring_.begin() + static_cast<std::ptrdiff_t>(at), name);
    if (at < ring_index_) ++ring_index_;  // the cursor stays on the same member
  }

  void RemoveFromRing(const NodeName& name) {
    auto it = std::find(ring_.begin(), ring_.end(), name);
    if (it == ring_.end()) return;
    const size_t at = static_cast<size_t>(it - ring_.begin());
    ring_.erase(it);
    if (at < ring_index_) --ring_index_;
  }

  void StartProbe() {
    next_probe_t_ = t_ + Scale(o_.probe_interval_ms);
    if (left_) return;
    std::optional<NodeName> target = NextProbeTarget();
    if (!target) return;
    probe_ = NewProbe(*target);
  }

  // A confirmation probe of the next suspect others told us about (one at a time).
  void StartConfirm() {
    if (left_) return;
    while (!probe_first_.empty()) {
      NodeName name = std::move(probe_first_.front());
      probe_first_.pop_front();
      auto it = members_.find(name);
      if (it == members_.end() || it->second.m.state != State::kSuspect) continue;
      if (probe_ && probe_->target == name) continue;  // already being probed
      confirm_ = NewProbe(name);
      return;
    }
  }

  Probe NewProbe(const NodeName& target) {
    Probe p;
    p.target = target;
    p.seq = ++seq_;
    p.timeout_at = t_ + Scale(o_.probe_timeout_ms);
    p.end_at = t_ + Scale(o_.probe_interval_ms);
    ++stats_.probes;
    Message ping;
    ping.type = MessageType::kPing;
    ping.seq = p.seq;
    Send(target, members_.at(target).m.addr, std::move(ping));
    return p;
  }

  void SendIndirect(Probe* p) {
    p->indirect = true;
    ++stats_.probes_indirect;
    auto target = members_.find(p->target);
    if (target == members_.end()) return;
    std::vector<NodeName> relays;
    for (const auto& [name, rec] : members_) {
      if (name != o_.name && name != p->target && rec.m.state == State::kAlive) {
        relays.push_back(name);
      }
    }
    rng_.Sample(&relays, static_cast<size_t>(o_.indirect_checks));
    for (const NodeName& relay : relays) {
      p->relays.insert(relay);
      Message req;
      req.type = MessageType::kPingReq;
      req.seq = p->seq;
      req.target = p->target;
      req.target_addr = target->second.m.addr;
      Send(relay, members_.at(relay).m.addr, std::move(req));
    }
  }

  void ProbeFailed(std::optional<Probe>* slot) {
    Probe p = std::move(**slot);
    slot->reset();
    ++stats_.probes_failed;
    // Lifeguard: relays that could not even nack point at us, not at the target. Without relays,
    // any failed probe counts against our health.
    if (!p.relays.empty()) {
      const int missed = static_cast<int>(p.relays.size() - p.nacks.size());
      stats_.nacks_missed += static_cast<uint64_t>(missed);
      AdjustHealth(missed);
    } else {
      AdjustHealth(1);
    }
    auto it = members_.find(p.target);
    if (it == members_.end() || !Live(it->second)) return;
    ApplySuspect(Update{State::kSuspect, p.target, "", it->second.m.incarnation, o_.name});
  }

  void OnAck(const Message& m) {
    for (std::optional<Probe>* slot : {&probe_, &confirm_}) {
      const Probe* p = slot->has_value() ? &**slot : nullptr;
      if (p && m.seq == p->seq && (m.from == p->target || p->relays.count(m.from))) {
        slot->reset();
        AdjustHealth(-1);
        return;
      }
    }
    auto it = relays_.find(m.seq);
    if (it != relays_.end() && it->second.target == m.from) {
      Message ack;
      ack.type = MessageType::kAck;
      ack.seq = it->second.origin_seq;
      Send(it->second.origin, it->second.origin_addr, std::move(ack));
      relays_.erase(it);
    }
  }

  void Relay(const Message& m) {
    if (relays_.size() >= o_.max_relays) {
      ++stats_.relays_refused;
      return;
    }
    RelayState r;
    r.origin = m.from;
    r.origin_addr = m.from_addr;
    r.origin_seq = m.seq;
    r.target = m.target;
    r.nack_at = t_ + o_.probe_timeout_ms;
    r.expire_at = t_ + Scale(o_.probe_interval_ms);
    const uint64_t seq = ++seq_;
    relays_.emplace(seq, std::move(r));
    Message ping;
    ping.type = MessageType::kPing;
    ping.seq = seq;
    Send(m.target, m.target_addr, std::move(ping));
  }

  // ---- Dissemination and anti-entropy.

  void GossipRound() {
    if (broadcasts_.empty()) return;
    std::vector<NodeName> targets;
    for (const auto& [name, rec] : members_) {
      if (name == o_.name) continue;
      if (Live(rec) ||
          (rec.m.state == State::kDead && now_ms_ - rec.m.state_change_ms < o_.gossip_to_dead_ms)) {
        targets.push_back(name);
      }
    }
    rng_.Sample(&targets, static_cast<size_t>(o_.gossip_fanout));
    for (const NodeName& to : targets) {
      if (broadcasts_.empty()) break;
      Message g;
      g.type = MessageType::kGossip;
      Send(to, members_.at(to).m.addr, std::move(g));
    }
  }

  template <typename Pred>
  void PushPullWith(Pred eligible) {
    std::vector<NodeName> candidates;
    for (const auto& [name, rec] : members_) {
      if (name != o_.name && eligible(rec)) candidates.push_back(name);
    }
    if (candidates.empty()) return;
    const NodeName& to = candidates[rng_.Below(candidates.size())];
    Message pp;
    pp.type = MessageType::kPushPull;
    pp.updates = FullState();
    Send(to, members_.at(to).m.addr, std::move(pp));
  }

  // The seed that answered may itself be joining (nodes booted together), so its table can lack
  // members whose alive news has long stopped circulating; only anti-entropy would bring them, 30 s
  // later. Like memberlist's Join, which syncs with the addresses it is given, we push-pull once
  // with the next kJoinSyncSeeds seeds after the one that answered (not every seed: the agent
  // passes every member it knows, and a full state to each of a thousand would be a burst; not
  // retried: the periodic push-pull remains the backstop).
  static constexpr size_t kJoinSyncSeeds = 2;
  void SyncWithOtherSeeds(const std::string& answered_addr) {
    std::set<std::string> done{answered_addr, o_.addr};
    size_t sent = 0;
    // join_attempt_ is one past the seed whose answer this is, unless an older attempt answered.
    for (size_t i = 0; i < seeds_.size() && sent < kJoinSyncSeeds; ++i) {
      const std::string& addr = seeds_[(join_attempt_ + i) % seeds_.size()];
      if (!done.insert(addr).second) continue;
      Message pp;
      pp.type = MessageType::kPushPull;
      pp.join = true;  // addressed by address only; the answer no longer changes joined()
      pp.updates = FullState();
      Send("", addr, std::move(pp));
      ++sent;
    }
  }

  void SendJoin() {
    next_join_t_ = t_ + o_.join_retry_ms;
    const std::string& addr = seeds_[join_attempt_++ % seeds_.size()];
    ++stats_.join_attempts;
    Message pp;
    pp.type = MessageType::kPushPull;
    pp.join = true;
    pp.updates = FullState();
    Send("", addr, std::move(pp));
  }

  void CheckInvariants() const {
    CN_CHECK(members_.size() <= o_.max_members);
    const Rec& self = members_.at(o_.name);
    CN_CHECK(self.m.state == (left_ ? State::kLeft : State::kAlive))
        << "self is " << StateName(self.m.state);
    CN_CHECK(health_ >= 0 && health_ < o_.awareness_max_multiplier);
    CN_CHECK(broadcasts_.size() <= members_.size());
    CN_CHECK(relays_.size() <= o_.max_relays);
    CN_CHECK(outbox_.size() <= o_.max_outbox && events_.size() <= o_.max_events);
    for (const auto& [name, rec] : members_) {
      CN_CHECK(rec.m.name == name);
      CN_CHECK(rec.suspicion.has_value() == (rec.m.state == State::kSuspect)) << name;
      if (rec.suspicion) {
        CN_CHECK(static_cast<int>(rec.suspicion->confirmations.size()) <= rec.suspicion->k);
      }
    }
    for (const auto& [name, b] : broadcasts_) CN_CHECK(members_.count(name)) << name;
    CN_CHECK(ring_.size() + 1 == members_.size()) << "the probe ring lost a member";
  }

  const Options o_;
  Rng rng_;
  int64_t now_ms_;  // the agent's clock, as of the last call
  int64_t t_ = 0;   // the local clock: now_ms_ - stall_ms_
  int64_t stall_ms_ = 0;
  std::map<NodeName, Rec> members_;
  std::map<NodeName, Broadcast> broadcasts_;  // one per member: the newest update about it
  uint64_t broadcast_id_ = 0;
  std::optional<Probe> probe_;        // the regular probe of this interval
  std::optional<Probe> confirm_;      // a suspect's confirmation probe, beside it
  std::vector<NodeName> ring_;        // every member but us, in probe order
  size_t ring_index_ = 0;             // the next to probe
  std::deque<NodeName> probe_first_;  // suspects others told us about, to confirm
  int64_t next_probe_t_ = 0;
  uint64_t probe_count_ = 0;
  std::map<uint64_t, RelayState> relays_;  // by the seq of the ping we sent for the origin
  uint64_t seq_ = 0;
  int health_ = 0;
  int64_t next_gossip_t_ = 0;
  int64_t last_gossip_t_ = 0;
  int64_t next_push_pull_t_ = 0;
  int64_t next_reconnect_t_ = 0;
  int64_t next_unknown_sync_t_ = 0;
  std::vector<std::string> seeds_;
  size_t join_attempt_ = 0;
  int64_t next_join_t_ = 0;
  bool joining_ = false;
  bool joined_ = false;
  bool left_ = false;
  std::vector<Outgoing> outbox_;
  std::deque<Event> events_;
  Stats stats_;
};

Result<std::unique_ptr<Membership>> Membership::New(Options options, int64_t now_ms) {
  CN_RETURN_IF_ERROR(options.Validate());
  return std::unique_ptr<Membership>(
      new Membership(std::make_unique<Impl>(std::move(options), now_ms)));
}

Membership::Membership(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Membership::~Membership() = default;

Status Membership::Join(const std::vector<std::string>& seed_addrs, int64_t now_ms) {
  return impl_->Join(seed_addrs, now_ms);
}
Status Membership::Leave(int64_t now_ms) { return impl_->Leave(now_ms); }
Status Membership::Step(const Message& m, int64_t now_ms) { return impl_->Step(m, now_ms); }
void Membership::Tick(int64_t now_ms) { impl_->Tick(now_ms); }
int64_t Membership::NextTickMs() const { return impl_->NextTickMs(); }
bool Membership::HasReady() const { return impl_->HasReady(); }
Ready Membership::GetReady() { return impl_->GetReady(); }
const NodeName& Membership::name() const { return impl_->name(); }
uint64_t Membership::incarnation() const { return impl_->incarnation(); }
bool Membership::joined() const { return impl_->joined(); }
bool Membership::left() const { return impl_->left(); }
int Membership::health_score() const { return impl_->health_score(); }
std::vector<Member> Membership::members() const { return impl_->members(); }
std::optional<Member> Membership::member(const NodeName& name) const { return impl_->member(name); }
size_t Membership::live_members() const { return impl_->live_members(); }
size_t Membership::pending_broadcasts() const { return impl_->pending_broadcasts(); }
std::optional<int64_t> Membership::suspicion_timeout_ms(const NodeName& name) const {
  return impl_->suspicion_timeout_ms(name);
}
const Stats& Membership::stats() const { return impl_->stats(); }

}  // namespace constellation::membership
