// Micro-benchmark of the chunk store beside plain file I/O on the same file system, in one run.
// Not a test (timings depend on the machine); run by hand:
//   dfs_chunk_store_bench [--dir DIR] [--mib N] [--read-kib K] [--rounds R]
// Writes N MiB (default 1024) as 4 MiB chunks: Put all, then one Sync of all; then the same bytes
// to one native file with 4 MiB write(2)s and one fdatasync. Then reads both back in K KiB
// (default 128, FUSE's usual request) pieces, cold (pages dropped with POSIX_FADV_DONTNEED) and
// warm; the store's cold read once more with Prefetch of the next chunk, as the DFS read path
// would do for a sequential reader. Each write phase starts after sync(2), so it does not pay for
// the previous phase's write-back. Prints the best of R (default 2) rounds for each phase, in
// MiB/s, and the store/native ratio. The numbers are only as steady as the machine's disk.
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "node/dfs/chunk_store.h"

namespace {

using constellation::ChunkId;
using constellation::ChunkStore;
using constellation::kMaxChunkBytes;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "chunk_store_bench: %s\n", what.c_str());
  std::exit(1);
}

void DropPages(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

void Row(const char* what, double mib, double seconds, double native_seconds) {
  std::printf("%-34s %9.1f MiB/s", what, mib / seconds);
  if (native_seconds > 0) std::printf("   %5.0f%% of native", 100.0 * native_seconds / seconds);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = (std::filesystem::temp_directory_path() / "cn_chunk_bench").string();
  size_t mib = 1024;
  size_t read_kib = 128;
  int rounds = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--dir") {
      dir = argv[i + 1];
    } else if (flag == "--mib") {
      mib = std::strtoul(argv[i + 1], nullptr, 10);
    } else if (flag == "--read-kib") {
      read_kib = std::strtoul(argv[i + 1], nullptr, 10);
    } else if (flag == "--rounds") {
      rounds = std::atoi(argv[i + 1]);
    } else {
      Die("unknown flag " + flag);
    }
  }
  if (mib < 4 || read_kib == 0 || read_kib * 1024 > kMaxChunkBytes || rounds < 1 || rounds > 20) {
    Die("bad --mib/--read-kib/--rounds");
  }
  const size_t chunks = mib / 4;
  const double total_mib = static_cast<double>(chunks) * 4;
  const size_t piece = read_kib * 1024;

  // Distinct chunks: one random buffer with the round and chunk index stamped into its first bytes.
  std::string buf(kMaxChunkBytes, '\0');
  std::mt19937_64 rng(42);
  for (size_t i = 0; i + 8 <= buf.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(&buf[i], &v, 8);
  }
  std::vector<char> out(piece);

  // Best (lowest) time of each phase over the rounds.
  enum Phase {
    kPut,
    kSync,
    kNativeWrite,
    kNativeSync,
    kNativeCold,
    kStoreCold,
    kStorePrefetch,
    kNativeWarm,
    kStoreWarm,
    kPhases
  };
  std::vector<double> best(kPhases, 1e30);
  auto keep = [&](Phase p, double s) { best[p] = std::min(best[p], s); };
  uint64_t hits = 0, misses = 0;

  for (int round = 0; round < rounds; ++round) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    auto opened = ChunkStore::Open(dir + "/store");
    if (!opened.ok()) Die(opened.status().ToString());
    std::unique_ptr<ChunkStore> store = std::move(opened).value();
    std::string native = dir + "/native";

    // Each timed write phase starts with nothing dirty left over from the previous one.
    ::sync();
    std::vector<ChunkId> ids;
    auto t = Clock::now();
    for (size_t c = 0; c < chunks; ++c) {
      std::memcpy(&buf[0], &c, sizeof(c));
      std::memcpy(&buf[8], &round, sizeof(round));
      auto id = store->Put(buf);
      if (!id.ok()) Die(id.status().ToString());
      ids.push_back(*id);
    }
    keep(kPut, Seconds(t));
    t = Clock::now();
    if (auto s = store->Sync(ids); !s.ok()) Die(s.ToString());
    keep(kSync, Seconds(t));

    ::sync();
    t = Clock::now();
    int fd = ::open(native.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) Die("open native");
    for (size_t c = 0; c < chunks; ++c) {
      std::memcpy(&buf[0], &c, sizeof(c));
      std::memcpy(&buf[8], &round, sizeof(round));
      if (::write(fd, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size())) Die("write");
    }
    keep(kNativeWrite, Seconds(t));
    t = Clock::now();
    if (::fdatasync(fd) != 0) Die("fdatasync");
    // fsync of the directory too, as the store does for its new entries.
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    ::fsync(dfd);
    ::close(dfd);
    keep(kNativeSync, Seconds(t));
    ::close(fd);

    // `prefetch`: as a sequential reader would, ask for the next chunk when starting one.
    auto read_store = [&](bool prefetch) {
      auto start = Clock::now();
      for (size_t c = 0; c < ids.size(); ++c) {
        if (prefetch && c + 1 < ids.size()) store->Prefetch(ids[c + 1]);
        for (size_t off = 0; off < kMaxChunkBytes; off += piece) {
          auto n = store->Read(ids[c], off, piece, out.data());
          if (!n.ok() || *n != piece) Die("store read: " + n.status().ToString());
        }
      }
      return Seconds(start);
    };
    auto read_native = [&]() {
      auto start = Clock::now();
      int rfd = ::open(native.c_str(), O_RDONLY);
      if (rfd < 0) Die("open native for read");
      while (true) {
        ssize_t n = ::read(rfd, out.data(), piece);
        if (n < 0) Die("read native");
        if (n == 0) break;
      }
      ::close(rfd);
      return Seconds(start);
    };
    auto drop_all = [&]() {
      DropPages(native);
      for (const ChunkId& id : ids) {
        DropPages(dir + "/store/" + id.Hex().substr(0, 2) + "/" + id.Hex());
      }
    };

    drop_all();
    keep(kNativeCold, read_native());
    keep(kStoreCold, read_store(false));
    drop_all();
    keep(kStorePrefetch, read_store(true));
    keep(kNativeWarm, read_native());
    keep(kStoreWarm, read_store(false));
    hits += store->Stats().cache_hits;
    misses += store->Stats().cache_misses;
  }
  std::filesystem::remove_all(dir);

  std::printf("%zu MiB in %zu chunks of 4 MiB, reads of %zu KiB, best of %d rounds, dir %s\n",
              static_cast<size_t>(total_mib), chunks, read_kib, rounds, dir.c_str());
  Row("native write (page cache)", total_mib, best[kNativeWrite], 0);
  Row("store Put (hash+write+rename)", total_mib, best[kPut], best[kNativeWrite]);
  Row("native write + fdatasync", total_mib, best[kNativeWrite] + best[kNativeSync], 0);
  Row("store Put + Sync", total_mib, best[kPut] + best[kSync],
      best[kNativeWrite] + best[kNativeSync]);
  std::printf("%-34s %9.3f s (native fdatasync %.3f s)\n", "store Sync of all chunks", best[kSync],
              best[kNativeSync]);
  Row("native read, cold", total_mib, best[kNativeCold], 0);
  Row("store Read, cold (verify once)", total_mib, best[kStoreCold], best[kNativeCold]);
  Row("store Read, cold, Prefetch next", total_mib, best[kStorePrefetch], best[kNativeCold]);
  Row("native read, warm", total_mib, best[kNativeWarm], 0);
  Row("store Read, warm page cache", total_mib, best[kStoreWarm], best[kNativeWarm]);
  std::printf("cache hits %llu, misses %llu\n", static_cast<unsigned long long>(hits),
              static_cast<unsigned long long>(misses));
  return 0;
}
