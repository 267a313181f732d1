#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/random.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>
#include <random>

#include "leveldb/cache.h"
#include "leveldb/db.h"
#include "leveldb/filter_policy.h"
#include "leveldb/write_batch.h"
#include "node/env/env.h"
#include "node/env/kv_cache.h"
#include "node/env/leveldb_env_internal.h"

extern char** environ;

namespace constellation {
namespace {

// Values kept by the store's read cache (kv_cache.h), beside leveldb's 64 MiB block cache.
constexpr size_t kKvCacheBytes = size_t{32} << 20;

class SystemClock : public Clock {
 public:
  int64_t NowUnixMs() override { return Now(CLOCK_REALTIME); }
  int64_t MonotonicMs() override { return Now(CLOCK_MONOTONIC); }

 private:
  static int64_t Now(clockid_t id) {
    timespec ts;
    clock_gettime(id, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
  }
};

class SystemRandom : public Random {
 public:
  SystemRandom() {
    uint64_t seed = 0;
    if (getrandom(&seed, sizeof seed, 0) != sizeof seed)
      seed = static_cast<uint64_t>(time(nullptr));
    rng_.seed(seed);
  }
  uint64_t Next() override {
    std::lock_guard<std::mutex> l(mu_);
    return rng_();
  }

 private:
  std::mutex mu_;
  std::mt19937_64 rng_;
};

// leveldb reports a LOCK file held by another opener (another process, or another DB object in
// this one) as "IO error: lock <dir>/LOCK: ...". Other failures on the LOCK file (e.g. the path is
// not a directory, or no space to create it) name the file without the "lock " prefix and are not
// contention.
bool IsLockHeld(const std::string& m) { return m.find("IO error: lock ") != std::string::npos; }

Status FromLevelDb(const leveldb::Status& s, const std::string& what) {
  if (s.ok()) return Status::Ok();
  if (s.IsNotFound()) return Status::NotFound(what);
  std::string m = what + ": " + s.ToString();
  if (m.find("No space left") != std::string::npos) return Status::NoSpace(m);
  if (IsLockHeld(m)) return Status::Busy(m);
  if (s.IsCorruption()) return Status::Corruption(m);
  return Status::IoError(m);
}

// KvStore::Scan over `db` as `ro` reads it.
Status ScanDb(leveldb::DB* db, const leveldb::ReadOptions& ro, std::string_view start,
              std::string_view limit,
              const std::function<bool(std::string_view, std::string_view)>& fn) {
  std::unique_ptr<leveldb::Iterator> it(db->NewIterator(ro));
  for (it->Seek(leveldb::Slice(start.data(), start.size())); it->Valid(); it->Next()) {
    leveldb::Slice k = it->key();
    std::string_view key(k.data(), k.size());
    if (!limit.empty() && key >= limit) break;
    leveldb::Slice v = it->value();
    if (!fn(key, std::string_view(v.data(), v.size()))) break;
  }
  return FromLevelDb(it->status(), "kv scan");
}

class LevelDbStore : public KvStore {
 public:
  LevelDbStore(std::string dir, leveldb::DB* db,
               std::unique_ptr<const leveldb::FilterPolicy> filter,
               std::unique_ptr<leveldb::Cache> cache)
      : dir_(std::move(dir)), filter_(std::move(filter)), cache_(std::move(cache)), db_(db) {}
  Status Get(std::string_view key, std::string* value) override {
    return FromLevelDb(
        db_->Get(leveldb::ReadOptions(), leveldb::Slice(key.data(), key.size()), value), "kv get");
  }
  Status Write(const Batch& batch, bool sync) override {
    leveldb::WriteBatch wb;
    for (const Op& op : batch.ops()) {
      if (op.is_put) {
        wb.Put(op.key, op.value);
      } else {
        wb.Delete(op.key);
      }
    }
    leveldb::WriteOptions wo;
    wo.sync = sync;
    return FromLevelDb(db_->Write(wo, &wb), "kv write");
  }
  Status Sync() override { return SyncLevelDbLogs(dir_); }
  Status Scan(std::string_view start, std::string_view limit,
              const std::function<bool(std::string_view, std::string_view)>& fn) override {
    return ScanDb(db_.get(), leveldb::ReadOptions(), start, limit, fn);
  }
  Result<std::unique_ptr<View>> NewView() override {
    return std::unique_ptr<View>(new SnapshotView(db_.get()));
  }

 private:
  // A leveldb snapshot, read without filling the block cache (a view is read once, whole).
  class SnapshotView : public View {
   public:
    explicit SnapshotView(leveldb::DB* db) : db_(db), snapshot_(db->GetSnapshot()) {}
    ~SnapshotView() override { db_->ReleaseSnapshot(snapshot_); }
    Status Scan(std::string_view start, std::string_view limit,
                const std::function<bool(std::string_view, std::string_view)>& fn) override {
      leveldb::ReadOptions ro;
      ro.snapshot = snapshot_;
      ro.fill_cache = false;
      return ScanDb(db_, ro, start, limit, fn);
    }

