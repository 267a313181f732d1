// bench_fs_meta: times the metadata operations of a file system, phase by phase, and prints one
// machine-readable line of key=value pairs per phase:
//
//   phase=create threads=4 ops=20000 errors=0 ops_per_s=5120 p50_us=702.1 p99_us=2210.4
//   max_us=9120.0 elapsed_s=3.906
//
// Under --dir it makes one directory per thread (t0, t1, ...; not timed), then runs the phases in
// order, every thread starting each phase together and the next phase starting only when every
// thread has finished the previous one:
//   create   open(O_CREAT|O_EXCL|O_WRONLY) + close of an empty file f<i>
//   stat     stat() of f<i>
//   rename   rename() of f<i> to r<i> in the same directory
//   unlink   unlink() of r<i>
// Each thread owns its directory and the files i ≡ thread (mod T), so threads never contend for
// one directory's lock in the kernel (which serialises create, rename and unlink in a directory)
// and a file system sees T operations at once. Each operation is timed with CLOCK_MONOTONIC around
// exactly its system calls; ops_per_s is the phase's operations over the wall time from the
// common start to the last thread's end. The per-thread directories are removed at the end.
//
// With --drop-caches, the kernel's dentry and inode caches are dropped (`2` into
// /proc/sys/vm/drop_caches, needs root) before each phase, so every phase's first use of a name
// reaches the file system instead of being answered from what the previous phase left cached.
// With --segment N as well, each phase is also cut into segments of N files (by index), with the
// threads pausing between segments while the caches are dropped (not timed; the phase's time is
// the sum of its segments'). Every file is used once per phase, so this changes no operation's
// work; it bounds how many inodes the kernel keeps alive, which matters for a FUSE server that
// holds a descriptor per inode (libfuse's passthrough_ll) under a descriptor limit.
// A failed operation stops the run: the tool prints the error and exits 1.
#include <fcntl.h>
#include <getopt.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tools/bench/bench_util.h"

namespace {

using bench::NowNs;
using bench::PercentileUs;

constexpr char kUsage[] = R"(usage: bench_fs_meta --dir DIR [options]

Times create, stat, rename and unlink of many empty files; one line of results per phase.

  --dir DIR        an existing directory on the file system to measure
  --files N        files in all, spread over the threads (1..10000000, default 20000)
  --threads T      concurrent threads, each in its own subdirectory (1..256, default 4)
  --drop-caches    drop the kernel's dentry and inode caches before each phase (root)
  --segment N      with --drop-caches, also drop them after every N files of a phase
)";

constexpr int64_t kMaxFiles = 10'000'000;
constexpr int kMaxThreads = 256;

enum class Phase { kCreate, kStat, kRename, kUnlink };
constexpr Phase kPhases[] = {Phase::kCreate, Phase::kStat, Phase::kRename, Phase::kUnlink};

const char* PhaseName(Phase p) {
  switch (p) {
    case Phase::kCreate:
      return "create";
    case Phase::kStat:
      return "stat";
    case Phase::kRename:
      return "rename";
    case Phase::kUnlink:
      return "unlink";
  }
  return "?";
}

struct Config {
  std::string dir;
  int64_t files = 20000;
  int threads = 4;
  bool drop_caches = false;
  int64_t segment = 0;  // files per segment; 0 = the whole phase is one segment
};

