// The seam for nondeterminism (DESIGN.md §2.3): clock, randomness, key-value store, process
// spawning and transport sit behind these interfaces, with real implementations (env_posix.cc,
// leveldb, ZeroMQ) and fake ones (env_fake.h) for tests and simulation.
//
// Thread-safety: every interface here must be safe to call from several threads at once, except
// where a method says otherwise.
#ifndef CONSTELLATION_NODE_ENV_ENV_H_
#define CONSTELLATION_NODE_ENV_ENV_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "node/base/status.h"

namespace constellation {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowUnixMs() = 0;    // wall clock, for timestamps shown to users
  virtual int64_t MonotonicMs() = 0;  // for timeouts and intervals
};

class Random {
 public:
  virtual ~Random() = default;
  virtual uint64_t Next() = 0;
};

// An ordered key-value store (leveldb in production). Writes are atomic batches; `sync` makes the
// batch durable before Write returns, and also makes every earlier unsynced batch durable.
class KvStore {
 public:
  struct Op {
    bool is_put;
    std::string key;
    std::string value;
  };
  class Batch {
   public:
    void Put(std::string_view k, std::string_view v) {
      ops_.push_back({true, std::string(k), std::string(v)});
    }
    void Delete(std::string_view k) { ops_.push_back({false, std::string(k), {}}); }
    const std::vector<Op>& ops() const { return ops_; }
    bool empty() const { return ops_.empty(); }
    void Clear() { ops_.clear(); }

   private:
    std::vector<Op> ops_;
  };

  virtual ~KvStore() = default;
  // NotFound when absent.
  virtual Status Get(std::string_view key, std::string* value) = 0;
  virtual Status Write(const Batch& batch, bool sync) = 0;
  // Makes every Write that has returned durable, as a later sync write would, without writing
  // anything. Safe to call from another thread while writes go on (it covers at least the writes
  // that returned before the call).
  virtual Status Sync() = 0;
  // Calls fn(key, value) for keys in [start, limit) in order until fn returns false. An empty
  // limit means "to the end". Sees a consistent snapshot.
  virtual Status Scan(std::string_view start, std::string_view limit,
                      const std::function<bool(std::string_view, std::string_view)>& fn) = 0;

  // The store as it was when NewView returned: a View's Scan sees no later write. A View is safe
  // to use from any thread and must not outlive its store. NotSupported by a store that cannot
  // make one.
  class View {
   public:
    virtual ~View() = default;
    virtual Status Scan(std::string_view start, std::string_view limit,
                        const std::function<bool(std::string_view, std::string_view)>& fn) = 0;
  };
  virtual Result<std::unique_ptr<View>> NewView() {
    return Status::NotSupported("this store makes no views");
  }
};

// Opens (creating if missing) the leveldb store in `dir`. leveldb's own LOCK file makes a second
// opener fail with Busy.
Result<std::unique_ptr<KvStore>> OpenLevelDb(const std::string& dir);

// Starts plain helper programs (not instances: those have their own runtime, node/runtime).
class ProcessSpawner {
 public:
  struct Spec {
    std::vector<std::string> argv;
    std::vector<std::string> env;  // KEY=VALUE; empty inherits
    std::string stdout_path;       // empty: /dev/null
  };
  virtual ~ProcessSpawner() = default;
  virtual Result<pid_t> Spawn(const Spec& spec) = 0;
  // Waits for `pid` and returns its wait status.
  virtual Result<int> Wait(pid_t pid) = 0;
};

// Message transport between nodes. Peers are named by address ("host:port").
class Transport {
 public:
  using Handler = std::function<void(const std::string& from, std::string message)>;
  virtual ~Transport() = default;
  // Queues `message` for `to`; never blocks. Unavailable when the bounded queue is full.
  virtual Status Send(const std::string& to, std::string message) = 0;
  // Delivers received messages to `handler` on the transport's thread.
  virtual void SetHandler(Handler handler) = 0;
};

// Everything a node needs from the outside world. Not owned.
struct Env {
  Clock* clock = nullptr;
  Random* random = nullptr;
  ProcessSpawner* spawner = nullptr;
  // Opens the node's key-value store; tests pass a fake.
  std::function<Result<std::unique_ptr<KvStore>>(const std::string& dir)> open_kv;
  // Bytes available to this process on the file system holding `dir`.
  std::function<Result<uint64_t>(const std::string& dir)> free_bytes;
};

// The process-wide real environment (system clock, /dev/urandom-seeded PRNG, leveldb,
// posix_spawn). Lives forever.
Env* DefaultEnv();

}  // namespace constellation

#endif  // CONSTELLATION_NODE_ENV_ENV_H_
