// Consensus: the propose / ready / advance interface between the agent loop and the algorithm that
// orders the log (etcd raft's shape). Today the log has one voter (SingleVoter): an entry is
// committed once it is durable on the one disk. Raft implements the same interface later, so the
// agent loop and every caller of Replica::Propose stay as they are.
//
// The agent loop, for each Ready, in this order: persist `entries` and `hard_state` (synced), send
// `messages`, apply `committed_entries` in order, then call Advance().
// Thread-safety: not thread-safe; owned by the agent thread.
#ifndef CONSTELLATION_NODE_STATE_CONSENSUS_H_
#define CONSTELLATION_NODE_STATE_CONSENSUS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "node/base/status.h"

namespace constellation {

struct LogEntry {
  uint64_t index = 0;
  uint64_t term = 0;
  std::string data;  // an encoded Command
};

struct HardState {
  uint64_t term = 0;
  std::string vote;
  uint64_t commit = 0;
  bool operator==(const HardState&) const = default;
};

struct OutboundMessage {
  std::string to;
  std::string data;
};

struct Ready {
  std::vector<LogEntry> entries;            // to persist before anything else
  std::optional<HardState> hard_state;      // to persist with them
  std::vector<OutboundMessage> messages;    // to send once persisted
  std::vector<LogEntry> committed_entries;  // to apply, in order
  bool empty() const {
    return entries.empty() && !hard_state && messages.empty() && committed_entries.empty();
  }
};

class Consensus {
 public:
  virtual ~Consensus() = default;
  // Unavailable when this node cannot accept proposals (not the leader, no quorum).
  virtual Status Propose(std::string data) = 0;
  virtual bool HasReady() const = 0;
  virtual Ready GetReady() = 0;
  // The work of the last Ready is done.
  virtual void Advance() = 0;
  // Storage refused the last Ready's entries: forget them. They were never acknowledged.
  virtual void PersistFailed() = 0;
  virtual void Tick() = 0;
  virtual uint64_t term() const = 0;
  virtual uint64_t commit_index() const = 0;
  virtual uint64_t last_index() const = 0;
  virtual std::string leader() const = 0;
};

// The one-voter log. `last_index`/`last_term` describe the durable log found at start; all of it is
// committed (the only voter has it).
std::unique_ptr<Consensus> NewSingleVoter(std::string self, uint64_t last_index, uint64_t term);

}  // namespace constellation

#endif  // CONSTELLATION_NODE_STATE_CONSENSUS_H_
