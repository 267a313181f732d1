// The automatic voter set (DESIGN.md §5): a pure function the leader calls once per tick to choose
// the next single-server membership change. Admitted nodes join raft as learners; learners that
// have caught up are promoted until the cluster has 3 voters (from 3 live nodes) or 5 (from 5);
// a dead voter is removed once a live, caught-up learner can take its place (and is then
// replaced by the promotion rule). Which nodes are dead is the membership layer's verdict (SWIM,
// node/membership), passed in; without it no node is ever considered dead.
// Thread-safety: a pure function.
#ifndef CONSTELLATION_NODE_CLUSTER_VOTERS_H_
#define CONSTELLATION_NODE_CLUSTER_VOTERS_H_

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "node/raft/raft.h"

namespace constellation {

struct VoterPlanInput {
  raft::Config config;                       // raft's configuration now
  std::vector<raft::PeerProgress> progress;  // the leader's view of every member
  uint64_t last_index = 0;                   // the leader's last log index
  std::vector<std::string> admitted;         // nodes the cluster admitted (replicated state)
  std::set<std::string> dead;                // nodes the membership layer declared dead
  uint64_t max_lag = 64;                     // a learner this close to last_index is caught up
};

// The number of voters a cluster of `live` nodes should have: 1, 3 or 5.
size_t DesiredVoters(size_t live);

// The next change to propose, or nothing when the configuration is as it should be.
std::optional<raft::ConfChange> PlanVoters(const VoterPlanInput& in);

}  // namespace constellation

#endif  // CONSTELLATION_NODE_CLUSTER_VOTERS_H_