// Starts every thread's phase at once; reusable, one generation per phase.
class Barrier {
 public:
  explicit Barrier(int parties) : parties_(parties), waiting_(parties) {}
  // Returns the time the last party arrived (the phase's common start).
  int64_t ArriveAndWait() {
    std::unique_lock<std::mutex> l(mu_);
    uint64_t gen = generation_;
    if (--waiting_ == 0) {
      start_ns_ = NowNs();
      waiting_ = parties_;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(l, [&] { return generation_ != gen; });
    }
    return start_ns_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int parties_;
  int waiting_;
  uint64_t generation_ = 0;
  int64_t start_ns_ = 0;
};

struct Worker {
  std::string dir;                  // this thread's directory
  std::vector<int64_t> files;       // the file indices it handles, ascending
  std::vector<int64_t> samples_ns;  // the current phase's latencies
  int64_t start_ns = 0;             // the current segment's common start
  int64_t end_ns = 0;               // when this thread finished the current segment
  std::string error;                // empty while every operation succeeds
};

std::string FilePath(const Worker& w, char prefix, int64_t i) {
  return w.dir + "/" + prefix + std::to_string(i);
}

// One timed operation on file i; false (with w->error set) on failure.
bool Once(Phase p, Worker* w, int64_t i) {
  switch (p) {
    case Phase::kCreate: {
      std::string path = FilePath(*w, 'f', i);
      int fd = open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
      if (fd < 0) {
        w->error = "create " + path + ": " + strerror(errno);
        return false;
      }
      if (close(fd) != 0) {
        w->error = "close " + path + ": " + strerror(errno);
        return false;
      }
      return true;
    }
    case Phase::kStat: {
      std::string path = FilePath(*w, 'f', i);
      struct stat st;
      if (stat(path.c_str(), &st) != 0) {
        w->error = "stat " + path + ": " + strerror(errno);
        return false;
      }
      if (!S_ISREG(st.st_mode) || st.st_size != 0) {
        w->error = "stat " + path + ": not an empty regular file";
        return false;
      }
      return true;
    }
    case Phase::kRename: {
      std::string from = FilePath(*w, 'f', i);
      std::string to = FilePath(*w, 'r', i);
      if (rename(from.c_str(), to.c_str()) != 0) {
        w->error = "rename " + from + " to " + to + ": " + strerror(errno);
        return false;
      }
      return true;
    }
    case Phase::kUnlink: {
      std::string path = FilePath(*w, 'r', i);
      if (unlink(path.c_str()) != 0) {
        w->error = "unlink " + path + ": " + strerror(errno);
        return false;
      }
      return true;
    }
  }
  return false;
}

// Every phase runs in `segments` segments; each thread does the files of segment k that are its
// own, i.e. indices in [k * segment_files, (k + 1) * segment_files).
void RunThread(Barrier* barrier, Worker* w, int64_t segments, int64_t segment_files,
               const bool* stop) {
  for (Phase p : kPhases) {
    size_t next = 0;  // index into w->files
    for (int64_t k = 0; k < segments; ++k) {
      w->start_ns = barrier->ArriveAndWait();  // every thread starts the segment together
      if (k == 0) {
        w->samples_ns.clear();
        w->samples_ns.reserve(w->files.size());
      }
      int64_t limit = (k + 1) * segment_files;
      while (!*stop && w->error.empty() && next < w->files.size() && w->files[next] < limit) {
        int64_t t0 = NowNs();
        if (!Once(p, w, w->files[next])) break;
        w->samples_ns.push_back(NowNs() - t0);
        ++next;
      }
      w->end_ns = NowNs();
      barrier->ArriveAndWait();  // the segment has ended for everyone: main accounts for it
      barrier->ArriveAndWait();  // main has (maybe) dropped caches: next segment or phase
    }
  }
}

bool DropCaches() {
  int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, "2\n", 2) != 2) {
    fprintf(stderr, "bench_fs_meta: drop caches: %s\n", strerror(errno));
    if (fd >= 0) close(fd);
    return false;
  }
  close(fd);
  return true;
}

