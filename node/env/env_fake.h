// Fake environment pieces for tests and simulation.
//
// FakeKvStore is an in-memory KvStore that models durability: Crash() throws away every write
// not yet made durable by a sync write, as a power loss would. Faults can be injected so the
// next writes fail (e.g. with NoSpace). Thread-safe (one mutex).
// FakeClock is advanced by hand. Thread-safe.
#ifndef CONSTELLATION_NODE_ENV_ENV_FAKE_H_
#define CONSTELLATION_NODE_ENV_ENV_FAKE_H_

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <random>

#include "node/env/env.h"

namespace constellation {

class FakeClock : public Clock {
 public:
  explicit FakeClock(int64_t start_ms = 1'700'000'000'000) : now_ms_(start_ms) {}
  int64_t NowUnixMs() override { return now_ms_; }
  int64_t MonotonicMs() override { return now_ms_; }
  void Advance(int64_t ms) { now_ms_ += ms; }

 private:
  std::atomic<int64_t> now_ms_;
};

class FakeRandom : public Random {
 public:
  explicit FakeRandom(uint64_t seed) : rng_(seed) {}
  uint64_t Next() override {
    std::lock_guard<std::mutex> l(mu_);
    return rng_();
  }

 private:
  std::mutex mu_;
  std::mt19937_64 rng_;
};

class FakeKvStore : public KvStore {
 public:
  Status Get(std::string_view key, std::string* value) override;
  Status Write(const Batch& batch, bool sync) override;
  Status Sync() override;
  Status Scan(std::string_view start, std::string_view limit,
              const std::function<bool(std::string_view, std::string_view)>& fn) override;
  // A copy of what Scan would see now.
  Result<std::unique_ptr<View>> NewView() override;

  // A KvStore handle onto this store (which must outlive it), for code that takes ownership of
  // its store (Replica::Open through Env::open_kv) while the test keeps the store to crash it.
  std::unique_ptr<KvStore> Share();
  // Loses every write since the last sync write.
  void Crash();
  // The next `count` writes fail with `status` and change nothing.
  void FailNextWrites(int count, Status status);
  // While held, Sync() waits (a slow disk), so a test can act between a write and its sync.
  // Sync writes are not held.
  void HoldSyncs(bool hold);
  // The next `count` Sync() calls fail with `status` and make nothing durable.
  void FailNextSyncs(int count, Status status);
  // While held, a View's Scan waits before reading (a long copy), so a test can act meanwhile.
  void HoldViewScans(bool hold);
  // Returns once a View's Scan waits because of HoldViewScans.
  void WaitForHeldViewScan();
  int sync_count() const { return sync_count_; }

  // For this store's views (HoldViewScans).
  void WaitWhileViewsHeld();

 private:
  std::mutex mu_;
  std::map<std::string, std::string, std::less<>> live_;
  std::map<std::string, std::string, std::less<>> durable_;
  int fail_count_ = 0;
  Status fail_status_;
  std::atomic<int> sync_count_{0};
  std::mutex hold_mu_;
  std::condition_variable hold_cv_;
  bool hold_syncs_ = false;
  bool hold_views_ = false;  // guarded by hold_mu_, as is:
  int views_held_ = 0;
  int fail_syncs_ = 0;  // guarded by mu_
  Status fail_sync_status_;
};

}  // namespace constellation

#endif  // CONSTELLATION_NODE_ENV_ENV_FAKE_H_
