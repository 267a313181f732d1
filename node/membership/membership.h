// Membership: a pure SWIM failure detector and gossip core with Lifeguard's refinements
// (DESIGN.md §2.1, §5). It never touches sockets, clocks, threads or disks. Inputs: Step(message,
// now_ms), Tick(now_ms), Join(seeds, now_ms), Leave(now_ms). Output: a Ready holding messages to
// send (each with the destination's address) and events (a member appeared or changed status),
// which the agent takes with GetReady() and performs in any order: nothing here is durable.
//
// The protocol (SWIM, Das et al. 2002; Lifeguard, Dadgar et al. 2018; the rules of HashiCorp's
// memberlist where the papers are silent):
//
// - Probing. Every probe interval a node pings one live member: alternately its successor in
//   name order (so every member is probed by its predecessor at least every other interval, which
//   bounds the time until a crash is noticed) and the next member of a fixed ring in random order
//   (new members inserted at random places: each is probed once per n - 1 ring probes). Without
//   an ack within the probe timeout it asks `indirect_checks` other members to ping the target for
//   it (ping-req); a relay forwards the target's ack, or answers with a nack when the target stays
//   silent. No ack by the end of the interval (or every relay nacked): the target is suspect.
// - Suspicion. A suspect member is declared dead when its suspicion timeout expires. The timeout
//   starts at max and shrinks as independent confirmations (other members suspecting the same
//   incarnation) arrive: max(min, max - (max-min)*log(C+1)/log(K+1)) (Lifeguard §IV-B), with
//   min = suspicion_mult * max(1, log10(n)) * probe_interval, max = suspicion_max_mult * min and
//   K = min(suspicion_confirmations, n - 2); with K = 0 it is (min + max) / 2. Whoever hears of a
//   suspicion probes the suspect at once, beside its regular probe (a confirmation probe): its
//   failure is a confirmation; its success, through the buddy system below, makes the suspect
//   refute. A suspicion of a newer incarnation replaces the old one (timer and confirmations).
// - Incarnations. Only a member raises its own incarnation: told it is suspect or dead (or that
//   an incarnation above its own is alive), it refutes with a higher one. Precedence (SWIM §4.2,
//   as memberlist implements it), for a known member M at incarnation j in our view:
//     alive(i)   overrides alive/suspect/dead/left(j) if i > j;
//     suspect(i) overrides alive(j) if i >= j, suspect(j) if i > j; never dead or left;
//     dead(i)    overrides alive/suspect(j) if i >= j; never left;
//     left(i)    overrides alive/suspect/dead(j) if i >= j.
//   Suspect, dead and left about an unknown member are ignored; alive adds it. (A push-pull's
//   dead and left members are listed though, so every table agrees.) An update we hold newer
//   news about makes us disseminate ours again (a refutation the sender missed).
// - Local health awareness (Lifeguard §IV-A). A health score in [0, awareness_max_multiplier)
//   scales the probe interval and the probe timeout by (score + 1). It rises by one per missed
//   nack (or by one per failed probe when no relay could nack), by one per refutation of a
//   suspicion about ourselves and when Tick notices the agent stalled; it falls by one per
//   successful probe. A slow node thus probes less eagerly instead of accusing healthy peers.
// - Dissemination. Every update we learn is queued (one per member: a newer one replaces it) and
//   piggybacked on pings, acks and gossip messages, fewest-sent first, up to
//   retransmit_mult * ceil(log10(n + 1)) times. Gossip goes to `gossip_fanout` random members every
//   gossip interval while updates are queued, and at once (at most four times an interval) when
//   one is a suspicion, a death or a leave; also to members dead for less than gossip_to_dead_ms,
//   so a paused node hears that it was declared dead. A message to a member we hold suspect or
//   dead carries that state first (Lifeguard's buddy system), so it can refute at once.
// - Anti-entropy. Join sends our state to a seed address and merges its full state in reply
//   (push-pull), retrying until a seed answers. Every push_pull_interval_ms we push-pull with a
//   random live member, and every reconnect_interval_ms with a random dead one (for up to
//   reconnect_timeout_ms), which heals a partition whose sides declared each other dead; and with
//   any sender we have never heard of (its alive updates were lost), at most once an interval. A
//   remote member's `dead` is merged as `suspect` (it gets a chance to refute), `left` as `left`.
//   A seed's answer to a join is flagged `join`: only that ends the join's retries. Then we
//   push-pull once with the next two seed addresses too (memberlist's Join syncs with every one
//   it is given): the seed that answered may have been joining itself, its table partial.
// - Leave. Leave() marks us `left` (final for this incarnation) and gossips it; the agent keeps
//   the core running (answering pings, gossiping) until pending_broadcasts() reaches 0 or a
//   deadline passes, then stops.
//
// Addresses. Messages name their destination (`to`) and every Outgoing also carries the address
// to send it to, taken from the member table (or, for a join, the seed address with an empty `to`).
// A member's address is what its own alive updates say; members() is the address book.
//
// Time. now_ms is any monotonic clock in milliseconds; it must never go backwards (CN_CHECK). The
// agent should Tick at NextTickMs() at the latest (and every few ms is fine).
// A Tick that comes more than stall_threshold_ms after the previous one means the agent was
// stalled (a paused process, an overloaded machine): pending timers are pushed back by the gap
// instead of firing all at once, and the health score rises.
//
// Thread-safety: Membership is not thread-safe: the agent loop owns it and calls every method from
// one thread. The codec functions are pure and safe from any thread.
#ifndef CONSTELLATION_NODE_MEMBERSHIP_MEMBERSHIP_H_
#define CONSTELLATION_NODE_MEMBERSHIP_MEMBERSHIP_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "node/base/status.h"

