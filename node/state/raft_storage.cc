#include "node/state/raft_storage.h"

#include "node/base/coding.h"
#include "node/base/log.h"
#include "node/state/state_machine.h"

namespace constellation {
namespace {

constexpr char kSnapKey[] = "r/snap";
constexpr char kPrevTermKey[] = "r/prev_term";
constexpr size_t kCacheEntries = 8192;
constexpr uint64_t kCacheBytes = uint64_t{64} << 20;
constexpr char kSnapDataPrefix[] = "r/s/";
// Snapshot data is stored in pieces of this size (the last one shorter).
constexpr uint64_t kStoreChunk = uint64_t{1} << 20;

std::string LogKey(uint64_t i) { return keys::kLogPrefix + BigEndian64(i); }

std::string ChunkKey(uint64_t index, uint64_t n) {
  return kSnapDataPrefix + BigEndian64(index) + BigEndian64(n);
}

}  // namespace

void AppendSnapshotPair(std::string* out, std::string_view key, std::string_view value) {
  Writer w;
  w.Bytes(key);
  w.Bytes(value);
  out->append(w.out());
}

Status DecodeStateSnapshot(std::string_view data,
                           const std::function<Status(std::string_view, std::string_view)>& fn) {
  if (data.empty()) return Status::Corruption("state snapshot: empty");
  if (static_cast<uint8_t>(data[0]) != kStateSnapshotVersion) {
    return Status::NotSupported("state snapshot: version " +
                                std::to_string(static_cast<uint8_t>(data[0])) +
                                " is not one this daemon reads");
  }
  Reader r(data.substr(1));
  std::string prev, key, value;
  bool first = true;
  while (r.remaining() > 0) {
    if (!r.Bytes(&key, kMaxSnapshotKeyBytes) || !r.Bytes(&value, kMaxSnapshotValueBytes)) {
      return Status::Corruption("state snapshot: malformed pair");
    }
    if (key.empty() || keys::IsLocal(key)) {
      return Status::Corruption("state snapshot: holds a local key");
    }
    if (!first && key <= prev) return Status::Corruption("state snapshot: keys out of order");
    CN_RETURN_IF_ERROR(fn(key, value));
    prev = key;
    first = false;
  }
  return Status::Ok();
}

std::string KvRaftStorage::EncodeEntry(const raft::Entry& e) {
  Writer w;
  w.Fixed64(e.term);
  w.U8(static_cast<uint8_t>(e.type));
  w.out().append(e.data);
  return w.Take();
}

Result<raft::Entry> KvRaftStorage::DecodeEntry(uint64_t index, std::string_view data) {
  Reader r(data);
  raft::Entry e;
  uint8_t type = 0;
  if (!r.Fixed64(&e.term) || !r.U8(&type) || type > 1) {
    return Status::Corruption("log entry " + std::to_string(index) + ": malformed");
  }
  e.index = index;
  e.type = static_cast<raft::EntryType>(type);
  e.data.assign(data.substr(9));
  return e;
}

Result<std::unique_ptr<KvRaftStorage>> KvRaftStorage::Open(KvStore* kv,
                                                           const raft::Config& initial) {
  std::unique_ptr<KvRaftStorage> s(new KvRaftStorage(kv));
  CN_RETURN_IF_ERROR(s->Load(initial));
  return s;
}

void KvRaftStorage::StageNew(const raft::Config& initial, KvStore::Batch* batch) {
  batch->Put(kSnapKey, raft::EncodeSnapshotMeta(raft::SnapshotMeta{0, 0, initial, 0}));
}

Status KvRaftStorage::Load(const raft::Config& initial) {
  std::string v;
  Status s = kv_->Get(keys::kHardState, &v);
  if (s.ok()) {
    CN_ASSIGN_OR_RETURN(hard_state_, raft::DecodeHardState(v));
  } else if (s.code() != Code::kNotFound) {
    return s;
  }
  s = kv_->Get(kSnapKey, &v);
  if (s.ok()) {
    CN_ASSIGN_OR_RETURN(snap_, raft::DecodeSnapshotMeta(v));
  } else if (s.code() == Code::kNotFound) {
    snap_ = raft::SnapshotMeta{0, 0, initial, 0};
    KvStore::Batch b;
    b.Put(kSnapKey, raft::EncodeSnapshotMeta(snap_));
    CN_RETURN_IF_ERROR(kv_->Write(b, /*sync=*/true));
  } else {
    return s;
  }
  if (snap_.size > 0 && !kv_->Get(ChunkKey(snap_.index, 0), &v).ok()) {
    return Status::Corruption("the data of snapshot " + std::to_string(snap_.index) +
                              " named by the store is missing");
  }
  // Data of snapshots never installed (written, then a crash before InstallSnapshot) or replaced.
  KvStore::Batch orphans;
  std::string prefix = kSnapDataPrefix;
  std::string end = prefix.substr(0, prefix.size() - 1) + static_cast<char>('/' + 1);
  CN_RETURN_IF_ERROR(kv_->Scan(prefix, end, [&](std::string_view k, std::string_view) {
    if (k.size() != prefix.size() + 16 ||
        FromBigEndian64(k.substr(prefix.size(), 8)) != snap_.index) {
      orphans.Delete(k);
    }
    return true;
  }));
  if (!orphans.empty()) {
    CN_LOG(Info) << "deleting " << orphans.ops().size() << " pieces of snapshot data that no "
                 << "snapshot names";
    CN_RETURN_IF_ERROR(kv_->Write(orphans, /*sync=*/false));
  }
  first_ = snap_.index + 1;
  if (kv_->Get(keys::kLogFirst, &v).ok()) first_ = FromBigEndian64(v);
  if (first_ == 0 || first_ > snap_.index + 1) {
    return Status::Corruption("log starts at " + std::to_string(first_) +
                              ", after the snapshot at " + std::to_string(snap_.index));
  }
  // Entries a compaction dropped but had not deleted yet (InstallSnapshot's `dropped`).
  uint64_t below = 0, lowest = first_;
  CN_RETURN_IF_ERROR(
      kv_->Scan(LogKey(0), LogKey(first_), [&](std::string_view k, std::string_view) {
        lowest = std::min(lowest, FromBigEndian64(k.substr(2)));
        ++below;
        return true;
      }));
  if (below > 0) {
    CN_LOG(Info) << "deleting " << below << " log entries before the log's start " << first_;
    CN_RETURN_IF_ERROR(DeleteLogEntries(kv_, lowest, first_));
  }
  prev_term_ = 0;
  if (first_ - 1 != snap_.index) {
    if (!kv_->Get(kPrevTermKey, &v).ok()) {
      return Status::Corruption("the term of the entry before the log's start is missing");
    }
    prev_term_ = FromBigEndian64(v);
  }
  last_ = first_ - 1;
  Status decode;
  CN_RETURN_IF_ERROR(kv_->Scan(LogKey(first_), "l0", [&](std::string_view k, std::string_view d) {
    uint64_t index = FromBigEndian64(k.substr(2));
    if (index != last_ + 1) {
      decode = Status::Corruption("log: gap before entry " + std::to_string(index));
      return false;
    }
    Result<raft::Entry> e = DecodeEntry(index, d);
    if (!e.ok()) {
      decode = e.status();
      return false;
    }
    last_ = index;
    CacheAppend(std::move(*e));
    return true;
  }));
  CN_RETURN_IF_ERROR(decode);
  if (last_ < snap_.index) {
    return Status::Corruption("log ends at " + std::to_string(last_) + ", before the snapshot at " +
                              std::to_string(snap_.index));
  }
  return Status::Ok();
}

void KvRaftStorage::CacheAppend(const raft::Entry& e) {
  cache_.push_back(e);
  cache_bytes_ += e.data.size();
  while (cache_.size() > 1 && (cache_.size() > kCacheEntries || cache_bytes_ > kCacheBytes)) {
    cache_bytes_ -= cache_.front().data.size();
    cache_.pop_front();
  }
}

Result<uint64_t> KvRaftStorage::Term(uint64_t i) const {
  if (i + 1 == first_) return i == snap_.index ? snap_.term : prev_term_;
  if (i == snap_.index) return snap_.term;
  if (i < first_ || i > last_) {
    return Status::OutOfRange("entry " + std::to_string(i) + " is not in the log " +
                              std::to_string(first_) + ".." + std::to_string(last_));
  }
  if (!cache_.empty() && i >= cache_.front().index) return cache_[i - cache_.front().index].term;
  std::string v;
  CN_RETURN_IF_ERROR(kv_->Get(LogKey(i), &v));
  uint64_t term = 0;
  Reader r(v);
  if (!r.Fixed64(&term))
    return Status::Corruption("log entry " + std::to_string(i) + ": malformed");
  return term;
}

Status KvRaftStorage::Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                              std::vector<raft::Entry>* out) const {
  if (lo < first_ || hi > last_ + 1 || lo >= hi) {
    return Status::OutOfRange("entries " + std::to_string(lo) + ".." + std::to_string(hi) +
                              " are not in the log " + std::to_string(first_) + ".." +
                              std::to_string(last_));
  }
  uint64_t bytes = 0;
  size_t taken = 0;
  auto take = [&](raft::Entry e) {
    if (taken > 0 && bytes + e.data.size() > max_bytes) return false;
    bytes += e.data.size();
    out->push_back(std::move(e));
    ++taken;
    return true;
  };
  if (!cache_.empty() && lo >= cache_.front().index) {
    for (uint64_t i = lo; i < hi; ++i) {
      if (!take(cache_[i - cache_.front().index])) break;
    }
    return Status::Ok();
  }
  Status decode;
  uint64_t expect = lo;
  CN_RETURN_IF_ERROR(kv_->Scan(LogKey(lo), LogKey(hi), [&](std::string_view k, std::string_view d) {
    uint64_t index = FromBigEndian64(k.substr(2));
    Result<raft::Entry> e = index == expect ? DecodeEntry(index, d)
                                            : Result<raft::Entry>(Status::Corruption("log: gap"));
    if (!e.ok()) {
      decode = e.status();
      return false;
    }
    ++expect;
    return take(std::move(*e));
  }));
  CN_RETURN_IF_ERROR(decode);
  if (taken == 0) return Status::Corruption("log: entry " + std::to_string(lo) + " is missing");
  return Status::Ok();
}

