// A scripted driver for membership cores in tests: nodes on one shared clock, an in-order mailbox,
// partitions, crashes, pauses, and a text command language used by the golden tests
// (testdata/*.txt):
//
//   add-nodes NAME... [interval=MS] [timeout=MS] [indirect=N] [suspicion-mult=X]
//             [suspicion-max-mult=X] [confirmations=N] [gossip=MS] [fanout=N] [push-pull=MS]
//             [reconnect=MS] [retransmit-mult=N] [no-refute]
//                         new nodes, each alone in its cluster (address = its name)
//   join NAME SEED...     NAME joins through the SEEDs' addresses (tried in turn)
//   tick MS               advance the clock MS ms, ticking every running node each ms; messages
//                         stay queued
//   deliver [drop]        deliver (or drop) every queued message once, printing each; answers
//                         queue for the next deliver
//   stabilize             deliver until nothing is queued (bounded)
//   run MS [latency=MS]   advance the clock MS ms with the network on: each message arrives
//                         `latency` ms (default 1) after it was sent; prints events only
//   members NAME          NAME's table; `health NAME`; `suspicion NAME TARGET` (its timeout)
//   crash NAME | restart NAME SEED | pause NAME | resume NAME | leave NAME
//   partition NAME... (those vs the rest) | cut FROM TO (one direction) | heal
//   inject TO FROM TYPE [seq=N] [UPDATE...]   hand TO a message from FROM; TYPE is ping, ack,
//                         nack, gossip or push-pull; UPDATE is STATE:NODE/INC[:BY]
//   print-messages on|off  whether `run` also prints messages as they arrive
//
// Every message is encoded and decoded on its way (the codec is on the path). A crashed node's
// queued messages are lost; a paused node's wait for it to resume (a socket buffer). Output lines:
// "a->b ping seq=1 [...]" for messages, "[T] a: b suspect inc=0" for events (T: clock in ms).
// Thread-safety: single-threaded.
#ifndef CONSTELLATION_TESTS_NODE_MEMBERSHIP_HARNESS_H_
#define CONSTELLATION_TESTS_NODE_MEMBERSHIP_HARNESS_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "node/membership/membership.h"

namespace constellation::membership::testing {

class Harness {
 public:
  struct Pending {
    std::string addr;  // destination address (= node name)
    std::string wire;  // encoded message
    int64_t deliver_at = 0;
  };
  struct Node {
    std::unique_ptr<Membership> core;
    Options options;
    bool crashed = false;
    bool paused = false;
    std::deque<Pending> held;  // arrived while paused
  };

  Harness() = default;
  // Runs one command line; returns its output (never empty: "ok" when nothing to say).
  std::string Run(const std::string& line);

  Node& node(const std::string& name) { return nodes_.at(name); }
  Membership& core(const std::string& name) { return *nodes_.at(name).core; }
  int64_t now() const { return now_ms_; }
  // NAME's view of TARGET ("alive", "suspect", "dead", "left" or "unknown").
  std::string StateOf(const std::string& name, const std::string& target) const;

 private:
  void AddNodes(const std::vector<std::string>& names, const std::vector<std::string>& args);
  void Collect(const std::string& name);  // moves a node's Ready into the mailbox and output
  void Deliver(const Pending& p, bool drop, bool print);
  void TickAll();
  bool Blocked(const std::string& from, const std::string& to) const;
  void Print(const std::string& line) { out_ += line + "\n"; }

  std::map<std::string, Node> nodes_;
  std::deque<Pending> mailbox_;
  std::set<std::pair<std::string, std::string>> cut_;  // blocked (from, to)
  int64_t now_ms_ = 0;
  int64_t latency_ms_ = 1;
  bool print_messages_ = false;
  std::string out_;
};

}  // namespace constellation::membership::testing

#endif  // CONSTELLATION_TESTS_NODE_MEMBERSHIP_HARNESS_H_
