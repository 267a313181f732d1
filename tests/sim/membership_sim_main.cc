// The membership simulator's command line (`tools/sim --membership` wraps it).
//
//   sim_membership --seed N [--verbose]       one seed, in this process (replay a failure)
//   sim_membership --seeds COUNT [--first N]  COUNT seeds from N (default 1), in this process; a
//                                             crash (a CHECK, a signal, a sanitizer report) still
//                                             prints its seed and the replay command
//   --fork            run each seed in a child process, so the run goes on after a crash
//   --duration MS     simulated time per seed (default 60000; the last 15000 are quiet)
//   --broken          members never refute suspicions (unsafe_no_refute)
//   --probe-interval MS, --probe-timeout MS   other settings than the library's defaults
//   --expect-failure  succeed only if some seed fails a checker (stops at the first); proves the
//                     checkers can fail
// Prints, at the end, the slowest detection (a crashed or paused node dead on every member) over
// all seeds and how many healthy nodes were suspected, or under loss declared dead, and refuted.
// Exit status: 0 when every seed passed (or, with --expect-failure, when one failed).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "tests/sim/membership_sim.h"

namespace {

using constellation::sim::MembershipSimOptions;
using constellation::sim::MembershipSimResult;
using constellation::sim::RunMembershipSimulation;

constexpr int kExitViolation = 3;

// What to print if the process dies in the middle of a seed (written by a signal handler or the
// sanitizers' death callback, so it is formatted in advance).
char g_crash_note[512];

void PrintCrashNote() {
  ssize_t n = write(1, g_crash_note, std::strlen(g_crash_note));
  (void)n;
}

void OnFatalSignal(int sig) {
  PrintCrashNote();
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

}  // namespace

extern "C" void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

namespace {
std::string ReplayCommand(uint64_t seed, const MembershipSimOptions& o) {
  std::string s = "tools/sim --membership --seed " + std::to_string(seed);
  if (o.duration_ms != 60000) s += " --duration " + std::to_string(o.duration_ms);
  if (o.probe_interval_ms) s += " --probe-interval " + std::to_string(o.probe_interval_ms);
  if (o.probe_timeout_ms) s += " --probe-timeout " + std::to_string(o.probe_timeout_ms);
  if (o.broken) s += " --broken";
  return s + " --verbose";
}

std::vector<int64_t> g_detections;        // all seeds
std::vector<int64_t> g_detections_lossy;  // seeds with more than 5% loss
std::vector<int64_t> g_detections_lan;    // seeds with at most 5% loss
uint64_t g_false_suspicions = 0;
double g_closest_to_bound = 0;  // the highest detection / bound
int64_t g_closest_detection_ms = 0, g_closest_bound_ms = 0;
uint64_t g_closest_seed = 0;
int64_t g_slowest_ms = -1;  // the slowest detection and its seed
uint64_t g_slowest_seed = 0;
std::map<double, std::pair<uint64_t, uint64_t>> g_false_deaths_by_loss;  // loss -> (seeds, deaths)

int RunOne(MembershipSimOptions o, bool print_summary) {
  MembershipSimResult r = RunMembershipSimulation(o);
  g_detections.insert(g_detections.end(), r.detection_ms.begin(), r.detection_ms.end());
  std::vector<int64_t>& by_loss = r.loss > 0.05 ? g_detections_lossy : g_detections_lan;
  by_loss.insert(by_loss.end(), r.detection_ms.begin(), r.detection_ms.end());
  g_false_suspicions += r.false_suspicions;
  for (size_t i = 0; i < r.detection_ms.size(); ++i) {
    const double ratio =
        static_cast<double>(r.detection_ms[i]) / static_cast<double>(r.detection_bound_ms[i]);
    if (ratio > g_closest_to_bound) {
      g_closest_to_bound = ratio;
      g_closest_detection_ms = r.detection_ms[i];
      g_closest_bound_ms = r.detection_bound_ms[i];
      g_closest_seed = o.seed;
    }
    if (r.detection_ms[i] > g_slowest_ms) {
      g_slowest_ms = r.detection_ms[i];
      g_slowest_seed = o.seed;
    }
  }
  auto& [seeds, deaths] = g_false_deaths_by_loss[r.loss];
  ++seeds;
  deaths += r.false_deaths;
  if (!r.ok) {
    std::printf("seed %llu FAILED: %s\n  cluster: %s\n  replay: %s\n",
                static_cast<unsigned long long>(o.seed), r.failure.c_str(), r.summary.c_str(),
                ReplayCommand(o.seed, o).c_str());
    std::fflush(stdout);
    return kExitViolation;
  }
  if (print_summary) {
    std::printf("seed %llu ok: %s\n", static_cast<unsigned long long>(o.seed), r.summary.c_str());
  } else if (r.false_deaths > 0) {  // allowed under loss, once refuted; rare enough to list
    std::printf("seed %llu: %llu healthy nodes declared dead at %g%% loss, refuted\n  replay: %s\n",
                static_cast<unsigned long long>(o.seed),
                static_cast<unsigned long long>(r.false_deaths), r.loss * 100,
                ReplayCommand(o.seed, o).c_str());
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  MembershipSimOptions o;
  bool single = false, expect_failure = false, fork_each = false;
  uint64_t first = 1, count = 1;
  for (int i = 1; i < argc; ++i) {
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", argv[i]);
        std::exit(2);
      }
      return argv[++i];
    };
    if (!std::strcmp(argv[i], "--seed")) {
      single = true;
      o.seed = std::strtoull(next(), nullptr, 10);
    } else if (!std::strcmp(argv[i], "--seeds")) {
      count = std::strtoull(next(), nullptr, 10);
    } else if (!std::strcmp(argv[i], "--first")) {
      first = std::strtoull(next(), nullptr, 10);
    } else if (!std::strcmp(argv[i], "--duration")) {
      o.duration_ms = std::strtoll(next(), nullptr, 10);
    } else if (!std::strcmp(argv[i], "--probe-interval")) {
      o.probe_interval_ms = std::strtoll(next(), nullptr, 10);
    } else if (!std::strcmp(argv[i], "--probe-timeout")) {
      o.probe_timeout_ms = std::strtoll(next(), nullptr, 10);
    } else if (!std::strcmp(argv[i], "--broken")) {
      o.broken = true;
    } else if (!std::strcmp(argv[i], "--verbose")) {
      o.verbose = true;
    } else if (!std::strcmp(argv[i], "--expect-failure")) {
      expect_failure = true;
    } else if (!std::strcmp(argv[i], "--fork")) {
      fork_each = true;
    } else {
      std::fprintf(stderr, "unknown argument %s (see tests/sim/sim_main.cc)\n", argv[i]);
      return 2;
    }
  }
  if (o.duration_ms < 20000) {
    std::fprintf(stderr,
                 "--duration must be at least 20000 (formation + the final quiet period)\n");
    return 2;
  }
  if (single) return RunOne(o, true) == 0 ? 0 : 1;

