#include "node/dfs/chunk_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <future>
#include <list>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "node/base/fd.h"
#include "node/base/log.h"
#include "node/base/thread_name.h"

namespace constellation {
namespace {

constexpr size_t kStripes = 64;
constexpr size_t kFanout = 256;
constexpr size_t kMaxCacheShards = 16;
// Bound on ids remembered as quarantined (so later reads say Corruption, not NotFound).
constexpr size_t kMaxQuarantinedIds = 1u << 16;
// Files opened at once by one Sync call.
constexpr size_t kSyncBatch = 64;
// Piece size when comparing a stored copy with new bytes in Put.
constexpr size_t kCompareBytes = 256u << 10;
// Piece size when reading a chunk from disk: each piece is hashed while still in the CPU cache.
constexpr size_t kLoadPieceBytes = 512u << 10;
// Chunks waiting for the read-ahead thread; more are not asked for (the reader is far behind).
constexpr size_t kReadAheadQueue = 4;
constexpr char kTmpDir[] = "tmp";
constexpr char kQuarantineDir[] = "quarantine";

size_t Fan(const ChunkId& id) { return static_cast<size_t>(id.hi >> 56); }

std::string FanName(size_t fan) {
  char buf[3];
  std::snprintf(buf, sizeof(buf), "%02zx", fan);
  return buf;
}

// "ab/ab01...": the chunk file's path relative to the store directory.
std::string ChunkPath(const ChunkId& id) {
  std::string hex = id.Hex();
  return hex.substr(0, 2) + "/" + hex;
}

int64_t MtimeMs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1'000'000;
}

struct timespec TimespecFromMs(int64_t ms) {
  struct timespec ts;
  ts.tv_sec = static_cast<time_t>(ms / 1000);
  ts.tv_nsec = static_cast<long>((ms % 1000) * 1'000'000);
  return ts;
}

Status WriteAll(int fd, std::string_view data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write chunk");
    }
    if (n == 0) return Status::NoSpace("write chunk: no progress");
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status FsyncDirAt(int dir_fd, const char* name) {
  Fd fd(::openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return Status::FromErrno(errno, std::string("open dir ") + name);
  if (::fsync(fd.get()) != 0) return Status::FromErrno(errno, std::string("fsync dir ") + name);
  return Status::Ok();
}

}  // namespace

// Idle full-size chunk buffers, reused so that loading a chunk does not page-fault 4 MiB of fresh
// memory every time. Lock-free slots: no lock on the read path. Outlives the store while any
// ChunkBytes it lent is alive.
class ChunkBufferPool {
 public:
  ~ChunkBufferPool() {
    for (auto& slot : slots_) delete[] slot.exchange(nullptr);
  }
  std::unique_ptr<char[]> Take() {
    for (auto& slot : slots_) {
      if (char* p = slot.exchange(nullptr, std::memory_order_acquire)) {
        return std::unique_ptr<char[]>(p);
      }
    }
    return std::make_unique_for_overwrite<char[]>(kMaxChunkBytes);
  }
  void Give(std::unique_ptr<char[]> buf) {
    char* p = buf.release();
    for (auto& slot : slots_) {
      char* expected = nullptr;
      if (slot.compare_exchange_strong(expected, p, std::memory_order_release)) return;
    }
    delete[] p;
  }

 private:
  std::atomic<char*> slots_[kPooledChunkBuffers] = {};
};

// The deleter of every ChunkBytes the store hands out: full-size buffers go back to the pool.
struct ChunkBytesRecycler {
  std::shared_ptr<ChunkBufferPool> pool;
  void operator()(const ChunkBytes* bytes) const {
    ChunkBytes* b = const_cast<ChunkBytes*>(bytes);
    if (b->capacity_ == kMaxChunkBytes && b->data_ != nullptr) pool->Give(std::move(b->data_));
    delete b;
  }
};

namespace {

using ChunkPtr = std::shared_ptr<const ChunkBytes>;
using LoadResult = Result<ChunkPtr>;

// Bytes-bounded LRU of verified chunks, sharded by id so readers of different chunks rarely meet.
// Also collapses concurrent loads of one chunk into one disk read and one hash ("single flight").
class ChunkCache {
 public:
  explicit ChunkCache(uint64_t max_bytes) {
    size_t n = static_cast<size_t>(
        std::clamp<uint64_t>(max_bytes / (4ull * kMaxChunkBytes), 1, kMaxCacheShards));
    for (size_t i = 0; i < n; ++i) {
      shards_.push_back(std::make_unique<Shard>());
      shards_.back()->capacity = max_bytes / n;
    }
  }

