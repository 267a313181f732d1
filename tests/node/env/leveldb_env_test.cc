// The preallocating log Env under OpenLevelDb: logs written in place into zero-filled space, and
// their tails repaired before recovery. A "crash" is a forked child that writes and then _exits
// without closing the store, leaving the log exactly as a kill -9 would.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "catch2/catch.hpp"
#include "leveldb/env.h"
#include "node/base/thread_name.h"
#include "node/env/env.h"
#include "node/env/leveldb_env_internal.h"
#include "tests/temp_dir.h"

namespace constellation {
namespace {

namespace fs = std::filesystem;

std::string Key(int i) {
  std::string k = "k";
  k += std::to_string(1000000 + i);
  return k;
}
std::string Value(int i) { return std::string(100 + i % 300, static_cast<char>('a' + i % 26)); }

// Writes keys [0, n) in synced batches of one key each, then dies without closing the store.
void WriteAndCrash(const std::string& dir, int n) {
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    Result<std::unique_ptr<KvStore>> kv = OpenLevelDb(dir);
    if (!kv.ok()) _exit(2);
    for (int i = 0; i < n; ++i) {
      KvStore::Batch b;
      b.Put(Key(i), Value(i));
      if (!(*kv)->Write(b, /*sync=*/true).ok()) _exit(3);
    }
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
}

std::vector<fs::path> Logs(const std::string& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".log") out.push_back(e.path());
  }
  return out;
}

void ExpectKeys(KvStore* kv, int n) {
  for (int i = 0; i < n; ++i) {
    std::string v;
    Status s = kv->Get(Key(i), &v);
    INFO(Key(i) << ": " << s.ToString());
    REQUIRE(s.ok());
    REQUIRE(v == Value(i));
  }
}

void WriteAt(const fs::path& p, uint64_t offset, const std::string& bytes) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(f.good());
}

// First in this binary: LevelDB's background thread is made by the first Schedule of the process.
TEST_CASE("background work runs at the process's priority, whoever scheduled it first") {
  if (geteuid() != 0) return;  // back from nice 5 to the process's value needs CAP_SYS_NICE
  int process = getpriority(PRIO_PROCESS, static_cast<id_t>(getpid()));
  std::atomic<int> seen{100};
  std::atomic<bool> done{false};
  std::thread lowered([&] {
    // As the raised agent thread would, but lowered (no privilege needed to get there).
    REQUIRE(setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), process + 5) == 0);
    PreallocatingLogEnv()->Schedule(
        [](void* p) {
          auto* s = static_cast<std::pair<std::atomic<int>*, std::atomic<bool>*>*>(p);
          s->first->store(getpriority(PRIO_PROCESS, static_cast<id_t>(gettid())));
          s->second->store(true);
          s->second->notify_all();
          delete s;
        },
        new std::pair<std::atomic<int>*, std::atomic<bool>*>(&seen, &done));
  });
  lowered.join();
  done.wait(false);
  CHECK(seen.load() == process);
  // The helper itself, on a thread other than the main one (whose value is the process's).
  int after = 100;
  std::thread other([&] {
    REQUIRE(setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), process + 3) == 0);
    TakeProcessNice();
    after = getpriority(PRIO_PROCESS, static_cast<id_t>(gettid()));
  });
  other.join();
  CHECK(after == process);
}

TEST_CASE("MaskedCrc32c matches leveldb's") {
  // crc32c("123456789") = 0xE3069283 (the standard check value), masked as leveldb masks it.
  uint32_t c = 0xE3069283u;
  REQUIRE(MaskedCrc32c("123456789") == ((c >> 15) | (c << 17)) + 0xa282ead8u);
}

TEST_CASE("a log is written into zero-filled space and cut to its length on close") {
  TempDir dir;
  {
    Result<std::unique_ptr<KvStore>> kv = OpenLevelDb(dir.path());
    REQUIRE(kv.ok());
    KvStore::Batch b;
    b.Put("a", "1");
    REQUIRE((*kv)->Write(b, /*sync=*/true).ok());
    std::vector<fs::path> logs = Logs(dir.path());
    REQUIRE(logs.size() == 1);
    REQUIRE(fs::file_size(logs[0]) == kLogExtendBytes);
  }
  std::vector<fs::path> logs = Logs(dir.path());
  REQUIRE(logs.size() == 1);
  REQUIRE(fs::file_size(logs[0]) < 100);
  Result<std::unique_ptr<KvStore>> kv = OpenLevelDb(dir.path());
  REQUIRE(kv.ok());
  std::string v;
  REQUIRE((*kv)->Get("a", &v).ok());
  REQUIRE(v == "1");
}