bool KvRaftStorage::SnapshotDataReady() const {
  if (snap_.index == 0 || snap_.size > 0) return true;
  data_wanted_ = true;
  return false;
}

bool KvRaftStorage::TakeDataWanted() {
  bool wanted = data_wanted_;
  data_wanted_ = false;
  return wanted;
}

Status KvRaftStorage::SnapshotChunk(uint64_t index, uint64_t offset, size_t max_bytes,
                                    std::string* out) const {
  if (index != snap_.index || index == 0) {
    return Status::NotFound("snapshot " + std::to_string(index) + " was replaced");
  }
  if (snap_.size == 0) {
    data_wanted_ = true;
    return Status::Unavailable("snapshot " + std::to_string(index) + " has no data yet");
  }
  ++chunk_reads_;
  uint64_t want = std::min<uint64_t>(max_bytes, snap_.size > offset ? snap_.size - offset : 0);
  out->clear();
  std::string piece;
  while (out->size() < want) {
    uint64_t at = offset + out->size();
    CN_RETURN_IF_ERROR(kv_->Get(ChunkKey(index, at / kStoreChunk), &piece));
    uint64_t skip = at % kStoreChunk;
    if (piece.size() <= skip) return Status::Corruption("snapshot data shorter than its size");
    out->append(piece, skip, std::min<uint64_t>(piece.size() - skip, want - out->size()));
  }
  return Status::Ok();
}