  // Returns the cached chunk, or loads it with `load` (once, however many threads ask at once).
  LoadResult Get(const ChunkId& id, const std::function<LoadResult()>& load, bool* hit) {
    Shard& s = ShardOf(id);
    std::promise<LoadResult> promise;
    {
      std::unique_lock<std::mutex> l(s.mu);
      auto it = s.map.find(id);
      if (it != s.map.end()) {
        s.lru.splice(s.lru.begin(), s.lru, it->second);
        *hit = true;
        return it->second->second;
      }
      auto loading = s.loading.find(id);
      if (loading != s.loading.end()) {
        std::shared_future<LoadResult> f = loading->second;
        l.unlock();
        *hit = false;
        return f.get();
      }
      s.loading.emplace(id, promise.get_future().share());
    }
    *hit = false;
    LoadResult r = load();
    {
      std::lock_guard<std::mutex> l(s.mu);
      s.loading.erase(id);
      if (r.ok()) InsertLocked(&s, id, *r);
    }
    promise.set_value(r);
    return r;
  }

  ChunkPtr Peek(const ChunkId& id) {
    Shard& s = ShardOf(id);
    std::lock_guard<std::mutex> l(s.mu);
    auto it = s.map.find(id);
    return it == s.map.end() ? nullptr : it->second->second;
  }

  void Erase(const ChunkId& id) {
    Shard& s = ShardOf(id);
    std::lock_guard<std::mutex> l(s.mu);
    auto it = s.map.find(id);
    if (it == s.map.end()) return;
    s.bytes -= it->second->second->capacity();
    s.lru.erase(it->second);
    s.map.erase(it);
  }

  uint64_t bytes() const {
    uint64_t total = 0;
    for (const auto& s : shards_) {
      std::lock_guard<std::mutex> l(s->mu);
      total += s->bytes;
    }
    return total;
  }

 private:
  using Lru = std::list<std::pair<ChunkId, ChunkPtr>>;
  struct Shard {
    mutable std::mutex mu;
    Lru lru;  // most recently used first
    std::unordered_map<ChunkId, Lru::iterator, ChunkIdHash> map;
    std::unordered_map<ChunkId, std::shared_future<LoadResult>, ChunkIdHash> loading;
    uint64_t bytes = 0;
    uint64_t capacity = 0;
  };

  Shard& ShardOf(const ChunkId& id) { return *shards_[(id.lo >> 8) % shards_.size()]; }

  static void InsertLocked(Shard* s, const ChunkId& id, const ChunkPtr& data) {
    if (data->capacity() > s->capacity || s->map.count(id)) return;
    while (s->bytes + data->capacity() > s->capacity) {
      s->bytes -= s->lru.back().second->capacity();
      s->map.erase(s->lru.back().first);
      s->lru.pop_back();
    }
    s->lru.emplace_front(id, data);
    s->map.emplace(id, s->lru.begin());
    s->bytes += data->capacity();
  }

  std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace

struct ChunkStore::Impl {
  std::string dir;
  ChunkStoreOptions options;
  int dir_fd = -1;
  int lock_fd = -1;
  std::mutex stripes[kStripes];
  // Fan-out directory d needs an fsync when created > synced: `created` counts renames into it.
  struct DirSync {
    std::mutex mu;
    std::atomic<uint64_t> created{0};
    uint64_t synced = 0;  // guarded by mu
  };
  DirSync dirs[kFanout];
  std::unique_ptr<ChunkCache> cache;
  std::shared_ptr<ChunkBufferPool> pool = std::make_shared<ChunkBufferPool>();
  std::atomic<uint64_t> tmp_seq{0};
  std::atomic<bool> direct_io_works{true};  // false once the file system refused O_DIRECT

  std::mutex quarantined_mu;
  std::unordered_set<ChunkId, ChunkIdHash> quarantined;

  std::atomic<uint64_t> chunks{0}, bytes{0}, corrupt_events{0}, quarantined_files{0}, cache_hits{0},
      cache_misses{0}, puts{0}, puts_existing{0}, no_space{0};

  // Read-ahead: one thread, started by the first Prefetch, loads queued chunks into the cache, so
  // that a sequential reader finds the next chunk already read and verified (on the other core)
  // instead of waiting for the disk and the hash.
  std::mutex ra_mu;
  std::condition_variable ra_cv;
  std::deque<ChunkId> ra_queue;  // guarded by ra_mu; at most kReadAheadQueue
  bool ra_stop = false;          // guarded by ra_mu
  bool ra_busy = false;          // guarded by ra_mu: a load is under way
  std::condition_variable ra_idle_cv;
  std::thread ra_thread;  // started under ra_mu

