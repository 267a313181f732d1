// Unit tests of the Raft core. Clusters run through the test Harness (MemoryStorage per node,
// in-order mailboxes, partitions); single nodes are driven by hand where the Ready matters.
#include "node/raft/raft.h"

#include <algorithm>

#include "catch2/catch.hpp"
#include "tests/node/raft/harness.h"

namespace constellation::raft {
namespace {

using testing::Harness;

RaftOptions Opts(const std::string& id, RaftStorage* st) {
  RaftOptions o;
  o.id = id;
  o.storage = st;
  o.logger = [](LogLevel, const std::string&) {};
  return o;
}

// Performs a Ready as an agent would: persist, (drop messages), apply; returns it.
Ready Perform(Raft& r, MemoryStorage& st) {
  Ready rd = r.GetReady();
  if (rd.snapshot) st.ApplySnapshot(*rd.snapshot);
  st.Append(rd.entries);
  if (rd.hard_state) st.SetHardState(*rd.hard_state);
  r.Advance();
  return rd;
}

// "v3" (built by appending: GCC 12 warns falsely about "v" + std::to_string(3) at -O2).
std::string Numbered(const char* prefix, int i) {
  std::string s = prefix;
  s += std::to_string(i);
  return s;
}

std::unique_ptr<Raft> NewRaft(const RaftOptions& o) {
  Result<std::unique_ptr<Raft>> r = Raft::New(o);
  REQUIRE(r.ok());
  return std::move(*r);
}

std::vector<std::string> Applied(Harness& h, const std::string& id) { return h.node(id).applied; }

// Ticks `ids` (and delivers everything) until one of them leads; bounded.
void ElectAmong(Harness& h, const std::vector<std::string>& ids) {
  for (int i = 0; i < 200; ++i) {
    for (const std::string& id : ids) {
      if (h.node(id).raft->role() == Role::kLeader) return;
    }
    for (const std::string& id : ids) h.Run("tick " + id);
    h.Stabilize();
  }
}

// A cluster of n voters led by node 1.
std::unique_ptr<Harness> Cluster(int n, const std::string& opts = "") {
  auto h = std::make_unique<Harness>();
  h->Run("log-level none");
  h->Run("add-nodes " + std::to_string(n) + " " + opts);
  h->Run("campaign 1");
  h->Stabilize();
  return h;
}

TEST_CASE("options are validated") {
  MemoryStorage st;
  RaftOptions o = Opts("1", &st);
  REQUIRE(o.Validate().ok());
  RaftOptions bad = o;
  bad.id = "";
  CHECK(!Raft::New(bad).ok());
  bad = o;
  bad.storage = nullptr;
  CHECK(!Raft::New(bad).ok());
  bad = o;
  bad.election_ticks = bad.heartbeat_ticks;
  CHECK(!Raft::New(bad).ok());
  bad = o;
  bad.max_snapshot_chunk_bytes = 0;
  CHECK(!Raft::New(bad).ok());
  bad = o;
  bad.max_uncommitted_bytes = bad.max_entry_bytes - 1;
  CHECK(!Raft::New(bad).ok());
}

TEST_CASE("a sole voter leads at once and commits an entry once it is durable") {
  MemoryStorage st(Config{{"1"}, {}});
  auto r = NewRaft(Opts("1", &st));
  CHECK(r->role() == Role::kLeader);
  CHECK(r->term() == 1);
  Ready rd = Perform(*r, st);  // the no-op, and the vote for itself
  REQUIRE(rd.hard_state);
  CHECK(rd.hard_state->vote == "1");
  CHECK(rd.entries.size() == 1);
  CHECK(rd.committed_entries.empty());  // not before it is durable
  REQUIRE(r->Propose("x").ok());
  rd = Perform(*r, st);
  CHECK(rd.entries.size() == 1);
  CHECK(rd.committed_entries.size() == 1);  // the no-op, durable since the last Ready
  CHECK(rd.committed_entries[0].data.empty());
  rd = Perform(*r, st);
  REQUIRE(rd.committed_entries.size() == 1);
  CHECK(rd.committed_entries[0].data == "x");
  CHECK(rd.hard_state->commit == 2);
  CHECK(!r->HasReady());
  CHECK(r->applied_index() == 2);
}

TEST_CASE("a restarted node recovers its hard state, log and configuration") {
  MemoryStorage st(Config{{"1"}, {}});
  {
    auto r = NewRaft(Opts("1", &st));
    REQUIRE(r->ProposeConfChange(ConfChange{ConfChangeType::kAddLearner, "2"}).code() ==
            Code::kBusy);  // the no-op of its term is not committed yet
    Perform(*r, st);
    REQUIRE(r->ProposeConfChange(ConfChange{ConfChangeType::kAddLearner, "2"}).ok());
    REQUIRE(r->Propose("a").ok());
    while (r->HasReady()) Perform(*r, st);
    CHECK(r->config() == Config{{"1"}, {"2"}});
  }
  RaftOptions o = Opts("1", &st);
  o.applied = 2;  // the state machine had applied up to the conf change
  auto r = NewRaft(o);
  CHECK(r->config() == Config{{"1"}, {"2"}});
  CHECK(r->term() == 2);        // campaigned again at start (sole voter)
  CHECK(r->last_index() == 4);  // no-op, conf change, "a", the new no-op
  Ready rd = Perform(*r, st);
  // Entries up to the applied index are not handed out again.
  std::vector<std::string> data;
  for (const Entry& e : rd.committed_entries) data.push_back(e.data);
  CHECK(data == std::vector<std::string>{"a"});
}

TEST_CASE("three voters elect one leader and replicate in order") {
  auto hp = Cluster(3);
  Harness& h = *hp;
  CHECK(h.leader() == "1");
  for (const std::string& id : h.ids()) CHECK(h.node(id).raft->term() == 1);
  for (int i = 0; i < 5; ++i) REQUIRE(h.node("1").raft->Propose(Numbered("v", i)).ok());
  h.Stabilize();
  std::vector<std::string> want{"v0", "v1", "v2", "v3", "v4"};
  for (const std::string& id : h.ids()) CHECK(Applied(h, id) == want);
}

TEST_CASE("followers forward proposals; without a leader they refuse") {
  Harness h;
  h.Run("log-level none");
  h.Run("add-nodes 3");
  CHECK(h.node("2").raft->Propose("early").code() == Code::kUnavailable);
  h.Run("campaign 1");
  h.Stabilize();
  REQUIRE(h.node("2").raft->Propose("via-2").ok());
  REQUIRE(h.node("3").raft->Propose("via-3").ok());
  h.Stabilize();
  for (const std::string& id : h.ids()) {
    CHECK(Applied(h, id) == std::vector<std::string>{"via-2", "via-3"});
  }
  RaftOptions o = h.node("1").options;
  CHECK(h.node("1").raft->Propose(std::string(o.max_entry_bytes + 1, 'x')).code() ==
        Code::kTooLarge);
}

TEST_CASE("a vote is granted only in a Ready that persists it") {
  Harness h;
  h.Run("log-level none");
  h.Run("add-nodes 3");
  h.Run("campaign 1");
  h.Run("process-ready 1");
  h.Run("deliver-msgs 2");
  Ready rd = h.node("2").raft->GetReady();
  bool granted = false;
  for (const Message& m : rd.messages) {
    if (m.type == MessageType::kPreVoteResp && !m.reject) granted = true;
  }
  CHECK(granted);
  CHECK(!rd.hard_state);  // pre-votes change nothing durable
  h.node("2").raft->Advance();
  h.Run("stabilize 1");  // 1 wins the pre-vote with 2's answer... which was dropped above
  h.Run("tick 1 30");
  h.Run("process-ready 1");
  h.Run("deliver-msgs 2");
  h.Run("deliver-msgs 3");
  for (std::string id : {"2", "3"}) {
    Ready r = h.node(id).raft->GetReady();
    for (const Message& m : r.messages) {
      if (m.type == MessageType::kVoteResp && !m.reject) {
        REQUIRE(r.hard_state);
        CHECK(r.hard_state->vote == m.to);
        CHECK(r.hard_state->term == m.term);
      }
    }
    h.node(id).raft->Advance();
  }
}

TEST_CASE("pre-vote keeps a rejoining partitioned node from disrupting the leader") {
  auto hp = Cluster(3);
  Harness& h = *hp;
  h.Run("isolate 3");
  h.Run("tick 3 100");  // campaigns (pre-votes) in vain, without raising its term
  h.Stabilize();
  CHECK(h.node("3").raft->term() == 1);
  h.Run("heal");
  h.Run("tick 1");
  h.Stabilize();
  CHECK(h.leader() == "1");
  CHECK(h.node("1").raft->term() == 1);
}

TEST_CASE("without pre-vote the rejoining node does disrupt (the contrast)") {
  auto hp = Cluster(3, "prevote=false checkquorum=false");
  Harness& h = *hp;
  h.Run("isolate 3");
  h.Run("tick 3 100");
  h.Stabilize();
  CHECK(h.node("3").raft->term() > 1);
  h.Run("heal");
  h.Run("tick 3 40");  // its next campaign reaches the leader, which must step down
  h.Stabilize();
  CHECK(h.node("1").raft->term() > 1);
}

// Without pre-vote, candidates with stale logs raise the term again and again. If each raised term
// restarted every election timer, the one node that could win might never time out (simulator
// seed 5043056: the stale nodes' clocks ran fast). Only a leader's message or a granted vote
// restarts it (Figure 2 of the Raft paper).
TEST_CASE("a vote refused to a stale candidate does not restart the election timer") {
  auto follower = [](MemoryStorage& st) {
    st.Append({Entry{1, 1, EntryType::kNormal, ""}});
    st.SetHardState(HardState{1, "", 0});
    RaftOptions o = Opts("1", &st);
    o.pre_vote = false;
    o.check_quorum = false;
    auto r = NewRaft(o);
    for (int i = 0; i < 9; ++i) r->Tick();  // below any timeout (10..19 ticks)
    REQUIRE(r->role() == Role::kFollower);
    return r;
  };
  auto vote = [](uint64_t log_term, uint64_t index) {
    Message m;
    m.type = MessageType::kVote;
    m.from = "3";
    m.to = "1";
    m.term = 5;
    m.log_term = log_term;
    m.index = index;
    return m;
  };
  auto ticks_to_campaign = [](Raft& r) {
    int t = 0;
    for (; r.role() == Role::kFollower && t < 100; ++t) r.Tick();
    return t;
  };
  MemoryStorage refusing(Config{{"1", "2", "3"}, {}});
  auto r = follower(refusing);
  REQUIRE(r->Step(vote(0, 0)).ok());  // an empty log: behind ours
  Ready rd = Perform(*r, refusing);
  REQUIRE(rd.messages.size() == 1);
  CHECK(rd.messages[0].reject);
  CHECK(r->term() == 5);
  CHECK(ticks_to_campaign(*r) <= 10);  // 9 + 10 reach any timeout

  MemoryStorage granting(Config{{"1", "2", "3"}, {}});
  r = follower(granting);
  REQUIRE(r->Step(vote(1, 1)).ok());  // as up to date as ours
  rd = Perform(*r, granting);
  REQUIRE(rd.messages.size() == 1);
  CHECK(!rd.messages[0].reject);
  CHECK(ticks_to_campaign(*r) >= 10);  // a whole timeout again
}

TEST_CASE("check-quorum: a leader cut off from its followers steps down") {
  auto hp = Cluster(3);
  Harness& h = *hp;
  h.Run("isolate 1");
  for (int i = 0; i < 25; ++i) {
    h.Run("tick 1");
    h.Stabilize();
  }
  CHECK(h.node("1").raft->role() == Role::kFollower);
  CHECK(h.node("1").raft->ReadIndex("r").code() == Code::kUnavailable);
}

TEST_CASE("check-quorum: followers that hear from a leader ignore a candidate") {
  auto hp = Cluster(3, "prevote=false");
  Harness& h = *hp;
  h.Run("campaign 3");  // forced election while the leader is alive
  h.Stabilize();
  CHECK(h.leader() == "1");
  CHECK(h.node("1").raft->term() == 1);
}

TEST_CASE("a new leader commits earlier terms' entries only through its own (Figure 8)") {
  // Node 1 leads term 1 and appends "old", which only node 2 receives.
  auto hp = Cluster(5, "checkquorum=false max-append-bytes=1");
  Harness& h = *hp;
  h.Run("partition 1 2");
  REQUIRE(h.node("1").raft->Propose("old").ok());
  h.Stabilize();
  REQUIRE(h.node("2").raft->last_index() == 2);
  REQUIRE(h.node("1").raft->commit_index() == 1);
  // 1 restarts and leads term 2; with one entry per append, "old" reaches 3 before the no-op.
  h.Run("heal");
  h.Run("restart 1");
  h.Run("campaign 1");
  bool old_on_majority = false;
  for (int round = 0; round < 50; ++round) {
    for (const std::string& id : {std::string("1"), std::string("2"), std::string("3")}) {
      (void)h.ProcessReady(id);
      h.DeliverMsgs(id);
      const Raft& l = *h.node("1").raft;
      if (l.role() != Role::kLeader) continue;
      std::vector<Entry> ents;
      REQUIRE(l.Entries(l.commit_index(), l.commit_index() + 1, &ents).ok());
      // The commit index never rests on an earlier term's entry in this term.
      CHECK((ents[0].term == l.term() || l.commit_index() <= 1));
      if (h.node("3").raft->last_index() >= 2 && l.commit_index() < 2) old_on_majority = true;
    }
  }
  CHECK(old_on_majority);  // the dangerous moment happened, and was not committed by counting
  CHECK(h.node("1").raft->commit_index() == 3);
  CHECK(Applied(h, "1") == std::vector<std::string>{"old"});
}

TEST_CASE("a follower's conflicting suffix is replaced by the leader's") {
  auto hp = Cluster(3);
  Harness& h = *hp;
  h.Run("isolate 1");
  for (int i = 0; i < 3; ++i) REQUIRE(h.node("1").raft->Propose(Numbered("lost", i)).ok());
  h.Stabilize();  // stays in 1's log only
  h.Run("tick 1 30");
  h.Stabilize();
  ElectAmong(h, {"2", "3"});
  std::string l = h.leader();
  REQUIRE((l == "2" || l == "3"));
  REQUIRE(h.node(l).raft->Propose("kept").ok());
  h.Stabilize();
  h.Run("heal");
  h.Run("tick " + l);
  h.Stabilize();
  CHECK(h.node("1").raft->last_index() == h.node(l).raft->last_index());
  for (const std::string& id : h.ids()) CHECK(Applied(h, id) == std::vector<std::string>{"kept"});
}

TEST_CASE("appends are batched by bytes and pipelined within the inflight window") {
  auto hp = Cluster(3, "max-append-bytes=4 inflight=2");
  Harness& h = *hp;
  for (int i = 0; i < 10; ++i) REQUIRE(h.node("1").raft->Propose("abc").ok());
  Ready rd = h.ProcessReady("1");
  int to2 = 0;
  for (const Message& m : rd.messages) {
    if (m.to != "2" || m.type != MessageType::kAppend) continue;
    ++to2;
    CHECK(m.entries.size() == 1);  // 3 bytes each, 4 allowed: one per message
  }
  CHECK(to2 == 2);  // the window
  h.Stabilize();
  for (const std::string& id : h.ids()) CHECK(Applied(h, id).size() == 10);
}

TEST_CASE("uncommitted data is bounded") {
  auto hp = Cluster(3, "max-uncommitted-bytes=10");
  Harness& h = *hp;
  h.Run("isolate 1");
  Status s;
  int accepted = 0;
  for (int i = 0; i < 10 && (s = h.node("1").raft->Propose("abcd")).ok(); ++i) ++accepted;
  CHECK(accepted == 2);
  CHECK(s.code() == Code::kUnavailable);
}

// Three nodes, snapshot chunks of 8 bytes, 2 in flight: node 3 missed six commands that node 1
// (the leader) then compacted into a snapshot at 7. Node 3 is still cut off.
namespace {
std::unique_ptr<Harness> LaggingBehindSnapshot() {
  auto hp = Cluster(3, "chunk-bytes=8 chunk-window=2");
  Harness& h = *hp;
  h.Run("isolate 3");
  for (int i = 0; i < 6; ++i) REQUIRE(h.node("1").raft->Propose(Numbered("value", i)).ok());
  h.Stabilize();
  h.Run("compact 1");
  return hp;
}
}  // namespace

TEST_CASE("a lagging follower is caught up by a snapshot streamed in chunks") {
  auto hp = LaggingBehindSnapshot();
  Harness& h = *hp;
  REQUIRE(h.node("1").storage->snapshot().meta.index == 7);
  uint64_t size = h.node("1").storage->snapshot().meta.size;
  h.Run("heal");
  for (int round = 0; round < 50 && h.node("3").raft->applied_index() < 7; ++round) {
    h.Run("tick 1");
    h.Stabilize();
  }
  CHECK(h.node("3").raft->applied_index() >= 7);
  CHECK(h.node("3").storage->snapshot().meta.index == 7);
  CHECK(h.node("3").storage->snapshot().meta.size == size);
  CHECK(Applied(h, "3") == Applied(h, "1"));
  REQUIRE(h.node("1").raft->Propose("after").ok());
  h.Stabilize();
  CHECK(Applied(h, "3") == Applied(h, "1"));
}

TEST_CASE("a snapshot whose data is not written yet is not sent; it is once written") {
  auto hp = LaggingBehindSnapshot();
  Harness& h = *hp;
  h.node("1").storage->SetSnapshotDataReady(false);
  h.Run("heal");
  int snapshots = 0;
  for (int round = 0; round < 20; ++round) {
    h.Run("tick 1");
    for (const Message& m : h.ProcessReady("1").messages) {
      snapshots += m.type == MessageType::kSnapshot;
    }
    h.Stabilize();
  }
  CHECK(snapshots == 0);
  CHECK(h.node("1").storage->data_asks() >= 10);  // asked again at each heartbeat answer
  CHECK(h.node("3").raft->applied_index() < 7);
  h.node("1").storage->SetSnapshotDataReady(true);
  for (int round = 0; round < 50 && h.node("3").raft->applied_index() < 7; ++round) {
    h.Run("tick 1");
    h.Stabilize();
  }
  CHECK(h.node("3").storage->snapshot().meta.index == 7);
  CHECK(Applied(h, "3") == Applied(h, "1"));
}

TEST_CASE("snapshot chunks: sizes bounded, window respected, reassembly survives loss") {
  MemoryStorage st(Config{{"1", "2"}, {}});
  RaftOptions o = Opts("1", &st);
  o.max_snapshot_chunk_bytes = 5;
  o.max_inflight_snapshot_chunks = 2;
  // Leader 1 with a snapshot at 10 (23 bytes) that follower 2 needs.
  st.ApplySnapshot(
      Snapshot{SnapshotMeta{10, 1, Config{{"1", "2"}, {}}, 23}, "abcdefghijklmnopqrstuvw"});
  st.SetHardState(HardState{1, "1", 10});
  o.pre_vote = false;
  auto r = NewRaft(o);
  REQUIRE(r->Campaign().ok());
  Perform(*r, st);  // the vote for itself is durable before the vote requests go out
  Message vote;
  vote.type = MessageType::kVoteResp;
  vote.from = "2";
  vote.to = "1";
  vote.term = 2;
  REQUIRE(r->Step(vote).ok());
  REQUIRE(r->role() == Role::kLeader);
  // The follower answers the first append with "I have nothing": probe back to index 1.
  Perform(*r, st);
  Message rej;
  rej.type = MessageType::kAppendResp;
  rej.from = "2";
  rej.to = "1";
  rej.term = 2;
  rej.reject = true;
  rej.index = 10;
  rej.reject_hint = 0;
  REQUIRE(r->Step(rej).ok());
  Ready rd = Perform(*r, st);
  std::vector<Message> chunks;
  for (const Message& m : rd.messages) {
    if (m.type == MessageType::kSnapshot) chunks.push_back(m);
  }
  REQUIRE(chunks.size() == 2);  // the window
  CHECK(chunks[0].offset == 0);
  CHECK(chunks[1].offset == 5);
  for (const Message& c : chunks) CHECK(c.chunk.size() <= 5);

  // Follower side: a fresh node 2 receives chunk 0, loses chunk 1, gets chunk 2 out of order.
  MemoryStorage fst(Config{{"1", "2"}, {}});
  auto f = NewRaft(Opts("2", &fst));
  REQUIRE(f->Step(chunks[0]).ok());
  rd = Perform(*f, fst);
  REQUIRE(rd.messages.size() == 1);
  CHECK(rd.messages[0].type == MessageType::kSnapshotResp);
  CHECK(rd.messages[0].offset == 5);
  CHECK(!rd.messages[0].reject);
  // Leader sends the next chunk (10..15); the follower has a gap (5..10 lost).
  REQUIRE(r->Step(rd.messages[0]).ok());
  rd = Perform(*r, st);
  REQUIRE(!rd.messages.empty());
  Message third = rd.messages.back();
  CHECK(third.offset == 10);
  REQUIRE(f->Step(third).ok());
  rd = Perform(*f, fst);
  REQUIRE(rd.messages.size() == 1);
  CHECK(rd.messages[0].reject);
  CHECK(rd.messages[0].offset == 5);
  // The leader rewinds once and streams the rest; the follower completes and restores.
  REQUIRE(r->Step(rd.messages[0]).ok());
  std::vector<Message> to_f = Perform(*r, st).messages;
  for (int i = 0; i < 20 && fst.snapshot().meta.index != 10; ++i) {
    for (const Message& m : to_f) {
      if (m.type == MessageType::kSnapshot) REQUIRE(f->Step(m).ok());
    }
    for (const Message& m : Perform(*f, fst).messages) REQUIRE(r->Step(m).ok());
    to_f = Perform(*r, st).messages;
  }
  CHECK(fst.snapshot().meta.index == 10);
  CHECK(fst.snapshot().data == "abcdefghijklmnopqrstuvw");
  CHECK(f->commit_index() == 10);
}

TEST_CASE("membership: learners replicate without voting; one change at a time") {
  auto hp = Cluster(3);
  Harness& h = *hp;
  h.Run("add-nodes 1 join");  // node 4, empty configuration: waits to be added
  Raft& l = *h.node("1").raft;
  REQUIRE(l.ProposeConfChange(ConfChange{ConfChangeType::kAddLearner, "4"}).ok());
  CHECK(l.ProposeConfChange(ConfChange{ConfChangeType::kAddVoter, "4"}).code() == Code::kBusy);
  h.Stabilize();
  CHECK(l.config() == Config{{"1", "2", "3"}, {"4"}});
  CHECK(h.node("4").raft->config() == l.config());
  REQUIRE(l.Propose("x").ok());
  h.Stabilize();
  CHECK(Applied(h, "4") == std::vector<std::string>{"x"});
  CHECK(h.node("4").raft->Campaign().code() == Code::kNotPermitted);
  // A learner does not count toward a quorum: with 2 and 3 cut off, nothing commits.
  h.Run("isolate 2");
  h.Run("cut 1 3");
  h.Run("cut 3 1");
  uint64_t commit = l.commit_index();
  REQUIRE(l.Propose("y").ok());
  h.Stabilize();
  CHECK(l.commit_index() == commit);
  h.Run("heal");
  h.Run("tick 1");
  h.Stabilize();
  CHECK(l.commit_index() > commit);
  // Promote, then remove a voter.
  CHECK(l.ProposeConfChange(ConfChange{ConfChangeType::kAddVoter, "1"}).code() ==
        Code::kInvalidArgument);
  REQUIRE(l.ProposeConfChange(ConfChange{ConfChangeType::kAddVoter, "4"}).ok());
  h.Stabilize();
  CHECK(l.config() == Config{{"1", "2", "3", "4"}, {}});
  REQUIRE(l.ProposeConfChange(ConfChange{ConfChangeType::kRemoveNode, "2"}).ok());
  h.Stabilize();
  CHECK(l.config() == Config{{"1", "3", "4"}, {}});
  CHECK(h.node("2").raft->config() == l.config());  // the removed node learned it
  CHECK(h.node("2").raft->Campaign().code() == Code::kNotPermitted);
  CHECK(l.ProposeConfChange(ConfChange{ConfChangeType::kRemoveNode, "2"}).code() ==
        Code::kInvalidArgument);
  CHECK(h.node("3").raft->ProposeConfChange(ConfChange{ConfChangeType::kRemoveNode, "4"}).code() ==
        Code::kNotPermitted);
}

TEST_CASE("membership: a leader that removes itself steps down once the removal commits") {
  auto hp = Cluster(3);
  Harness& h = *hp;
  Raft& l = *h.node("1").raft;
  REQUIRE(l.ProposeConfChange(ConfChange{ConfChangeType::kRemoveNode, "1"}).ok());
  h.Stabilize();
  CHECK(l.role() == Role::kFollower);
  CHECK(l.config() == Config{{"2", "3"}, {}});
  for (int i = 0; i < 40 && h.leader().empty(); ++i) {
    h.Run("tick 2");
    h.Run("tick 3");
    h.Stabilize();
  }
  CHECK((h.leader() == "2" || h.leader() == "3"));
  REQUIRE(h.node(h.leader()).raft->Propose("z").ok());
  h.Stabilize();
  CHECK(Applied(h, "2") == std::vector<std::string>{"z"});
}

TEST_CASE("membership: an uncommitted configuration entry rolls back with the log") {
  auto hp = Cluster(3);
  Harness& h = *hp;
  h.Run("isolate 1");
  REQUIRE(h.node("1").raft->ProposeConfChange(ConfChange{ConfChangeType::kAddLearner, "9"}).ok());
  h.Stabilize();
  CHECK(h.node("1").raft->config().IsLearner("9"));
  h.Run("tick 1 30");
  h.Stabilize();
  ElectAmong(h, {"2", "3"});
  std::string l = h.leader();
  REQUIRE((l == "2" || l == "3"));
  REQUIRE(h.node(l).raft->Propose("w").ok());
  h.Stabilize();
  h.Run("heal");
  h.Run("tick " + l);
  h.Stabilize();
  CHECK(h.node("1").raft->config() == Config{{"1", "2", "3"}, {}});
  CHECK(!h.node("1").raft->config().Contains("9"));
}

TEST_CASE("ReadIndex: the leader confirms with a heartbeat round; followers ask the leader") {
  auto hp = Cluster(3);
  Harness& h = *hp;
  REQUIRE(h.node("1").raft->Propose("a").ok());
  h.Stabilize();
  REQUIRE(h.node("1").raft->ReadIndex("r1").ok());
  Ready rd = h.ProcessReady("1");
  CHECK(rd.read_states.empty());  // not before a quorum answered
  int hb = 0;
  for (const Message& m : rd.messages) hb += m.type == MessageType::kHeartbeat;
  CHECK(hb == 2);
  h.Stabilize();
  REQUIRE(h.node("1").reads.size() == 1);
  CHECK(h.node("1").reads[0] == ReadState{2, "r1"});
  REQUIRE(h.node("3").raft->ReadIndex("r3").ok());
  h.Stabilize();
  REQUIRE(h.node("3").reads.size() == 1);
  CHECK(h.node("3").reads[0] == ReadState{2, "r3"});
  // No quorum: the read never completes.
  h.Run("isolate 1");
  REQUIRE(h.node("1").raft->ReadIndex("r2").ok());
  h.Stabilize();
  CHECK(h.node("1").reads.size() == 1);
}

TEST_CASE("ReadIndex waits until the new leader has committed an entry of its term") {
  auto hp = Cluster(3, "checkquorum=false");
  Harness& h = *hp;
  h.Run("campaign 2");
  // Run the election only until 2 leads, before its no-op commits.
  for (int i = 0; i < 20 && h.node("2").raft->role() != Role::kLeader; ++i) {
    for (const std::string& id : h.ids()) (void)h.ProcessReady(id);
    for (const std::string& id : h.ids()) h.DeliverMsgs(id);
  }
  REQUIRE(h.node("2").raft->role() == Role::kLeader);
  REQUIRE(h.node("2").raft->commit_index() == 1);  // the old term's no-op only
  REQUIRE(h.node("2").raft->ReadIndex("early").ok());
  Ready rd = h.ProcessReady("2");
  CHECK(rd.read_states.empty());
  h.Stabilize();
  REQUIRE(h.node("2").reads.size() == 1);
  CHECK(h.node("2").reads[0].index == 2);  // includes its own no-op
}

TEST_CASE("PersistFailed: nothing is sent, the node returns to its durable state") {
  SECTION("sole voter keeps leading") {
    MemoryStorage st(Config{{"1"}, {}});
    auto r = NewRaft(Opts("1", &st));
    Perform(*r, st);
    Perform(*r, st);
    REQUIRE(r->Propose("lost").ok());
    Ready rd = r->GetReady();
    REQUIRE(rd.entries.size() == 1);
    r->PersistFailed();
    CHECK(r->last_index() == st.LastIndex() + 1);  // its new term's no-op
    CHECK(r->role() == Role::kLeader);
    REQUIRE(r->Propose("kept").ok());
    std::vector<std::string> applied;
    for (int i = 0; i < 5 && r->HasReady(); ++i) {
      for (const Entry& e : Perform(*r, st).committed_entries) {
        if (!e.data.empty()) applied.push_back(e.data);
      }
    }
    CHECK(applied == std::vector<std::string>{"kept"});
  }
  SECTION("a follower forgets entries it could not persist; the leader resends them") {
    auto hp = Cluster(3);
    Harness& h = *hp;
    h.Run("fail-persist 2");
    REQUIRE(h.node("1").raft->Propose("p").ok());
    h.Stabilize();
    for (const std::string& id : h.ids()) CHECK(Applied(h, id) == std::vector<std::string>{"p"});
  }
}

TEST_CASE("Step refuses inconsistent messages without changing anything") {
  MemoryStorage st(Config{{"1", "2"}, {}});
  auto r = NewRaft(Opts("1", &st));
  Message m;
  m.type = MessageType::kAppend;
  m.from = "2";
  m.to = "9";
  m.term = 3;
  CHECK(r->Step(m).code() == Code::kInvalidArgument);
  m.to = "1";
  m.index = 0;
  m.entries = {Entry{2, 3, EntryType::kNormal, "x"}};  // should be index 1
  CHECK(r->Step(m).code() == Code::kInvalidArgument);
  m.entries = {Entry{1, 4, EntryType::kNormal, "x"}};  // term beyond the message's
  CHECK(r->Step(m).code() == Code::kInvalidArgument);
  m.entries.clear();
  m.type = MessageType::kHeartbeat;
  m.term = 0;
  CHECK(r->Step(m).code() == Code::kInvalidArgument);
  m.from = "1";
  m.term = 3;
  CHECK(r->Step(m).code() == Code::kInvalidArgument);
  CHECK(r->term() == 0);
}

TEST_CASE("election timeouts are randomized, deterministically from the seed") {
  auto ticks_to_campaign = [](uint64_t seed) {
    MemoryStorage st(Config{{"1", "2", "3"}, {}});
    RaftOptions o = Opts("1", &st);
    o.seed = seed;
    auto r = NewRaft(o);
    int t = 0;
    while (r->role() == Role::kFollower && t < 100) {
      r->Tick();
      ++t;
    }
    return t;
  };
  std::vector<int> seen;
  for (uint64_t s = 1; s <= 20; ++s) {
    int t = ticks_to_campaign(s);
    CHECK(t >= 10);
    CHECK(t < 20);
    CHECK(ticks_to_campaign(s) == t);
    seen.push_back(t);
  }
  std::sort(seen.begin(), seen.end());
  CHECK(std::unique(seen.begin(), seen.end()) - seen.begin() > 3);
}

}  // namespace
}  // namespace constellation::raft