void KvRaftStorage::StageSnapshotData(uint64_t index, std::string_view data,
                                      KvStore::Batch* batch) {
  for (uint64_t n = 0; n * kStoreChunk < data.size(); ++n) {
    batch->Put(ChunkKey(index, n), data.substr(n * kStoreChunk, kStoreChunk));
  }
  // The previous snapshot's pieces (none for a bare one, which may have the same index).
  for (uint64_t n = 0; n * kStoreChunk < snap_.size; ++n) batch->Delete(ChunkKey(snap_.index, n));
}

Status KvRaftStorage::StageSnapshot(const raft::Snapshot& snapshot, KvStore::Batch* batch) {
  const raft::SnapshotMeta& meta = snapshot.meta;
  if (snapshot.data.size() != meta.size) return Status::Corruption("snapshot: size mismatch");
  // The keys it brings replace every replicated key of the store.
  std::vector<std::pair<std::string, std::string>> pairs;
  CN_RETURN_IF_ERROR(
      DecodeStateSnapshot(snapshot.data, [&](std::string_view k, std::string_view v) -> Status {
        pairs.emplace_back(std::string(k), std::string(v));
        return Status::Ok();
      }));
  CN_RETURN_IF_ERROR(kv_->Scan("", "", [&](std::string_view k, std::string_view) {
    if (!keys::IsLocal(k)) batch->Delete(k);
    return true;
  }));
  for (const auto& [k, v] : pairs) batch->Put(k, v);
  StageSnapshotData(meta.index, snapshot.data, batch);
  for (uint64_t i = first_; i <= last_; ++i) batch->Delete(LogKey(i));
  batch->Put(keys::kLogFirst, BigEndian64(meta.index + 1));
  batch->Delete(kPrevTermKey);
  batch->Put(kSnapKey, raft::EncodeSnapshotMeta(meta));
  staged_.snap = meta;
  return Status::Ok();
}

