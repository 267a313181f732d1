// bench_write_latency: measures the latency of small write(2)s to one file (or one file per
// thread) and prints one machine-readable line of key=value pairs:
//
//   mode=pwrite threads=1 ops=2000 errors=0 p50_us=41.2 p90_us=48.0 p99_us=95.1 max_us=310.4
//   ops_per_s=22890 elapsed_s=0.087
//
// Each operation is timed with CLOCK_MONOTONIC around exactly the system calls of the mode:
//   pwrite            pwrite(fd, value, 0) on a file opened once per thread
//   pwrite-fdatasync  pwrite(fd, value, 0) then fdatasync(fd): the durable overwrite
//   append-fdatasync  write(fd, value) on an O_APPEND file (truncated at start) then fdatasync:
//                     a durable append that grows the file, as a write-ahead log does
//   open-write-close  open(O_WRONLY|O_TRUNC), write, close: what `echo 512 > f` does
// Values are written as "<value>\n" and alternate through --values, so every write changes the
// state (the sequence continues across the warm-up and across threads' own iterations).
//
// With --threads T, T threads each open their own file descriptor and do --iterations writes;
// a `%d` in --file is replaced by the thread's index (0..T-1), so each thread can write a
// different file. The percentiles pool every thread's samples; ops_per_s is all measured
// operations divided by the wall time from the common start to the last thread's end.
// With --samples FILE, every measured latency is also appended to FILE (nanoseconds, one per
// line), so a driver can pool several interleaved runs before taking percentiles.
// A failed or short write stops the run: the tool prints the error and exits 1.
#include <fcntl.h>
#include <getopt.h>
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
using bench::StartGate;

constexpr char kUsage[] = R"(usage: bench_write_latency --file PATH --iterations N [options]

Times small write(2)s and prints p50, p90, p99, max (microseconds) and ops/s on one line.

  --file PATH        the file to write; `%d` is replaced by the thread index (0..T-1)
  --iterations N     measured writes per thread (1..10000000)
  --warmup N         unmeasured writes per thread first (default 50)
  --mode M           pwrite (default), pwrite-fdatasync, append-fdatasync or open-write-close
  --values A,B,...   values written in turn, each followed by a newline (default 256,512)
  --threads T        concurrent writers, each with its own fd (1..256, default 1)
  --samples FILE     also append every latency to FILE, in nanoseconds, one per line
)";

constexpr int64_t kMaxIterations = 10'000'000;
constexpr int64_t kMaxSamples = 50'000'000;  // iterations × threads, bounds the sample memory
constexpr int kMaxThreads = 256;
constexpr size_t kMaxValueBytes = 4096;
constexpr size_t kMaxValues = 64;

enum class Mode { kPwrite, kPwriteFdatasync, kAppendFdatasync, kOpenWriteClose };

struct Config {
  std::string file;
  int64_t iterations = 0;
  int64_t warmup = 50;
  Mode mode = Mode::kPwrite;
  std::string mode_name = "pwrite";
  std::vector<std::string> values = {"256\n", "512\n"};
  int threads = 1;
  std::string samples_file;
};

std::string PathFor(const std::string& pattern, int index) {
  std::string out;
  size_t pos = 0;
  for (;;) {
    size_t hit = pattern.find("%d", pos);
    if (hit == std::string::npos) break;
    out.append(pattern, pos, hit - pos);
    out += std::to_string(index);
    pos = hit + 2;
  }
  out.append(pattern, pos, std::string::npos);
  return out;
}

struct Worker {
  std::string path;
  std::vector<int64_t> samples_ns;  // one per measured operation
  int64_t end_ns = 0;
  std::string error;  // empty when every operation succeeded
};

class Runner {
 public:
  Runner(const Config& c, StartGate* gate) : c_(c), gate_(gate) {}

