#include "node/state/replica.h"

#include <condition_variable>
#include <mutex>
#include <thread>

#include "catch2/catch.hpp"
#include "node/base/coding.h"
#include "node/env/env_fake.h"
#include "tests/temp_dir.h"

namespace constellation {
namespace {

struct Fixture {
  FakeKvStore kv;
  FakeClock clock;
  FakeRandom random{42};
  Env env;
  ReplicaOptions options;

  Fixture() {
    env = *DefaultEnv();
    env.clock = &clock;
    env.random = &random;
    env.open_kv = [this](const std::string&) -> Result<std::unique_ptr<KvStore>> {
      return kv.Share();
    };
    options.data_dir = "/unused";
    options.node_name = "n1";
    options.env = &env;
  }

  std::unique_ptr<Replica> Open() {
    Result<std::unique_ptr<Replica>> r = Replica::Open(options);
    REQUIRE(r.ok());
    return std::move(r).value();
  }
};

Command Create(const std::string& name) {
  Command c;
  c.type = CommandType::kInstanceCreate;
  c.object = name;
  c.op = "mkdir";
  c.path = "instances/" + name;
  return c;
}

Command Set(const std::string& name, const std::string& field, const std::string& value) {
  Command c;
  c.type = CommandType::kInstanceSet;
  c.object = name;
  c.field = field;
  c.value = value;
  c.op = "write";
  c.path = "instances/" + name + "/" + field;
  return c;
}

size_t Count(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t p = haystack.find(needle); p != std::string::npos; p = haystack.find(needle, p + 1)) {
    ++n;
  }
  return n;
}

}  // namespace

TEST_CASE("a new replica bootstraps a cluster id and answers proposals with their verdict") {
  Fixture f;
  auto r = f.Open();
  CHECK(r->GetStatus().cluster_id.size() == 16);
  CHECK(r->Propose(Create("web")).ok());
  CHECK(r->Propose(Set("web", "ram_mb", "512")).ok());
  Status bad = r->Propose(Set("web", "ram_mb", "abc"));
  CHECK(bad.code() == Code::kInvalidArgument);
  CHECK(bad.message().find("not an integer") != std::string::npos);
  CHECK(r->state().GetInstance("web")->ram_mb == 512);
  ReplicaStatus st = r->GetStatus();
  // Raft's no-op that begins the leader's term, the cluster id, and the three writes.
  CHECK(st.applied_index == 5);
  CHECK(st.commit_index == 5);
  CHECK(st.leader == "n1");
  CHECK(st.term == 1);
  CHECK(st.leader == "n1");
}

TEST_CASE("acknowledged commands survive a crash, applied exactly once") {
  Fixture f;
  std::string cluster;
  {
    auto r = f.Open();
    cluster = r->GetStatus().cluster_id;
    REQUIRE(r->Propose(Create("web")).ok());
    for (int i = 0; i < 20; ++i)
      REQUIRE(r->Propose(Set("web", "cpu_percent", std::to_string(i))).ok());
  }
  // Power loss: the unsynced apply batches vanish, the synced log stays.
  f.kv.Crash();
  auto r = f.Open();
  CHECK(r->GetStatus().cluster_id == cluster);
  REQUIRE(r->state().GetInstance("web"));
  CHECK(r->state().GetInstance("web")->cpu_percent == 19);
  std::string audit;
  REQUIRE(r->ReadAudit(&audit).ok());
  CHECK(Count(audit, " write ok ") == 20);
  CHECK(Count(audit, " mkdir ok ") == 1);
  // Two terms' no-ops, the cluster id, 21 writes.
  CHECK(r->GetStatus().applied_index == 24);
  // Reopening again replays nothing twice.
  r.reset();
  r = f.Open();
  audit.clear();
  REQUIRE(r->ReadAudit(&audit).ok());
  CHECK(Count(audit, " write ok ") == 20);
}