  ~Impl() {
    {
      std::lock_guard<std::mutex> l(ra_mu);
      ra_stop = true;
    }
    ra_cv.notify_all();
    if (ra_thread.joinable()) ra_thread.join();
    if (lock_fd >= 0) ::close(lock_fd);
    if (dir_fd >= 0) ::close(dir_fd);
  }

  std::mutex& StripeOf(const ChunkId& id) { return stripes[(id.lo ^ id.hi) % kStripes]; }

  int64_t NowMs() {
    if (options.clock != nullptr) return options.clock->NowUnixMs();
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1'000'000;
  }

  // Sets the mtime (the GC grace clock) of the file open as `fd`, or of `path` when fd < 0.
  Status SetMtime(int fd, const std::string& path) {
    struct timespec times[2];
    times[0].tv_sec = 0;
    times[0].tv_nsec = UTIME_OMIT;
    times[1] = TimespecFromMs(NowMs());
    int rc = fd >= 0 ? ::futimens(fd, times) : ::utimensat(dir_fd, path.c_str(), times, 0);
    if (rc != 0) return Status::FromErrno(errno, "set mtime of chunk " + path);
    return Status::Ok();
  }

  bool IsQuarantined(const ChunkId& id) {
    std::lock_guard<std::mutex> l(quarantined_mu);
    return quarantined.count(id) > 0;
  }
  void ForgetQuarantined(const ChunkId& id) {
    std::lock_guard<std::mutex> l(quarantined_mu);
    quarantined.erase(id);
  }

  // Moves the chunk file to quarantine/, if it is still the file `st` describes (another thread
  // may have quarantined or replaced it already). Caller holds the chunk's stripe lock.
  void QuarantineLocked(const ChunkId& id, const struct stat& st, const std::string& why) {
    std::string path = ChunkPath(id);
    struct stat now;
    if (::fstatat(dir_fd, path.c_str(), &now, 0) != 0 || now.st_ino != st.st_ino ||
        now.st_dev != st.st_dev) {
      return;
    }
    corrupt_events.fetch_add(1, std::memory_order_relaxed);
    std::string dest = std::string(kQuarantineDir) + "/" + id.Hex() + "." +
                       std::to_string(NowMs()) + "." +
                       std::to_string(tmp_seq.fetch_add(1, std::memory_order_relaxed));
    if (::renameat(dir_fd, path.c_str(), dir_fd, dest.c_str()) != 0) {
      int err = errno;
      CN_LOG(Error) << "chunk " << id.Hex() << " is corrupt (" << why
                    << ") and could not be quarantined: " << std::strerror(err) << "; removing it";
      if (::unlinkat(dir_fd, path.c_str(), 0) != 0) return;
    } else {
      CN_LOG(Error) << "chunk " << id.Hex() << " is corrupt (" << why << "); moved to " << dir
                    << "/" << dest;
      quarantined_files.fetch_add(1, std::memory_order_relaxed);
    }
    chunks.fetch_sub(1, std::memory_order_relaxed);
    bytes.fetch_sub(static_cast<uint64_t>(st.st_size), std::memory_order_relaxed);
    std::lock_guard<std::mutex> l(quarantined_mu);
    if (quarantined.size() < kMaxQuarantinedIds) quarantined.insert(id);
  }

  LoadResult ReadChunk(const ChunkId& id) {
    bool hit = false;
    LoadResult r = cache->Get(
        id, [&] { return LoadFromDisk(id); }, &hit);
    (hit ? cache_hits : cache_misses).fetch_add(1, std::memory_order_relaxed);
    return r;
  }

  void ReadAheadLoop() {
    SetThreadName("cn-chunk-ahead");
    std::unique_lock<std::mutex> l(ra_mu);
    for (;;) {
      ra_cv.wait(l, [&] { return ra_stop || !ra_queue.empty(); });
      if (ra_stop) return;
      ChunkId id = ra_queue.front();
      ra_queue.pop_front();
      ra_busy = true;
      l.unlock();
      // Errors are the reader's to see, when it asks for the chunk itself.
      (void)ReadChunk(id);
      l.lock();
      ra_busy = false;
      if (ra_queue.empty()) ra_idle_cv.notify_all();
    }
  }

