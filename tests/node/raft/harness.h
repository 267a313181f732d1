// A scripted driver for Raft clusters in tests: nodes with MemoryStorage, an in-order mailbox per
// node, partitions, and a text command language used by the golden tests (testdata/*.txt):
//
//   add-nodes N [voters=1,2,3] [learners=4] [join] [election=10] [heartbeat=1] [prevote=false]
//             [checkquorum=false] [max-append-bytes=B] [inflight=N] [chunk-bytes=B]
//             [chunk-window=N] [unsafe-commit]
//   campaign ID | propose ID DATA | propose-conf-change ID add-voter|add-learner|remove NODE
//   read-index ID CTX | tick ID [N] | process-ready ID... | deliver-msgs [ID...] [drop]
//   stabilize [ID...] | partition ID... (those vs the rest) | cut FROM TO (one direction)
//   isolate ID | heal | status ID | raft-log ID | raft-state | compact ID [keep=N]
//   restart ID | log-level none|info|debug | fail-persist ID
//
// Every message delivered is encoded and decoded first (the codec is on the path). Output is
// deterministic text.
// Thread-safety: single-threaded.
#ifndef CONSTELLATION_TESTS_NODE_RAFT_HARNESS_H_
#define CONSTELLATION_TESTS_NODE_RAFT_HARNESS_H_

#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "node/raft/raft.h"

namespace constellation::raft::testing {

class Harness {
 public:
  struct Node {
    std::unique_ptr<MemoryStorage> storage;
    std::unique_ptr<Raft> raft;
    RaftOptions options;
    std::vector<std::string> applied;  // data of applied non-empty normal entries
    std::vector<ReadState> reads;      // read states received
    bool fail_next_persist = false;
  };

  Harness();
  Harness(const Harness&) = delete;  // the nodes' loggers point back here
  Harness& operator=(const Harness&) = delete;
  // Runs one command line; returns its output (never empty: "ok" when nothing to say).
  std::string Run(const std::string& line);

  Node& node(const std::string& id) { return nodes_.at(id); }
  bool has(const std::string& id) const { return nodes_.count(id) > 0; }
  std::vector<std::string> ids() const;

  // Direct API for unit tests.
  void AddNodes(int n, const std::vector<std::string>& args);
  // Processes every node's Ready and delivers every message until nothing moves (bounded).
  void Stabilize(const std::vector<std::string>& only = {});
  // Performs one Ready of node `id` (persist, queue messages, apply, advance) and returns it.
  Ready ProcessReady(const std::string& id);
  void DeliverMsgs(const std::string& id, bool drop = false);
  size_t queued() const;
  std::string leader() const;  // the leader with the highest term, or ""

 private:
  void Print(const std::string& line);
  bool Blocked(const std::string& from, const std::string& to) const;
  std::string StatusOf(const std::string& id);
  void Restart(const std::string& id);
  std::string DescribeReady(const Ready& rd) const;

  std::map<std::string, Node> nodes_;
  std::map<std::string, std::vector<Message>> mailbox_;  // by destination
  std::set<std::pair<std::string, std::string>> cut_;    // blocked (from, to)
  std::string out_;
  bool verbose_ = true;
  LogLevel level_ = LogLevel::kInfo;
  int next_id_ = 1;
};

}  // namespace constellation::raft::testing

#endif  // CONSTELLATION_TESTS_NODE_RAFT_HARNESS_H_
