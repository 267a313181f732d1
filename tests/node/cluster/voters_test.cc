#include "node/cluster/voters.h"

#include "catch2/catch.hpp"

namespace constellation {
namespace {

raft::PeerProgress Peer(const std::string& id, uint64_t match, bool active = true) {
  raft::PeerProgress p;
  p.id = id;
  p.match = match;
  p.recent_active = active;
  return p;
}

VoterPlanInput Input(std::vector<std::string> voters, std::vector<std::string> learners,
                     std::vector<std::string> admitted) {
  VoterPlanInput in;
  in.config.voters = std::move(voters);
  in.config.learners = std::move(learners);
  in.admitted = std::move(admitted);
  in.last_index = 1000;
  for (const auto& v : in.config.voters) in.progress.push_back(Peer(v, 1000));
  for (const auto& l : in.config.learners) in.progress.push_back(Peer(l, 1000));
  return in;
}

}  // namespace

TEST_CASE("voters: 1, 3 or 5") {
  CHECK(DesiredVoters(1) == 1);
  CHECK(DesiredVoters(2) == 1);
  CHECK(DesiredVoters(3) == 3);
  CHECK(DesiredVoters(4) == 3);
  CHECK(DesiredVoters(5) == 5);
  CHECK(DesiredVoters(9) == 5);
}

TEST_CASE("voters: admitted nodes join as learners, one at a time, by name") {
  auto cc = PlanVoters(Input({"a"}, {}, {"a", "c", "b"}));
  REQUIRE(cc);
  CHECK(cc->type == raft::ConfChangeType::kAddLearner);
  CHECK(cc->node == "b");
  CHECK_FALSE(PlanVoters(Input({"a"}, {}, {"a"})));
}

TEST_CASE("voters: two nodes keep one voter; the third makes three") {
  CHECK_FALSE(PlanVoters(Input({"a"}, {"b"}, {"a", "b"})));
  auto cc = PlanVoters(Input({"a"}, {"b", "c"}, {"a", "b", "c"}));
  REQUIRE(cc);
  CHECK(cc->type == raft::ConfChangeType::kAddVoter);
  CHECK(cc->node == "b");
  CHECK_FALSE(PlanVoters(Input({"a", "b", "c"}, {"d"}, {"a", "b", "c", "d"})));
  auto five = PlanVoters(Input({"a", "b", "c"}, {"d", "e"}, {"a", "b", "c", "d", "e"}));
  REQUIRE(five);
  CHECK(five->node == "d");
  CHECK_FALSE(PlanVoters(
      Input({"a", "b", "c", "d", "e"}, {"f", "g"}, {"a", "b", "c", "d", "e", "f", "g"})));
}

TEST_CASE("voters: a learner far behind or silent is not promoted") {
  auto in = Input({"a"}, {"b", "c"}, {"a", "b", "c"});
  in.progress = {Peer("a", 1000), Peer("b", 10), Peer("c", 1000, false)};
  CHECK_FALSE(PlanVoters(in));
  in.progress[1] = Peer("b", 990);  // within max_lag
  auto cc = PlanVoters(in);
  REQUIRE(cc);
  CHECK(cc->node == "b");
}

TEST_CASE("voters: a dead voter is replaced once a live learner can take its place") {
  auto in = Input({"a", "b", "c"}, {}, {"a", "b", "c"});
  in.dead = {"c"};
  CHECK_FALSE(PlanVoters(in));  // nobody to take its place: keep it
  in = Input({"a", "b", "c"}, {"d"}, {"a", "b", "c", "d"});
  in.dead = {"c"};
  auto cc = PlanVoters(in);
  REQUIRE(cc);
  CHECK(cc->type == raft::ConfChangeType::kRemoveNode);
  CHECK(cc->node == "c");
  // After the removal: d is promoted; the dead node is not re-added while dead.
  in = Input({"a", "b"}, {"d"}, {"a", "b", "c", "d"});
  in.dead = {"c"};
  cc = PlanVoters(in);
  REQUIRE(cc);
  CHECK(cc->type == raft::ConfChangeType::kAddVoter);
  CHECK(cc->node == "d");
  // A dead learner is never promoted (and does not count towards the cluster's size).
  in = Input({"a"}, {"b", "c"}, {"a", "b", "c"});
  in.dead = {"b"};
  CHECK_FALSE(PlanVoters(in));
  in = Input({"a"}, {"b", "c", "d"}, {"a", "b", "c", "d"});
  in.dead = {"b"};
  cc = PlanVoters(in);
  REQUIRE(cc);
  CHECK(cc->node == "c");
}

}  // namespace constellation
