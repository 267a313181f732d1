#include "node/raft/raft_log.h"

#include "node/base/log.h"

namespace constellation::raft {

RaftLog::RaftLog(RaftStorage* storage) : storage_(storage), offset_(storage->LastIndex() + 1) {
  committed_ = storage->FirstIndex() - 1;
}

uint64_t RaftLog::FirstIndex() const {
  return snapshot_ ? snapshot_->meta.index + 1 : storage_->FirstIndex();
}

uint64_t RaftLog::LastTerm() const {
  std::optional<uint64_t> t = Term(LastIndex());
  CN_CHECK(t) << "raft log: no term for the last index " << LastIndex();
  return *t;
}

std::optional<uint64_t> RaftLog::Term(uint64_t i) const {
  if (snapshot_ && i == snapshot_->meta.index) return snapshot_->meta.term;
  if (i >= offset_) {
    if (i - offset_ < entries_.size()) return entries_[i - offset_].term;
    return std::nullopt;
  }
  if (snapshot_) return std::nullopt;                       // covered by the pending snapshot
  if (i + 1 < storage_->FirstIndex()) return std::nullopt;  // compacted
  Result<uint64_t> t = storage_->Term(i);
  CN_CHECK(t.ok()) << "raft storage lost entry " << i << ": " << t.status().ToString();
  return *t;
}

uint64_t RaftLog::FindConflict(const std::vector<Entry>& entries) const {
  for (const Entry& e : entries) {
    if (!MatchTerm(e.index, e.term)) return e.index;
  }
  return 0;
}

uint64_t RaftLog::FindConflictByTerm(uint64_t index, uint64_t term) const {
  if (index > LastIndex()) return index;
  for (; index > 0; --index) {
    std::optional<uint64_t> t = Term(index);
    if (!t || *t <= term) return index;
  }
  return 0;
}

void RaftLog::Append(std::vector<Entry> entries) {
  if (entries.empty()) return;
  uint64_t after = entries.front().index - 1;
  CN_CHECK(after >= committed_) << "raft log: overwriting committed entry " << after + 1
                                << " (committed " << committed_ << ")";
  CN_CHECK(after <= LastIndex()) << "raft log: gap appending " << after + 1 << " after "
                                 << LastIndex();
  if (after + 1 == offset_ + entries_.size()) {
    for (Entry& e : entries) entries_.push_back(std::move(e));
  } else if (after + 1 <= offset_) {
    // Replaces stable entries too: storage's stale suffix is overwritten when these persist.
    CN_CHECK(!snapshot_ || after + 1 == offset_) << "raft log: append before a pending snapshot";
    CN_CHECK(after + 1 >= FirstIndex()) << "raft log: append into the compacted prefix";
    offset_ = after + 1;
    entries_ = std::move(entries);
  } else {
    entries_.resize(after + 1 - offset_);
    for (Entry& e : entries) entries_.push_back(std::move(e));
  }
}

Status RaftLog::Entries(uint64_t lo, uint64_t hi, uint64_t max_bytes,
                        std::vector<Entry>* out) const {
  CN_CHECK(lo < hi && hi <= LastIndex() + 1) << "raft log: bad range [" << lo << ", " << hi << ")";
  if (lo < FirstIndex()) return Status::OutOfRange("raft log: compacted");
  uint64_t bytes = 0;
  size_t start = out->size();
  if (lo < offset_) {
    uint64_t shi = std::min(hi, offset_);
    Status s = storage_->Entries(lo, shi, max_bytes, out);
    CN_CHECK(s.ok()) << "raft storage: entries [" << lo << ", " << shi << "): " << s.ToString();
    CN_CHECK(out->size() > start && out->back().index < shi);
    for (size_t i = start; i < out->size(); ++i) bytes += (*out)[i].data.size();
    if (out->back().index + 1 < shi) return Status::Ok();  // size limit reached
    lo = shi;
  }
  for (uint64_t i = lo; i < hi; ++i) {
    const Entry& e = entries_[i - offset_];
    if (out->size() > start && bytes + e.data.size() > max_bytes) break;
    bytes += e.data.size();
    out->push_back(e);
  }
  return Status::Ok();
}

void RaftLog::CommitTo(uint64_t index) {
  if (index <= committed_) return;
  CN_CHECK(index <= LastIndex()) << "raft log: commit " << index << " beyond the last index "
                                 << LastIndex() << " (was acknowledged state lost?)";
  committed_ = index;
}

void RaftLog::SetCommitted(uint64_t index) {
  CN_CHECK(index <= LastIndex());
  committed_ = index;
}

void RaftLog::StableTo(uint64_t index, uint64_t term) {
  if (index < offset_) return;
  std::optional<uint64_t> t = Term(index);
  if (!t || *t != term) return;  // replaced since the Ready was taken
  entries_.erase(entries_.begin(), entries_.begin() + (index + 1 - offset_));
  offset_ = index + 1;
}

void RaftLog::StableSnapTo(uint64_t index) {
  if (snapshot_ && snapshot_->meta.index == index) snapshot_.reset();
}

void RaftLog::Restore(Snapshot snapshot) {
  committed_ = snapshot.meta.index;
  offset_ = snapshot.meta.index + 1;
  entries_.clear();
  snapshot_ = std::move(snapshot);
}

void RaftLog::ResetToStorage() {
  snapshot_.reset();
  entries_.clear();
  offset_ = storage_->LastIndex() + 1;
  if (committed_ > LastIndex()) committed_ = LastIndex();
}

}  // namespace constellation::raft
