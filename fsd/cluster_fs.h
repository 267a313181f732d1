// ClusterFs: the file system under cluster/ (DESIGN.md §4), served by the FUSE front.
//
// Metadata operations become FsOps proposed through the node's log (node/dfs/meta.h) and return
// once applied. Like ext4's, they are durable against power loss once fsync(2) of the file or
// directory, or close(2), returns (SyncMetadata): on a one-node cluster an operation is answered
// when its log entry is written and a background sync follows within a few milliseconds
// (Durability::kDeferred); in a cluster, commits are synced on a quorum before the answer. A
// crash of the daemon (kill -9) loses nothing answered either way. File data is cut at 4 MiB
// boundaries into chunks named by their hash (node/dfs/chunk_store.h). Writes collect in memory per
// inode, one buffer per 4 MiB window. A window a writer fills to its end (a sequential writer
// moving on) is sealed: a background thread stores its chunk and makes it durable while the writer
// goes on (write-behind). Flush waits for the sealed windows, stores the remaining dirty ones,
// makes them durable in one group, then commits one SetContent op with the new extent list and
// size. Flush runs on close(2) (FUSE flush), fsync(2), truncation, and when an inode's buffers pass
// a bound, so close and fsync return only when data and metadata are durable; a flush commits all
// of an inode's buffered writes at once.
//
// Policies: atime is never updated by reads (as `noatime`); utimensat sets it. POSIX (fcntl) and
// BSD (flock) locks are state in the log (kLock ops), so they become cluster-wide with
// replication. fallocate supports mode 0 (extends the size; space is not reserved), KEEP_SIZE
// (no-op) and PUNCH_HOLE.
// Thread-safety: all methods are safe from any thread; each inode's data has its own lock.
#ifndef CONSTELLATION_FSD_CLUSTER_FS_H_
#define CONSTELLATION_FSD_CLUSTER_FS_H_

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "fsd/control_tree.h"
#include "node/dfs/chunk_store.h"
#include "node/dfs/meta.h"
#include "node/state/replica.h"
#include "node/state/state_machine.h"

namespace constellation {

struct ClusterFsOptions {
  Replica* replica = nullptr;
  KvStore* kv = nullptr;  // the replica's store, for reads of committed metadata
  ChunkStore* chunks = nullptr;
  std::string node_name;
  // Buffered bytes per inode (dirty windows and sealed ones not yet stored): a write past this
  // waits for the background stores, then flushes if still past it.
  size_t max_dirty_bytes_per_inode = 64u << 20;
  // Threads storing sealed windows in the background (write-behind); 0 stores them at flush.
  int background_threads = 2;
};

class ClusterFs {
 public:
  explicit ClusterFs(ClusterFsOptions options);
  // Stops the background threads; windows not yet stored are dropped (never acknowledged).
  ~ClusterFs();
  ClusterFs(const ClusterFs&) = delete;
  ClusterFs& operator=(const ClusterFs&) = delete;

  // Creates the root if missing and drops open references this node held before a restart.
  Status Start();
  static bool Owns(uint64_t ino) { return ino >= kFsRootIno && (ino & kControlInoBit) == 0; }

  Result<struct stat> Lookup(uint64_t parent, std::string_view name);
  Result<struct stat> GetAttr(uint64_t ino);
  // `to_set` holds FUSE_SET_ATTR_* bits; values come from `st`.
  Result<struct stat> SetAttr(uint64_t ino, int to_set, const struct stat& st, const Caller& c);
  // kMknod (mode carries the type), kMkdir, kSymlink (target).
  Result<struct stat> Make(FsOpType type, uint64_t parent, std::string_view name, mode_t mode,
                           dev_t rdev, std::string_view target, const Caller& c);
  Result<struct stat> Link(uint64_t ino, uint64_t parent, std::string_view name, const Caller& c);
  Status Remove(FsOpType type, uint64_t parent, std::string_view name, const Caller& c);
  // Remove without holding the calling thread while the op commits: `done` gets Remove's verdict
  // exactly once, on the calling thread or on the replica's applying thread (so it must not block
  // on the replica). An inode this node has open or buffered goes through Remove (its open
  // reference is decided under its lock), so `done` may also run on the calling thread after a
  // commit.
  void RemoveAsync(FsOpType type, uint64_t parent, std::string_view name, const Caller& c,
                   std::function<void(Status)> done);
  Status Rename(uint64_t parent, std::string_view name, uint64_t new_parent,
                std::string_view new_name, unsigned flags, const Caller& c);
  Result<std::string> ReadLink(uint64_t ino);