bool ParseArgs(int argc, char** argv, Config* c) {
  static const option kOptions[] = {{"dir", required_argument, nullptr, 'd'},
                                    {"files", required_argument, nullptr, 'n'},
                                    {"threads", required_argument, nullptr, 't'},
                                    {"drop-caches", no_argument, nullptr, 'c'},
                                    {"segment", required_argument, nullptr, 's'},
                                    {"help", no_argument, nullptr, 'h'},
                                    {nullptr, 0, nullptr, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", kOptions, nullptr)) != -1) {
    switch (opt) {
      case 'd':
        c->dir = optarg;
        break;
      case 'n':
        if (!bench::IntOption("bench_fs_meta", "files", optarg, 1, kMaxFiles, &c->files))
          return false;
        break;
      case 't':
        if (!bench::IntOption("bench_fs_meta", "threads", optarg, 1, kMaxThreads, &c->threads))
          return false;
        break;
      case 'c':
        c->drop_caches = true;
        break;
      case 's':
        if (!bench::IntOption("bench_fs_meta", "segment", optarg, 1, kMaxFiles, &c->segment))
          return false;
        break;
      case 'h':
        fputs(kUsage, stdout);
        exit(0);
      default:
        fputs(kUsage, stderr);
        return false;
    }
  }
  if (optind < argc || c->dir.empty()) {
    fprintf(stderr, "bench_fs_meta: --dir is required\n\n%s", kUsage);
    return false;
  }
  if (c->files < c->threads) {
    fprintf(stderr, "bench_fs_meta: --files must be at least --threads\n");
    return false;
  }
  if (c->segment > 0 && !c->drop_caches) {
    fprintf(stderr, "bench_fs_meta: --segment needs --drop-caches\n");
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  if (!ParseArgs(argc, argv, &c)) return 2;
  std::vector<Worker> workers(static_cast<size_t>(c.threads));
  for (int t = 0; t < c.threads; ++t) {
    Worker& w = workers[static_cast<size_t>(t)];
    w.dir = c.dir + "/t" + std::to_string(t);
    if (mkdir(w.dir.c_str(), 0755) != 0) {
      fprintf(stderr, "bench_fs_meta: mkdir %s: %s\n", w.dir.c_str(), strerror(errno));
      return 1;
    }
    for (int64_t i = t; i < c.files; i += c.threads) w.files.push_back(i);
  }

  int64_t segment_files = c.segment > 0 ? c.segment : c.files;
  int64_t segments = (c.files + segment_files - 1) / segment_files;

  // The main thread is a party too: between segments it drops caches, between phases it reports.
  Barrier barrier(c.threads + 1);
  bool stop = false;  // written by main only while every thread waits at the barrier
  std::vector<std::thread> threads;
  for (Worker& w : workers) {
    threads.emplace_back(RunThread, &barrier, &w, segments, segment_files, &stop);
  }
  int rc = 0;
  for (Phase p : kPhases) {
    int64_t elapsed_ns = 0;
    for (int64_t k = 0; k < segments; ++k) {
      if (!stop && c.drop_caches && !DropCaches()) {
        stop = true;
        rc = 1;
      }
      barrier.ArriveAndWait();  // start
      barrier.ArriveAndWait();  // end
      int64_t end_ns = 0;
      for (const Worker& w : workers) end_ns = std::max(end_ns, w.end_ns);
      elapsed_ns += end_ns - workers[0].start_ns;
      if (k + 1 < segments) barrier.ArriveAndWait();  // next segment
    }
    if (!stop) {
      std::vector<int64_t> all;
      for (const Worker& w : workers) {
        if (!w.error.empty()) {
          fprintf(stderr, "bench_fs_meta: %s\n", w.error.c_str());
          stop = true;
          rc = 1;
        }
        all.insert(all.end(), w.samples_ns.begin(), w.samples_ns.end());
      }
      if (!stop) {
        std::sort(all.begin(), all.end());
        double elapsed_s = static_cast<double>(elapsed_ns) / 1e9;
        printf(
            "phase=%s threads=%d ops=%zu errors=0 ops_per_s=%.0f p50_us=%.1f p99_us=%.1f "
            "max_us=%.1f elapsed_s=%.6f\n",
            PhaseName(p), c.threads, all.size(),
            elapsed_s > 0 ? static_cast<double>(all.size()) / elapsed_s : 0.0,
            PercentileUs(all, 0.50), PercentileUs(all, 0.99),
            static_cast<double>(all.back()) / 1000.0, elapsed_s);
        fflush(stdout);
      }
    }
    barrier.ArriveAndWait();  // next phase (or the end)
  }
  for (std::thread& t : threads) t.join();
  for (const Worker& w : workers) {
    if (rmdir(w.dir.c_str()) != 0 && rc == 0) {
      fprintf(stderr, "bench_fs_meta: rmdir %s: %s\n", w.dir.c_str(), strerror(errno));
      rc = 1;
    }
  }
  return rc;
}
