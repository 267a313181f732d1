// CachedKvStore: answers from memory what it read or saw written, never a value older than the
// store's, within its byte bound.
#include "node/env/kv_cache.h"

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "catch2/catch.hpp"
#include "node/env/env_fake.h"
#include "tests/node/env/kv_test_util.h"

namespace constellation {
namespace {

using testing::MustGet;
using testing::Put;

TEST_CASE("kv cache: a read is answered from memory the second time, with what was written") {
  FakeKvStore store;
  CachedKvStore kv(store.Share(), 1 << 20);
  REQUIRE(Put(&kv, "a", "1").ok());
  CHECK(MustGet(&kv, "a") == "1");
  CHECK(MustGet(&kv, "a") == "1");
  CHECK(kv.stats().misses == 1);
  CHECK(kv.stats().hits == 1);
  std::string v;
  CHECK(kv.Get("none", &v).code() == Code::kNotFound);
  CHECK(kv.Get("none", &v).code() == Code::kNotFound);  // absence is cached too
  CHECK(kv.stats().hits == 2);

  // Writes through the cache update what it holds: puts, deletes, and puts of absent keys.
  KvStore::Batch b;
  b.Put("a", "2");
  b.Delete("a");
  b.Put("a", "3");
  b.Put("none", "now");
  REQUIRE(kv.Write(b, true).ok());
  CHECK(MustGet(&kv, "a") == "3");
  CHECK(MustGet(&kv, "none") == "now");
  KvStore::Batch d;
  d.Delete("a");
  REQUIRE(kv.Write(d, false).ok());
  CHECK(kv.Get("a", &v).code() == Code::kNotFound);
  CHECK(kv.stats().misses == 2);  // all of it from memory

  // Scans and syncs go to the store, which holds the same.
  std::vector<std::string> keys;
  REQUIRE(kv.Scan("", "", [&](std::string_view k, std::string_view) {
              keys.emplace_back(k);
              return true;
            }).ok());
  CHECK(keys == std::vector<std::string>{"none"});
  REQUIRE(kv.Sync().ok());
  store.Crash();
  CHECK(MustGet(store.Share().get(), "none") == "now");
}

TEST_CASE("kv cache: a refused write changes nothing and leaves its keys to be read again") {
  FakeKvStore store;
  CachedKvStore kv(store.Share(), 1 << 20);
  REQUIRE(Put(&kv, "a", "1").ok());
  CHECK(MustGet(&kv, "a") == "1");
  store.FailNextWrites(1, Status::NoSpace("disk full"));
  CHECK(Put(&kv, "a", "2").code() == Code::kNoSpace);
  CHECK(MustGet(&kv, "a") == "1");
  CHECK(kv.stats().misses == 2);  // forgotten, read again
}

TEST_CASE("kv cache: stays within its bytes, dropping the least recently used") {
  FakeKvStore store;
  const size_t capacity = 64 << 10;
  CachedKvStore kv(store.Share(), capacity);
  for (int i = 0; i < 2000; ++i)
    REQUIRE(Put(&kv, "k" + std::to_string(i), std::string(100, 'v')).ok());
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 2000; ++i) {
      CHECK(MustGet(&kv, "k" + std::to_string(i)) == std::string(100, 'v'));
      // k0 stays the most recently used, so it is never dropped.
      CHECK(MustGet(&kv, "k0") == std::string(100, 'v'));
    }
  }
  KvCacheStats st = kv.stats();
  CHECK(st.bytes <= capacity);
  CHECK(st.entries > 100);
  CHECK(st.entries < 2000);
  CHECK(st.misses == 1 + 2 * 1999);  // k0 missed once; every other key both rounds
  // A value over capacity / 64 is never kept.
  REQUIRE(Put(&kv, "big", std::string(capacity / 64, 'b')).ok());
  CHECK(MustGet(&kv, "big").size() == capacity / 64);
  CHECK(MustGet(&kv, "big").size() == capacity / 64);
  CHECK(kv.stats().misses == st.misses + 2);
}

// A store whose Get and Write can be held right after they reached the store behind, so a test
// can interleave a miss and a write exactly.
class GatedStore : public KvStore {
 public:
  explicit GatedStore(KvStore* base) : base_(base) {}
  Status Get(std::string_view key, std::string* value) override {
    Status s = base_->Get(key, value);
    Wait(&gets_);
    return s;
  }
  Status Write(const Batch& batch, bool sync) override {
    Status s = base_->Write(batch, sync);
    Wait(&writes_);
    return s;
  }
  Status Sync() override { return base_->Sync(); }
  Status Scan(std::string_view start, std::string_view limit,
              const std::function<bool(std::string_view, std::string_view)>& fn) override {
    return base_->Scan(start, limit, fn);
  }
  // Whether the calls that start from now on are held.
  void HoldGets(bool hold) { Set(&gets_.hold, hold); }
  void HoldWrites(bool hold) { Set(&writes_.hold, hold); }
  // Waits until `n` calls have been held.
  void AwaitHeldGets(int n) { Await(&gets_, n); }
  void AwaitHeldWrites(int n) { Await(&writes_, n); }
  // Lets every call held so far go on.
  void ReleaseGets() { Release(&gets_); }
  void ReleaseWrites() { Release(&writes_); }