  // Counts an open file (pairs with Release).
  Status Open(uint64_t ino);
  // Flushes, and drops the count; the last release of an unlinked file lets it go.
  Status Release(uint64_t ino, const Caller& c);
  // What Read returns: bytes borrowed from a verified cached chunk (kept alive by `chunk`; no
  // copy, the common case of a read inside one stored chunk) or owned.
  struct ReadBytes {
    std::shared_ptr<const ChunkBytes> chunk;
    size_t offset = 0;  // into chunk
    size_t length = 0;
    std::string owned;
    std::string_view view() const {
      return chunk ? chunk->view().substr(offset, length) : std::string_view(owned);
    }
  };
  Result<ReadBytes> Read(uint64_t ino, uint64_t offset, size_t size);
  Status Write(uint64_t ino, uint64_t offset, std::string_view data, const Caller& c);
  // Then SyncMetadata: close(2) and fsync(2).
  Status Flush(uint64_t ino, const Caller& c);
  // Returns once every operation answered before the call is durable (fsync of a directory).
  Status SyncMetadata();
  Status Fallocate(uint64_t ino, int mode, uint64_t offset, uint64_t length, const Caller& c);

  // Entries after directory offset `offset` (0 = start; "." and ".." first). fn gets each entry and
  // the offset that resumes after it; it returns false when its buffer is full.
  Status ReadDir(
      uint64_t ino, uint64_t offset,
      const std::function<bool(const std::string& name, const struct stat& st, uint64_t next)>& fn);
  Result<struct statvfs> StatFs();

  // Locks, as state in the log. `owner` is the kernel's lock owner. SetLock with a conflict
  // returns Unavailable (EAGAIN). Blocking requests (F_SETLKW, flock without LOCK_NB) retry when
  // a lock changes: lock changes are counted (LockGeneration, taken before a try), and
  // WaitLockChange returns once the count differs from `seen`, WakeLockWaiters was called since
  // the last return, or `timeout_ms` passed.
  Result<struct flock> GetLock(uint64_t ino, uint64_t owner, const struct flock& want);
  Status SetLock(uint64_t ino, uint64_t owner, const struct flock& lock, const Caller& c);
  Status Flock(uint64_t ino, uint64_t owner, int op, const Caller& c);
  // Drops the owner's POSIX locks (close) or its flock lock (last release of the open file).
  Status UnlockOwner(uint64_t ino, uint64_t owner, bool flock);
  uint64_t LockGeneration();
  void WaitLockChange(uint64_t seen, int64_t timeout_ms);
  void WakeLockWaiters();
  // Drops what this node caches of the inodes and names that ops applied from other nodes changed
  // (or of everything, with `reset`, after a snapshot replaced the state): the in-memory committed
  // inodes at once, the kernel's attributes, pages and entries through the invalidation thread.
  // Called on the replica's applying thread; never blocks (invalidations past a bound are dropped
  // and counted). Pass to ReplicaOptions::on_fs_changes.
  void OnFsChanges(const std::vector<FsChange>& changes, bool reset);
  // Where kernel invalidations go (the FUSE front's notify calls); set once the session exists.
  // Until then (and with none) nothing is sent to the kernel.
  struct Invalidator {
    std::function<void(uint64_t ino)> inode;  // attributes and cached pages
    std::function<void(uint64_t parent, const std::string& name)> entry;
  };
  void SetInvalidator(Invalidator invalidator);
  // Whether an open of `ino` may keep the kernel's cached pages (FOPEN_KEEP_CACHE): only inodes
  // this node can find again to invalidate after a snapshot (at most kMaxTrackedInodes).
  bool KeepCache(uint64_t ino);

  // Deletes chunks no committed inode references (and older than the store's grace period, so
  // chunks of writes in flight stay). Returns a one-line summary.
  Result<std::string> CollectGarbage();

  Status SetXattr(uint64_t ino, std::string_view name, std::string_view value, int flags,
                  const Caller& c);
  Result<std::string> GetXattr(uint64_t ino, std::string_view name);
  Result<std::vector<std::string>> ListXattr(uint64_t ino);
  Status RemoveXattr(uint64_t ino, std::string_view name, const Caller& c);