namespace constellation::membership {

// A member's name (unique in the cluster; what the transport addresses).
using NodeName = std::string;

// ---- Wire limits. The decoder refuses anything beyond these.
inline constexpr uint8_t kProtocolVersion = 1;
inline constexpr size_t kMaxNameBytes = 255;
inline constexpr size_t kMaxAddrBytes = 255;
inline constexpr size_t kMaxMembers = 4096;  // members in one table, entries in a push-pull
inline constexpr size_t kMaxPiggyback = 64;  // updates on a ping, ack, nack or gossip message
inline constexpr size_t kMaxMessageBytes = size_t{4} << 20;  // holds a push-pull of kMaxMembers

enum class State : uint8_t { kAlive = 0, kSuspect = 1, kDead = 2, kLeft = 3 };
// "alive" | "suspect" | "dead" | "left" (what constellation/nodes/<node>/status shows).
const char* StateName(State state);

// One member's state as a node disseminates it. `from` names who declared a suspicion or a death
// (for confirmations; the member itself for left; empty in push-pull state). `addr` is set for
// alive updates and push-pull entries.
struct Update {
  State state = State::kAlive;
  NodeName node;
  std::string addr;
  uint64_t incarnation = 0;
  NodeName from;
  bool operator==(const Update&) const = default;
};

enum class MessageType : uint8_t {
  kPing = 1,      // seq: the prober's sequence number; updates piggybacked
  kPingReq,       // seq; target and target_addr: whom the relay should ping for us
  kAck,           // seq echoed (a relay forwards the target's ack with the origin's seq)
  kNack,          // seq: a relay's target did not answer within the relay's probe timeout
  kGossip,        // updates only; no answer
  kPushPull,      // updates: the sender's whole table; join: sent to a seed address (to empty)
  kPushPullResp,  // updates: the receiver's whole table; join: answers a join
};
const char* MessageTypeName(MessageType type);

struct Message {
  MessageType type = MessageType::kPing;
  NodeName from;          // never empty
  std::string from_addr;  // where to answer a sender not in the table yet
  NodeName to;            // empty only for a join push-pull
  uint64_t seq = 0;
  NodeName target;  // kPingReq
  std::string target_addr;
  bool join = false;  // kPushPull, kPushPullResp
  std::vector<Update> updates;
  bool operator==(const Message&) const = default;
};

// ---- Encoding. Versioned (kProtocolVersion first), bounded, canonical: whatever decodes
// re-encodes to an equal value. Malformed input gives Corruption; another version NotSupported.
//
// Layout (version 1): version u8, type u8, from, from_addr, to (length-prefixed), seq (varint),
// target, target_addr (length-prefixed), flags u8 (bit 0: join; others zero), update count
// (varint) then each update as state u8, node, addr (length-prefixed), incarnation (varint),
// from (length-prefixed).
std::string EncodeMessage(const Message& m);
Result<Message> DecodeMessage(std::string_view in);
// Bytes EncodeMessage spends on one update (for piggyback budgets).
size_t EncodedUpdateBytes(const Update& u);
// One line of text for logs and golden tests: `a->b ping seq=3 [suspect c/2 by a, alive d/0]`.
std::string DescribeMessage(const Message& m);
std::string DescribeUpdate(const Update& u);

struct Options {
  NodeName name;      // this node; non-empty, at most kMaxNameBytes
  std::string addr;   // where others reach it; non-empty, at most kMaxAddrBytes
  uint64_t seed = 1;  // randomizes probe order, relays and gossip targets (deterministically)

