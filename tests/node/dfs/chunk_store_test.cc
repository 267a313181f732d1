// ChunkStore (node/dfs/chunk_store.h): put/read/sync/delete, idempotence, the verified-read cache,
// threads, corruption and quarantine, GC with a grace period, restart, crash leftovers, kill -9
// durability, and ENOSPC on a small tmpfs (root only; tagged [nospace]).
#include "node/dfs/chunk_store.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "catch2/catch.hpp"
#include "node/env/env_fake.h"
#include "tests/temp_dir.h"

namespace constellation {
namespace {

namespace fs = std::filesystem;

std::string RandomBytes(std::mt19937_64* rng, size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = (*rng)();
    std::memcpy(&s[i], &v, 8);
  }
  for (size_t i = n - n % 8; i < n; ++i) s[i] = static_cast<char>((*rng)());
  return s;
}

std::string ChunkFile(const std::string& dir, const ChunkId& id) {
  return dir + "/" + id.Hex().substr(0, 2) + "/" + id.Hex();
}

size_t CountFiles(const std::string& dir) {
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.is_regular_file() ? 1 : 0;
  return n;
}

std::string ReadAll(ChunkStore* store, const ChunkId& id, size_t size) {
  std::string out(size, '\0');
  Result<size_t> n = store->Read(id, 0, size, out.data());
  REQUIRE(n.ok());
  REQUIRE(*n == size);
  return out;
}

std::unique_ptr<ChunkStore> OpenOrDie(const std::string& dir, ChunkStoreOptions options = {}) {
  Result<std::unique_ptr<ChunkStore>> store = ChunkStore::Open(dir, options);
  INFO(store.status().ToString());
  REQUIRE(store.ok());
  return std::move(store).value();
}

TEST_CASE("chunk store: put, read, sync, delete") {
  TempDir tmp("cn_chunks");
  std::string dir = tmp.path() + "/store";
  auto store = OpenOrDie(dir);
  std::mt19937_64 rng(1);
  std::vector<std::string> datas = {"x", RandomBytes(&rng, 1000),
                                    RandomBytes(&rng, kMaxChunkBytes)};
  std::vector<ChunkId> ids;
  for (const std::string& d : datas) {
    Result<ChunkId> id = store->Put(d);
    REQUIRE(id.ok());
    CHECK(*id == HashChunk(d));
    CHECK(fs::file_size(ChunkFile(dir, *id)) == d.size());
    ids.push_back(*id);
  }
  REQUIRE(store->Sync(ids).ok());
  for (size_t i = 0; i < datas.size(); ++i) {
    CHECK(store->Has(ids[i]));
    CHECK(ReadAll(store.get(), ids[i], datas[i].size()) == datas[i]);
  }
  // Partial reads, a read running past the end, a read at the end, a read past it.
  char buf[64];
  Result<size_t> n = store->Read(ids[1], 990, sizeof(buf), buf);
  REQUIRE(n.ok());
  CHECK(*n == 10);
  CHECK(std::string(buf, 10) == datas[1].substr(990));
  n = store->Read(ids[2], 12345, 7, buf);
  REQUIRE(n.ok());
  CHECK(std::string(buf, 7) == datas[2].substr(12345, 7));
  CHECK(store->Read(ids[1], 1000, 5, buf).value() == 0);
  CHECK(store->Read(ids[1], 1001, 5, buf).status().code() == Code::kOutOfRange);

  ChunkStoreStats st = store->Stats();
  CHECK(st.chunks == 3);
  CHECK(st.bytes == 1 + 1000 + kMaxChunkBytes);
  CHECK(st.puts == 3);

  std::vector<ChunkId> listed;
  REQUIRE(store
              ->List([&](const ChunkInfo& info) {
                listed.push_back(info.id);
                return true;
              })
              .ok());
  CHECK(std::set<ChunkId>(listed.begin(), listed.end()) ==
        std::set<ChunkId>(ids.begin(), ids.end()));

  REQUIRE(store->Delete(ids[1]).ok());
  CHECK_FALSE(store->Has(ids[1]));
  CHECK(store->Read(ids[1], 0, 1, buf).status().code() == Code::kNotFound);
  CHECK(store->Delete(ids[1]).code() == Code::kNotFound);
  CHECK(store->Sync(std::vector<ChunkId>{ids[0], ids[1]}).code() == Code::kNotFound);
  CHECK(store->Stats().chunks == 2);
  CHECK(store->Stats().bytes == 1 + kMaxChunkBytes);

  CHECK(store->Put("").status().code() == Code::kInvalidArgument);
  CHECK(store->Put(std::string(kMaxChunkBytes + 1, 'a')).status().code() == Code::kTooLarge);
  CHECK(store->Touch(ids[1]).code() == Code::kNotFound);
}

// Aligned Puts go through O_DIRECT where the file system allows it (the temp dir's, usually
// ext4) and through the page cache where it does not (tmpfs): the bytes read back are the same.
TEST_CASE("chunk store: aligned puts (O_DIRECT) read back exactly, also on tmpfs") {
  std::vector<std::string> roots = {fs::temp_directory_path().string()};
  if (fs::is_directory("/dev/shm")) roots.push_back("/dev/shm");
  std::mt19937_64 rng(7);
  for (const std::string& root : roots) {
    INFO(root);
    TempDir tmp("cn_chunks_direct", root);
    std::string dir = tmp.path() + "/store";
    std::vector<std::pair<ChunkId, std::string>> put;
    {
      auto store = OpenOrDie(dir);
      for (size_t size : {size_t{4096}, size_t{65536}, size_t{kMaxChunkBytes}}) {
        std::unique_ptr<char, decltype(&std::free)> buf(
            static_cast<char*>(std::aligned_alloc(4096, size)), &std::free);
        REQUIRE(buf);
        std::string bytes = RandomBytes(&rng, size);
        std::memcpy(buf.get(), bytes.data(), size);
        Result<ChunkId> id = store->Put(std::string_view(buf.get(), size));
        REQUIRE(id.ok());
        CHECK(*id == HashChunk(bytes));
        put.emplace_back(*id, bytes);
      }
      std::vector<ChunkId> ids;
      for (const auto& [id, bytes] : put) ids.push_back(id);
      REQUIRE(store->Sync(ids).ok());
    }
    auto store = OpenOrDie(dir);  // a fresh cache: reads come from the files
    for (const auto& [id, bytes] : put) {
      CHECK(ReadAll(store.get(), id, bytes.size()) == bytes);
      CHECK(store->Verify(id).ok());
    }
    store.reset();
  }
}

TEST_CASE("chunk store: a second Put of the same bytes stores nothing new") {
  TempDir tmp("cn_chunks");
  auto store = OpenOrDie(tmp.path());
  Result<ChunkId> a = store->Put("hello chunk");
  Result<ChunkId> b = store->Put("hello chunk");
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(*a == *b);
  ChunkStoreStats st = store->Stats();
  CHECK(st.chunks == 1);
  CHECK(st.puts == 2);
  CHECK(st.puts_existing == 1);
  CHECK(CountFiles(tmp.path() + "/" + a->Hex().substr(0, 2)) == 1);
  CHECK(CountFiles(tmp.path() + "/tmp") == 0);
}

TEST_CASE("chunk store: a chunk read piecewise is hashed once; no cache re-hashes every read") {
  TempDir tmp("cn_chunks");
  std::mt19937_64 rng(2);
  std::string data = RandomBytes(&rng, kMaxChunkBytes);
  for (uint64_t cache : {uint64_t{64} << 20, uint64_t{0}}) {
    INFO("cache bytes " << cache);
    std::string dir = tmp.path() + "/c" + std::to_string(cache);
    ChunkStoreOptions options;
    options.max_cache_bytes = cache;
    auto store = OpenOrDie(dir, options);
    ChunkId id = store->Put(data).value();
    std::string back(data.size(), '\0');
    constexpr size_t kPiece = 128 << 10;
    for (size_t off = 0; off < data.size(); off += kPiece) {
      REQUIRE(store->Read(id, off, kPiece, back.data() + off).value() == kPiece);
    }
    CHECK(back == data);
    ChunkStoreStats st = store->Stats();
    if (cache > 0) {
      CHECK(st.cache_misses == 1);
      CHECK(st.cache_hits == data.size() / kPiece - 1);
      CHECK(st.cache_bytes == data.size());
      // Delete drops it from the cache too.
      REQUIRE(store->Delete(id).ok());
      CHECK(store->Stats().cache_bytes == 0);
    } else {
      CHECK(st.cache_misses == data.size() / kPiece);
      CHECK(st.cache_hits == 0);
      CHECK(st.cache_bytes == 0);
    }
  }
  ChunkStoreOptions bad;
  bad.max_cache_bytes = kMaxChunkStoreCacheBytes + 1;
  CHECK(ChunkStore::Open(tmp.path() + "/bad", bad).status().code() == Code::kInvalidArgument);
  bad = {};
  bad.grace_ms = 0;
  CHECK(ChunkStore::Open(tmp.path() + "/bad", bad).status().code() == Code::kInvalidArgument);
}

TEST_CASE("chunk store: the cache stays within its byte bound") {
  TempDir tmp("cn_chunks");
  ChunkStoreOptions options;
  options.max_cache_bytes = 3 * 100'000;
  auto store = OpenOrDie(tmp.path(), options);
  std::mt19937_64 rng(3);
  std::vector<std::pair<ChunkId, std::string>> chunks;
  for (int i = 0; i < 20; ++i) {
    std::string d = RandomBytes(&rng, 100'000);
    chunks.emplace_back(store->Put(d).value(), d);
  }
  for (int round = 0; round < 3; ++round) {
    for (const auto& [id, d] : chunks) {
      CHECK(ReadAll(store.get(), id, d.size()) == d);
      CHECK(store->Stats().cache_bytes <= options.max_cache_bytes);
    }
  }
}

TEST_CASE("chunk store: concurrent puts and reads from several threads") {
  TempDir tmp("cn_chunks");
  ChunkStoreOptions options;
  options.max_cache_bytes = 8 << 20;  // small: forces evictions and reloads
  auto store = OpenOrDie(tmp.path(), options);
  constexpr int kThreads = 4;
  constexpr int kChunksPerThread = 40;
  // Chunk k of every thread has the same bytes for even k (shared), distinct ones for odd k.
  auto chunk_data = [](int thread, int k) {
    std::mt19937_64 rng(k % 2 == 0 ? 1000 + k : thread * 100'000 + k);
    return RandomBytes(&rng, 1000 + static_cast<size_t>(k) * 7919 % 300'000);
  };
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<ChunkId> mine;
      for (int k = 0; k < kChunksPerThread; ++k) {
        std::string d = chunk_data(t, k);
        Result<ChunkId> id = store->Put(d);
        if (!id.ok() || *id != HashChunk(d)) ++failures;
        if (id.ok()) mine.push_back(*id);
        // Read back an earlier chunk of this thread and a shared one (maybe another's Put).
        int j = k / 2;
        std::string want = chunk_data(t, j);
        std::string got(want.size(), '\0');
        Result<size_t> n = store->Read(HashChunk(want), 0, got.size(), got.data());
        if (!n.ok() || *n != want.size() || got != want) ++failures;
      }
      if (!store->Sync(mine).ok()) ++failures;
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  std::set<ChunkId> distinct;
  for (int t = 0; t < kThreads; ++t) {
    for (int k = 0; k < kChunksPerThread; ++k) distinct.insert(HashChunk(chunk_data(t, k)));
  }
  ChunkStoreStats st = store->Stats();
  CHECK(st.chunks == distinct.size());
  CHECK(st.puts == kThreads * kChunksPerThread);
  CHECK(st.puts_existing == kThreads * kChunksPerThread - distinct.size());
  size_t files = 0;
  REQUIRE(store
              ->List([&](const ChunkInfo&) {
                ++files;
                return true;
              })
              .ok());
  CHECK(files == distinct.size());
  CHECK(CountFiles(tmp.path() + "/tmp") == 0);
}

// Puts, reads, deletes and collections of the same few chunks race; reads must give the right
// bytes or NotFound, and the counters must match what is on disk afterwards.
TEST_CASE("chunk store: racing put, read, delete and collect keep bytes and counters right") {
  TempDir tmp("cn_chunks");
  FakeClock clock;
  ChunkStoreOptions options;
  options.clock = &clock;
  options.grace_ms = 1;
  options.max_cache_bytes = 1 << 20;
  auto store = OpenOrDie(tmp.path(), options);
  std::vector<std::string> datas;
  for (int i = 0; i < 8; ++i) {
    std::mt19937_64 rng(900 + i);
    datas.push_back(RandomBytes(&rng, 20'000 + i * 30'000));
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::string buf;
      for (int k = 0; k < 300; ++k) {
        const std::string& d = datas[(k + t) % datas.size()];
        Result<ChunkId> id = store->Put(d);
        if (!id.ok()) ++failures;
        const std::string& r = datas[(k * 3 + t) % datas.size()];
        buf.assign(r.size(), '\0');
        Result<size_t> n = store->Read(HashChunk(r), 0, buf.size(), buf.data());
        if (n.ok() ? (*n != r.size() || buf != r) : n.status().code() != Code::kNotFound) {
          ++failures;
        }
      }
    });
  }
  threads.emplace_back([&] {
    for (int k = 0; k < 300; ++k) {
      Status s = store->Delete(HashChunk(datas[k % datas.size()]));
      if (!s.ok() && s.code() != Code::kNotFound) ++failures;
    }
  });
  threads.emplace_back([&] {
    for (int k = 0; k < 100; ++k) {
      clock.Advance(1);
      if (!store->Collect([](const ChunkId&) { return false; }).ok()) ++failures;
    }
  });
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  uint64_t files = 0, bytes = 0;
  REQUIRE(store
              ->List([&](const ChunkInfo& info) {
                ++files;
                bytes += info.size;
                return true;
              })
              .ok());
  ChunkStoreStats st = store->Stats();
  CHECK(st.chunks == files);
  CHECK(st.bytes == bytes);
  CHECK(st.corrupt_events == 0);
  CHECK(CountFiles(tmp.path() + "/tmp") == 0);
}

void FlipByte(const std::string& path, size_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  REQUIRE(f.good());
  f.seekg(static_cast<std::streamoff>(offset));
  char c;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x40));
}

