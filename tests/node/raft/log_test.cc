// MemoryStorage and the core's RaftLog (stable + unstable entries).
#include "catch2/catch.hpp"
#include "node/raft/raft.h"
#include "node/raft/raft_log.h"

namespace constellation::raft {
namespace {

std::vector<Entry> Ents(uint64_t first, std::vector<uint64_t> terms) {
  std::vector<Entry> out;
  for (size_t i = 0; i < terms.size(); ++i) {
    std::string data = "e";
    data += std::to_string(first + i);
    out.push_back(Entry{first + i, terms[i], EntryType::kNormal, data});
  }
  return out;
}

TEST_CASE("memory storage: append, replace a suffix, terms, bounded reads") {
  MemoryStorage st;
  CHECK(st.FirstIndex() == 1);
  CHECK(st.LastIndex() == 0);
  CHECK(*st.Term(0) == 0);
  st.Append(Ents(1, {1, 1, 2, 2}));
  CHECK(st.LastIndex() == 4);
  CHECK(*st.Term(3) == 2);
  CHECK(!st.Term(5).ok());
  st.Append(Ents(3, {3}));  // replaces 3 and 4
  CHECK(st.LastIndex() == 3);
  CHECK(*st.Term(3) == 3);
  std::vector<Entry> out;
  REQUIRE(st.Entries(1, 4, 0, &out).ok());
  CHECK(out.size() == 1);  // at least one, even over max_bytes
  out.clear();
  REQUIRE(st.Entries(1, 4, 4, &out).ok());  // "e1" + "e2" fit in 4 bytes
  CHECK(out.size() == 2);
  out.clear();
  CHECK(st.Entries(0, 2, 100, &out).code() == Code::kOutOfRange);
  CHECK(st.Entries(2, 5, 100, &out).code() == Code::kOutOfRange);
}

TEST_CASE("memory storage: snapshots compact the log and serve chunks") {
  MemoryStorage st(Config{{"1"}, {}});
  st.Append(Ents(1, {1, 1, 1, 2, 2}));
  REQUIRE(st.CreateSnapshot(3, Config{{"1", "2"}, {}}, "abcdefghij", 1).ok());
  CHECK(st.SnapshotMetadata().index == 3);
  CHECK(st.SnapshotMetadata().term == 1);
  CHECK(st.SnapshotMetadata().size == 10);
  CHECK(st.FirstIndex() == 3);  // one covered entry kept
  CHECK(*st.Term(2) == 1);
  CHECK(!st.Term(1).ok());
  CHECK(st.CreateSnapshot(2, {}, "", 0).code() == Code::kAlreadyExists);
  CHECK(st.CreateSnapshot(9, {}, "", 0).code() == Code::kOutOfRange);
  std::string chunk;
  REQUIRE(st.SnapshotChunk(3, 4, 4, &chunk).ok());
  CHECK(chunk == "efgh");
  REQUIRE(st.SnapshotChunk(3, 8, 4, &chunk).ok());
  CHECK(chunk == "ij");
  CHECK(st.SnapshotChunk(2, 0, 4, &chunk).code() == Code::kNotFound);
  st.ApplySnapshot(Snapshot{SnapshotMeta{10, 3, Config{{"1"}, {}}, 2}, "zz"});
  CHECK(st.FirstIndex() == 11);
  CHECK(st.LastIndex() == 10);
  CHECK(*st.Term(10) == 3);
}

TEST_CASE("raft log: unstable tail over stable entries") {
  MemoryStorage st;
  st.Append(Ents(1, {1, 1, 2}));
  RaftLog log(&st);
  CHECK(log.LastIndex() == 3);
  CHECK(log.StableLast() == 3);
  log.Append(Ents(4, {2, 3}));
  CHECK(log.LastIndex() == 5);
  CHECK(log.StableLast() == 3);
  CHECK(log.unstable_entries().size() == 2);
  CHECK(*log.Term(5) == 3);
  // A conflicting append into the stable part masks storage's suffix until persisted.
  log.Append(Ents(3, {4}));
  CHECK(log.LastIndex() == 3);
  CHECK(log.StableLast() == 2);
  CHECK(*log.Term(3) == 4);
  std::vector<Entry> out;
  REQUIRE(log.Entries(1, 4, UINT64_MAX, &out).ok());
  REQUIRE(out.size() == 3);
  CHECK(out[2].term == 4);
  // Persist: storage replaces its suffix; the tail becomes stable.
  st.Append(log.unstable_entries());
  log.StableTo(3, 4);
  CHECK(log.unstable_entries().empty());
  CHECK(log.StableLast() == 3);
  // A stale StableTo (the entry was replaced meanwhile) is ignored.
  log.Append(Ents(4, {5}));
  log.StableTo(4, 4);
  CHECK(log.unstable_entries().size() == 1);
}

TEST_CASE("raft log: conflicts and the probe hint") {
  MemoryStorage st;
  st.Append(Ents(1, {1, 1, 2, 2, 2, 4}));
  RaftLog log(&st);
  CHECK(log.FindConflict(Ents(2, {1, 2})) == 0);
  CHECK(log.FindConflict(Ents(2, {1, 3})) == 3);
  CHECK(log.FindConflict(Ents(6, {4, 4})) == 7);  // new entry past the end
  CHECK(log.FindConflictByTerm(6, 3) == 5);       // last index with term <= 3
  CHECK(log.FindConflictByTerm(6, 1) == 2);
  CHECK(log.FindConflictByTerm(6, 0) == 0);
  CHECK(log.FindConflictByTerm(9, 3) == 9);  // beyond the end: unchanged
  CHECK(log.IsUpToDate(6, 4));
  CHECK(log.IsUpToDate(1, 5));
  CHECK(!log.IsUpToDate(5, 4));
  CHECK(!log.IsUpToDate(9, 3));
}

TEST_CASE("raft log: restoring a snapshot replaces the log") {
  MemoryStorage st;
  st.Append(Ents(1, {1, 1}));
  RaftLog log(&st);
  log.Restore(Snapshot{SnapshotMeta{7, 3, {}, 0}, ""});
  CHECK(log.FirstIndex() == 8);
  CHECK(log.LastIndex() == 7);
  CHECK(log.committed() == 7);
  CHECK(*log.Term(7) == 3);
  CHECK(!log.Term(2));  // covered by the pending snapshot
  log.Append(Ents(8, {3}));
  CHECK(log.LastIndex() == 8);
  st.ApplySnapshot(*log.unstable_snapshot());
  st.Append(log.unstable_entries());
  log.StableSnapTo(7);
  log.StableTo(8, 3);
  CHECK(!log.unstable_snapshot());
  CHECK(log.FirstIndex() == 8);
  CHECK(log.StableLast() == 8);
  std::vector<Entry> out;
  CHECK(log.Entries(7, 9, 100, &out).code() == Code::kOutOfRange);  // compacted
}

}  // namespace
}  // namespace constellation::raft
