#include "node/env/kv_cache.h"

#include <list>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "node/base/log.h"

namespace constellation {
namespace {

// Bookkeeping per entry beside its key and value: the list node, the map slot, the strings.
constexpr size_t kEntryOverheadBytes = 96;

struct Entry {
  std::string key;
  std::string value;
  bool present = false;  // false: the store has no such key
};

struct ViewHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
};
struct ViewEq {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const { return a == b; }
};

}  // namespace

struct CachedKvStore::Impl {
  std::unique_ptr<KvStore> base;
  size_t capacity_bytes;
  size_t max_value_bytes;

  std::mutex write_mu;  // serializes Write: the cache then sees writes in the store's order

  mutable std::mutex mu;  // guards everything below
  std::list<Entry> lru;   // most recently used first
  // Keys are views of the entries' own keys (list nodes do not move).
  std::unordered_map<std::string_view, std::list<Entry>::iterator, ViewHash, ViewEq> index;
  size_t bytes = 0;
  // Odd while a Write is in progress; bumped at its start and its end. A miss installs what it
  // read only if the epoch was even when it missed and has not moved since.
  uint64_t write_epoch = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;

  static size_t Cost(const Entry& e) { return e.key.size() + e.value.size() + kEntryOverheadBytes; }

  using Slot = decltype(index)::iterator;

  // mu held.
  void EraseAt(Slot it) {
    bytes -= Cost(*it->second);
    auto node = it->second;
    index.erase(it);
    lru.erase(node);
  }

  // mu held. Makes `it` say `value` (present) or absent, most recently used.
  void Update(Slot it, std::string_view value, bool present) {
    Entry& e = *it->second;
    if (e.key.size() + value.size() > max_value_bytes) {
      EraseAt(it);
      return;
    }
    bytes -= Cost(e);
    e.value.assign(value);
    e.present = present;
    bytes += Cost(e);
    lru.splice(lru.begin(), lru, it->second);
    Evict();
  }

  // mu held. Adds `key`, which is not cached.
  void Insert(std::string_view key, std::string_view value, bool present) {
    if (key.size() + value.size() > max_value_bytes) return;
    lru.push_front(Entry{std::string(key), std::string(value), present});
    index.emplace(std::string_view(lru.front().key), lru.begin());
    bytes += Cost(lru.front());
    Evict();
  }

  // mu held.
  void Evict() {
    while (bytes > capacity_bytes && !lru.empty()) EraseAt(index.find(lru.back().key));
  }
};

CachedKvStore::CachedKvStore(std::unique_ptr<KvStore> base, size_t capacity_bytes)
    : impl_(std::make_unique<Impl>()) {
  CN_CHECK(base != nullptr);
  impl_->base = std::move(base);
  impl_->capacity_bytes = capacity_bytes;
  impl_->max_value_bytes = capacity_bytes / 64;
}

CachedKvStore::~CachedKvStore() = default;

Status CachedKvStore::Get(std::string_view key, std::string* value) {
  Impl& m = *impl_;
  uint64_t seen;
  {
    std::lock_guard<std::mutex> l(m.mu);
    auto it = m.index.find(key);
    if (it != m.index.end()) {
      ++m.hits;
      m.lru.splice(m.lru.begin(), m.lru, it->second);
      const Entry& e = *it->second;
      if (!e.present) return Status::NotFound("kv get");
      value->assign(e.value);
      return Status::Ok();
    }
    ++m.misses;
    seen = m.write_epoch;
  }
  Status s = m.base->Get(key, value);
  if (!s.ok() && s.code() != Code::kNotFound) return s;
  std::lock_guard<std::mutex> l(m.mu);
  // A write in progress or finished meanwhile may have changed the key around the read (and
  // readers that missed it may already have seen the newer value); a reader that missed at the
  // same time may have installed it already.
  if (m.write_epoch == seen && seen % 2 == 0 && m.index.find(key) == m.index.end()) {
    m.Insert(key, s.ok() ? std::string_view(*value) : std::string_view(), s.ok());
  }
  return s;
}

Status CachedKvStore::Write(const Batch& batch, bool sync) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> w(m.write_mu);
  {
    std::lock_guard<std::mutex> l(m.mu);
    ++m.write_epoch;
  }
  Status s = m.base->Write(batch, sync);
  std::lock_guard<std::mutex> l(m.mu);
  ++m.write_epoch;
  // Only keys already cached are updated: a batch (a snapshot's, the log's) must not wash the read
  // set out of the cache.
  for (const Op& op : batch.ops()) {
    auto it = m.index.find(op.key);
    if (it == m.index.end()) continue;
    if (!s.ok()) {
      m.EraseAt(it);  // whatever the store holds now is read again
    } else {
      m.Update(it, op.is_put ? std::string_view(op.value) : std::string_view(), op.is_put);
    }
  }
  return s;
}

Status CachedKvStore::Sync() { return impl_->base->Sync(); }

Result<std::unique_ptr<KvStore::View>> CachedKvStore::NewView() { return impl_->base->NewView(); }

Status CachedKvStore::Scan(std::string_view start, std::string_view limit,
                           const std::function<bool(std::string_view, std::string_view)>& fn) {
  return impl_->base->Scan(start, limit, fn);
}

KvCacheStats CachedKvStore::stats() const {
  std::lock_guard<std::mutex> l(impl_->mu);
  return {impl_->hits, impl_->misses, impl_->index.size(), impl_->bytes};
}

}  // namespace constellation