TEST_CASE("after a crash every synced write is recovered from a zero-filled log") {
  TempDir dir;
  const int n = 6000;  // ~1.4 MiB of log: crosses one extension
  WriteAndCrash(dir.path(), n);
  std::vector<fs::path> logs = Logs(dir.path());
  REQUIRE(logs.size() == 1);
  REQUIRE(fs::file_size(logs[0]) == 2 * kLogExtendBytes);
  Result<std::unique_ptr<KvStore>> kv = OpenLevelDb(dir.path());
  INFO(kv.status().ToString());
  REQUIRE(kv.ok());
  ExpectKeys(kv->get(), n);
}

TEST_CASE("a torn last record is cut; the records before it are kept") {
  TempDir dir;
  const int n = 50;
  WriteAndCrash(dir.path(), n);
  fs::path log = Logs(dir.path()).at(0);
  // What a write cut short leaves: a header announcing 200 bytes whose CRC does not match, and
  // part of the payload, then the zeros written ahead.
  Result<LogTailRepair> probe = RepairLogTail(log.string());  // finds the end (cuts the zeros)
  REQUIRE(probe.ok());
  REQUIRE(probe->records == n);
  REQUIRE_FALSE(probe->torn);
  uint64_t end = probe->size_after;
  fs::resize_file(log, kLogExtendBytes);
  std::string torn = std::string("\x12\x34\x56\x78\xc8\x00\x01", 7) + std::string(90, 'x');
  WriteAt(log, end, torn);

  Result<LogTailRepair> rep = RepairLogTail(log.string());
  REQUIRE(rep.ok());
  REQUIRE(rep->torn);
  REQUIRE(rep->records == n);
  REQUIRE(rep->size_after == end);
  REQUIRE(fs::file_size(log) == end);

  WriteAt(log, end, torn);  // again, for the repair leveldb's recovery runs itself
  Result<std::unique_ptr<KvStore>> kv = OpenLevelDb(dir.path());
  INFO(kv.status().ToString());
  REQUIRE(kv.ok());
  ExpectKeys(kv->get(), n);
}

TEST_CASE("a damaged record with intact records after it is reported, not cut") {
  TempDir dir;
  WriteAndCrash(dir.path(), 500);  // several 32 KiB blocks
  fs::path log = Logs(dir.path()).at(0);
  Result<LogTailRepair> before = RepairLogTail(log.string());  // cuts the zeros only
  REQUIRE(before.ok());
  REQUIRE(before->records >= 500);  // physical records: a few span two blocks
  REQUIRE_FALSE(before->torn);
  WriteAt(log, 20, "garbage");  // inside the first record's payload

  Result<LogTailRepair> rep = RepairLogTail(log.string());
  REQUIRE(rep.ok());
  REQUIRE(rep->size_after == before->size_after);  // nothing cut
  REQUIRE(rep->records < before->records);         // the first block's no longer count
  REQUIRE(rep->records > 0);

  Result<std::unique_ptr<KvStore>> kv = OpenLevelDb(dir.path());
  REQUIRE_FALSE(kv.ok());
  INFO(kv.status().ToString());
  REQUIRE(kv.status().code() == Code::kCorruption);
}

TEST_CASE("Sync runs beside writers, across a log switch") {
  TempDir dir;
  const int n = 3000;
  {
    Result<std::unique_ptr<KvStore>> kv = OpenLevelDb(dir.path());
    REQUIRE(kv.ok());
    std::atomic<bool> done{false};
    std::atomic<int> sync_errors{0};
    std::thread syncer([&] {
      while (!done) {
        if (!(*kv)->Sync().ok()) ++sync_errors;
      }
    });
    for (int i = 0; i < n; ++i) {
      KvStore::Batch b;
      b.Put(Key(i), std::string(8 << 10, 'v'));  // 24 MiB in all: past the 16 MiB memtable
      REQUIRE((*kv)->Write(b, /*sync=*/false).ok());
    }
    done = true;
    syncer.join();
    CHECK(sync_errors == 0);
  }
  Result<std::unique_ptr<KvStore>> kv = OpenLevelDb(dir.path());
  REQUIRE(kv.ok());
  for (int i = 0; i < n; i += 97) {
    std::string v;
    REQUIRE((*kv)->Get(Key(i), &v).ok());
    REQUIRE(v.size() == (8u << 10));
  }
}

}  // namespace
}  // namespace constellation
