// KvRaftStorage: raft's durable storage (node/raft/raft.h RaftStorage) on the node's KvStore, plus
// state-machine snapshots kept as files.
//
// Keys (docs/architecture.md): `l/<be64 index>` log entries (Fixed64 term | U8 type | data),
// `m/log_first` the first stored index, `r/hard` raft's hard state, `r/snap` the newest snapshot's
// metadata, `r/prev_term` the term of entry log_first-1 when log_first-1 is not the snapshot's,
// `r/s/<be64 index><be64 n>` the snapshot's data in 1 MiB pieces: every replicated key of the
// store (keys::IsLocal says which are not) as a versioned, length-checked list of pairs. The data
// is written (synced) before the metadata that names it, so a crash never leaves the metadata
// without its data; data nothing names is deleted at Open.
//
// A snapshot may also be bare: metadata of size 0 and no data. The store's replicated keys are the
// state as of the applied index, at or past the snapshot's, so compacting the log needs no copy of
// them; a copy is written (a snapshot with data, at the applied index then) only when a follower
// needs one: SnapshotDataReady answers false for a bare snapshot and records the request, which
// the agent takes with TakeDataWanted.
//
// The newest entries are cached in memory (bounded) so a leader streaming appends rarely reads the
// store. Thread-safety: not thread-safe; the agent thread owns it (Replica). The static
// WriteSnapshotData and DeleteLogEntries touch only the store and may run on any thread.
#ifndef CONSTELLATION_NODE_STATE_RAFT_STORAGE_H_
#define CONSTELLATION_NODE_STATE_RAFT_STORAGE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "node/env/env.h"
#include "node/raft/raft.h"

namespace constellation {

inline constexpr uint8_t kStateSnapshotVersion = 1;
inline constexpr size_t kMaxSnapshotKeyBytes = 64 * 1024;
inline constexpr size_t kMaxSnapshotValueBytes = size_t{64} << 20;

// Snapshot data: U8 version, then (Bytes key, Bytes value) pairs in strictly increasing key order
// until the end. Decode calls fn for each pair; Corruption for anything malformed, a local key, or
// keys out of order (nothing is trusted: a snapshot arrives over the network).
void AppendSnapshotPair(std::string* out, std::string_view key, std::string_view value);
Status DecodeStateSnapshot(std::string_view data,
                           const std::function<Status(std::string_view, std::string_view)>& fn);

class KvRaftStorage : public raft::RaftStorage {
 public:
  // `kv` outlives the storage. A store with no snapshot metadata is new: its metadata becomes
  // {0, 0, initial, 0} (the bootstrap configuration, or empty for a node that joins).
  static Result<std::unique_ptr<KvRaftStorage>> Open(KvStore* kv, const raft::Config& initial);

  raft::HardState InitialHardState() const override { return hard_state_; }
  raft::SnapshotMeta SnapshotMetadata() const override { return snap_; }
  uint64_t FirstIndex() const override { return first_; }
  uint64_t LastIndex() const override { return last_; }
  Result<uint64_t> Term(uint64_t i) const override;
  Status Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                 std::vector<raft::Entry>* out) const override;
  Status SnapshotChunk(uint64_t index, uint64_t offset, size_t max_bytes,
                       std::string* out) const override;
  bool SnapshotDataReady() const override;

  // Whether SnapshotDataReady answered false since the last call: a follower waits for data.
  bool TakeDataWanted();
  // How many chunks of snapshot data have been read so far: a snapshot is being sent while this
  // moves (the agent does not replace it by a bare one meanwhile, which would restart the send).
  uint64_t chunk_reads() const { return chunk_reads_; }

  // ---- Persisting a Ready, in one batch: StageSnapshot (replaces the state machine's keys and the
  // log), StageEntries, StageHardState, then the caller writes the batch and calls Persisted() on
  // success (or nothing on failure: the storage still describes the store).
  // Stages the store's replacement by a snapshot received from the leader (Corruption if its data
  // is malformed: nothing is staged).
  Status StageSnapshot(const raft::Snapshot& snapshot, KvStore::Batch* batch);
  void StageEntries(const std::vector<raft::Entry>& entries, KvStore::Batch* batch);
  void StageHardState(const raft::HardState& hs, KvStore::Batch* batch);
  void Persisted();
  // The write failed: forget what was staged.
  void DropStaged();

