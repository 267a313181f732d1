#include "node/state/raft_storage.h"

#include <optional>

#include "catch2/catch.hpp"
#include "node/base/coding.h"
#include "node/env/env_fake.h"
#include "node/state/command.h"
#include "node/state/replica.h"
#include "node/state/state_machine.h"

namespace constellation {
namespace {

raft::Config Voters(std::vector<std::string> v) {
  raft::Config c;
  c.voters = std::move(v);
  return c;
}

void Persist(KvRaftStorage* s, KvStore* kv, const std::vector<raft::Entry>& ents,
             std::optional<raft::HardState> hs = std::nullopt) {
  KvStore::Batch b;
  s->StageEntries(ents, &b);
  if (hs) s->StageHardState(*hs, &b);
  REQUIRE(kv->Write(b, true).ok());
  s->Persisted();
}

std::vector<raft::Entry> Ents(uint64_t from, uint64_t to, uint64_t term) {
  std::vector<raft::Entry> out;
  for (uint64_t i = from; i <= to; ++i) {
    out.push_back(raft::Entry{i, term, raft::EntryType::kNormal, "e" + std::to_string(i)});
  }
  return out;
}

// Pieces of snapshot data in `kv`: of snapshot `index`, or of any.
int SnapshotPieces(KvStore* kv, std::optional<uint64_t> index = std::nullopt) {
  int n = 0;
  REQUIRE(kv->Scan("r/s/", "r/s0", [&](std::string_view k, std::string_view) {
              n += !index || FromBigEndian64(k.substr(4, 8)) == *index;
              return true;
            }).ok());
  return n;
}

}  // namespace

TEST_CASE("raft storage: entries, terms, replaced suffixes and reopening") {
  FakeKvStore kv;
  auto s = KvRaftStorage::Open(&kv, Voters({"n1"}));
  REQUIRE(s.ok());
  CHECK((*s)->FirstIndex() == 1);
  CHECK((*s)->LastIndex() == 0);
  CHECK((*s)->SnapshotMetadata().config == Voters({"n1"}));
  Persist(s->get(), &kv, Ents(1, 10, 1), raft::HardState{1, "n1", 5});
  CHECK(*(*s)->Term(10) == 1);
  // A new leader's entries replace 6..10 with 6..7.
  Persist(s->get(), &kv, Ents(6, 7, 2));
  CHECK((*s)->LastIndex() == 7);
  CHECK(*(*s)->Term(7) == 2);
  std::vector<raft::Entry> got;
  REQUIRE((*s)->Entries(5, 8, 1 << 20, &got).ok());
  REQUIRE(got.size() == 3);
  CHECK(got[2].term == 2);
  kv.Crash();
  auto again = KvRaftStorage::Open(&kv, Voters({"other"}));
  REQUIRE(again.ok());
  CHECK((*again)->LastIndex() == 7);
  CHECK((*again)->InitialHardState() == raft::HardState{1, "n1", 5});
  CHECK((*again)->SnapshotMetadata().config == Voters({"n1"}));  // not the new initial one
  got.clear();
  REQUIRE((*again)->Entries(1, 8, 1 << 20, &got).ok());
  CHECK(got.size() == 7);
}

TEST_CASE("raft storage: snapshots compact the log, stream in chunks and install elsewhere") {
  FakeKvStore kv;
  auto s = KvRaftStorage::Open(&kv, Voters({"n1"}));
  REQUIRE(s.ok());
  KvStore::Batch state;
  state.Put("i/web", std::string(3 << 20, 'x'));  // spans several stored pieces
  state.Put("n/n1", "node");
  state.Put(keys::kApplied, BigEndian64(20));
  REQUIRE(kv.Write(state, true).ok());
  Persist(s->get(), &kv, Ents(1, 30, 1));
  REQUIRE((*s)->CreateSnapshot(20, 1, Voters({"n1", "n2"}), 5).ok());
  CHECK((*s)->FirstIndex() == 16);
  CHECK(*(*s)->Term(15) == 1);
  CHECK_FALSE((*s)->Term(14).ok());
  raft::SnapshotMeta meta = (*s)->SnapshotMetadata();
  CHECK(meta.index == 20);
  // Read it back in odd-sized chunks.
  std::string data, chunk;
  while (data.size() < meta.size) {
    REQUIRE((*s)->SnapshotChunk(20, data.size(), 777777, &chunk).ok());
    REQUIRE(!chunk.empty());
    data += chunk;
  }
  CHECK((*s)->SnapshotChunk(19, 0, 10, &chunk).code() == Code::kNotFound);
  std::map<std::string, std::string> pairs;
  REQUIRE(DecodeStateSnapshot(data, [&](std::string_view k, std::string_view v) {
            pairs[std::string(k)] = std::string(v);
            return Status::Ok();
          }).ok());
  CHECK(pairs.size() == 3);
  CHECK(pairs["i/web"].size() == size_t{3} << 20);

  // Another node with a different state installs it: its replicated keys are replaced, its log
  // starts after the snapshot, its local keys stay.
  FakeKvStore other;
  KvStore::Batch junk;
  junk.Put("i/stale", "x");
  junk.Put("j/local", "kept");
  REQUIRE(other.Write(junk, true).ok());
  auto t = KvRaftStorage::Open(&other, raft::Config{});
  REQUIRE(t.ok());
  Persist(t->get(), &other, Ents(1, 3, 1));
  KvStore::Batch b;
  REQUIRE((*t)->StageSnapshot(raft::Snapshot{meta, data}, &b).ok());
  REQUIRE(other.Write(b, true).ok());
  (*t)->Persisted();
  CHECK((*t)->FirstIndex() == 21);
  CHECK((*t)->LastIndex() == 20);
  CHECK(*(*t)->Term(20) == 1);
  std::string v;
  CHECK(other.Get("i/stale", &v).code() == Code::kNotFound);
  CHECK(other.Get("j/local", &v).ok());
  CHECK(other.Get("i/web", &v).ok());
  other.Crash();
  auto reopened = KvRaftStorage::Open(&other, raft::Config{});
  REQUIRE(reopened.ok());
  CHECK((*reopened)->SnapshotMetadata() == meta);
  CHECK((*reopened)->FirstIndex() == 21);

  // Malformed snapshot data stages nothing.
  KvStore::Batch bad;
  raft::SnapshotMeta m2 = meta;
  m2.index = 40;
  m2.size = 3;
  CHECK_FALSE((*t)->StageSnapshot(raft::Snapshot{m2, "\x01\x05x"}, &bad).ok());
}

TEST_CASE("raft storage: a snapshot written from a view is installed later; unnamed data goes") {
  FakeKvStore kv;
  auto pieces = [&](uint64_t index) { return SnapshotPieces(&kv, index); };
  auto read_back = [&](KvRaftStorage* st) {
    const raft::SnapshotMeta& meta = st->SnapshotMetadata();
    std::string data, chunk;
    while (data.size() < meta.size) {
      REQUIRE(st->SnapshotChunk(meta.index, data.size(), 1 << 20, &chunk).ok());
      data += chunk;
    }
    std::map<std::string, std::string> pairs;
    REQUIRE(DecodeStateSnapshot(data, [&](std::string_view k, std::string_view v) {
              pairs[std::string(k)] = std::string(v);
              return Status::Ok();
            }).ok());
    return pairs;
  };
  {
    auto s = KvRaftStorage::Open(&kv, Voters({"n1"}));
    REQUIRE(s.ok());
    KvStore::Batch state;
    state.Put("i/web", std::string(3 << 20, 'a'));  // several pieces
    state.Put(keys::kApplied, BigEndian64(10));
    REQUIRE(kv.Write(state, true).ok());
    Persist(s->get(), &kv, Ents(1, 30, 1));
  }
  auto view = kv.NewView();
  REQUIRE(view.ok());
  KvStore::Batch later;  // applied after the view was taken: not in the snapshot
  later.Put("i/web", "b");
  later.Put("i/new", "c");
  REQUIRE(kv.Write(later, true).ok());

  // Written (synced: a crash keeps it) but never installed: the next open deletes it.
  auto orphan = KvRaftStorage::WriteSnapshotData(&kv, view->get(), 10, 1, Voters({"n1"}));
  REQUIRE(orphan.ok());
  CHECK(orphan->index == 10);
  CHECK(pieces(10) == 4);
  kv.Crash();
  CHECK(pieces(10) == 4);
  auto s = KvRaftStorage::Open(&kv, Voters({"n1"}));
  REQUIRE(s.ok());
  CHECK(pieces(10) == 0);
  CHECK((*s)->SnapshotMetadata().index == 0);
  CHECK((*s)->FirstIndex() == 1);

  // Written, then installed: the state as of the view, the log compacted; the dropped entries'
  // keys are left to the caller, and Open deletes what the caller did not.
  auto meta = KvRaftStorage::WriteSnapshotData(&kv, view->get(), 10, 1, Voters({"n1"}));
  REQUIRE(meta.ok());
  CHECK((*s)->SnapshotMetadata().index == 0);  // nothing names it yet
  KvRaftStorage::LogRange dropped;
  REQUIRE((*s)->InstallSnapshot(*meta, 3, &dropped).ok());
  CHECK((*s)->SnapshotMetadata() == *meta);
  CHECK((*s)->FirstIndex() == 8);
  CHECK(dropped.from == 1);
  CHECK(dropped.to == 8);
  auto entries = [&] {
    int n = 0;
    REQUIRE(kv.Scan("l/", "l0", [&](std::string_view, std::string_view) {
                ++n;
                return true;
              }).ok());
    return n;
  };
  CHECK(entries() == 30);
  REQUIRE(KvRaftStorage::DeleteLogEntries(&kv, 1, 4).ok());
  CHECK(entries() == 27);
  REQUIRE(kv.Sync().ok());
  kv.Crash();
  s = KvRaftStorage::Open(&kv, Voters({"n1"}));
  REQUIRE(s.ok());
  CHECK(entries() == 23);  // 8..30
  CHECK((*s)->FirstIndex() == 8);
  CHECK((*s)->LastIndex() == 30);
  std::map<std::string, std::string> pairs = read_back(s->get());
  CHECK(pairs.size() == 2);
  CHECK(pairs["i/web"] == std::string(3 << 20, 'a'));
  CHECK(pairs.count("i/new") == 0);

  // One not newer than the current snapshot is discarded, not installed; the current one's data
  // is never discarded.
  auto old = KvRaftStorage::WriteSnapshotData(&kv, view->get(), 8, 1, Voters({"n1"}));
  REQUIRE(old.ok());
  CHECK(pieces(8) == 4);
  REQUIRE((*s)->InstallSnapshot(*old, 0).ok());
  CHECK(pieces(8) == 0);
  CHECK((*s)->SnapshotMetadata().index == 10);
  REQUIRE((*s)->DiscardSnapshotData(*meta).ok());
  CHECK(pieces(10) == 4);
  view->reset();
  kv.Crash();
  auto again = KvRaftStorage::Open(&kv, Voters({"n1"}));
  REQUIRE(again.ok());
  CHECK(read_back(again->get()) == pairs);
}

TEST_CASE("raft storage: a bare snapshot cuts the log; its data is written when asked for") {
  FakeKvStore kv;
  auto pieces = [&] { return SnapshotPieces(&kv); };
  auto s = KvRaftStorage::Open(&kv, Voters({"n1"}));
  REQUIRE(s.ok());
  KvStore::Batch state;
  state.Put("i/web", std::string(3 << 20, 'a'));  // several pieces, once written
  state.Put(keys::kApplied, BigEndian64(10));
  REQUIRE(kv.Write(state, true).ok());
  Persist(s->get(), &kv, Ents(1, 30, 1));
  CHECK((*s)->SnapshotDataReady());  // no snapshot yet: nothing to send, nothing to write
  CHECK_FALSE((*s)->TakeDataWanted());

  // A bare snapshot: metadata alone, the log cut behind it, no data written.
  REQUIRE((*s)->InstallSnapshot(raft::SnapshotMeta{10, 1, Voters({"n1"}), 0}, 3).ok());
  CHECK((*s)->FirstIndex() == 8);
  CHECK(pieces() == 0);
  CHECK_FALSE((*s)->SnapshotDataReady());  // asking is the request
  CHECK((*s)->TakeDataWanted());
  CHECK_FALSE((*s)->TakeDataWanted());
  std::string chunk;
  CHECK((*s)->SnapshotChunk(10, 0, 1 << 20, &chunk).code() == Code::kUnavailable);
  CHECK((*s)->TakeDataWanted());
  CHECK((*s)->chunk_reads() == 0);

  // It survives a crash and a reopen as it is.
  REQUIRE(kv.Sync().ok());
  kv.Crash();
  s = KvRaftStorage::Open(&kv, Voters({"n1"}));
  REQUIRE(s.ok());
  CHECK((*s)->SnapshotMetadata() == raft::SnapshotMeta{10, 1, Voters({"n1"}), 0});
  CHECK((*s)->FirstIndex() == 8);
  CHECK_FALSE((*s)->SnapshotDataReady());

  // Data written for its index fills it in, and can be sent.
  auto view = kv.NewView();
  REQUIRE(view.ok());
  auto meta = KvRaftStorage::WriteSnapshotData(&kv, view->get(), 10, 1, Voters({"n1"}));
  REQUIRE(meta.ok());
  REQUIRE((*s)->InstallSnapshot(*meta, 3).ok());
  CHECK((*s)->SnapshotMetadata() == *meta);
  CHECK((*s)->SnapshotDataReady());
  CHECK(pieces() == 4);
  REQUIRE((*s)->SnapshotChunk(10, 0, 1 << 20, &chunk).ok());
  CHECK(chunk.size() == 1 << 20);
  CHECK((*s)->chunk_reads() == 1);

  // A newer bare one replaces it and its data; data written for it but not installed is discarded.
  REQUIRE((*s)->InstallSnapshot(raft::SnapshotMeta{20, 1, Voters({"n1"}), 0}, 3).ok());
  CHECK(pieces() == 0);
  CHECK((*s)->FirstIndex() == 18);
  auto unused = KvRaftStorage::WriteSnapshotData(&kv, view->get(), 20, 1, Voters({"n1"}));
  REQUIRE(unused.ok());
  CHECK(pieces() == 4);
  REQUIRE((*s)->DiscardSnapshotData(*unused).ok());
  CHECK(pieces() == 0);
  view->reset();
}

TEST_CASE("state snapshot decoding refuses local keys, disorder and lies") {
  auto none = [](std::string_view, std::string_view) { return Status::Ok(); };
  std::string ok(1, '\x01');
  AppendSnapshotPair(&ok, "a", "1");
  AppendSnapshotPair(&ok, "b", "2");
  CHECK(DecodeStateSnapshot(ok, none).ok());
  std::string local(1, '\x01');
  AppendSnapshotPair(&local, "l/x", "1");
  CHECK(DecodeStateSnapshot(local, none).code() == Code::kCorruption);
  std::string disorder(1, '\x01');
  AppendSnapshotPair(&disorder, "b", "1");
  AppendSnapshotPair(&disorder, "a", "1");
  CHECK(DecodeStateSnapshot(disorder, none).code() == Code::kCorruption);
  CHECK(DecodeStateSnapshot(ok.substr(0, ok.size() - 1), none).code() == Code::kCorruption);
  CHECK(DecodeStateSnapshot(std::string("\x02", 1), none).code() == Code::kNotSupported);
  CHECK(DecodeStateSnapshot("", none).code() == Code::kCorruption);
}

TEST_CASE("a format-1 store is upgraded in place, its unapplied entries applied") {
  FakeKvStore kv;
  // What a format-1 daemon left: entries 1..3 (the third not yet applied), compacted before 2.
  auto entry = [](uint64_t term, const Command& c) {
    Writer w;
    w.Fixed64(term);
    w.out().append(EncodeCommand(c));
    return w.Take();
  };
  Command boot;
  boot.type = CommandType::kBootstrap;
  boot.value = "0123456789abcdef";
  Command mk;
  mk.type = CommandType::kInstanceCreate;
  mk.object = "web";
  Command set;
  set.type = CommandType::kInstanceSet;
  set.object = "web";
  set.field = "ram_mb";
  set.value = "300";
  {
    // Apply 1..2 the way format 1 did, leaving 3 in the log only.
    StateMachine sm;
    KvStore::Batch fmt;
    REQUIRE(sm.Load(&kv).ok());  // writes format 2 for an empty store: make it 1 below
    KvStore::Batch b;
    std::vector<std::string> ev;
    REQUIRE(sm.Apply(1, boot, &b, &ev, nullptr).ok());
    REQUIRE(sm.Apply(2, mk, &b, &ev, nullptr).ok());
    sm.StageInto(&b);
    b.Put(keys::kFormat, "1");
    b.Put(keys::kLogFirst, BigEndian64(2));
    b.Put(keys::kLogPrefix + BigEndian64(2), entry(1, mk));
    b.Put(keys::kLogPrefix + BigEndian64(3), entry(1, set));
    Writer hs;
    hs.Fixed64(1);
    hs.Bytes("n1");
    hs.Fixed64(3);
    b.Put(keys::kHardState, hs.Take());
    REQUIRE(kv.Write(b, true).ok());
  }
  Env env = *DefaultEnv();
  env.open_kv = [&](const std::string&) -> Result<std::unique_ptr<KvStore>> { return kv.Share(); };
  ReplicaOptions o;
  o.env = &env;
  o.node_name = "n1";
  auto r = Replica::Open(o);
  REQUIRE(r.ok());
  CHECK((*r)->state().cluster_id() == "0123456789abcdef");
  REQUIRE((*r)->state().GetInstance("web"));
  CHECK((*r)->state().GetInstance("web")->ram_mb == 300);
  std::string v;
  REQUIRE(kv.Get(keys::kFormat, &v).ok());
  CHECK(v == "2");
  set.value = "400";
  CHECK((*r)->Propose(set).ok());
  CHECK((*r)->state().GetInstance("web")->ram_mb == 400);
  ReplicaStatus st = (*r)->GetStatus();
  CHECK(st.leader == "n1");
  CHECK(st.snapshot_index == 2);  // the compacted prefix is covered by a snapshot
  r->reset();
  // And it opens again as format 2.
  auto again = Replica::Open(o);
  REQUIRE(again.ok());
  CHECK((*again)->state().GetInstance("web")->ram_mb == 400);
}

}  // namespace constellation