  int64_t probe_interval_ms = 500;  // one probe per interval (scaled by health)
  int64_t probe_timeout_ms = 200;   // direct ack wait before ping-req (scaled by health)
  int indirect_checks = 3;          // relays asked per failed direct probe
  // Every other probe targets our successor in name order (see the protocol notes above).
  bool successor_probes = true;
  // Suspicion timeouts, in probe intervals, scaled by max(1, log10(n)): min = suspicion_mult
  // intervals, max = suspicion_max_mult * min; the timeout falls from max to min as
  // suspicion_confirmations (capped at n - 2) independent suspicions arrive. Defaults detect a
  // crashed node on every member within 3 s on a LAN typically (p99 2.1 s), and within 5 s when
  // its predecessor is healthy (tests/sim/membership_sim.h checks that bound, scaled by the
  // predecessor's health; docs/architecture.md has the figures).
  double suspicion_mult = 1;
  double suspicion_max_mult = 6;
  int suspicion_confirmations = 3;
  int retransmit_mult = 6;           // each update is sent retransmit_mult * ceil(log10(n+1)) times
  int awareness_max_multiplier = 8;  // health score stays below this
  int64_t gossip_interval_ms = 200;
  int gossip_fanout = 3;
  int64_t gossip_to_dead_ms = 30000;        // gossip also reaches members dead for less than this
  int64_t push_pull_interval_ms = 30000;    // anti-entropy with a random live member; 0: never
  int64_t reconnect_interval_ms = 2000;     // push-pull with a random dead member; 0: never
  int64_t reconnect_timeout_ms = 86400000;  // ... dead for less than this
  int64_t join_retry_ms = 1000;             // next seed when a join push-pull goes unanswered
  int64_t stall_threshold_ms = 1000;        // a Tick later than this after the last: stalled

  size_t max_members = 1024;          // <= kMaxMembers; a full table evicts the longest-dead
  size_t max_piggyback_updates = 16;  // <= kMaxPiggyback
  size_t max_piggyback_bytes = 1024;  // update bytes per message (at least one update always fits)
  size_t max_relays = 256;            // ping-reqs being relayed at once; beyond: refused
  size_t max_outbox = 4096;           // messages not yet taken by GetReady; beyond: dropped
  size_t max_events = 4096;           // events not yet taken; beyond: the oldest are dropped

  // TEST ONLY: never refute suspicions about ourselves (the simulator proves its checkers catch
  // the false deaths that follow).
  bool unsafe_no_refute = false;