  // ---- After applying: a snapshot of the replicated keys as of `index` (the state machine's
  // applied index; `term` its entry's term; `config` the configuration then), in two steps so the
  // copy of the state can be made off the agent thread.
  // Step 1, from any thread (it touches only `kv`): writes, synced, the data of the snapshot of
  // `view` (the store as of `index`) under keys of its own, and returns its metadata. Nothing names
  // the data yet; Open deletes data no snapshot names (a crash before step 2).
  static Result<raft::SnapshotMeta> WriteSnapshotData(KvStore* kv, KvStore::View* view,
                                                      uint64_t index, uint64_t term,
                                                      const raft::Config& config);
  // Step 2: makes it the snapshot, replacing the previous one, and drops the log entries it covers
  // except the newest `keep`. Unsynced: a crash may bring the previous one back, which is
  // harmless. A snapshot not newer than the current one is discarded instead (but data for the
  // index of a bare one replaces it). A `meta` of size 0 installs a bare snapshot (no step 1),
  // which `index` must not be past the state machine's applied index as the store holds it. With
  // `dropped`, the dropped entries' keys are left for the caller to delete (DeleteLogEntries, from
  // any thread): *dropped is set to their range ([0, 0) for none); Open deletes what is left of
  // them.
  struct LogRange {
    uint64_t from = 0;
    uint64_t to = 0;  // exclusive
  };
  Status InstallSnapshot(const raft::SnapshotMeta& meta, uint64_t keep,
                         LogRange* dropped = nullptr);
  // Deletes the keys of log entries [from, to), in bounded batches; from any thread.
  static Status DeleteLogEntries(KvStore* kv, uint64_t from, uint64_t to);
  // Deletes the data step 1 wrote for `meta`, which will not be installed.
  Status DiscardSnapshotData(const raft::SnapshotMeta& meta);
  // Both steps, on this thread.
  Status CreateSnapshot(uint64_t index, uint64_t term, const raft::Config& config, uint64_t keep);

  // The stored entry format, shared with the format-1 upgrade.
  static std::string EncodeEntry(const raft::Entry& e);
  static Result<raft::Entry> DecodeEntry(uint64_t index, std::string_view data);

  const raft::SnapshotMeta& snapshot_meta() const { return snap_; }

  // Stages what Open writes into a new store: no log, no snapshot, configuration `initial`. For a
  // store emptied in the same batch (Replica::ResetForJoin), which must not count as new.
  static void StageNew(const raft::Config& initial, KvStore::Batch* batch);

  // Stages a snapshot of `kv`'s replicated keys as they are now, named (index, term, config), and
  // its metadata; returns the metadata. For the format-1 upgrade, which has no storage yet.
  static Result<raft::SnapshotMeta> StageStoreSnapshot(KvStore* kv, uint64_t index, uint64_t term,
                                                       const raft::Config& config,
                                                       KvStore::Batch* batch);

 private:
  explicit KvRaftStorage(KvStore* kv) : kv_(kv) {}
  Status Load(const raft::Config& initial);
  void CacheAppend(const raft::Entry& e);
  // Stages the data of snapshot `index` and the removal of the current snapshot's data.
  void StageSnapshotData(uint64_t index, std::string_view data, KvStore::Batch* batch);

  KvStore* kv_;
  raft::HardState hard_state_;
  raft::SnapshotMeta snap_;
  uint64_t first_ = 1;
  uint64_t last_ = 0;
  uint64_t prev_term_ = 0;  // term of entry first_-1
  mutable bool data_wanted_ = false;
  mutable uint64_t chunk_reads_ = 0;

  // The cache: entries [cache_first_, last_] (may be empty), bounded by count and bytes.
  std::deque<raft::Entry> cache_;
  uint64_t cache_bytes_ = 0;

  // Staged by Stage*, made current by Persisted().
  struct Staged {
    std::optional<raft::SnapshotMeta> snap;
    std::vector<raft::Entry> entries;
    std::optional<raft::HardState> hard_state;
  };
  Staged staged_;
};

}  // namespace constellation

#endif  // CONSTELLATION_NODE_STATE_RAFT_STORAGE_H_
