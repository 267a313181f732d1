// The simulator's command line (tools/sim wraps it).
//
//   sim_raft --seed N [--verbose]            one seed, in this process (replay a failure)
//   sim_raft --seeds COUNT [--first N]        COUNT seeds from N (default 1), in this process; a
//                                             crash (a CHECK, a signal, a sanitizer report) still
//                                             prints its seed and the replay command
//   --fork            run each seed in a child process, so the run goes on after a crash
//   --duration MS     simulated time per seed (default 3000; the last 1000 are quiet)
//   --broken          run raft with unsafe_commit_previous_terms
//   --expect-failure  succeed only if some seed fails a checker (stops at the first); proves the
//                     checkers can fail
// Exit status: 0 when every seed passed (or, with --expect-failure, when one failed).
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "tests/sim/sim.h"

namespace {

using constellation::sim::RunSimulation;
using constellation::sim::SimOptions;
using constellation::sim::SimResult;

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
std::string ReplayCommand(uint64_t seed, const SimOptions& o) {
  std::string s = "tools/sim --seed " + std::to_string(seed);
  if (o.duration_ms != 3000) s += " --duration " + std::to_string(o.duration_ms);
  if (o.broken) s += " --broken";
  return s + " --verbose";
}

int RunOne(SimOptions o, bool print_summary) {
  SimResult r = RunSimulation(o);
  if (!r.ok) {
    std::printf("seed %llu FAILED: %s\n  cluster: %s\n  replay: %s\n",
                static_cast<unsigned long long>(o.seed), r.failure.c_str(), r.summary.c_str(),
                ReplayCommand(o.seed, o).c_str());
    std::fflush(stdout);
    return kExitViolation;
  }
  if (print_summary) {
    std::printf("seed %llu ok: %s%s\n", static_cast<unsigned long long>(o.seed), r.summary.c_str(),
                r.lin_gave_up ? " (linearizability search gave up on a key)" : "");
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  SimOptions o;
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
  if (o.duration_ms < 2 * o.quiet_ms) o.quiet_ms = o.duration_ms / 2;
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
  if (expect_failure) {
    if (failed > 0) {
      std::printf("as expected, the checkers caught the broken raft\n");
      return 0;
    }
    std::printf("the checkers did NOT catch the broken raft within %llu seeds\n",
                static_cast<unsigned long long>(count));
    return 1;
  }
  return failed + crashed == 0 ? 0 : 1;
}