  // Reads and verifies the stored chunk from disk; quarantines it on a mismatch.
  LoadResult LoadFromDisk(const ChunkId& id) {
    std::string path = ChunkPath(id);
    Fd fd(::openat(dir_fd, path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
      int err = errno;
      if (err == ENOENT) {
        if (IsQuarantined(id)) {
          return Status::Corruption("chunk " + id.Hex() + " failed verification (quarantined)");
        }
        return Status::NotFound("chunk " + id.Hex() + " is not in the store");
      }
      return Status::FromErrno(err, "open chunk " + id.Hex());
    }
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "stat chunk " + id.Hex());
    std::string why;
    std::unique_ptr<char[]> data;
    size_t size = static_cast<size_t>(st.st_size);
    size_t capacity = size > kMaxChunkBytes / 2 ? kMaxChunkBytes : size;
    if (st.st_size <= 0 || static_cast<uint64_t>(st.st_size) > kMaxChunkBytes) {
      why = "size " + std::to_string(st.st_size);
    } else {
      // Cold chunk: have the kernel read the whole file at once rather than window by window.
      (void)::posix_fadvise(fd.get(), 0, st.st_size, POSIX_FADV_WILLNEED);
      data = capacity == kMaxChunkBytes ? pool->Take()
                                        : std::make_unique_for_overwrite<char[]>(capacity);
      std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> hash(XXH3_createState(),
                                                                    &XXH3_freeState);
      if (hash == nullptr) return Status::Internal("out of memory for a hash state");
      XXH3_128bits_reset(hash.get());
      for (size_t off = 0; off < size && why.empty(); off += kLoadPieceBytes) {
        size_t n = std::min(kLoadPieceBytes, size - off);
        if (!PreadAll(fd.get(), data.get() + off, n, static_cast<off_t>(off))) {
          if (errno != 0) return Status::FromErrno(errno, "read chunk " + id.Hex());
          why = "shorter than its size";
        } else {
          XXH3_128bits_update(hash.get(), data.get() + off, n);
        }
      }
      XXH128_hash_t h = XXH3_128bits_digest(hash.get());
      if (why.empty() && (ChunkId{h.high64, h.low64} != id)) why = "hash mismatch";
    }
    if (!why.empty()) {
      {
        std::lock_guard<std::mutex> l(StripeOf(id));
        QuarantineLocked(id, st, why);
      }
      return Status::Corruption("chunk " + id.Hex() + " failed verification: " + why);
    }
    return ChunkPtr(new ChunkBytes(std::move(data), size, capacity), ChunkBytesRecycler{pool});
  }

  enum class Existing { kAbsent, kGood };
  // Under the stripe lock: is a good copy of `data` stored as `id`? A stored copy that differs is
  // quarantined (and then reported absent). A good copy gets its grace period refreshed.
  Result<Existing> CheckExistingLocked(const ChunkId& id, std::string_view data) {
    std::string path = ChunkPath(id);
    if (cache->Peek(id) != nullptr) {
      // Verified bytes in memory: the file was good when read and files never change in place.
      Status s = SetMtime(-1, path);
      if (s.ok()) return Existing::kGood;
      if (s.code() == Code::kNotFound) return Existing::kAbsent;
      return s;
    }
    Fd fd(::openat(dir_fd, path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
      if (errno == ENOENT) return Existing::kAbsent;
      return Status::FromErrno(errno, "open chunk " + id.Hex());
    }
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "stat chunk " + id.Hex());
    std::string why;
    if (static_cast<uint64_t>(st.st_size) != data.size()) {
      why = "size " + std::to_string(st.st_size) + " instead of " + std::to_string(data.size());
    } else {
      std::unique_ptr<char[]> buf = std::make_unique_for_overwrite<char[]>(kCompareBytes);
      for (size_t off = 0; off < data.size() && why.empty(); off += kCompareBytes) {
        size_t n = std::min(kCompareBytes, data.size() - off);
        if (!PreadAll(fd.get(), buf.get(), n, static_cast<off_t>(off))) {
          if (errno != 0) return Status::FromErrno(errno, "read chunk " + id.Hex());
          why = "shorter than its size";
        } else if (std::memcmp(buf.get(), data.data() + off, n) != 0) {
          why = "stored bytes differ from their hash";
        }
      }
    }
    if (why.empty()) {
      CN_RETURN_IF_ERROR(SetMtime(fd.get(), path));
      return Existing::kGood;
    }
    QuarantineLocked(id, st, why);
    return Existing::kAbsent;
  }

  // fdatasync failed for this chunk's file: its bytes may never reach the disk while the page
  // cache still shows them, so remove it (a retried Put then writes a fresh copy).
  void DropAfterSyncFailure(const ChunkId& id, const struct stat& st) {
    std::lock_guard<std::mutex> l(StripeOf(id));
    std::string path = ChunkPath(id);
    struct stat now;
    if (::fstatat(dir_fd, path.c_str(), &now, 0) != 0 || now.st_ino != st.st_ino) return;
    if (::unlinkat(dir_fd, path.c_str(), 0) == 0) {
      chunks.fetch_sub(1, std::memory_order_relaxed);
      bytes.fetch_sub(static_cast<uint64_t>(st.st_size), std::memory_order_relaxed);
    }
    cache->Erase(id);
  }

