// Unit tests for the lifecycle core: back-off, parsing, and a seeded random walk that checks the
// invariants the runtime relies on (never two processes, a timer for every pending deadline).
#include "node/runtime/lifecycle.h"

#include <signal.h>

#include <random>
#include <regex>

#include "catch2/catch.hpp"

namespace constellation::runtime {
namespace {

TEST_CASE("backoff doubles from initial up to the cap") {
  Backoff b({.initial_ms = 100, .max_ms = 30000, .reset_after_ms = 10000});
  std::vector<int64_t> got;
  for (int i = 0; i < 12; ++i) got.push_back(b.Next());
  std::vector<int64_t> want = {100,  200,   400,   800,   1600,  3200,
                               6400, 12800, 25600, 30000, 30000, 30000};
  REQUIRE(got == want);
  REQUIRE(b.last_ms() == 30000);
}

TEST_CASE("backoff reset starts again at initial") {
  Backoff b({.initial_ms = 50, .max_ms = 1000, .reset_after_ms = 10});
  REQUIRE(b.last_ms() == 0);
  b.Next();
  b.Next();
  REQUIRE(b.Next() == 200);
  b.Reset();
  REQUIRE(b.last_ms() == 0);
  REQUIRE(b.Next() == 50);
}

TEST_CASE("backoff cap that is not a power-of-two multiple is reached exactly") {
  Backoff b({.initial_ms = 300, .max_ms = 1000, .reset_after_ms = 10});
  REQUIRE(b.Next() == 300);
  REQUIRE(b.Next() == 600);
  REQUIRE(b.Next() == 1000);
  REQUIRE(b.Next() == 1000);
}

TEST_CASE("backoff with initial == max is constant") {
  Backoff b({.initial_ms = 7, .max_ms = 7, .reset_after_ms = 10});
  REQUIRE(b.Next() == 7);
  REQUIRE(b.Next() == 7);
}

TEST_CASE("backoff near the largest allowed cap does not overflow") {
  BackoffConfig c{.initial_ms = 1, .max_ms = 24LL * 3600 * 1000, .reset_after_ms = 1};
  REQUIRE(ValidateBackoff(c).ok());
  Backoff b(c);
  int64_t last = 0;
  for (int i = 0; i < 100; ++i) {
    int64_t d = b.Next();
    REQUIRE(d >= last);
    REQUIRE(d <= c.max_ms);
    last = d;
  }
  REQUIRE(last == c.max_ms);
}

TEST_CASE("backoff and lifecycle config validation") {
  REQUIRE(ValidateBackoff({}).ok());
  REQUIRE_FALSE(ValidateBackoff({.initial_ms = 0, .max_ms = 10, .reset_after_ms = 1}).ok());
  REQUIRE_FALSE(ValidateBackoff({.initial_ms = 20, .max_ms = 10, .reset_after_ms = 1}).ok());
  REQUIRE_FALSE(ValidateBackoff({.initial_ms = 1, .max_ms = 10, .reset_after_ms = 0}).ok());
  LifecycleConfig c;
  c.stop_grace_ms = -1;
  REQUIRE_FALSE(ValidateLifecycleConfig(c).ok());
  c.stop_grace_ms = 0;
  REQUIRE(ValidateLifecycleConfig(c).ok());
}

TEST_CASE("restart policy and signal parsing") {
  REQUIRE(*ParseRestartPolicy("on-failure") == RestartPolicy::kOnFailure);
  REQUIRE(*ParseRestartPolicy("always") == RestartPolicy::kAlways);
  REQUIRE(*ParseRestartPolicy("never") == RestartPolicy::kNever);
  REQUIRE_FALSE(ParseRestartPolicy("sometimes").ok());
  REQUIRE_FALSE(ParseRestartPolicy("").ok());
  REQUIRE(*ParseSignal("TERM") == SIGTERM);
  REQUIRE(*ParseSignal("sigkill") == SIGKILL);
  REQUIRE(*ParseSignal("SIGHUP") == SIGHUP);
  REQUIRE(*ParseSignal("10") == 10);
  REQUIRE_FALSE(ParseSignal("0").ok());
  REQUIRE_FALSE(ParseSignal("65").ok());
  REQUIRE_FALSE(ParseSignal("NOPE").ok());
  REQUIRE_FALSE(ParseSignal("").ok());
  REQUIRE(SignalName(SIGSEGV) == "SIGSEGV");
  REQUIRE(SignalName(40) == "SIG40");
}

// A model of the world around one Lifecycle: it performs the actions (a process exists between a
// successful Spawn and its exit) and feeds random inputs, checking invariants after every step.
TEST_CASE("random walk: never two processes, timers cover every deadline, states are legal") {
  const std::regex legal(
      "created|starting|running|stopping|stopped|exited -?[0-9]+|failed (oom|lost|unknown|"
      "signal SIG[A-Z0-9]+|exec: .+|start: .+)");
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    std::mt19937_64 rng(seed);
    LifecycleConfig cfg;
    cfg.policy = static_cast<RestartPolicy>(rng() % 3);
    cfg.stop_grace_ms = static_cast<int64_t>(rng() % 3) * 500;
    cfg.backoff = {.initial_ms = 10, .max_ms = 200, .reset_after_ms = 1000};
    Lifecycle lc(cfg);
    int64_t now = 0;
    int64_t timer_at = 0;
    bool process = false;        // a process exists in the world
    bool spawn_pending = false;  // Spawn performed, Started/StartFailed not yet delivered
    pid_t next_pid = 100;
    auto apply = [&](const std::vector<Action>& actions) {
      for (const Action& a : actions) {
        switch (a.kind) {
          case Action::Kind::kSpawn: {
            INFO("seed " << seed);
            REQUIRE_FALSE(process);
            REQUIRE_FALSE(spawn_pending);
            spawn_pending = true;
            break;
          }
          case Action::Kind::kSignal:
          case Action::Kind::kKillAll: {
            INFO("seed " << seed);
            REQUIRE(process);
            break;
          }
          case Action::Kind::kTimer:
            timer_at = a.at_ms;
            break;
          case Action::Kind::kPublish: {
            INFO("seed " << seed << " state " << a.state);
            REQUIRE(std::regex_match(a.state, legal));
            break;
          }
        }
      }
    };
    for (int step = 0; step < 300; ++step) {
      now += static_cast<int64_t>(rng() % 400);
      Event e;
      if (spawn_pending) {
        spawn_pending = false;
        if (rng() % 5 == 0) {
          e = ev::StartFailed{"exec: x: No such file or directory", rng() % 2 == 0};
        } else {
          process = true;
          e = ev::Started{next_pid++};
        }
      } else {
        switch (rng() % 8) {
          case 0:
            e = ev::Start{};
            break;
          case 1:
            e = ev::Stop{};
            break;
          case 2:
            e = ev::Restart{};
            break;
          case 3:
            e = ev::Kill{SIGHUP};
            break;
          case 4:
            e = ev::SetPolicy{static_cast<RestartPolicy>(rng() % 3)};
            break;
          case 5:
            if (!process) continue;
            process = false;
            e = ev::Exited{static_cast<int>(rng() % 3), rng() % 4 == 0 ? SIGKILL : 0,
                           rng() % 6 == 0, false};
            break;
          default:
            // Time passes up to the requested timer, as the runtime's timerfd would deliver it.
            if (timer_at != 0) now = std::max(now, timer_at);
            e = ev::Tick{};
            break;
        }
      }
      apply(lc.Handle(now, e));
      INFO("seed " << seed << " step " << step << " phase " << PhaseName(lc.phase()));
      // The core agrees with the world about whether a process may exist.
      if (process) REQUIRE(lc.has_process());
      if (lc.phase() == Lifecycle::Phase::kRunning || lc.phase() == Lifecycle::Phase::kStopping) {
        REQUIRE(process);
        REQUIRE(lc.pid() > 0);
      }
      // Every pending deadline has a timer.
      if (lc.phase() == Lifecycle::Phase::kBackoff) {
        REQUIRE(timer_at == lc.restart_at_ms());
        REQUIRE(lc.backoff_ms() >= 10);
        REQUIRE(lc.backoff_ms() <= 200);
      }
      REQUIRE(lc.restarts() >= 0);
    }
  }
}

}  // namespace
}  // namespace constellation::runtime