 private:
  struct Gate {
    bool hold = false;
    int held = 0;      // calls held, ever
    int released = 0;  // of them, let go
  };
  void Wait(Gate* g) {
    std::unique_lock<std::mutex> l(mu_);
    if (!g->hold) return;
    int ticket = g->held++;
    cv_.notify_all();
    cv_.wait(l, [&] { return g->released > ticket; });
  }
  void Set(bool* hold, bool v) {
    std::lock_guard<std::mutex> l(mu_);
    *hold = v;
  }
  void Await(Gate* g, int n) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return g->held >= n; });
  }
  void Release(Gate* g) {
    std::lock_guard<std::mutex> l(mu_);
    g->released = g->held;
    cv_.notify_all();
  }
  KvStore* base_;
  std::mutex mu_;
  std::condition_variable cv_;
  Gate gets_;
  Gate writes_;
};

// "a" = "1" in a store behind a gate, behind the cache.
struct Gated {
  FakeKvStore store;
  GatedStore* gate = nullptr;
  std::unique_ptr<CachedKvStore> kv;
  Gated() {
    REQUIRE(Put(&store, "a", "1").ok());
    auto gated = std::make_unique<GatedStore>(&store);
    gate = gated.get();
    kv = std::make_unique<CachedKvStore>(std::move(gated), 1 << 20);
  }
};

TEST_CASE("kv cache: a value read before a write is not kept after the write") {
  Gated g;
  GatedStore* gate = g.gate;
  CachedKvStore& kv = *g.kv;
  // A miss reads "1" and is held before it installs anything; "2" is written meanwhile.
  gate->HoldGets(true);
  std::string read;
  std::thread reader([&] { REQUIRE(kv.Get("a", &read).ok()); });
  gate->AwaitHeldGets(1);
  gate->HoldGets(false);
  REQUIRE(Put(&kv, "a", "2").ok());
  gate->ReleaseGets();
  reader.join();
  CHECK(read == "1");
  CHECK(MustGet(&kv, "a") == "2");
  CHECK(MustGet(&kv, "a") == "2");
}

TEST_CASE("kv cache: a value read while a write is in progress is not kept") {
  Gated g;
  GatedStore* gate = g.gate;
  CachedKvStore& kv = *g.kv;
  // Reader 1 reads "1" and is held. The write of "2" reaches the store and is held before the
  // cache hears of it. Reader 2 misses and reads "2". Then reader 1 goes on.
  gate->HoldGets(true);
  std::string first;
  std::thread reader([&] { REQUIRE(kv.Get("a", &first).ok()); });
  gate->AwaitHeldGets(1);
  gate->HoldGets(false);
  gate->HoldWrites(true);
  std::thread writer([&] { REQUIRE(Put(&kv, "a", "2").ok()); });
  gate->AwaitHeldWrites(1);
  gate->HoldWrites(false);
  gate->ReleaseGets();
  reader.join();
  CHECK(first == "1");
  CHECK(MustGet(&kv, "a") == "2");  // from the store, the write not yet done
  CHECK(MustGet(&kv, "a") == "2");  // never back to "1"
  gate->ReleaseWrites();
  writer.join();
  CHECK(MustGet(&kv, "a") == "2");
}

// One writer counts keys up while readers read them: a reader never sees a key go back, and once
// the writer is done everyone sees its last values (a stale install would show up as either).
TEST_CASE("kv cache: concurrent readers never see a value older than one already seen") {
  FakeKvStore store;
  CachedKvStore kv(store.Share(), 4 << 10);  // small: keys come and go
  const int keys = 40;
  const int rounds = 300;
  for (int k = 0; k < keys; ++k) REQUIRE(Put(&kv, "k" + std::to_string(k), "0").ok());
  std::atomic<bool> done{false};
  std::atomic<int> regressions{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      std::vector<int> seen(keys, 0);
      for (int n = 0; !done.load() || n < 2 * keys; ++n) {
        int k = (n * 7 + t) % keys;
        std::string v;
        if (!kv.Get("k" + std::to_string(k), &v).ok()) {
          errors++;
          continue;
        }
        int now = std::stoi(v);
        if (now < seen[k]) regressions++;
        seen[k] = now;
      }
    });
  }
  for (int r = 1; r <= rounds; ++r) {
    KvStore::Batch b;
    for (int k = 0; k < keys; k += 1 + r % 3) b.Put("k" + std::to_string(k), std::to_string(r));
    REQUIRE(kv.Write(b, false).ok());
  }
  // The last round wrote every key.
  KvStore::Batch last;
  for (int k = 0; k < keys; ++k) last.Put("k" + std::to_string(k), std::to_string(rounds + 1));
  REQUIRE(kv.Write(last, false).ok());
  done.store(true);
  for (std::thread& t : readers) t.join();
  CHECK(regressions.load() == 0);
  CHECK(errors.load() == 0);
  for (int k = 0; k < keys; ++k)
    CHECK(MustGet(&kv, "k" + std::to_string(k)) == std::to_string(rounds + 1));
}

}  // namespace
}  // namespace constellation