void KvRaftStorage::StageEntries(const std::vector<raft::Entry>& entries, KvStore::Batch* batch) {
  if (entries.empty()) return;
  uint64_t last = staged_.snap ? staged_.snap->index : last_;
  for (const raft::Entry& e : entries) batch->Put(LogKey(e.index), EncodeEntry(e));
  for (uint64_t i = entries.back().index + 1; i <= last; ++i) batch->Delete(LogKey(i));
  staged_.entries = entries;
}

void KvRaftStorage::StageHardState(const raft::HardState& hs, KvStore::Batch* batch) {
  batch->Put(keys::kHardState, raft::EncodeHardState(hs));
  staged_.hard_state = hs;
}

void KvRaftStorage::Persisted() {
  if (staged_.snap) {
    snap_ = *staged_.snap;
    first_ = snap_.index + 1;
    last_ = snap_.index;
    prev_term_ = 0;
    cache_.clear();
    cache_bytes_ = 0;
  }
  if (!staged_.entries.empty()) {
    uint64_t from = staged_.entries.front().index;
    while (!cache_.empty() && cache_.back().index >= from) {
      cache_bytes_ -= cache_.back().data.size();
      cache_.pop_back();
    }
    if (!cache_.empty() && cache_.back().index + 1 != from) {
      cache_.clear();
      cache_bytes_ = 0;
    }
    for (const raft::Entry& e : staged_.entries) CacheAppend(e);
    last_ = staged_.entries.back().index;
  }
  if (staged_.hard_state) hard_state_ = *staged_.hard_state;
  staged_ = Staged{};
}

Result<raft::SnapshotMeta> KvRaftStorage::StageStoreSnapshot(KvStore* kv, uint64_t index,
                                                             uint64_t term,
                                                             const raft::Config& config,
                                                             KvStore::Batch* batch) {
  std::string data(1, static_cast<char>(kStateSnapshotVersion));
  CN_RETURN_IF_ERROR(kv->Scan("", "", [&](std::string_view k, std::string_view v) {
    if (!keys::IsLocal(k)) AppendSnapshotPair(&data, k, v);
    return true;
  }));
  raft::SnapshotMeta meta{index, term, config, data.size()};
  for (uint64_t n = 0; n * kStoreChunk < data.size(); ++n) {
    batch->Put(ChunkKey(index, n), std::string_view(data).substr(n * kStoreChunk, kStoreChunk));
  }
  batch->Put(kSnapKey, raft::EncodeSnapshotMeta(meta));
  return meta;
}

Result<raft::SnapshotMeta> KvRaftStorage::WriteSnapshotData(KvStore* kv, KvStore::View* view,
                                                            uint64_t index, uint64_t term,
                                                            const raft::Config& config) {
  // Streamed a piece per write: whatever the state's size, about one piece is held, and the agent
  // thread's own writes never queue behind more than a piece.
  std::string piece(1, static_cast<char>(kStateSnapshotVersion));
  uint64_t size = 0;
  uint64_t n = 0;
  Status write;
  auto emit = [&](bool last) {
    while (write.ok() && (piece.size() >= kStoreChunk || (last && !piece.empty()))) {
      size_t len = std::min<size_t>(piece.size(), kStoreChunk);
      KvStore::Batch b;
      b.Put(ChunkKey(index, n++), std::string_view(piece).substr(0, len));
      write = kv->Write(b, /*sync=*/false);
      size += len;
      piece.erase(0, len);
    }
  };
  Status scan = view->Scan("", "", [&](std::string_view k, std::string_view v) {
    if (!keys::IsLocal(k)) AppendSnapshotPair(&piece, k, v);
    if (piece.size() >= kStoreChunk) emit(false);
    return write.ok();
  });
  if (scan.ok()) emit(true);
  // Every piece durable before anything names them (Sync covers all of leveldb's logs, also one
  // it moved past in between).
  if (scan.ok() && write.ok()) write = kv->Sync();
  if (!scan.ok() || !write.ok()) {
    KvStore::Batch undo;
    for (uint64_t i = 0; i < n; ++i) undo.Delete(ChunkKey(index, i));
    if (!undo.empty()) kv->Write(undo, /*sync=*/false).ok();  // else Open deletes them
    return scan.ok() ? write : scan;
  }
  return raft::SnapshotMeta{index, term, config, size};
}

