// ChunkStore: the node's local, content-addressed store of DFS chunks (DESIGN.md §4).
//
// On disk, under the store's directory:
//   LOCK               flock'ed for the store's lifetime: a second opener gets Busy
//   <aa>/<id hex>      one file per chunk, holding exactly its bytes; <aa> = first 2 hex chars
//   tmp/               chunks being written; whatever is here at Open is a crashed Put: removed
//   quarantine/        chunk files that failed verification, kept for inspection, never read
//
// Contracts:
// - Put writes to tmp/ and renames into place, so a chunk file under its final name is always
//   complete (a crash leaves at worst a tmp file). Put does NOT make the chunk durable: Sync(ids)
//   does (fdatasync of each file, then fsync of each fan-out directory that got new entries), so a
//   caller groups every chunk of one fsync(2)/close(2) into one Sync. Acknowledge a write only
//   after Sync returned OK (and the metadata command committed).
// - Every chunk is verified (re-hashed) when it is first read from disk; verified chunks are kept
//   in a bytes-bounded LRU cache, so reading a chunk piecewise hashes it once. Besides the cache,
//   up to kPooledChunkBuffers idle 4 MiB buffers are kept for reuse (no page faults per load). A
//   mismatch returns Corruption (the FUSE front's EIO), never bytes; it is logged once, counted,
//   the file moves to quarantine/, and later reads of that id return Corruption until a good copy
//   is Put again. Cached bytes are trusted; a stored copy that rots after it was cached is found
//   by Verify (the scrubber's call), which quarantines it and rewrites it from the cache.
// - Chunk files are separate files, so the kernel's readahead stops at each one: a sequential
//   reader should Prefetch the next chunk while reading the current one (the benchmark shows the
//   difference).
// - Aligned Puts may bypass the page cache (direct_io_for_aligned_puts); a later read of such a
//   chunk reads the disk.
// - Put of a chunk that is already present compares the stored bytes with the new ones (unless
//   the chunk is in the verified cache) and replaces a stored copy that differs (counted as
//   corruption), so a Put followed by Sync always leaves good bytes on disk.
// - Garbage collection by grace period: every Put (new or not) and Touch sets the chunk file's
//   mtime to the store clock's now. Collect deletes chunks that `referenced` says are unreferenced
//   AND whose mtime is older than grace_ms, checking the mtime and unlinking under the chunk's
//   lock, so a chunk Put (or Touched) less than grace_ms ago is never collected. The caller must
//   therefore commit the metadata that references a chunk within grace_ms of its Put, or Touch
//   the chunk again.
// - Space: a write that hits ENOSPC/EDQUOT (or would leave less than min_free_bytes on the file
//   system) returns NoSpace and leaves nothing behind; the store keeps working and Puts succeed
//   again once space is freed. Keeping min_free_bytes > 0 leaves room for the metadata store on
//   the same file system, so deletes (which free space) still commit.
// - Chunk ids are the only names: everything here is id-based so a remote fetch/push (later
//   issues) is a Read/ReadChunk on one node and a Put on another.
//
// Thread-safety: every method is safe to call from many threads at once. There is no global lock
// on the data path: per-id striped mutexes (held around the rename/unlink/touch steps and the
// compare of an already stored copy, never while a new chunk is written or a chunk is read),
// sharded cache locks, per-fan-out-directory sync locks, atomic counters, a lock-free buffer pool.
#ifndef CONSTELLATION_NODE_DFS_CHUNK_STORE_H_
#define CONSTELLATION_NODE_DFS_CHUNK_STORE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "node/base/status.h"
#include "node/dfs/chunk.h"
#include "node/env/env.h"

