// RaftLog (internal to node/raft): the whole log as the core sees it — stable entries read through
// RaftStorage, then the unstable tail (entries and possibly a received snapshot) that the agent
// has not yet persisted — plus the commit index.
//
// Invariants: offset_ - 1 <= storage.LastIndex() (entries at or past offset_ come from the
// unstable tail, never from storage, whose stale suffix is replaced when the tail is persisted);
// committed_ <= LastIndex(); a pending snapshot's index is offset_ - 1.
// Thread-safety: none; owned by the core.
#ifndef CONSTELLATION_NODE_RAFT_RAFT_LOG_H_
#define CONSTELLATION_NODE_RAFT_RAFT_LOG_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "node/raft/raft.h"

namespace constellation::raft {

class RaftLog {
 public:
  explicit RaftLog(RaftStorage* storage);

  uint64_t FirstIndex() const;
  uint64_t LastIndex() const { return offset_ + entries_.size() - 1; }
  uint64_t LastTerm() const;
  // The term of entry i; nullopt when i is compacted or beyond the end.
  std::optional<uint64_t> Term(uint64_t i) const;
  bool MatchTerm(uint64_t i, uint64_t term) const {
    std::optional<uint64_t> t = Term(i);
    return t && *t == term;
  }
  // Is a log ending at (last_index, term) at least as up to date as this one (§5.4.1)?
  bool IsUpToDate(uint64_t last_index, uint64_t term) const {
    uint64_t lt = LastTerm();
    return term > lt || (term == lt && last_index >= LastIndex());
  }
  // The first of `entries` whose term differs from this log's entry at its index (or that is
  // beyond the end); 0 if every one matches.
  uint64_t FindConflict(const std::vector<Entry>& entries) const;
  // The largest index <= `index` whose term is <= `term` (etcd's probe optimisation).
  uint64_t FindConflictByTerm(uint64_t index, uint64_t term) const;

  // Appends `entries` (contiguous, entries[0].index in [committed+1, LastIndex()+1]), replacing
  // whatever the log held from entries[0].index on.
  void Append(std::vector<Entry> entries);
  // Entries [lo, hi) with at least one and at most max_bytes of data beyond the first.
  // OutOfRange when lo is compacted.
  Status Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes, std::vector<Entry>* out) const;

  uint64_t committed() const { return committed_; }
  void CommitTo(uint64_t index);
  // Only to undo a commit index that was never made durable (PersistFailed) or at start.
  void SetCommitted(uint64_t index);

  // The last index the agent has persisted (and that no unstable entry overrides).
  uint64_t StableLast() const { return offset_ - 1; }
  const std::vector<Entry>& unstable_entries() const { return entries_; }
  const std::optional<Snapshot>& unstable_snapshot() const { return snapshot_; }
  // The agent persisted entries up to (index, term) / the snapshot at index.
  void StableTo(uint64_t index, uint64_t term);
  void StableSnapTo(uint64_t index);
  // Replaces the log with a snapshot received from the leader (to be persisted).
  void Restore(Snapshot snapshot);
  // Forgets everything unstable: the log is what storage holds.
  void ResetToStorage();

 private:
  RaftStorage* storage_;
  std::optional<Snapshot> snapshot_;
  std::vector<Entry> entries_;  // unstable entries from offset_
  uint64_t offset_;
  uint64_t committed_ = 0;
};

}  // namespace constellation::raft

#endif  // CONSTELLATION_NODE_RAFT_RAFT_LOG_H_