Status KvRaftStorage::DiscardSnapshotData(const raft::SnapshotMeta& meta) {
  // The current one's is never discarded (a bare current one has none).
  if (meta.index == snap_.index && snap_.size > 0) return Status::Ok();
  KvStore::Batch b;
  for (uint64_t n = 0; n * kStoreChunk < meta.size; ++n) b.Delete(ChunkKey(meta.index, n));
  return b.empty() ? Status::Ok() : kv_->Write(b, /*sync=*/false);
}

Status KvRaftStorage::CreateSnapshot(uint64_t index, uint64_t term, const raft::Config& config,
                                     uint64_t keep) {
  if (index <= snap_.index) return Status::Ok();
  CN_ASSIGN_OR_RETURN(std::unique_ptr<KvStore::View> view, kv_->NewView());
  CN_ASSIGN_OR_RETURN(raft::SnapshotMeta meta,
                      WriteSnapshotData(kv_, view.get(), index, term, config));
  return InstallSnapshot(meta, keep);
}

Status KvRaftStorage::DeleteLogEntries(KvStore* kv, uint64_t from, uint64_t to) {
  // In batches, so writes of other threads never queue behind one huge batch.
  constexpr uint64_t kPerBatch = 4096;
  for (uint64_t at = from; at < to;) {
    KvStore::Batch b;
    for (uint64_t end = std::min(to, at + kPerBatch); at < end; ++at) b.Delete(LogKey(at));
    CN_RETURN_IF_ERROR(kv->Write(b, /*sync=*/false));
  }
  return Status::Ok();
}

Status KvRaftStorage::InstallSnapshot(const raft::SnapshotMeta& meta, uint64_t keep,
                                      LogRange* dropped) {
  if (dropped != nullptr) *dropped = LogRange{};
  bool fills_bare = meta.index == snap_.index && snap_.size == 0 && meta.size > 0;
  if (meta.index <= snap_.index && !fills_bare) return DiscardSnapshotData(meta);
  uint64_t index = meta.index;
  if (index > last_) {
    return Status::InvalidArgument("snapshot at " + std::to_string(index) + " beyond the log");
  }
  uint64_t compact_to = index + 1 > keep ? index + 1 - keep : 1;
  compact_to = std::max(compact_to, first_);
  KvStore::Batch b;
  for (uint64_t n = 0; n * kStoreChunk < snap_.size; ++n) b.Delete(ChunkKey(snap_.index, n));
  b.Put(kSnapKey, raft::EncodeSnapshotMeta(meta));
  uint64_t prev_term = prev_term_;
  if (compact_to > first_) {
    CN_ASSIGN_OR_RETURN(prev_term, Term(compact_to - 1));
    if (dropped != nullptr) {
      *dropped = LogRange{first_, compact_to};
    } else {
      for (uint64_t i = first_; i < compact_to; ++i) b.Delete(LogKey(i));
    }
    b.Put(keys::kLogFirst, BigEndian64(compact_to));
  }
  if (compact_to - 1 != index) {
    b.Put(kPrevTermKey, BigEndian64(prev_term));
  } else {
    b.Delete(kPrevTermKey);
  }
  CN_RETURN_IF_ERROR(kv_->Write(b, /*sync=*/false));
  snap_ = meta;
  first_ = compact_to;
  prev_term_ = prev_term;
  while (!cache_.empty() && cache_.front().index < first_) {
    cache_bytes_ -= cache_.front().data.size();
    cache_.pop_front();
  }
  return Status::Ok();
}

void KvRaftStorage::DropStaged() { staged_ = Staged{}; }

}  // namespace constellation