namespace constellation {

struct ChunkStoreOptions {
  // Bound on the bytes of verified chunks kept in memory; 0 disables the cache (every Read then
  // re-reads and re-hashes the whole chunk). At most kMaxChunkStoreCacheBytes.
  uint64_t max_cache_bytes = 256ull << 20;
  // Unreferenced chunks younger than this are never collected. At least 1 ms.
  int64_t grace_ms = 60ll * 60 * 1000;
  // Put fails with NoSpace rather than leave less than this free on the file system.
  uint64_t min_free_bytes = 0;
  // Put asks the kernel to start writing a chunk back right away (sync_file_range), so the later
  // Sync mostly waits for I/O already in flight instead of starting all of it at once.
  bool start_writeback_on_put = true;
  // Put writes data that starts at a 4096-byte aligned address and is a multiple of 4096 bytes
  // long (full chunks from aligned buffers) with O_DIRECT: no copy into the page cache, which was
  // half of the daemon's CPU time when writing. Falls back to buffered I/O where the file system
  // refuses O_DIRECT (tmpfs).
  bool direct_io_for_aligned_puts = true;
  // Source of "now" for mtimes and grace; nullptr = the system clock. Not owned.
  Clock* clock = nullptr;
};
inline constexpr uint64_t kMaxChunkStoreCacheBytes = 64ull << 30;
inline constexpr size_t kPooledChunkBuffers = 8;

struct ChunkStoreStats {
  uint64_t chunks = 0;          // chunk files present
  uint64_t bytes = 0;           // their total size
  uint64_t corrupt_events = 0;  // verification failures seen (reads, Verify, Put of a bad copy)
  uint64_t quarantined = 0;     // files moved to quarantine/ by this process
  uint64_t cache_hits = 0;
  uint64_t cache_misses = 0;  // reads that went to disk (and hashed)
  uint64_t cache_bytes = 0;
  uint64_t puts = 0;
  uint64_t puts_existing = 0;  // Puts that found the chunk already stored
  uint64_t no_space = 0;       // Puts refused for lack of space
};

// What List reports for each chunk.
struct ChunkInfo {
  ChunkId id;
  uint64_t size = 0;
  int64_t mtime_ms = 0;
};

// Verified, immutable bytes of one whole chunk, shared with the cache.
class ChunkBytes {
 public:
  // `capacity` is the allocation's size (>= size), what the cache charges for it.
  ChunkBytes(std::unique_ptr<char[]> data, size_t size, size_t capacity)
      : data_(std::move(data)), size_(size), capacity_(capacity) {}
  std::string_view view() const { return {data_.get(), size_}; }
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }

 private:
  friend struct ChunkBytesRecycler;  // chunk_store.cc: reuses full-size buffers
  std::unique_ptr<char[]> data_;
  size_t size_;
  size_t capacity_;
};

class ChunkStore {
 public:
  // Creates `dir` (its parent must exist) and the layout if missing, takes LOCK (Busy if another
  // store has it), removes leftover tmp files and counts the stored chunks (one stat per chunk).
  static Result<std::unique_ptr<ChunkStore>> Open(const std::string& dir,
                                                  const ChunkStoreOptions& options = {});
  ~ChunkStore();
  ChunkStore(const ChunkStore&) = delete;
  ChunkStore& operator=(const ChunkStore&) = delete;

  // Stores `data` (at most kMaxChunkBytes, else TooLarge) under its hash and returns the id; see
  // the contracts above for durability, idempotence and GC. NoSpace when out of space.
  Result<ChunkId> Put(std::string_view data);
  // Makes every chunk in `ids` durable. NotFound if one is missing; any other error (an fdatasync
  // failure) removes that chunk file so that a retried Put rewrites it: retry Put then Sync.
  Status Sync(std::span<const ChunkId> ids);

  // Copies up to `length` bytes of chunk `id` starting at `offset` into `buf` and returns the
  // count (fewer only at the chunk's end). OutOfRange if offset > chunk size; NotFound if absent;
  // Corruption if the chunk failed verification.
  Result<size_t> Read(const ChunkId& id, uint64_t offset, size_t length, char* buf);
  // The whole verified chunk, shared (no copy when cached). Errors as for Read.
  Result<std::shared_ptr<const ChunkBytes>> ReadChunk(const ChunkId& id);
  // For a sequential reader about to need the chunk: a background thread reads and verifies it
  // into the cache (a later ReadChunk waits for that load rather than starting its own). Never
  // blocks; dropped when the chunk is cached, already queued, or a few loads are waiting; errors
  // are left for the reader's ReadChunk. Without a cache, asks the kernel to read the file.
  void Prefetch(const ChunkId& id);
  // Returns once every chunk Prefetch queued has been loaded (or failed to).
  void DrainReadAhead();
  // Re-reads and re-hashes the stored file, bypassing the cache (the scrubber's check). OK,
  // NotFound, or Corruption (the file is then quarantined as for a read).
  Status Verify(const ChunkId& id);

  bool Has(const ChunkId& id);
  // Refreshes the chunk's grace period. NotFound if absent.
  Status Touch(const ChunkId& id);
  // Removes the chunk now (no grace). NotFound if absent.
  Status Delete(const ChunkId& id);
  // Calls fn for every stored chunk, in no particular order, until fn returns false. Chunks put
  // or deleted meanwhile may or may not be seen. Files with foreign names are skipped.
  Status List(const std::function<bool(const ChunkInfo&)>& fn);

  struct CollectResult {
    uint64_t examined = 0;
    uint64_t deleted = 0;
    uint64_t bytes_freed = 0;
  };
  // Deletes every chunk for which referenced(id) is false and whose last Put/Touch is older than
  // grace_ms. `referenced` is called without any store lock held, from the calling thread.
  Result<CollectResult> Collect(const std::function<bool(const ChunkId&)>& referenced);

  ChunkStoreStats Stats() const;
  const std::string& dir() const;

 private:
  struct Impl;
  explicit ChunkStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace constellation

#endif  // CONSTELLATION_NODE_DFS_CHUNK_STORE_H_