 private:
  struct WindowFree {
    void operator()(char* p) const { std::free(p); }
  };
  struct File;
  struct Window;
  struct Sealed;
  struct Task {
    std::shared_ptr<File> file;
    std::shared_ptr<Sealed> sealed;
  };
  std::shared_ptr<File> GetFile(uint64_t ino, bool create);
  Result<FsResult> Propose(FsOp op, const Caller& c);
  // The command Propose and ProposeAsync commit for `op`.
  static Command FsCommand(FsOp* op, const Caller& c);
  // The caller holds `l` on f->mu; waits for background stores release it meanwhile.
  Status FlushLocked(File* f, std::unique_lock<std::mutex>& l, uint64_t ino, const Caller& c);
  Status LoadBase(File* f, uint64_t ino);
  // The verified chunk holding committed piece `p` (not a hole), shared with the store's cache;
  // Corruption when the store lacks it or it is shorter than the piece.
  Result<std::shared_ptr<const ChunkBytes>> CommittedChunk(const ReadPiece& p);
  // Reads committed bytes [offset, offset + size) into `out`; size must end at or before EOF.
  Status ReadCommitted(const Inode& inode, uint64_t offset, size_t size, char* out);
  // A sequential reader passing a quarter of a window likely reads on: has the chunk store load
  // the next window's chunk in the background.
  void MaybePrefetch(const ExtentList& ext, uint64_t file_size, uint64_t offset, size_t size);
  struct stat ToStat(const Inode& inode, const File* f);
  // Hands a full dirty window to the background threads; false (window stays dirty) when their
  // queue is full.
  bool Seal(const std::shared_ptr<File>& f, uint64_t window);
  // Turns every sealed window in [first, last] back into a dirty one, for a write into it.
  Status Unseal(File* f, std::unique_lock<std::mutex>& l, uint64_t first, uint64_t last);
  // Sparse windows: records bytes written at `in`, merging with the ranges they touch.
  static void AddRange(Window* w, uint32_t in, std::string_view bytes, size_t* memory_bytes);
  // Turns a sparse window into a full one: its committed bytes with the ranges over them.
  Status Densify(File* f, uint64_t window);
  void BackgroundLoop();
  void InvalidateLoop();
  Window NewWindow();
  void Recycle(Window* w);

  const ClusterFsOptions options_;
  std::mutex mu_;  // guards files_
  std::unordered_map<uint64_t, std::shared_ptr<File>> files_;
  // (ino, owner, flock) that took a lock through this node: only those need an unlock on close.
  std::set<std::tuple<uint64_t, uint64_t, bool>> lockers_;  // guarded by mu_
  std::condition_variable lock_changed_;                    // with mu_
  uint64_t lock_generation_ = 0;                            // guarded by mu_
  bool lock_wake_ = false;                                  // guarded by mu_

  // Kernel invalidations for remote changes (see OnFsChanges). Lock order: mu_ before inval_mu_.
  std::mutex inval_call_mu_;  // held while an invalidator runs; before inval_mu_
  std::mutex inval_mu_;
  std::condition_variable inval_cv_;
  Invalidator invalidator_;                                   // guarded by inval_mu_
  std::deque<std::pair<uint64_t, std::string>> inval_queue_;  // (ino, "") or (parent, name)
  bool inval_stop_ = false;                                   // guarded by inval_mu_
  // Locks changed by ops of other nodes: the invalidation thread counts it in lock_generation_
  // (the applier may not take mu_), which wakes blocked lock requests here.
  bool remote_locks_changed_ = false;  // guarded by inval_mu_
  uint64_t inval_dropped_ = 0;         // guarded by inval_mu_
  std::thread inval_thread_;
  std::unordered_set<uint64_t> kernel_cached_;  // inodes opened with KEEP_CACHE, guarded by mu_

  // Write-behind: sealed windows waiting for a background thread. Lock order: File::mu, then
  // bg_mu_ or pool_mu_ (never the other way).
  std::mutex bg_mu_;
  std::condition_variable bg_cv_;
  std::deque<Task> bg_queue_;  // guarded by bg_mu_, at most kMaxQueuedWindows
  bool bg_stop_ = false;       // guarded by bg_mu_
  std::vector<std::thread> bg_threads_;
  std::mutex pool_mu_;
  // Idle 4 MiB window buffers, 4096-aligned (the chunk store writes full ones with O_DIRECT).
  std::vector<std::unique_ptr<char[], WindowFree>> pool_;  // guarded by pool_mu_
};

}  // namespace constellation

#endif  // CONSTELLATION_FSD_CLUSTER_FS_H_