  for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) std::signal(sig, OnFatalSignal);
  if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(PrintCrashNote);
  auto start = std::chrono::steady_clock::now();
  uint64_t passed = 0, failed = 0, crashed = 0;
  for (uint64_t seed = first; seed < first + count; ++seed) {
    o.seed = seed;
    std::fflush(stdout);
    std::snprintf(g_crash_note, sizeof g_crash_note,
                  "seed %llu CRASHED (a CHECK, signal or sanitizer stopped it; see above)\n"
                  "  replay: %s\n",
                  static_cast<unsigned long long>(seed), ReplayCommand(seed, o).c_str());
    if (!fork_each) {
      if (RunOne(o, false) == 0) {
        ++passed;
        continue;
      }
      ++failed;
      if (expect_failure) break;
      continue;
    }
    pid_t pid = fork();
    if (pid < 0) {
      std::perror("fork");
      return 2;
    }
    if (pid == 0) _exit(RunOne(o, false));
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      ++passed;
      continue;
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == kExitViolation) {
      ++failed;
    } else {
      ++crashed;
      std::printf(
          "seed %llu CRASHED (a CHECK or sanitizer stopped it; output above)\n  replay: %s\n",
          static_cast<unsigned long long>(seed), ReplayCommand(seed, o).c_str());
    }
    if (expect_failure) break;
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%llu seeds passed, %llu failed a checker, %llu crashed (%.1f s)\n",
              static_cast<unsigned long long>(passed), static_cast<unsigned long long>(failed),
              static_cast<unsigned long long>(crashed), secs);
  if (!fork_each && !g_detections.empty()) {
    auto pct = [](std::vector<int64_t>& v, double p) {
      std::sort(v.begin(), v.end());
      return static_cast<long long>(v[static_cast<size_t>(p * static_cast<double>(v.size() - 1))]);
    };
    std::printf(
        "detection of %zu crashed or paused nodes (dead on every member): p50 %lld ms, p90 %lld "
        "ms, p99 %lld ms, max %lld ms\n",
        g_detections.size(), pct(g_detections, 0.5), pct(g_detections, 0.9),
        pct(g_detections, 0.99), pct(g_detections, 1.0));
    if (!g_detections_lan.empty()) {
      std::printf("  %zu with at most 5%% loss: p50 %lld ms, p99 %lld ms, max %lld ms\n",
                  g_detections_lan.size(), pct(g_detections_lan, 0.5), pct(g_detections_lan, 0.99),
                  pct(g_detections_lan, 1.0));
    }
    if (!g_detections_lossy.empty()) {
      std::printf("  %zu with 10%% loss: p50 %lld ms, p99 %lld ms, max %lld ms\n",
                  g_detections_lossy.size(), pct(g_detections_lossy, 0.5),
                  pct(g_detections_lossy, 0.99), pct(g_detections_lossy, 1.0));
    }
    std::printf("slowest: seed %llu; closest to its bound: %lld ms of %lld (%.0f%%), seed %llu\n",
                static_cast<unsigned long long>(g_slowest_seed),
                static_cast<long long>(g_closest_detection_ms),
                static_cast<long long>(g_closest_bound_ms), 100 * g_closest_to_bound,
                static_cast<unsigned long long>(g_closest_seed));
    std::printf("healthy nodes suspected (and refuted): %llu\n",
                static_cast<unsigned long long>(g_false_suspicions));
    std::printf("healthy nodes declared dead (and refuted), by loss:");
    for (const auto& [loss, sd] : g_false_deaths_by_loss) {
      std::printf(" %g%%: %llu in %llu seeds;", loss * 100,
                  static_cast<unsigned long long>(sd.second),
                  static_cast<unsigned long long>(sd.first));
    }
    std::printf("\n");
  }
  if (expect_failure) {
    if (failed > 0) {
      std::printf("as expected, the checkers caught members that never refute\n");
      return 0;
    }
    std::printf("the checkers did NOT catch members that never refute within %llu seeds\n",
                static_cast<unsigned long long>(count));
    return 1;
  }
  return failed + crashed == 0 ? 0 : 1;
}