   private:
    leveldb::DB* db_;
    const leveldb::Snapshot* snapshot_;
  };

  const std::string dir_;
  // Declared before db_: the DB uses them until it is closed.
  std::unique_ptr<const leveldb::FilterPolicy> filter_;
  std::unique_ptr<leveldb::Cache> cache_;
  std::unique_ptr<leveldb::DB> db_;
};

class PosixSpawner : public ProcessSpawner {
 public:
  Result<pid_t> Spawn(const Spec& spec) override {
    if (spec.argv.empty()) return Status::InvalidArgument("spawn: empty argv");
    std::vector<char*> argv, envp;
    for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (const auto& e : spec.env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc != 0) return Status::FromErrno(rc, "spawn " + spec.argv[0]);
    rc = posix_spawnattr_init(&attr);
    if (rc != 0) {
      posix_spawn_file_actions_destroy(&fa);
      return Status::FromErrno(rc, "spawn " + spec.argv[0]);
    }
    const char* out = spec.stdout_path.empty() ? "/dev/null" : spec.stdout_path.c_str();
    rc = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (rc == 0) {
      rc = posix_spawn_file_actions_addopen(&fa, 1, out, O_WRONLY | O_CREAT | O_APPEND, 0644);
    }
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&fa, 1, 2);
    // The child starts with no signal blocked and every signal at its default action. Otherwise
    // it would inherit the daemon's choices (a mask blocking the signals a signal thread handles,
    // SIGPIPE ignored), which exec keeps: such a helper could not be stopped with SIGTERM.
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    if (rc == 0) rc = posix_spawnattr_setsigmask(&attr, &none);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&attr, &all);
    if (rc == 0) {
      rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    }
    pid_t pid = -1;
    if (rc == 0) {
      rc = posix_spawnp(&pid, argv[0], &fa, &attr, argv.data(),
                        spec.env.empty() ? environ : envp.data());
    }
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return Status::FromErrno(rc, "spawn " + spec.argv[0]);
    return pid;
  }
  Result<int> Wait(pid_t pid) override {
    int status;
    while (waitpid(pid, &status, 0) < 0) {
      if (errno != EINTR) return Status::FromErrno(errno, "waitpid");
    }
    return status;
  }
};

}  // namespace

Result<std::unique_ptr<KvStore>> OpenLevelDb(const std::string& dir) {
  leveldb::Options options;
  options.create_if_missing = true;
  options.paranoid_checks = true;
  // Most file-system commands look up keys that do not exist yet (a new name's dentry, an
  // inode's open references): a Bloom filter answers those without reading every level's tables.
  std::unique_ptr<const leveldb::FilterPolicy> filter(leveldb::NewBloomFilterPolicy(10));
  options.filter_policy = filter.get();
  // Metadata of a busy tree stays in memory: 64 MiB of blocks (default 8), and a 16 MiB memtable
  // (default 4) so fewer compactions run beside the commits.
  std::unique_ptr<leveldb::Cache> cache(leveldb::NewLRUCache(64u << 20));
  options.block_cache = cache.get();
  options.write_buffer_size = 16u << 20;
  // Logs written into zero-filled space: a commit's sync then costs no journal commit of the
  // file's size (leveldb_env_internal.h).
  options.env = PreallocatingLogEnv();
  leveldb::DB* db = nullptr;
  leveldb::Status s = leveldb::DB::Open(options, dir, &db);
  if (!s.ok()) {
    std::string m = s.ToString();
    if (IsLockHeld(m)) {
      return Status::Busy("data dir " + dir + " is locked by another process (" + m + ")");
    }
    return FromLevelDb(s, "open " + dir);
  }
  // Decoded blocks are still a lookup through the memtable, every level and the block cache away;
  // the hottest keys are kept as values (kv_cache.h).
  return std::unique_ptr<KvStore>(new CachedKvStore(
      std::unique_ptr<KvStore>(new LevelDbStore(dir, db, std::move(filter), std::move(cache))),
      kKvCacheBytes));
}

Result<uint64_t> FreeBytes(const std::string& dir) {
  struct statvfs vfs;
  if (statvfs(dir.c_str(), &vfs) != 0) return Status::FromErrno(errno, "statvfs " + dir);
  return static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
}

Env* DefaultEnv() {
  static SystemClock clock;
  static SystemRandom random;
  static PosixSpawner spawner;
  static Env env{&clock, &random, &spawner, OpenLevelDb, FreeBytes};
  return &env;
}

}  // namespace constellation
