// ClusterNode: what turns a Replica into a member of a cluster (DESIGN.md §5) — the CURVE
// transport, who may connect, raft messages in and out, joining, and the automatic voter set.
//
// Keys: the node's CURVE key pair (a file written by `constellation keygen`, or DATA/node.key made
// at first start) and a join key pair (DATA/join.key). The join token (DATA/join_token, mode 0600)
// is this node's public key and the join key's secret: whoever holds it can reach this node's join
// service, and nothing else.
//
// Who may connect (the ZAP check, on the transport's thread): the keys of admitted nodes (the
// replicated kNodeAdmit records), the members a join reply listed (until this node has caught up),
// and the join key — whose connections may only send join requests. Everything else is refused
// and counted; malformed messages and raft messages whose sender name does not match the key
// that sent them are dropped and counted.
//
// Joining: the new node sends JoinRequest{name, addr, key} under the join key to the node that
// issued the token; that node proposes kNodeAdmit (forwarded to the leader) and, once it has
// applied it, answers with every member's name, key and address. The leader's voter planner
// (node/cluster/voters.h) then adds the new node as a learner, raft brings it up to date (by
// snapshot when the log is compacted), and promotes it while the cluster has fewer than 3 (or 5)
// voters.
//
// Joining at run time (JoinCluster, `echo join HOST:PORT TOKEN > constellation/ctl`): a node whose
// own cluster holds nothing but itself (Replica::PrepareJoin: new commands wait meanwhile) stops
// SWIM and stops feeding raft messages to its replica, asks to join as above and, once admitted,
// has the replica discard its own cluster (Replica::ResetForJoin, one synced write that also keeps
// the join reply's member list), then catches up and starts SWIM with the new members. Refused,
// or without an answer, it opens the gate again and its cluster is as it was. The join reply's
// member list in the store makes a node admitted but not yet caught up resume catching up at its
// next start, with or without --join.
//
// Liveness (SWIM, node/membership): once attached, one thread drives a membership::Membership
// core — its messages travel as WireKind::kMembership over the same CURVE transport (a sender
// must hold the key of the member it names), it joins through the other admitted members'
// addresses, and its events become `node_joined`, `node_alive`, `node_suspect`, `node_dead` and
// `node_left` lines in constellation/events and SetNodeDead calls (dead or left: dead; alive: not).
// Leave (on a clean stop) announces `left` and waits, boundedly, until it is disseminated.
//
// Lifecycle: Start (before Replica::Open, whose options Configure fills in), Attach (with the
// replica open: admits this node or joins, then starts membership), Leave (optional), Detach
// (before the replica is destroyed), destroy.
// Thread-safety: every public method is safe from any thread.
#ifndef CONSTELLATION_NODE_CLUSTER_CLUSTER_NODE_H_
#define CONSTELLATION_NODE_CLUSTER_CLUSTER_NODE_H_

#include <functional>
#include <memory>
#include <string>

#include "node/base/status.h"
#include "node/membership/membership.h"
#include "node/state/replica.h"

namespace constellation {

struct ClusterNodeOptions {
  std::string data_dir;
  std::string node_name;
  std::string bind;      // host:port to listen on
  std::string addr;      // how peers reach this node (default: bind)
  std::string key_file;  // this node's key pair (default: data_dir/node.key, created if missing)
  std::string join;      // host:port of a member to join through; empty: bootstrap
  std::string token;     // the join token that member issued
  int64_t join_timeout_ms = 60000;  // for the join reply and then for catching up
  // SWIM's timing (name, addr and seed are filled in by Start); see ParseSwimFlag.
  membership::Options swim;
  int64_t leave_timeout_ms = 1000;  // Leave waits at most this long for `left` to spread
};

// Applies one `--swim NAME=VALUE` setting to `o`: probe_interval_ms, probe_timeout_ms,
// indirect_checks, suspicion_mult, suspicion_max_mult, gossip_interval_ms, gossip_fanout,
// push_pull_interval_ms, reconnect_interval_ms or leave_timeout_ms (numbers; the *_mult ones may
// be fractional). InvalidArgument naming the problem for an unknown name or a value out of range
// (the combination is checked again by Start, with membership::Options::Validate).
Status ParseSwimFlag(std::string_view name_value, ClusterNodeOptions* o);

// InvalidArgument unless `addr` is HOST:PORT with a non-empty host (no blanks) and a port 1..65535.
Status ValidateHostPort(std::string_view addr);

// Statistics for constellation/status.
struct ClusterCounters {
  uint64_t refused = 0;           // connections and messages refused (not admitted, spoofed)
  uint64_t handshake_failed = 0;  // garbage or wrong-key handshakes
  uint64_t malformed = 0;         // messages that did not decode
  uint64_t join_requests = 0;     // join requests served
};

// Key files: "public <Z85>\nsecret <Z85>\n".
Status WriteKeyFile(const std::string& path, const std::string& public_key,
                    const std::string& secret_key);
Result<std::pair<std::string, std::string>> ReadKeyFile(const std::string& path);

class ClusterNode {
 public:
  static Result<std::unique_ptr<ClusterNode>> Start(const ClusterNodeOptions& options);
  ~ClusterNode();

  // Sets the replica options this node needs: join mode, send, plan_membership.
  void Configure(ReplicaOptions* ro);
  // With the replica open: a bootstrapped node admits itself (its key and address); a joining
  // node that is not yet a member joins through options.join and waits until it has caught up.
  Status Attach(Replica* replica);
  // Stops delivering to the replica and serving joins (before the replica is destroyed); waits
  // for a JoinCluster in progress, which it makes give up.
  void Detach();

  // With the replica attached: leaves this node's own cluster for the cluster of the node at
  // `addr` (host:port) that issued `token`, and returns once admitted and caught up (bounded by
  // join_timeout_ms). Nothing changes when it fails with: InvalidArgument (a malformed address or
  // token, or this node's own token); Busy (this node's cluster holds more than itself — see
  // Replica::CheckAlone — or a join is already in progress); TimedOut (no answer from `addr`,
  // e.g. a wrong token or address); PermissionDenied (the cluster refused, e.g. the name is
  // taken); Unavailable (the commands in hand did not finish, or shutting down). Once admitted the
  // node belongs to the new cluster for good: TimedOut then means it is still catching up, which
  // goes on in the background. `cancelled`, when set, is polled (about every second): once it
  // returns true the join gives up with Unavailable (the daemon is stopping; admitted, the node
  // catches up at its next start).
  Status JoinCluster(const std::string& addr, const std::string& token,
                     const std::function<bool()>& cancelled = {});

  const std::string& join_token() const;
  std::string token_path() const;
  std::string address() const;
  ClusterCounters counters() const;

  // The hook for the membership layer (SWIM): `node` was declared dead (or alive again). A dead
  // voter is replaced by a caught-up learner at the leader's next tick; a dead node is not
  // promoted.
  void SetNodeDead(const std::string& node, bool dead);

  // This node's SWIM view of `node`: "alive", "suspect", "dead" or "left"; "" while SWIM has not
  // heard of it (before membership starts, or a member not yet reached).
  std::string NodeState(const std::string& node) const;
  // Members this node sees alive, itself included (0 before membership starts).
  size_t NodesAlive() const;
  // Announces a graceful leave and returns once it is disseminated, or after leave_timeout_ms.
  // No-op before Attach has started membership, or if already left.
  void Leave();

  struct Impl;

 private:
  explicit ClusterNode(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace constellation

#endif  // CONSTELLATION_NODE_CLUSTER_CLUSTER_NODE_H_
