// A read cache in front of a KvStore: the values (and the absence) of recently read or written
// keys, in memory, so that the hot metadata of a busy node (inodes, directory entries, instance
// records) is answered without a trip through leveldb's memtable, levels and block cache.
//
// Coherence: the cache sees every write, because every write goes through it (the store behind
// must not be written by anyone else). A write updates the cached keys it touches after the store
// accepted it (and forgets them if the store refused it); a read that missed installs what it read
// only if no write was in progress or finished while it was reading, so a value read just before a
// write can never outlive the write, and readers never see a key go back to an older value. Scan
// and Sync pass through.
//
// Bounds: at most `capacity_bytes` of keys and values (plus a fixed cost per entry), least recently
// used dropped first; a value larger than capacity_bytes / 64 is never cached.
//
// Thread-safety: every method is safe from any thread (KvStore's contract). Writes are serialized
// by a lock held across the store's write (the node writes from one thread anyway).
#ifndef CONSTELLATION_NODE_ENV_KV_CACHE_H_
#define CONSTELLATION_NODE_ENV_KV_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "node/env/env.h"

namespace constellation {

struct KvCacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t entries = 0;
  uint64_t bytes = 0;
};

class CachedKvStore : public KvStore {
 public:
  CachedKvStore(std::unique_ptr<KvStore> base, size_t capacity_bytes);
  ~CachedKvStore() override;

  Status Get(std::string_view key, std::string* value) override;
  Status Write(const Batch& batch, bool sync) override;
  Status Sync() override;
  Status Scan(std::string_view start, std::string_view limit,
              const std::function<bool(std::string_view, std::string_view)>& fn) override;
  // The base store's view: every write reaches the base before Write returns.
  Result<std::unique_ptr<View>> NewView() override;

  KvCacheStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace constellation

#endif  // CONSTELLATION_NODE_ENV_KV_CACHE_H_