  Status SyncDir(size_t fan) {
    DirSync& d = dirs[fan];
    uint64_t target = d.created.load(std::memory_order_acquire);
    std::lock_guard<std::mutex> l(d.mu);
    if (d.synced >= target) return Status::Ok();
    uint64_t upto = d.created.load(std::memory_order_acquire);
    CN_RETURN_IF_ERROR(FsyncDirAt(dir_fd, FanName(fan).c_str()));
    d.synced = upto;
    return Status::Ok();
  }

  // Calls fn(fan, name, stat) for each chunk file whose name is a valid id in the right fan-out
  // directory, until fn returns false.
  Status ForEachFile(const std::function<bool(const ChunkId&, const struct stat&)>& fn) {
    for (size_t fan = 0; fan < kFanout; ++fan) {
      std::string fan_name = FanName(fan);
      int fd = ::openat(dir_fd, fan_name.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (fd < 0) return Status::FromErrno(errno, "open " + dir + "/" + fan_name);
      DIR* d = ::fdopendir(fd);
      if (d == nullptr) {
        int err = errno;
        ::close(fd);
        return Status::FromErrno(err, "opendir " + fan_name);
      }
      bool go_on = true;
      errno = 0;
      while (go_on) {
        struct dirent* e = ::readdir(d);
        if (e == nullptr) break;
        Result<ChunkId> id = ChunkId::FromHex(e->d_name);
        if (!id.ok() || Fan(*id) != fan) continue;
        struct stat st;
        if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
        if (!S_ISREG(st.st_mode)) continue;
        go_on = fn(*id, st);
      }
      ::closedir(d);
      if (!go_on) break;
    }
    return Status::Ok();
  }
};

ChunkStore::ChunkStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChunkStore::~ChunkStore() = default;

Result<std::unique_ptr<ChunkStore>> ChunkStore::Open(const std::string& dir,
                                                     const ChunkStoreOptions& options) {
  if (options.max_cache_bytes > kMaxChunkStoreCacheBytes) {
    return Status::InvalidArgument("chunk store: max_cache_bytes above " +
                                   std::to_string(kMaxChunkStoreCacheBytes));
  }
  if (options.grace_ms < 1) return Status::InvalidArgument("chunk store: grace_ms must be >= 1");
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->options = options;
  impl->cache = std::make_unique<ChunkCache>(options.max_cache_bytes);

  bool created_root = ::mkdir(dir.c_str(), 0700) == 0;
  if (!created_root && errno != EEXIST) return Status::FromErrno(errno, "mkdir " + dir);
  impl->dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (impl->dir_fd < 0) return Status::FromErrno(errno, "open " + dir);
  impl->lock_fd = ::openat(impl->dir_fd, "LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (impl->lock_fd < 0) return Status::FromErrno(errno, "open " + dir + "/LOCK");
  if (::flock(impl->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) return Status::Busy("chunk store " + dir + " is open elsewhere");
    return Status::FromErrno(errno, "lock " + dir + "/LOCK");
  }

  std::vector<std::string> subdirs = {kTmpDir, kQuarantineDir};
  for (size_t fan = 0; fan < kFanout; ++fan) subdirs.push_back(FanName(fan));
  bool created_any = created_root;
  for (const std::string& sub : subdirs) {
    if (::mkdirat(impl->dir_fd, sub.c_str(), 0700) == 0) {
      created_any = true;
    } else if (errno != EEXIST) {
      return Status::FromErrno(errno, "mkdir " + dir + "/" + sub);
    }
  }
  if (created_any) {
    // The fan-out directories must be durable before any chunk in them can be.
    if (::fsync(impl->dir_fd) != 0) return Status::FromErrno(errno, "fsync " + dir);
    if (created_root) {
      std::string parent = dir.find('/') == std::string::npos
                               ? "."
                               : dir.substr(0, std::max<size_t>(1, dir.rfind('/')));
      CN_RETURN_IF_ERROR(FsyncDirAt(AT_FDCWD, parent.c_str()));
    }
  }

  // Leftovers of Puts that crashed before their rename: never referenced, never durable.
  {
    int fd = ::openat(impl->dir_fd, kTmpDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno(errno, "open " + dir + "/tmp");
    DIR* d = ::fdopendir(fd);
    if (d == nullptr) {
      int err = errno;
      ::close(fd);
      return Status::FromErrno(err, "opendir " + dir + "/tmp");
    }
    size_t removed = 0;
    while (struct dirent* e = ::readdir(d)) {
      if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
      if (::unlinkat(::dirfd(d), e->d_name, 0) == 0) ++removed;
    }
    ::closedir(d);
    if (removed > 0) {
      CN_LOG(Info) << "chunk store " << dir << ": removed " << removed
                   << " unfinished chunk file(s) from tmp/";
    }
  }

  uint64_t chunks = 0, bytes = 0;
  CN_RETURN_IF_ERROR(impl->ForEachFile([&](const ChunkId&, const struct stat& st) {
    ++chunks;
    bytes += static_cast<uint64_t>(st.st_size);
    return true;
  }));
  impl->chunks = chunks;
  impl->bytes = bytes;
  return std::unique_ptr<ChunkStore>(new ChunkStore(std::move(impl)));
}

Result<ChunkId> ChunkStore::Put(std::string_view data) {
  Impl& m = *impl_;
  if (data.empty()) return Status::InvalidArgument("empty chunk");
  if (data.size() > kMaxChunkBytes) {
    return Status::TooLarge("chunk of " + std::to_string(data.size()) + " bytes exceeds " +
                            std::to_string(kMaxChunkBytes));
  }
  m.puts.fetch_add(1, std::memory_order_relaxed);
  ChunkId id = HashChunk(data);
  std::string path = ChunkPath(id);
  {
    std::lock_guard<std::mutex> l(m.StripeOf(id));
    CN_ASSIGN_OR_RETURN(Impl::Existing existing, m.CheckExistingLocked(id, data));
    if (existing == Impl::Existing::kGood) {
      m.puts_existing.fetch_add(1, std::memory_order_relaxed);
      return id;
    }
  }

  if (m.options.min_free_bytes > 0) {
    struct statvfs vfs;
    if (::fstatvfs(m.dir_fd, &vfs) != 0) return Status::FromErrno(errno, "statvfs " + m.dir);
    uint64_t avail = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    if (avail < data.size() + m.options.min_free_bytes) {
      m.no_space.fetch_add(1, std::memory_order_relaxed);
      return Status::NoSpace("chunk store " + m.dir + ": " + std::to_string(avail) +
                             " bytes free, keeping " + std::to_string(m.options.min_free_bytes));
    }
  }

  // Write the bytes under a unique temporary name without any lock held.
  std::string tmp = std::string(kTmpDir) + "/" + id.Hex() + "." +
                    std::to_string(m.tmp_seq.fetch_add(1, std::memory_order_relaxed));
  Status written = [&]() -> Status {
    constexpr uintptr_t kAlign = 4096;
    bool direct =
        m.options.direct_io_for_aligned_puts && m.direct_io_works.load(std::memory_order_relaxed) &&
        reinterpret_cast<uintptr_t>(data.data()) % kAlign == 0 && data.size() % kAlign == 0;
    int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
    Fd fd(::openat(m.dir_fd, tmp.c_str(), flags | (direct ? O_DIRECT : 0), 0600));
    if (fd.get() < 0 && direct && errno == EINVAL) {
      // This file system has no O_DIRECT: stop trying.
      m.direct_io_works.store(false, std::memory_order_relaxed);
      direct = false;
      fd = Fd(::openat(m.dir_fd, tmp.c_str(), flags, 0600));
    }
    if (fd.get() < 0) return Status::FromErrno(errno, "create " + m.dir + "/" + tmp);
    CN_RETURN_IF_ERROR(WriteAll(fd.get(), data));
    CN_RETURN_IF_ERROR(m.SetMtime(fd.get(), tmp));
    if (!direct && m.options.start_writeback_on_put) {
      // Only a hint: errors surface at Sync's fdatasync.
      (void)::sync_file_range(fd.get(), 0, 0, SYNC_FILE_RANGE_WRITE);
    }
    if (fd.Close() != 0) return Status::FromErrno(errno, "close " + m.dir + "/" + tmp);
    return Status::Ok();
  }();
  if (!written.ok()) {
    ::unlinkat(m.dir_fd, tmp.c_str(), 0);
    if (written.code() == Code::kNoSpace) m.no_space.fetch_add(1, std::memory_order_relaxed);
    return written;
  }

  std::lock_guard<std::mutex> l(m.StripeOf(id));
  int rc = ::renameat2(m.dir_fd, tmp.c_str(), m.dir_fd, path.c_str(), RENAME_NOREPLACE);
  if (rc != 0 && (errno == EINVAL || errno == ENOSYS)) {
    // A file system without RENAME_NOREPLACE: link(2) also refuses to replace.
    rc = ::linkat(m.dir_fd, tmp.c_str(), m.dir_fd, path.c_str(), 0);
    if (rc == 0) ::unlinkat(m.dir_fd, tmp.c_str(), 0);
  }
  if (rc != 0) {
    int err = errno;
    ::unlinkat(m.dir_fd, tmp.c_str(), 0);
    if (err != EEXIST) {
      if (err == ENOSPC || err == EDQUOT) m.no_space.fetch_add(1, std::memory_order_relaxed);
      return Status::FromErrno(err, "rename chunk into " + m.dir + "/" + path);
    }
    // A concurrent Put of the same bytes won the race; its copy came from memory too.
    m.puts_existing.fetch_add(1, std::memory_order_relaxed);
    CN_RETURN_IF_ERROR(m.SetMtime(-1, path));
    return id;
  }
  m.dirs[Fan(id)].created.fetch_add(1, std::memory_order_release);
  m.chunks.fetch_add(1, std::memory_order_relaxed);
  m.bytes.fetch_add(data.size(), std::memory_order_relaxed);
  m.ForgetQuarantined(id);
  return id;
}

Status ChunkStore::Sync(std::span<const ChunkId> ids) {
  Impl& m = *impl_;
  Status first_error;
  std::vector<bool> fans(kFanout, false);
  for (size_t begin = 0; begin < ids.size(); begin += kSyncBatch) {
    size_t end = std::min(ids.size(), begin + kSyncBatch);
    std::vector<std::unique_ptr<Fd>> fds;
    fds.reserve(end - begin);
    // Start write-back of every file first, then wait for each: the disk sees them together.
    for (size_t i = begin; i < end; ++i) {
      auto fd =
          std::make_unique<Fd>(::openat(m.dir_fd, ChunkPath(ids[i]).c_str(), O_RDONLY | O_CLOEXEC));
      if (fd->get() < 0) {
        if (first_error.ok()) first_error = Status::FromErrno(errno, "sync chunk " + ids[i].Hex());
      } else {
        (void)::sync_file_range(fd->get(), 0, 0, SYNC_FILE_RANGE_WRITE);
        fans[Fan(ids[i])] = true;
      }
      fds.push_back(std::move(fd));
    }
    for (size_t i = begin; i < end; ++i) {
      int fd = fds[i - begin]->get();
      if (fd < 0) continue;
      if (::fdatasync(fd) != 0) {
        int err = errno;
        CN_LOG(Error) << "fdatasync of chunk " << ids[i].Hex() << " failed: " << std::strerror(err)
                      << "; dropping the file";
        if (first_error.ok()) first_error = Status::FromErrno(err, "sync chunk " + ids[i].Hex());
        struct stat st;
        if (::fstat(fd, &st) == 0) m.DropAfterSyncFailure(ids[i], st);
      }
    }
  }
  for (size_t fan = 0; fan < kFanout; ++fan) {
    if (!fans[fan]) continue;
    Status s = m.SyncDir(fan);
    if (!s.ok() && first_error.ok()) first_error = s;
  }
  return first_error;
}

Result<std::shared_ptr<const ChunkBytes>> ChunkStore::ReadChunk(const ChunkId& id) {
  return impl_->ReadChunk(id);
}

Result<size_t> ChunkStore::Read(const ChunkId& id, uint64_t offset, size_t length, char* buf) {
  CN_ASSIGN_OR_RETURN(std::shared_ptr<const ChunkBytes> chunk, ReadChunk(id));
  if (offset > chunk->size()) {
    return Status::OutOfRange("read at " + std::to_string(offset) + " past the end of chunk " +
                              id.Hex() + " (" + std::to_string(chunk->size()) + " bytes)");
  }
  size_t n = std::min<uint64_t>(length, chunk->size() - offset);
  std::memcpy(buf, chunk->view().data() + offset, n);
  return n;
}

void ChunkStore::Prefetch(const ChunkId& id) {
  Impl& m = *impl_;
  if (m.options.max_cache_bytes == 0) {
    // Nothing to load into: at least have the kernel read the file.
    Fd fd(::openat(m.dir_fd, ChunkPath(id).c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() >= 0) (void)::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_WILLNEED);
    return;
  }
  if (m.cache->Peek(id) != nullptr) return;
  {
    std::lock_guard<std::mutex> l(m.ra_mu);
    if (m.ra_stop || m.ra_queue.size() >= kReadAheadQueue ||
        std::find(m.ra_queue.begin(), m.ra_queue.end(), id) != m.ra_queue.end()) {
      return;
    }
    m.ra_queue.push_back(id);
    if (!m.ra_thread.joinable()) m.ra_thread = std::thread([&m] { m.ReadAheadLoop(); });
  }
  m.ra_cv.notify_one();
}

void ChunkStore::DrainReadAhead() {
  Impl& m = *impl_;
  std::unique_lock<std::mutex> l(m.ra_mu);
  m.ra_idle_cv.wait(l, [&] { return m.ra_stop || (m.ra_queue.empty() && !m.ra_busy); });
}

Status ChunkStore::Verify(const ChunkId& id) {
  Impl& m = *impl_;
  LoadResult r = m.LoadFromDisk(id);
  if (r.ok() || r.status().code() != Code::kCorruption) return r.status();
  // The stored copy went bad after we verified it into the cache: restore it from memory.
  ChunkPtr good = m.cache->Peek(id);
  if (good != nullptr) {
    Result<ChunkId> put = Put(good->view());
    if (put.ok()) {
      CN_LOG(Warning) << "chunk " << id.Hex() << " rewritten from its verified cached copy";
    }
  }
  return r.status();
}

bool ChunkStore::Has(const ChunkId& id) {
  struct stat st;
  return ::fstatat(impl_->dir_fd, ChunkPath(id).c_str(), &st, 0) == 0;
}

Status ChunkStore::Touch(const ChunkId& id) {
  std::lock_guard<std::mutex> l(impl_->StripeOf(id));
  return impl_->SetMtime(-1, ChunkPath(id));
}

Status ChunkStore::Delete(const ChunkId& id) {
  Impl& m = *impl_;
  std::string path = ChunkPath(id);
  {
    std::lock_guard<std::mutex> l(m.StripeOf(id));
    m.ForgetQuarantined(id);
    struct stat st;
    if (::fstatat(m.dir_fd, path.c_str(), &st, 0) != 0) {
      return Status::FromErrno(errno, "delete chunk " + id.Hex());
    }
    if (::unlinkat(m.dir_fd, path.c_str(), 0) != 0) {
      return Status::FromErrno(errno, "delete chunk " + id.Hex());
    }
    m.chunks.fetch_sub(1, std::memory_order_relaxed);
    m.bytes.fetch_sub(static_cast<uint64_t>(st.st_size), std::memory_order_relaxed);
  }
  m.cache->Erase(id);
  return Status::Ok();
}

Status ChunkStore::List(const std::function<bool(const ChunkInfo&)>& fn) {
  return impl_->ForEachFile([&](const ChunkId& id, const struct stat& st) {
    return fn(ChunkInfo{id, static_cast<uint64_t>(st.st_size), MtimeMs(st)});
  });
}

Result<ChunkStore::CollectResult> ChunkStore::Collect(
    const std::function<bool(const ChunkId&)>& referenced) {
  Impl& m = *impl_;
  CollectResult result;
  const int64_t grace_ms = m.options.grace_ms;
  CN_RETURN_IF_ERROR(m.ForEachFile([&](const ChunkId& id, const struct stat& listed) {
    ++result.examined;
    // `before` precedes the referenced() call. If the chunk's newest Put/Touch was at least
    // grace_ms before it, every commit referencing the chunk (due within grace_ms of a Put)
    // happened before it too, so referenced() saw it. The age is re-checked against the fresh
    // mtime under the lock Put and Touch hold while refreshing it.
    const int64_t before = m.NowMs();
    if (before - MtimeMs(listed) < grace_ms) return true;
    if (referenced(id)) return true;
    std::string path = ChunkPath(id);
    {
      std::lock_guard<std::mutex> l(m.StripeOf(id));
      struct stat st;
      if (::fstatat(m.dir_fd, path.c_str(), &st, 0) != 0) return true;
      if (before - MtimeMs(st) < grace_ms) return true;
      if (::unlinkat(m.dir_fd, path.c_str(), 0) != 0) return true;
      m.chunks.fetch_sub(1, std::memory_order_relaxed);
      m.bytes.fetch_sub(static_cast<uint64_t>(st.st_size), std::memory_order_relaxed);
      ++result.deleted;
      result.bytes_freed += static_cast<uint64_t>(st.st_size);
    }
    m.cache->Erase(id);
    return true;
  }));
  return result;
}

ChunkStoreStats ChunkStore::Stats() const {
  const Impl& m = *impl_;
  ChunkStoreStats s;
  s.chunks = m.chunks.load(std::memory_order_relaxed);
  s.bytes = m.bytes.load(std::memory_order_relaxed);
  s.corrupt_events = m.corrupt_events.load(std::memory_order_relaxed);
  s.quarantined = m.quarantined_files.load(std::memory_order_relaxed);
  s.cache_hits = m.cache_hits.load(std::memory_order_relaxed);
  s.cache_misses = m.cache_misses.load(std::memory_order_relaxed);
  s.cache_bytes = m.cache->bytes();
  s.puts = m.puts.load(std::memory_order_relaxed);
  s.puts_existing = m.puts_existing.load(std::memory_order_relaxed);
  s.no_space = m.no_space.load(std::memory_order_relaxed);
  return s;
}

const std::string& ChunkStore::dir() const { return impl_->dir; }

}  // namespace constellation