TEST_CASE("chunk store: a corrupted chunk reads as Corruption, is counted and quarantined") {
  TempDir tmp("cn_chunks");
  std::string dir = tmp.path();
  auto store = OpenOrDie(dir);
  std::mt19937_64 rng(4);
  std::string data = RandomBytes(&rng, 300'000);
  ChunkId id = store->Put(data).value();
  FlipByte(ChunkFile(dir, id), 123'456);

  std::string buf(1000, '#');
  // Even a read of bytes far from the flipped one fails: the whole chunk is verified.
  Result<size_t> n = store->Read(id, 0, buf.size(), buf.data());
  CHECK(n.status().code() == Code::kCorruption);
  CHECK(buf == std::string(1000, '#'));  // never wrong bytes
  ChunkStoreStats st = store->Stats();
  CHECK(st.corrupt_events == 1);
  CHECK(st.quarantined == 1);
  CHECK(st.chunks == 0);
  CHECK_FALSE(fs::exists(ChunkFile(dir, id)));
  CHECK_FALSE(store->Has(id));
  REQUIRE(CountFiles(dir + "/quarantine") == 1);
  // Still Corruption (not NotFound) on later reads, without counting the same event again.
  CHECK(store->Read(id, 0, 10, buf.data()).status().code() == Code::kCorruption);
  CHECK(store->Stats().corrupt_events == 1);
  // A good copy Put again heals it.
  REQUIRE(store->Put(data).ok());
  CHECK(ReadAll(store.get(), id, data.size()) == data);

  // A truncated file (as a torn write after power loss could leave) is caught the same way.
  std::string other = RandomBytes(&rng, 5000);
  ChunkId oid = store->Put(other).value();
  fs::resize_file(ChunkFile(dir, oid), 100);
  CHECK(store->Read(oid, 0, 10, buf.data()).status().code() == Code::kCorruption);
  CHECK(store->Stats().corrupt_events == 2);
  CHECK(CountFiles(dir + "/quarantine") == 2);
}

TEST_CASE("chunk store: Prefetch reads and verifies a chunk into the cache in the background") {
  TempDir tmp("cn_chunks");
  std::mt19937_64 rng(9);
  std::string data = RandomBytes(&rng, kMaxChunkBytes);
  std::string bad_data = RandomBytes(&rng, 100'000);
  auto store = OpenOrDie(tmp.path());
  ChunkId id = store->Put(data).value();
  ChunkId bad = store->Put(bad_data).value();
  FlipByte(ChunkFile(tmp.path(), bad), 50'000);

  store->Prefetch(id);
  store->Prefetch(id);  // already queued or cached: nothing more
  store->Prefetch(bad);
  store->DrainReadAhead();
  ChunkStoreStats st = store->Stats();
  CHECK(st.cache_misses == 2);
  CHECK(st.cache_bytes == data.size());
  CHECK(st.corrupt_events == 1);  // found by the read-ahead, quarantined
  // Served from memory: the file is no longer needed.
  REQUIRE(fs::remove(ChunkFile(tmp.path(), id)));
  uint64_t hits = st.cache_hits;
  auto chunk = store->ReadChunk(id);
  REQUIRE(chunk.ok());
  CHECK((*chunk)->view() == data);
  CHECK(store->Stats().cache_hits == hits + 1);
  store->Prefetch(id);  // cached: not loaded again
  store->DrainReadAhead();
  CHECK(store->Stats().cache_misses == 2);
  // The reader still sees the damage the read-ahead found, never bytes.
  CHECK(store->ReadChunk(bad).status().code() == Code::kCorruption);
}

TEST_CASE("chunk store: Put over a bad stored copy replaces it") {
  TempDir tmp("cn_chunks");
  std::string dir = tmp.path();
  std::mt19937_64 rng(5);
  std::string data = RandomBytes(&rng, 70'000);
  ChunkId id;
  {
    auto store = OpenOrDie(dir);
    id = store->Put(data).value();
  }
  FlipByte(ChunkFile(dir, id), 10);
  auto store = OpenOrDie(dir);
  REQUIRE(store->Put(data).ok());
  CHECK(store->Stats().corrupt_events == 1);
  CHECK(store->Stats().chunks == 1);
  CHECK(store->Verify(id).ok());
  CHECK(ReadAll(store.get(), id, data.size()) == data);
}

TEST_CASE("chunk store: Verify re-hashes the stored file and repairs it from the cache") {
  TempDir tmp("cn_chunks");
  std::string dir = tmp.path();
  auto store = OpenOrDie(dir);
  std::mt19937_64 rng(6);
  std::string data = RandomBytes(&rng, 50'000);
  ChunkId id = store->Put(data).value();
  CHECK(store->Verify(id).ok());
  CHECK(ReadAll(store.get(), id, data.size()) == data);  // now cached, verified
  FlipByte(ChunkFile(dir, id), 49'999);
  CHECK(ReadAll(store.get(), id, data.size()) == data);  // served from the verified cache
  CHECK(store->Verify(id).code() == Code::kCorruption);
  CHECK(store->Stats().corrupt_events == 1);
  CHECK(store->Verify(id).ok());  // rewritten from the cached copy
  CHECK(store->Verify(ChunkId{1, 2}).code() == Code::kNotFound);
}

TEST_CASE("chunk store: Collect removes unreferenced chunks only after the grace period") {
  TempDir tmp("cn_chunks");
  FakeClock clock;
  ChunkStoreOptions options;
  options.clock = &clock;
  options.grace_ms = 10'000;
  auto store = OpenOrDie(tmp.path(), options);
  ChunkId a = store->Put("referenced").value();
  ChunkId b = store->Put("touched later").value();
  ChunkId c = store->Put("garbage").value();
  ChunkId d = store->Put("put again later").value();
  std::set<ChunkId> refs = {a};
  auto referenced = [&](const ChunkId& id) { return refs.count(id) > 0; };

  clock.Advance(9'999);
  Result<ChunkStore::CollectResult> r = store->Collect(referenced);
  REQUIRE(r.ok());
  CHECK(r->examined == 4);
  CHECK(r->deleted == 0);

  REQUIRE(store->Touch(b).ok());
  REQUIRE(store->Put("put again later").ok());
  clock.Advance(1);
  r = store->Collect(referenced);
  REQUIRE(r.ok());
  CHECK(r->deleted == 1);
  CHECK(r->bytes_freed == std::string("garbage").size());
  CHECK(store->Has(a));
  CHECK(store->Has(b));
  CHECK_FALSE(store->Has(c));
  CHECK(store->Has(d));

  // The referenced() callback is consulted only for chunks past their grace.
  clock.Advance(10'000);
  std::vector<ChunkId> asked;
  r = store->Collect([&](const ChunkId& id) {
    asked.push_back(id);
    return referenced(id);
  });
  REQUIRE(r.ok());
  CHECK(r->deleted == 2);
  CHECK(asked.size() == 3);
  CHECK(store->Has(a));
  CHECK(store->Stats().chunks == 1);
}

TEST_CASE("chunk store: reopening keeps chunks; a second opener is refused") {
  TempDir tmp("cn_chunks");
  std::mt19937_64 rng(7);
  std::vector<std::string> datas;
  std::vector<ChunkId> ids;
  {
    auto store = OpenOrDie(tmp.path());
    for (int i = 0; i < 10; ++i) {
      datas.push_back(RandomBytes(&rng, 10'000 + i));
      ids.push_back(store->Put(datas.back()).value());
    }
    REQUIRE(store->Sync(ids).ok());
    CHECK(ChunkStore::Open(tmp.path()).status().code() == Code::kBusy);
  }
  auto store = OpenOrDie(tmp.path());
  ChunkStoreStats st = store->Stats();
  CHECK(st.chunks == 10);
  uint64_t bytes = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    CHECK(ReadAll(store.get(), ids[i], datas[i].size()) == datas[i]);
    bytes += datas[i].size();
  }
  CHECK(st.bytes == bytes);
}

TEST_CASE("chunk store: Open removes temp files of crashed Puts and skips foreign files") {
  TempDir tmp("cn_chunks");
  ChunkId id;
  {
    auto store = OpenOrDie(tmp.path());
    id = store->Put("kept").value();
  }
  for (int i = 0; i < 3; ++i) {
    std::ofstream(tmp.path() + "/tmp/" + id.Hex() + "." + std::to_string(i)) << "partial";
  }
  char other_fan[3];
  std::snprintf(other_fan, sizeof(other_fan), "%02x", static_cast<unsigned>(id.hi >> 56) ^ 1u);
  std::ofstream(tmp.path() + "/" + other_fan + "/not-a-chunk") << "x";
  std::ofstream(tmp.path() + "/" + other_fan + "/" + id.Hex()) << "wrong fan-out directory";
  auto store = OpenOrDie(tmp.path());
  CHECK(CountFiles(tmp.path() + "/tmp") == 0);
  CHECK(store->Stats().chunks == 1);
  CHECK(ReadAll(store.get(), id, 4) == "kept");
}

// A child process Puts and Syncs chunks and reports each acknowledged id through a pipe; the parent
// kills it with SIGKILL at an arbitrary point and checks every acknowledged chunk survived.
TEST_CASE("chunk store: kill -9 loses no acknowledged chunk") {
  TempDir tmp("cn_chunks");
  std::string dir = tmp.path() + "/store";
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  auto data_for = [](int i) {
    std::mt19937_64 rng(50'000 + i);
    return RandomBytes(&rng, 64 * 1024 + static_cast<size_t>(i) * 4099 % 900'000);
  };
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    Result<std::unique_ptr<ChunkStore>> store = ChunkStore::Open(dir);
    if (!store.ok()) ::_exit(2);
    for (int i = 0; i < 100'000; ++i) {
      Result<ChunkId> id = (*store)->Put(data_for(i));
      if (!id.ok() || !(*store)->Sync(std::vector<ChunkId>{*id}).ok()) ::_exit(3);
      if (::write(fds[1], &i, sizeof(i)) != sizeof(i)) ::_exit(4);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  constexpr int kAcks = 40;
  int last = -1;
  for (int k = 0; k < kAcks; ++k) {
    int i;
    REQUIRE(::read(fds[0], &i, sizeof(i)) == sizeof(i));
    last = i;
  }
  ::kill(pid, SIGKILL);
  int status;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFSIGNALED(status));
  // Acks written before the kill but not yet read also count as acknowledged.
  int i;
  while (::read(fds[0], &i, sizeof(i)) == sizeof(i)) last = i;
  ::close(fds[0]);

  auto store = OpenOrDie(dir);
  CHECK(CountFiles(dir + "/tmp") == 0);
  for (int k = 0; k <= last; ++k) {
    std::string d = data_for(k);
    INFO("chunk " << k);
    CHECK(ReadAll(store.get(), HashChunk(d), d.size()) == d);
  }
  CHECK(store->Stats().corrupt_events == 0);
}

TEST_CASE("chunk store: min_free_bytes refuses Puts with NoSpace") {
  TempDir tmp("cn_chunks");
  ChunkStoreOptions options;
  options.min_free_bytes = uint64_t{1} << 62;
  auto store = OpenOrDie(tmp.path(), options);
  CHECK(store->Put("anything").status().code() == Code::kNoSpace);
  CHECK(store->Stats().no_space == 1);
  CHECK(store->Stats().chunks == 0);
  CHECK(CountFiles(tmp.path() + "/tmp") == 0);
}

// Mounts a tmpfs of `size` on a fresh directory; unmounts it at scope exit.
class SmallTmpfs {
 public:
  explicit SmallTmpfs(const std::string& size) {
    std::string opts = "size=" + size + ",mode=0700";
    mounted_ = ::mount("tmpfs", dir_.path().c_str(), "tmpfs", 0, opts.c_str()) == 0;
    if (!mounted_) error_ = std::strerror(errno);
  }
  ~SmallTmpfs() {
    if (mounted_) ::umount2(dir_.path().c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }
  const std::string& path() const { return dir_.path(); }

 private:
  TempDir dir_;
  bool mounted_ = false;
  std::string error_;
};

TEST_CASE("chunk store: ENOSPC on a full file system, then recovery", "[nospace]") {
  if (::geteuid() != 0) {
    WARN("skipped: mounting a small tmpfs needs root");
    return;
  }
  SmallTmpfs mnt("8m");
  if (!mnt.mounted()) {
    WARN("skipped: cannot mount tmpfs: " << mnt.error());
    return;
  }
  std::string dir = mnt.path() + "/store";
  auto store = OpenOrDie(dir);
  std::mt19937_64 rng(8);
  std::vector<std::pair<ChunkId, std::string>> stored;
  Status last;
  for (int i = 0; i < 20 && last.ok(); ++i) {
    std::string d = RandomBytes(&rng, 1 << 20);
    Result<ChunkId> id = store->Put(d);
    if (id.ok()) {
      stored.emplace_back(*id, d);
    } else {
      last = id.status();
    }
  }
  INFO(last.ToString());
  REQUIRE(last.code() == Code::kNoSpace);
  REQUIRE(stored.size() >= 4);
  CHECK(store->Stats().no_space == 1);
  CHECK(store->Stats().chunks == stored.size());
  CHECK(CountFiles(dir + "/tmp") == 0);  // the failed Put left nothing behind
  // Everything stored before is still readable and Sync works.
  std::vector<ChunkId> ids;
  for (const auto& [id, d] : stored) {
    CHECK(ReadAll(store.get(), id, d.size()) == d);
    ids.push_back(id);
  }
  CHECK(store->Sync(ids).ok());
  // Free space; Puts work again.
  REQUIRE(store->Delete(stored[0].first).ok());
  REQUIRE(store->Delete(stored[1].first).ok());
  std::string d = RandomBytes(&rng, 1 << 20);
  Result<ChunkId> again = store->Put(d);
  INFO(again.status().ToString());
  REQUIRE(again.ok());
  REQUIRE(store->Sync(std::vector<ChunkId>{*again}).ok());
  CHECK(ReadAll(store.get(), *again, d.size()) == d);
  // And the store reopens cleanly on the once-full file system.
  store.reset();
  store = OpenOrDie(dir);
  CHECK(store->Stats().chunks == stored.size() - 1);
}

}  // namespace
}  // namespace constellation
