#include "node/base/log.h"
#include "node/raft/raft.h"

namespace constellation::raft {

MemoryStorage::MemoryStorage(Config initial) { snapshot_.meta.config = std::move(initial); }

Result<uint64_t> MemoryStorage::Term(uint64_t i) const {
  if (i + 1 == offset_) return prev_term_;
  if (i >= offset_ && i <= LastIndex()) return entries_[i - offset_].term;
  return Status::OutOfRange("raft storage: no entry " + std::to_string(i) + " (log is " +
                            std::to_string(offset_) + ".." + std::to_string(LastIndex()) + ")");
}

Status MemoryStorage::Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                              std::vector<Entry>* out) const {
  if (lo < offset_ || lo >= hi || hi > LastIndex() + 1) {
    return Status::OutOfRange("raft storage: entries [" + std::to_string(lo) + ", " +
                              std::to_string(hi) + ") outside the log " + std::to_string(offset_) +
                              ".." + std::to_string(LastIndex()));
  }
  uint64_t bytes = 0;
  for (uint64_t i = lo; i < hi; ++i) {
    const Entry& e = entries_[i - offset_];
    if (i > lo && bytes + e.data.size() > max_bytes) break;
    bytes += e.data.size();
    out->push_back(e);
  }
  return Status::Ok();
}

Status MemoryStorage::SnapshotChunk(uint64_t index, uint64_t offset, size_t max_bytes,
                                    std::string* out) const {
  if (index != snapshot_.meta.index) {
    return Status::NotFound("raft storage: snapshot " + std::to_string(index) + " was replaced");
  }
  if (offset > snapshot_.data.size()) return Status::OutOfRange("raft storage: chunk offset");
  out->assign(snapshot_.data, offset, max_bytes);
  return Status::Ok();
}

void MemoryStorage::Append(const std::vector<Entry>& entries) {
  if (entries.empty()) return;
  uint64_t first = entries.front().index;
  CN_CHECK(first >= offset_ && first <= LastIndex() + 1)
      << "append at " << first << " to log " << offset_ << ".." << LastIndex();
  entries_.resize(first - offset_);
  for (const Entry& e : entries) {
    CN_CHECK(e.index == offset_ + entries_.size()) << "entries not contiguous at " << e.index;
    entries_.push_back(e);
  }
}

void MemoryStorage::ApplySnapshot(Snapshot snapshot) {
  CN_CHECK(snapshot.meta.size == snapshot.data.size());
  offset_ = snapshot.meta.index + 1;
  prev_term_ = snapshot.meta.term;
  entries_.clear();
  snapshot_ = std::move(snapshot);
}

Status MemoryStorage::CreateSnapshot(uint64_t index, const Config& config, std::string data,
                                     uint64_t keep) {
  if (index <= snapshot_.meta.index) {
    return Status::AlreadyExists("raft storage: a snapshot at " +
                                 std::to_string(snapshot_.meta.index) + " is as new");
  }
  if (index > LastIndex()) return Status::OutOfRange("raft storage: snapshot beyond the log");
  Result<uint64_t> term = Term(index);
  if (!term.ok()) return term.status();
  snapshot_.meta = SnapshotMeta{index, *term, config, data.size()};
  snapshot_.data = std::move(data);
  uint64_t new_offset = index + 1 > keep ? index + 1 - keep : 1;
  if (new_offset > offset_) {
    prev_term_ = entries_[new_offset - 1 - offset_].term;
    entries_.erase(entries_.begin(), entries_.begin() + (new_offset - offset_));
    offset_ = new_offset;
  }
  return Status::Ok();
}

}  // namespace constellation::raft