  void Run(Worker* w) {
    int fd = -1;
    if (c_.mode != Mode::kOpenWriteClose) {
      int flags = O_WRONLY | O_CLOEXEC;
      if (c_.mode == Mode::kAppendFdatasync) flags |= O_APPEND | O_TRUNC;
      fd = open(w->path.c_str(), flags);
      if (fd < 0) {
        w->error = "open " + w->path + ": " + strerror(errno);
        gate_->ArriveAndWait();
        return;
      }
    }
    size_t next_value = 0;
    for (int64_t i = 0; i < c_.warmup && w->error.empty(); ++i) {
      Once(w, fd, c_.values[next_value++ % c_.values.size()]);
    }
    gate_->ArriveAndWait();
    w->samples_ns.reserve(static_cast<size_t>(c_.iterations));
    for (int64_t i = 0; i < c_.iterations && w->error.empty(); ++i) {
      const std::string& v = c_.values[next_value++ % c_.values.size()];
      int64_t t0 = NowNs();
      if (!Once(w, fd, v)) break;
      w->samples_ns.push_back(NowNs() - t0);
    }
    w->end_ns = NowNs();
    if (fd >= 0) close(fd);
  }

 private:
  // One timed operation; false (with w->error set) on failure.
  bool Once(Worker* w, int fd, const std::string& v) {
    switch (c_.mode) {
      case Mode::kPwrite:
        return Check(w, "pwrite", pwrite(fd, v.data(), v.size(), 0), v.size());
      case Mode::kPwriteFdatasync:
        return Check(w, "pwrite", pwrite(fd, v.data(), v.size(), 0), v.size()) &&
               Check(w, "fdatasync", fdatasync(fd), 0);
      case Mode::kAppendFdatasync:
        return Check(w, "write", write(fd, v.data(), v.size()), v.size()) &&
               Check(w, "fdatasync", fdatasync(fd), 0);
      case Mode::kOpenWriteClose: {
        int f = open(w->path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
        if (f < 0) return Check(w, "open", -1, 0);
        bool ok = Check(w, "write", write(f, v.data(), v.size()), v.size());
        if (close(f) != 0 && ok) ok = Check(w, "close", -1, 0);
        return ok;
      }
    }
    return false;
  }

  static bool Check(Worker* w, const char* what, ssize_t got, size_t want) {
    if (got < 0) {
      w->error = std::string(what) + " " + w->path + ": " + strerror(errno);
      return false;
    }
    if (static_cast<size_t>(got) != want) {
      w->error = std::string(what) + " " + w->path + ": short write (" + std::to_string(got) +
                 " of " + std::to_string(want) + " bytes)";
      return false;
    }
    return true;
  }

  const Config& c_;
  StartGate* gate_;
};

bool AppendSamples(const std::string& path, const std::vector<Worker>& workers) {
  FILE* f = fopen(path.c_str(), "ae");
  if (f == nullptr) {
    fprintf(stderr, "bench_write_latency: open %s: %s\n", path.c_str(), strerror(errno));
    return false;
  }
  for (const Worker& w : workers) {
    for (int64_t ns : w.samples_ns) fprintf(f, "%" PRId64 "\n", ns);
  }
  if (fclose(f) != 0) {
    fprintf(stderr, "bench_write_latency: write %s: %s\n", path.c_str(), strerror(errno));
    return false;
  }
  return true;
}

bool ParseArgs(int argc, char** argv, Config* c) {
  static const option kOptions[] = {{"file", required_argument, nullptr, 'f'},
                                    {"iterations", required_argument, nullptr, 'n'},
                                    {"warmup", required_argument, nullptr, 'w'},
                                    {"mode", required_argument, nullptr, 'm'},
                                    {"values", required_argument, nullptr, 'v'},
                                    {"threads", required_argument, nullptr, 't'},
                                    {"samples", required_argument, nullptr, 's'},
                                    {"help", no_argument, nullptr, 'h'},
                                    {nullptr, 0, nullptr, 0}};
  int opt;
  while ((opt = getopt_long(argc, argv, "", kOptions, nullptr)) != -1) {
    switch (opt) {
      case 'f':
        c->file = optarg;
        break;
      case 'n':
        if (!bench::IntOption("bench_write_latency", "iterations", optarg, 1, kMaxIterations,
                              &c->iterations))
          return false;
        break;
      case 'w':
        if (!bench::IntOption("bench_write_latency", "warmup", optarg, 0, kMaxIterations,
                              &c->warmup))
          return false;
        break;
      case 'm': {
        std::string m = optarg;
        c->mode_name = m;
        if (m == "pwrite") {
          c->mode = Mode::kPwrite;
        } else if (m == "pwrite-fdatasync") {
          c->mode = Mode::kPwriteFdatasync;
        } else if (m == "append-fdatasync") {
          c->mode = Mode::kAppendFdatasync;
        } else if (m == "open-write-close") {
          c->mode = Mode::kOpenWriteClose;
        } else {
          fprintf(stderr, "bench_write_latency: --mode: unknown mode \"%s\"\n", optarg);
          return false;
        }
        break;
      }
      case 'v': {
        c->values.clear();
        std::string all = optarg;
        size_t pos = 0;
        for (;;) {
          size_t comma = all.find(',', pos);
          std::string v = all.substr(pos, comma == std::string::npos ? comma : comma - pos);
          if (v.empty() || v.size() > kMaxValueBytes || c->values.size() >= kMaxValues) {
            fprintf(stderr,
                    "bench_write_latency: --values: 1..%zu values of 1..%zu bytes, "
                    "comma-separated\n",
                    kMaxValues, kMaxValueBytes);
            return false;
          }
          c->values.push_back(v + "\n");
          if (comma == std::string::npos) break;
          pos = comma + 1;
        }
        break;
      }
      case 't':
        if (!bench::IntOption("bench_write_latency", "threads", optarg, 1, kMaxThreads,
                              &c->threads))
          return false;
        break;
      case 's':
        c->samples_file = optarg;
        break;
      case 'h':
        fputs(kUsage, stdout);
        exit(0);
      default:
        fputs(kUsage, stderr);
        return false;
    }
  }
  if (optind < argc || c->file.empty() || c->iterations == 0) {
    fprintf(stderr, "bench_write_latency: --file and --iterations are required\n\n%s", kUsage);
    return false;
  }
  if (c->iterations * c->threads > kMaxSamples) {
    fprintf(stderr, "bench_write_latency: iterations x threads must be at most %" PRId64 "\n",
            kMaxSamples);
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  if (!ParseArgs(argc, argv, &c)) return 2;
  StartGate gate(c.threads);
  Runner runner(c, &gate);
  std::vector<Worker> workers(static_cast<size_t>(c.threads));
  std::vector<std::thread> threads;
  for (int i = 0; i < c.threads; ++i) {
    workers[static_cast<size_t>(i)].path = PathFor(c.file, i);
  }
  for (int i = 0; i < c.threads; ++i) {
    threads.emplace_back([&, i] { runner.Run(&workers[static_cast<size_t>(i)]); });
  }
  for (std::thread& t : threads) t.join();

  std::vector<int64_t> all;
  int64_t end_ns = 0;
  int errors = 0;
  for (const Worker& w : workers) {
    if (!w.error.empty()) {
      fprintf(stderr, "bench_write_latency: %s\n", w.error.c_str());
      ++errors;
    }
    all.insert(all.end(), w.samples_ns.begin(), w.samples_ns.end());
    end_ns = std::max(end_ns, w.end_ns);
  }
  if (errors > 0 || all.empty()) return 1;
  if (!c.samples_file.empty() && !AppendSamples(c.samples_file, workers)) return 1;
  std::sort(all.begin(), all.end());
  double elapsed_s = static_cast<double>(end_ns - gate.start_ns()) / 1e9;
  printf(
      "mode=%s threads=%d ops=%zu errors=0 p50_us=%.1f p90_us=%.1f p99_us=%.1f max_us=%.1f "
      "ops_per_s=%.0f elapsed_s=%.6f\n",
      c.mode_name.c_str(), c.threads, all.size(), PercentileUs(all, 0.50), PercentileUs(all, 0.90),
      PercentileUs(all, 0.99), static_cast<double>(all.back()) / 1000.0,
      elapsed_s > 0 ? static_cast<double>(all.size()) / elapsed_s : 0.0, elapsed_s);
  return 0;
}