TEST_CASE("concurrent proposers share log syncs (group commit)") {
  Fixture f;
  auto r = f.Open();
  REQUIRE(r->Propose(Create("web")).ok());
  int syncs_before = f.kv.sync_count();
  constexpr int kThreads = 8, kEach = 50;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        if (!r->Propose(Set("web", "env", "T" + std::to_string(t) + "=" + std::to_string(i)))
                 .ok()) {
          ++failures;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
  CHECK(r->GetStatus().applied_index == 3 + kThreads * kEach);
  // Never more than one sync per proposal; usually far fewer. The exact number depends on timing,
  // so only the bound is checked.
  CHECK(f.kv.sync_count() - syncs_before <= kThreads * kEach);
}

TEST_CASE("a full disk refuses the write with NoSpace and the replica keeps working") {
  Fixture f;
  auto r = f.Open();
  REQUIRE(r->Propose(Create("web")).ok());
  f.kv.FailNextWrites(1, Status::NoSpace("disk full"));
  Status s = r->Propose(Set("web", "ram_mb", "64"));
  CHECK(s.code() == Code::kNoSpace);
  CHECK(r->state().GetInstance("web")->ram_mb == 256);
  CHECK(r->Propose(Set("web", "ram_mb", "128")).ok());
  CHECK(r->state().GetInstance("web")->ram_mb == 128);
  f.kv.Crash();
  r.reset();
  r = f.Open();
  CHECK(r->state().GetInstance("web")->ram_mb == 128);
}

TEST_CASE("below the free-space reserve new commands get NoSpace and nothing enters the log") {
  Fixture f;
  std::atomic<uint64_t> free{1ull << 30};
  f.env.free_bytes = [&](const std::string&) -> Result<uint64_t> { return free.load(); };
  f.options.reserve_bytes = 64ull << 20;
  auto r = f.Open();
  REQUIRE(r->Propose(Create("web")).ok());
  uint64_t applied = r->GetStatus().applied_index;
  free = 10ull << 20;
  Status s = r->Propose(Set("web", "ram_mb", "64"));
  CHECK(s.code() == Code::kNoSpace);
  CHECK(s.message().find("10 MiB free") != std::string::npos);
  CHECK(r->GetStatus().applied_index == applied);
  CHECK(r->GetStatus().commit_index == applied);
  free = 1ull << 30;
  CHECK(r->Propose(Set("web", "ram_mb", "64")).ok());
}

TEST_CASE("with plenty of room the free space is looked at most every 20 ms") {
  Fixture f;
  std::atomic<uint64_t> free{100ull << 30};
  std::atomic<int> looks{0};
  f.env.free_bytes = [&](const std::string&) -> Result<uint64_t> {
    ++looks;
    return free.load();
  };
  f.options.reserve_bytes = 64ull << 20;
  auto r = f.Open();
  REQUIRE(r->Propose(Create("web")).ok());
  int after_create = looks.load();
  REQUIRE(after_create >= 1);
  REQUIRE(r->Propose(Set("web", "ram_mb", "64")).ok());
  CHECK(looks.load() == after_create);
  // The disk filled up behind its back: seen at the next look, 20 ms later.
  free = 10ull << 20;
  f.clock.Advance(20);
  CHECK(r->Propose(Set("web", "ram_mb", "32")).code() == Code::kNoSpace);
  // Near the reserve every batch looks.
  free = 100ull << 20;
  REQUIRE(r->Propose(Set("web", "ram_mb", "16")).ok());
  int near = looks.load();
  REQUIRE(r->Propose(Set("web", "ram_mb", "8")).ok());
  CHECK(looks.load() == near + 1);
}

TEST_CASE("compaction drops applied log entries and state survives a restart") {
  Fixture f;
  f.options.log_keep = 5;
  f.options.snapshot_in_background = false;  // compacted in the round that applied the entry
  auto r = f.Open();
  REQUIRE(r->Propose(Create("web")).ok());
  for (int i = 0; i < 30; ++i) REQUIRE(r->Propose(Set("web", "disk_mb", std::to_string(i))).ok());
  CHECK(r->GetStatus().log_first_index > 1);
  REQUIRE(r->Compact().ok());
  REQUIRE(r->Propose(Set("web", "disk_mb", "99")).ok());
  r.reset();
  f.kv.Crash();
  r = f.Open();
  CHECK(r->state().GetInstance("web")->disk_mb == 99);
  REQUIRE(r->Propose(Set("web", "disk_mb", "100")).ok());
  CHECK(r->state().GetInstance("web")->disk_mb == 100);
}

// The snapshot's metadata as the store holds it, and how many pieces of data it holds for it and
// for any other index.
struct StoredSnapshot {
  raft::SnapshotMeta meta;
  int pieces = 0;
  int unnamed_pieces = 0;
};

StoredSnapshot ReadStoredSnapshot(KvStore* kv) {
  StoredSnapshot s;
  std::string v;
  REQUIRE(kv->Get("r/snap", &v).ok());
  Result<raft::SnapshotMeta> meta = raft::DecodeSnapshotMeta(v);
  REQUIRE(meta.ok());
  s.meta = *meta;
  REQUIRE(kv->Scan("r/s/", "r/s0", [&](std::string_view k, std::string_view) {
              ++(FromBigEndian64(k.substr(4, 8)) == s.meta.index ? s.pieces : s.unnamed_pieces);
              return true;
            }).ok());
  return s;
}

TEST_CASE("compaction copies nothing: the log is cut behind a bare snapshot") {
  Fixture f;
  f.options.log_keep = 5;
  auto r = f.Open();
  REQUIRE(r->Propose(Create("web")).ok());
  for (int i = 0; i < 30; ++i) REQUIRE(r->Propose(Set("web", "disk_mb", std::to_string(i))).ok());
  f.kv.HoldViewScans(true);  // a copy of the state would wait here, and Compact with it
  REQUIRE(r->Compact().ok());
  f.kv.HoldViewScans(false);
  ReplicaStatus st = r->GetStatus();
  CHECK(st.snapshot_index == st.applied_index);
  CHECK(st.log_first_index == st.applied_index + 1);
  StoredSnapshot stored = ReadStoredSnapshot(r->store());
  CHECK(stored.meta.index == st.applied_index);
  CHECK(stored.meta.size == 0);
  CHECK(stored.pieces + stored.unnamed_pieces == 0);
  r.reset();
  f.kv.Crash();
  r = f.Open();
  CHECK(r->state().GetInstance("web")->disk_mb == 29);
  REQUIRE(r->Propose(Set("web", "disk_mb", "100")).ok());
  CHECK(r->state().GetInstance("web")->disk_mb == 100);
}

// Two replicas on the real clock, wired together: n1 bootstraps a cluster, and n2, opened later
// with `join`, is made a learner by n1 and caught up by raft.
struct Pair {
  Fixture one_f, two_f;
  std::unique_ptr<Replica> one, two;
  std::mutex mu;
  Replica* to_one = nullptr;  // guarded by mu: where messages go, null while closed
  Replica* to_two = nullptr;

  Pair() {
    for (Fixture* f : {&one_f, &two_f}) {
      f->env.clock = DefaultEnv()->clock;
      f->options.tick_ms = 5;
      f->options.log_keep = 5;
      f->options.snapshot_send_quiet_ms = 600'000;
      f->options.send = [this](const raft::Message& m) {
        std::lock_guard<std::mutex> l(mu);
        Replica* to = m.to == "n1" ? to_one : to_two;
        if (to != nullptr) to->Deliver(m);
      };
    }
    two_f.options.node_name = "n2";
    two_f.options.join = true;
    one_f.options.plan_membership =
        [](const ReplicaOptions::ClusterView& v) -> std::optional<raft::ConfChange> {
      if (v.config.Contains("n2")) return std::nullopt;
      return raft::ConfChange(raft::ConfChangeType::kAddLearner, "n2");
    };
  }
  ~Pair() {
    CloseOne();
    CloseTwo();
  }
  void OpenOne() {
    one = one_f.Open();
    std::lock_guard<std::mutex> l(mu);
    to_one = one.get();
  }
  void OpenTwo() {
    two = two_f.Open();
    std::lock_guard<std::mutex> l(mu);
    to_two = two.get();
  }
  void CloseOne() {
    {
      std::lock_guard<std::mutex> l(mu);
      to_one = nullptr;
    }
    one.reset();
  }
  void CloseTwo() {
    {
      std::lock_guard<std::mutex> l(mu);
      to_two = nullptr;
    }
    two.reset();
  }
  // Whether n2 comes to hold web's disk_mb == `want` within 20 s.
  bool TwoHas(int want) {
    for (int i = 0; i < 4000; ++i) {
      std::optional<InstanceRecord> web = two->state().GetInstance("web");
      if (web && web->disk_mb == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }
};

TEST_CASE("a follower that needs compacted entries gets a snapshot made for it, then entries") {
  Pair p;
  p.OpenOne();
  REQUIRE(p.one->Propose(Create("web")).ok());
  for (int i = 0; i < 30; ++i) {
    REQUIRE(p.one->Propose(Set("web", "disk_mb", std::to_string(i))).ok());
  }
  REQUIRE(p.one->Compact().ok());
  REQUIRE(ReadStoredSnapshot(p.one->store()).meta.size == 0);
  p.OpenTwo();
  REQUIRE(p.TwoHas(29));
  // n1 wrote the data then, as of its applied index, and n2 installed it.
  StoredSnapshot made = ReadStoredSnapshot(p.one->store());
  CHECK(made.meta.size > 0);
  CHECK(made.meta.index >= p.one->GetStatus().log_first_index - 1);
  CHECK(made.pieces > 0);
  CHECK(made.unnamed_pieces == 0);
  // In n2's store before its state was loaded (its status may lag behind a moment).
  CHECK(ReadStoredSnapshot(p.two->store()).meta.index > 0);
  // More than 2 x log_keep entries later the copy is still there: within snapshot_send_quiet_ms
  // (10 min here) of its installation no compaction replaces it by a bare one.
  for (int i = 0; i < 15; ++i) {
    REQUIRE(p.one->Propose(Set("web", "disk_mb", std::to_string(200 + i))).ok());
  }
  REQUIRE(p.TwoHas(214));
  REQUIRE(p.one->Propose(Set("web", "disk_mb", "100")).ok());  // a round after the 15th's
  CHECK(p.TwoHas(100));
  CHECK(ReadStoredSnapshot(p.one->store()).meta == made.meta);
}

TEST_CASE("a snapshot for a follower is written off the agent thread: commits go on meanwhile") {
  Pair p;
  p.OpenOne();
  REQUIRE(p.one->Propose(Create("web")).ok());
  REQUIRE(p.one->Propose(Set("web", "ram_mb", "64")).ok());
  REQUIRE(p.one->Compact().ok());
  p.one_f.kv.HoldViewScans(true);
  p.OpenTwo();
  p.one_f.kv.WaitForHeldViewScan();
  for (int i = 0; i < 20; ++i) {
    REQUIRE(p.one->Propose(Set("web", "disk_mb", std::to_string(i))).ok());
  }
  CHECK(ReadStoredSnapshot(p.one->store()).meta.size == 0);  // not installed while held
  p.one_f.kv.HoldViewScans(false);
  REQUIRE(p.TwoHas(19));
  CHECK(p.two->state().GetInstance("web")->ram_mb == 64);
  StoredSnapshot made = ReadStoredSnapshot(p.one->store());
  CHECK(made.meta.size > 0);
  CHECK(made.unnamed_pieces == 0);
}

TEST_CASE("a replica closed while it writes a snapshot for a follower leaves no unnamed data") {
  Pair p;
  p.OpenOne();
  REQUIRE(p.one->Propose(Create("web")).ok());
  REQUIRE(p.one->Compact().ok());
  p.one_f.kv.HoldViewScans(true);
  p.OpenTwo();
  p.one_f.kv.WaitForHeldViewScan();
  // Closing waits for the snapshot's thread. Released as the close begins, the snapshot is either
  // abandoned (its data deleted) or installed just before.
  std::thread closer([&] { p.CloseOne(); });
  p.one_f.kv.HoldViewScans(false);
  closer.join();
  p.CloseTwo();
  std::unique_ptr<KvStore> store = p.one_f.kv.Share();
  StoredSnapshot left = ReadStoredSnapshot(store.get());
  CHECK(left.unnamed_pieces == 0);
  CHECK((left.pieces > 0) == (left.meta.size > 0));
  p.one_f.options.send = nullptr;
  auto r = p.one_f.Open();
  CHECK(r->GetStatus().snapshot_index == left.meta.index);
  CHECK(r->state().GetInstance("web").has_value());
}

TEST_CASE("a compaction whose write fails: Compact says why, and nothing changes") {
  Fixture f;  // the default log_keep: no snapshot is taken but the one asked for
  auto r = f.Open();
  REQUIRE(r->Propose(Create("web")).ok());
  REQUIRE(r->Propose(Set("web", "disk_mb", "20")).ok());
  uint64_t before = r->GetStatus().snapshot_index;
  f.kv.FailNextWrites(1, Status::NoSpace("disk full"));  // the snapshot's metadata
  CHECK(r->Compact().code() == Code::kNoSpace);
  CHECK(r->GetStatus().snapshot_index == before);
  REQUIRE(r->Compact().ok());
  CHECK(r->GetStatus().snapshot_index == r->GetStatus().applied_index);
}

TEST_CASE("events are published after apply, from the time of subscription") {
  Fixture f;
  auto r = f.Open();
  uint64_t cursor = r->events()->Subscribe();
  REQUIRE(r->Propose(Create("web")).ok());
  std::string got = r->events()->Read(&cursor, 1 << 16);
  CHECK(got.find("instance_created web uid=0\n") != std::string::npos);
  CHECK(r->events()->Read(&cursor, 1 << 16).empty());
}

}  // namespace constellation

namespace constellation {

TEST_CASE("on leveldb: state survives reopening, another format version is refused") {
  TempDir tmp("cn_replica");
  const std::string& dir = tmp.path();
  ReplicaOptions o;
  o.data_dir = dir;
  o.node_name = "n1";
  {
    auto r = Replica::Open(o);
    REQUIRE(r.ok());
    REQUIRE((*r)->Propose(Create("web")).ok());
    REQUIRE((*r)->Propose(Set("web", "ram_mb", "300")).ok());
    // The store is held: a second opener is refused.
    auto second = Replica::Open(o);
    CHECK(second.status().code() == Code::kBusy);
  }
  {
    auto r = Replica::Open(o);
    REQUIRE(r.ok());
    CHECK((*r)->state().GetInstance("web")->ram_mb == 300);
  }
  {
    auto kv = OpenLevelDb(dir + "/state");
    REQUIRE(kv.ok());
    KvStore::Batch b;
    b.Put(keys::kFormat, "99");
    REQUIRE((*kv)->Write(b, true).ok());
  }
  auto r = Replica::Open(o);
  CHECK(r.status().code() == Code::kNotSupported);
  CHECK(r.status().message() ==
        "data was written by state format version 99; this daemon reads version 2");
}

}  // namespace constellation

namespace constellation {

TEST_CASE("file-system commands go through the same log and return their result") {
  FakeKvStore kv;
  ReplicaOptions o;
  Env env = *DefaultEnv();
  env.open_kv = [&](const std::string&) -> Result<std::unique_ptr<KvStore>> { return kv.Share(); };
  o.env = &env;
  o.node_name = "n1";
  auto r = Replica::Open(o);
  REQUIRE(r.ok());
  auto fs = [&](const FsOp& op, FsResult* out) {
    Command c;
    c.type = CommandType::kFs;
    c.value = EncodeFsOp(op);
    std::string result;
    Status s = (*r)->Propose(c, &result);
    if (s.ok() && out != nullptr) *out = *DecodeFsResult(result);
    return s;
  };
  FsOp init;
  init.type = FsOpType::kInit;
  REQUIRE(fs(init, nullptr).ok());
  FsOp mk;
  mk.type = FsOpType::kMkdir;
  mk.parent = kFsRootIno;
  mk.name = "d";
  mk.mode = 0755;
  FsResult made;
  REQUIRE(fs(mk, &made).ok());
  REQUIRE(made.inode);
  CHECK(made.inode->ino == kFsRootIno + 1);
  CHECK(fs(mk, nullptr).code() == Code::kAlreadyExists);
  // Survives a crash through log replay, like every other command.
  r->reset();
  kv.Crash();
  r = Replica::Open(o);
  REQUIRE(r.ok());
  CHECK(*FsLookup(&kv, kFsRootIno, "d") == made.inode->ino);
}

}  // namespace constellation

namespace constellation {
namespace {

int CpuPercent(Replica* r) {
  std::optional<InstanceRecord> rec = r->state().GetInstance("web");
  REQUIRE(rec);
  return rec->cpu_percent;
}

}  // namespace

TEST_CASE("a deferred command is answered once written, before its sync") {
  Fixture f;
  auto r = f.Open();
  REQUIRE(r->Propose(Create("web")).ok());
  REQUIRE(r->Propose(Set("web", "cpu_percent", "10")).ok());
  f.kv.HoldSyncs(true);  // the disk is slow: the syncer cannot finish
  REQUIRE(r->Propose(Set("web", "cpu_percent", "7"), nullptr, Durability::kDeferred).ok());
  CHECK(CpuPercent(r.get()) == 7);
  // Power loss before the sync: the deferred command goes, and only it.
  f.kv.Crash();
  f.kv.HoldSyncs(false);
  r.reset();
  r = f.Open();
  CHECK(CpuPercent(r.get()) == 10);
}

TEST_CASE("SyncBarrier makes deferred commands durable") {
  Fixture f;
  auto r = f.Open();
  REQUIRE(r->Propose(Create("web")).ok());
  for (int i = 1; i <= 20; ++i) {
    REQUIRE(r->Propose(Set("web", "cpu_percent", std::to_string(i)), nullptr, Durability::kDeferred)
                .ok());
  }
  REQUIRE(r->SyncBarrier().ok());
  f.kv.HoldSyncs(true);  // nothing may sync after the barrier: the barrier alone must suffice
  f.kv.Crash();
  f.kv.HoldSyncs(false);
  r.reset();
  r = f.Open();
  CHECK(CpuPercent(r.get()) == 20);
  CHECK(r->SyncBarrier().ok());  // nothing waiting: immediate
}

TEST_CASE("SyncBarrier reports a failed sync, and the syncer retries") {
  Fixture f;
  auto r = f.Open();
  REQUIRE(r->Propose(Create("web")).ok());
  f.kv.HoldSyncs(true);  // the syncer cannot reach the store before the failure is armed
  REQUIRE(r->Propose(Set("web", "cpu_percent", "7"), nullptr, Durability::kDeferred).ok());
  // Every sync fails until told otherwise, so a barrier sees a failure whenever it starts.
  f.kv.FailNextSyncs(1 << 30, Status::IoError("disk on fire"));
  f.kv.HoldSyncs(false);
  Status s = r->SyncBarrier();
  CHECK(s.code() == Code::kIoError);
  CHECK(s.message().find("disk on fire") != std::string::npos);
  // The disk recovers: the syncer's next try (after its back-off) makes the command durable.
  f.kv.FailNextSyncs(0, Status::Ok());
  REQUIRE(r->SyncBarrier().ok());
  f.kv.Crash();
  r.reset();
  r = f.Open();
  CHECK(CpuPercent(r.get()) == 7);
}

TEST_CASE("a synced command makes the deferred ones before it durable") {
  Fixture f;
  auto r = f.Open();
  REQUIRE(r->Propose(Create("web")).ok());
  f.kv.HoldSyncs(true);
  REQUIRE(r->Propose(Set("web", "cpu_percent", "7"), nullptr, Durability::kDeferred).ok());
  REQUIRE(r->Propose(Set("web", "ram_mb", "99")).ok());  // synced: the log is one sequence
  f.kv.Crash();
  f.kv.HoldSyncs(false);
  r.reset();
  r = f.Open();
  CHECK(CpuPercent(r.get()) == 7);
  CHECK(r->state().GetInstance("web")->ram_mb == 99);
}

TEST_CASE(
    "a replica gives up its cluster to join another only while that holds nothing but itself") {
  Fixture f;
  std::string cluster;
  {
    auto r = f.Open();
    cluster = r->GetStatus().cluster_id;
    CHECK(r->CheckAlone().ok());
    // An instance is state: refused, and the state stays.
    REQUIRE(r->Propose(Create("web")).ok());
    CHECK(r->CheckAlone().code() == Code::kBusy);
    Status busy = r->PrepareJoin();
    CHECK(busy.code() == Code::kBusy);
    CHECK(busy.message().find("has state (1 instances") != std::string::npos);
    CHECK(r->state().GetInstance("web"));
    Command rm;
    rm.type = CommandType::kInstanceRemove;
    rm.object = "web";
    REQUIRE(r->Propose(rm).ok());
    // So is a file in cluster/ (its root alone is not).
    auto fs = [&](FsOpType type, const std::string& name) {
      FsOp op;
      op.type = type;
      op.parent = kFsRootIno;
      op.name = name;
      op.mode = 0755;
      Command c;
      c.type = CommandType::kFs;
      c.value = EncodeFsOp(op);
      return r->Propose(c);
    };
    REQUIRE(fs(FsOpType::kInit, "").ok());
    CHECK(r->CheckAlone().ok());
    REQUIRE(fs(FsOpType::kMkdir, "d").ok());
    CHECK(r->PrepareJoin().message().find("in cluster/") != std::string::npos);
    REQUIRE(fs(FsOpType::kRmdir, "d").ok());
    // Prepared: new commands wait outside (Unavailable), a second join is Busy; cancelled:
    // everything as before.
    REQUIRE(r->PrepareJoin().ok());
    CHECK(r->Propose(Create("late")).code() == Code::kUnavailable);
    CHECK(r->PrepareJoin().code() == Code::kBusy);
    r->CancelJoin();
    REQUIRE(r->Propose(Create("late")).ok());
    CHECK(r->GetStatus().cluster_id == cluster);
    rm.object = "late";
    REQUIRE(r->Propose(rm).ok());
    // The reset: nothing of the old cluster is left but local keys, and the given ones are kept.
    REQUIRE(r->PrepareJoin().ok());
    REQUIRE(r->ResetForJoin({{"j/members", "m"}}).ok());
    ReplicaStatus st = r->GetStatus();
    CHECK(st.cluster_id.empty());
    CHECK(st.voters.empty());
    CHECK(st.applied_index == 0);
    CHECK(r->state().ListNodes().empty());
    CHECK(r->CheckAlone().code() == Code::kBusy);  // no cluster of its own any more
  }
  // Durable, and reopened without `join` it still waits for a leader instead of bootstrapping.
  f.kv.Crash();
  auto r = f.Open();
  ReplicaStatus st = r->GetStatus();
  CHECK(st.cluster_id.empty());
  CHECK(st.voters.empty());
  std::string v;
  REQUIRE(r->store()->Get("j/members", &v).ok());
  CHECK(v == "m");
  CHECK(r->store()->Get("j/request_floor", &v).ok());
}

namespace {

// What one ProposeAsync callback saw, for the test thread to wait on.
struct AsyncAnswer {
  std::mutex mu;
  std::condition_variable cv;
  int calls = 0;
  Status verdict;
  std::string result;
  std::thread::id thread;

  Replica::ProposeDone Callback() {
    return [this](Status v, std::string r) {
      std::lock_guard<std::mutex> l(mu);
      ++calls;
      verdict = std::move(v);
      result = std::move(r);
      thread = std::this_thread::get_id();
      cv.notify_all();
    };
  }
  bool Wait(int64_t ms = 10000) {
    std::unique_lock<std::mutex> l(mu);
    return cv.wait_for(l, std::chrono::milliseconds(ms), [&] { return calls > 0; });
  }
  int Calls() {
    std::lock_guard<std::mutex> l(mu);
    return calls;
  }
};

}  // namespace

TEST_CASE("ProposeAsync answers once, on the agent thread, with what Propose would return") {
  Fixture f;
  auto r = f.Open();
  AsyncAnswer ok, bad;
  r->ProposeAsync(Create("web"), Durability::kSynced, ok.Callback());
  r->ProposeAsync(Set("web", "ram_mb", "abc"), Durability::kSynced, bad.Callback());
  REQUIRE(ok.Wait());
  REQUIRE(bad.Wait());
  CHECK(ok.verdict.ok());
  CHECK(ok.thread != std::this_thread::get_id());
  CHECK(bad.verdict.code() == Code::kInvalidArgument);
  CHECK(bad.verdict.message().find("not an integer") != std::string::npos);
  CHECK(r->state().GetInstance("web"));
  // A file-system command's result comes with it.
  FsOp op;
  op.type = FsOpType::kInit;
  Command c;
  c.type = CommandType::kFs;
  c.value = EncodeFsOp(op);
  AsyncAnswer fs;
  r->ProposeAsync(c, Durability::kDeferred, fs.Callback());
  REQUIRE(fs.Wait());
  CHECK(fs.verdict.ok());
  Result<FsResult> res = DecodeFsResult(fs.result);
  REQUIRE(res.ok());
  REQUIRE(res->inode);
  CHECK(res->inode->ino == kFsRootIno);
  r.reset();
  CHECK(ok.Calls() == 1);
  CHECK(bad.Calls() == 1);
}

TEST_CASE("a ProposeAsync callback may propose again") {
  Fixture f;
  auto r = f.Open();
  AsyncAnswer second;
  Replica* raw = r.get();
  r->ProposeAsync(Create("a"), Durability::kSynced, [&](Status v, std::string) {
    REQUIRE(v.ok());
    raw->ProposeAsync(Create("b"), Durability::kSynced, second.Callback());
  });
  REQUIRE(second.Wait());
  CHECK(second.verdict.ok());
  CHECK(r->state().GetInstance("a"));
  CHECK(r->state().GetInstance("b"));
}

TEST_CASE("ProposeAsync refused at once is answered before it returns") {
  Fixture f;
  auto r = f.Open();
  REQUIRE(r->PrepareJoin().ok());
  AsyncAnswer a;
  r->ProposeAsync(Create("web"), Durability::kSynced, a.Callback());
  CHECK(a.Calls() == 1);
  CHECK(a.thread == std::this_thread::get_id());
  CHECK(a.verdict.code() == Code::kUnavailable);
  r->CancelJoin();
  CHECK_FALSE(r->state().GetInstance("web"));
}

TEST_CASE("without a leader ProposeAsync gives up after propose_timeout_ms, and at shutdown") {
  Fixture f;
  f.options.join = true;  // no configuration: nothing commits
  f.options.propose_timeout_ms = 5000;
  auto r = f.Open();
  AsyncAnswer late, left;
  r->ProposeAsync(Create("web"), Durability::kSynced, late.Callback());
  CHECK(late.Calls() == 0);  // its deadline is on the fake clock, which has not moved
  f.clock.Advance(f.options.propose_timeout_ms + f.options.tick_ms);
  REQUIRE(late.Wait());
  CHECK(late.verdict.code() == Code::kUnavailable);
  CHECK(late.verdict.message().find("not applied within 5000 ms") != std::string::npos);
  r->ProposeAsync(Create("web"), Durability::kSynced, left.Callback());
  r.reset();
  REQUIRE(left.Calls() == 1);
  CHECK(left.verdict.code() == Code::kUnavailable);
  CHECK(late.Calls() == 1);
}

}  // namespace constellation