  Status Validate() const;
};

// A member as this node sees it.
struct Member {
  NodeName name;
  std::string addr;
  State state = State::kAlive;
  uint64_t incarnation = 0;
  int64_t state_change_ms = 0;  // when this node last saw its state change
  bool operator==(const Member&) const = default;
};

// A member appeared (`is_new`) or its state or address changed. Events come in the order the
// changes happened; the member list (members()) is always the authority.
struct Event {
  NodeName node;
  std::string addr;
  State state = State::kAlive;
  uint64_t incarnation = 0;
  bool is_new = false;
  int64_t time_ms = 0;
  bool operator==(const Event&) const = default;
};
// "b suspect inc=2" (with " new" for a new member).
std::string DescribeEvent(const Event& e);

struct Outgoing {
  std::string addr;  // where to send it (the destination's address)
  Message message;   // message.to names the destination (empty for a join)
};

struct Ready {
  std::vector<Outgoing> messages;
  std::vector<Event> events;
  bool empty() const { return messages.empty() && events.empty(); }
};

// Counters for metrics and tests.
struct Stats {
  uint64_t messages_in = 0;
  uint64_t messages_refused = 0;  // Step returned an error (not for us, from ourselves, bad)
  uint64_t messages_out = 0;
  uint64_t outbox_dropped = 0;
  uint64_t events_dropped = 0;
  uint64_t probes = 0;
  uint64_t probes_indirect = 0;  // probes that needed ping-reqs
  uint64_t probes_failed = 0;    // ended without any ack: the target became suspect
  uint64_t nacks_missed = 0;
  uint64_t relays_refused = 0;
  uint64_t suspicions = 0;       // members we moved to suspect (ours or learned)
  uint64_t deaths = 0;           // members we moved to dead
  uint64_t refutations = 0;      // times we raised our incarnation to refute
  uint64_t members_refused = 0;  // new members refused by a full table
  uint64_t stalls = 0;           // Ticks that found the agent stalled
  uint64_t join_attempts = 0;
  uint64_t stale_corrected = 0;  // stale updates received that made us spread the newer state
};

class Membership {
 public:
  // A new member of a cluster of one (itself, alive at incarnation 0). Join() to join others.
  static Result<std::unique_ptr<Membership>> New(Options options, int64_t now_ms);
  ~Membership();
  Membership(const Membership&) = delete;
  Membership& operator=(const Membership&) = delete;

  // Joins through any of `seed_addrs` (tried in turn, one per join_retry_ms, until one answers,
  // then synced with the next two once); joined() turns true once a seed's state is merged.
  // NotPermitted after Leave(). InvalidArgument for no seeds or a bad address.
  Status Join(const std::vector<std::string>& seed_addrs, int64_t now_ms);
  // Leaves gracefully: status `left`, gossiped at once. Idempotent.
  Status Leave(int64_t now_ms);
  // A message from the network (decoded). InvalidArgument for a message that is not for this node
  // (wrong `to`), comes from our own name, or is inconsistent; it is dropped and counted.
  Status Step(const Message& m, int64_t now_ms);
  // Runs every timer due at now_ms (probes, ping-reqs, suspicion timeouts, gossip, push-pull).
  void Tick(int64_t now_ms);
  // When the next timer is due (Tick before then changes nothing but the stall clock).
  int64_t NextTickMs() const;

  bool HasReady() const;
  Ready GetReady();

  const NodeName& name() const;
  uint64_t incarnation() const;
  bool joined() const;
  bool left() const;
  // The local health score (0 = healthy); timeouts are scaled by health_score() + 1.
  int health_score() const;
  // Every member, ourselves included, sorted by name.
  std::vector<Member> members() const;
  // One member, or nullopt.
  std::optional<Member> member(const NodeName& name) const;
  // Alive and suspect members, ourselves included.
  size_t live_members() const;
  // Updates still queued for dissemination.
  size_t pending_broadcasts() const;
  // The suspicion timeout for `name` (a suspect member) given the confirmations so far; for tests.
  std::optional<int64_t> suspicion_timeout_ms(const NodeName& name) const;
  const Stats& stats() const;

  class Impl;

 private:
  explicit Membership(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Lifeguard's dynamic suspicion timeout (pure; exposed for tests):
// max(min, max - (max - min) * log(C + 1) / log(K + 1)); (min + max) / 2 when K <= 0.
int64_t SuspicionTimeoutMs(int64_t min_ms, int64_t max_ms, int confirmations, int k);

}  // namespace constellation::membership

#endif  // CONSTELLATION_NODE_MEMBERSHIP_MEMBERSHIP_H_
