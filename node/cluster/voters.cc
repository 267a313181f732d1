#include "node/cluster/voters.h"

#include <algorithm>

namespace constellation {

size_t DesiredVoters(size_t live) {
  if (live >= 5) return 5;
  if (live >= 3) return 3;
  return 1;
}

std::optional<raft::ConfChange> PlanVoters(const VoterPlanInput& in) {
  const raft::Config& c = in.config;
  auto dead = [&](const std::string& n) { return in.dead.count(n) > 0; };
  auto caught_up = [&](const std::string& n) {
    for (const raft::PeerProgress& p : in.progress) {
      if (p.id == n) return p.recent_active && p.match + in.max_lag >= in.last_index;
    }
    return false;
  };
  // A live learner ready to become a voter, by name (deterministic).
  std::optional<std::string> ready;
  for (const std::string& l : c.learners) {
    if (!dead(l) && caught_up(l)) {
      ready = l;
      break;
    }
  }
  // 1. Replace a dead voter: remove it while someone can take its place.
  for (const std::string& v : c.voters) {
    if (dead(v) && ready && c.voters.size() > 1) {
      return raft::ConfChange(raft::ConfChangeType::kRemoveNode, v);
    }
  }
  // 2. Admitted nodes join as learners.
  std::vector<std::string> admitted = in.admitted;
  std::sort(admitted.begin(), admitted.end());
  for (const std::string& n : admitted) {
    if (!dead(n) && !c.Contains(n)) return raft::ConfChange(raft::ConfChangeType::kAddLearner, n);
  }
  // 3. Promote caught-up learners up to the desired number of voters.
  size_t live = 0, live_voters = 0;
  for (const std::string& v : c.voters) {
    if (!dead(v)) ++live, ++live_voters;
  }
  for (const std::string& l : c.learners) {
    if (!dead(l)) ++live;
  }
  if (live_voters < DesiredVoters(live) && ready) {
    return raft::ConfChange(raft::ConfChangeType::kAddVoter, *ready);
  }
  return std::nullopt;
}

}  // namespace constellation
