// What the benchmark tools share: a monotonic clock in nanoseconds, strict integer options, a
// start gate for threads, and nearest-rank percentiles. Header-only: each tool is one .cc file.
//
// Thread-safety: the functions are safe from any thread; StartGate is made for threads to share.
#ifndef CONSTELLATION_TOOLS_BENCH_BENCH_UTIL_H_
#define CONSTELLATION_TOOLS_BENCH_BENCH_UTIL_H_

#include <time.h>

#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace bench {

inline int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

// A decimal integer in [lo, hi] and nothing else; false leaves *out alone.
inline bool ParseInt(const char* s, int64_t lo, int64_t hi, int64_t* out) {
  char* end = nullptr;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) return false;
  *out = v;
  return true;
}

// The value of option --`name` (`arg`): an integer in [lo, hi], else false after saying so on
// stderr ("tool: --name: expected lo..hi").
template <typename T>
bool IntOption(const char* tool, const char* name, const char* arg, int64_t lo, int64_t hi,
               T* out) {
  int64_t v;
  if (!ParseInt(arg, lo, hi, &v)) {
    fprintf(stderr, "%s: --%s: expected %" PRId64 "..%" PRId64 "\n", tool, name, lo, hi);
    return false;
  }
  *out = static_cast<T>(v);
  return true;
}

// Starts every thread's measured phase at once, after all have arrived (opened, warmed up).
class StartGate {
 public:
  explicit StartGate(int parties) : waiting_(parties) {}
  // Returns the common start time.
  int64_t ArriveAndWait() {
    std::unique_lock<std::mutex> l(mu_);
    if (--waiting_ == 0) {
      start_ns_ = NowNs();
      cv_.notify_all();
    } else {
      cv_.wait(l, [&] { return waiting_ == 0; });
    }
    return start_ns_;
  }
  // The common start time; read only after every party has arrived (e.g. after joining).
  int64_t start_ns() const { return start_ns_; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int waiting_;
  int64_t start_ns_ = 0;
};

// Nearest-rank percentile of sorted, non-empty samples in nanoseconds, in microseconds.
inline double PercentileUs(const std::vector<int64_t>& sorted, double q) {
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  if (rank == 0) rank = 1;
  return static_cast<double>(sorted[rank - 1]) / 1000.0;
}

}  // namespace bench

#endif  // CONSTELLATION_TOOLS_BENCH_BENCH_UTIL_H_
