// The instance lifecycle: a pure, deterministic state machine per instance (DESIGN.md §2.1).
//
// Inputs are events (a start or stop request, "the process started", "it exited with code 3", a
// timer tick) stamped with the caller's monotonic time; the output of each step is a list of
// actions for the I/O shell (node/runtime/runtime.h) to perform, in order: spawn the process, send
// it a signal, kill everything in its cgroup, call back at a time, publish a transition. The core
// never reads a clock, never sleeps, never touches a process: golden tests script it
// (tests/node/runtime/testdata/*.txt).
//
// States, exactly as the instance's `state` file shows them:
//   created                 never started
//   starting                spawn requested, the process has not exec'd yet
//   running                 the command has exec'd
//   stopping                SIGTERM sent; SIGKILL to the whole cgroup when the grace period ends
//   stopped                 stopped on request (whatever its exit status)
//   exited CODE             exited on its own with CODE (0 included)
//   failed REASON           oom | signal SIGNAME | exec: <why> | start: <why> | lost | unknown
// While a restart is pending (back-off), the state stays the exit's (`exited 1`, `failed oom`);
// `backoff_ms()` and `restart_at_ms()` say when it comes back.
//
// Thread-safety: a value; not thread-safe. The runtime drives each instance from one thread.
#ifndef CONSTELLATION_NODE_RUNTIME_LIFECYCLE_H_
#define CONSTELLATION_NODE_RUNTIME_LIFECYCLE_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "node/base/status.h"

namespace constellation::runtime {

enum class RestartPolicy { kNever, kOnFailure, kAlways };
// "never" | "on-failure" | "always".
Result<RestartPolicy> ParseRestartPolicy(std::string_view text);
const char* RestartPolicyName(RestartPolicy policy);

// "SIGTERM" for 15; "SIG37" for a number without a name. ParseSignal accepts "TERM", "SIGTERM"
// and "15" (1..64).
std::string SignalName(int sig);
Result<int> ParseSignal(std::string_view text);

struct BackoffConfig {
  int64_t initial_ms = 100;        // delay before the first automatic restart
  int64_t max_ms = 30000;          // cap: the delay doubles up to this
  int64_t reset_after_ms = 10000;  // running this long resets the delay to initial_ms
};
// 1 <= initial_ms <= max_ms <= 24 h; 0 < reset_after_ms <= 24 h.
Status ValidateBackoff(const BackoffConfig& config);

// Capped exponential back-off: initial, 2x, 4x ... max, max. Pure.
class Backoff {
 public:
  explicit Backoff(BackoffConfig config) : config_(config) {}
  // The delay for this restart; the next call returns double (capped).
  int64_t Next();
  // Back to initial_ms (after a stable run or a manual start).
  void Reset() {
    next_ms_ = 0;
    last_ms_ = 0;
  }
  // The delay most recently returned by Next(); 0 after Reset().
  int64_t last_ms() const { return last_ms_; }

 private:
  BackoffConfig config_;
  int64_t next_ms_ = 0;  // 0: initial_ms
  int64_t last_ms_ = 0;
};

struct LifecycleConfig {
  RestartPolicy policy = RestartPolicy::kNever;
  int64_t stop_grace_ms = 10000;  // SIGTERM .. SIGKILL
  BackoffConfig backoff;
};
// 0 <= stop_grace_ms <= 1 h, and the back-off is valid.
Status ValidateLifecycleConfig(const LifecycleConfig& config);

enum class Desired { kNone, kRunning, kStopped };
const char* DesiredName(Desired desired);  // "", "running", "stopped"

// ---- Inputs ----
namespace ev {
struct Start {};    // ctl start, or desired changed to running
struct Stop {};     // ctl stop, or desired changed to stopped
struct Restart {};  // ctl restart: stop (if running), then start at once, no back-off
struct Kill {       // ctl kill SIG: the signal only; what follows is an ordinary exit
  int sig = 15;
};
struct SetPolicy {
  RestartPolicy policy = RestartPolicy::kNever;
};
struct Started {  // the command exec'd
  pid_t pid = 0;
};
struct StartFailed {
  std::string reason;      // "exec: foo: No such file or directory"
  bool retryable = false;  // true: transient (fork EAGAIN...), restart policy applies
};
struct Exited {
  int code = 0;          // exit status when signal == 0
  int signal = 0;        // the terminating signal, or 0
  bool oom = false;      // the cgroup OOM-killed something during this run
  bool unknown = false;  // the status could not be read (adopted process)
};
struct Tick {};  // a scheduled time has (possibly) come
// At start-up, before any other input: the process found alive from a previous daemon run.
struct Adopted {
  pid_t pid = 0;
  int64_t started_ms = 0;  // on this step's clock
  Desired desired = Desired::kRunning;
};
// At start-up: the process recorded as running is gone (it ended while no daemon watched it).
struct Lost {
  bool oom = false;
  Desired desired = Desired::kRunning;
};
// At start-up: no process; shows `state` (stopped | exited N | failed R | created) again, silently.
struct Restore {
  std::string state;
  Desired desired = Desired::kNone;
  int64_t restarts = 0;
};
}  // namespace ev

using Event =
    std::variant<ev::Start, ev::Stop, ev::Restart, ev::Kill, ev::SetPolicy, ev::Started,
                 ev::StartFailed, ev::Exited, ev::Tick, ev::Adopted, ev::Lost, ev::Restore>;

// ---- Outputs ----
struct Action {
  enum class Kind {
    kSpawn,    // launch the command; answer with Started or StartFailed
    kSignal,   // send `sig` to the instance's main process
    kKillAll,  // SIGKILL every process in the instance's cgroup
    kTimer,    // deliver Tick at or after `at_ms` (replaces the previous request; 0 cancels)
    kPublish,  // a transition: `event` happened, `state` is the new state text
  };
  Kind kind = Kind::kSpawn;
  int sig = 0;
  int64_t at_ms = 0;
  std::string event;                                        // "instance_started"
  std::string state;                                        // the state text after this transition
  std::vector<std::pair<std::string, std::string>> detail;  // key=value context

  static Action Spawn() { return Make(Kind::kSpawn); }
  static Action Signal(int sig) {
    Action a = Make(Kind::kSignal);
    a.sig = sig;
    return a;
  }
  static Action KillAll() { return Make(Kind::kKillAll); }
  static Action Timer(int64_t at_ms) {
    Action a = Make(Kind::kTimer);
    a.at_ms = at_ms;
    return a;
  }
  bool operator==(const Action&) const = default;

 private:
  static Action Make(Kind kind) {
    Action a;
    a.kind = kind;
    return a;
  }
};

// "spawn", "signal SIGTERM", "kill_all", "timer 1200",
// "publish instance_exited state=\"exited 3\" code=3" (values with spaces are quoted).
std::string FormatAction(const Action& action);

class Lifecycle {
 public:
  enum class Phase {
    kCreated,
    kStarting,
    kRunning,
    kStopping,
    kStopped,
    kExited,
    kFailed,
    kBackoff
  };

  explicit Lifecycle(LifecycleConfig config);

  // One step. `now_ms` must not go backwards between calls (a smaller value is treated as the
  // previous one).
  std::vector<Action> Handle(int64_t now_ms, const Event& event);

  const std::string& state() const { return state_; }
  Phase phase() const { return phase_; }
  Desired desired() const { return desired_; }
  RestartPolicy policy() const { return config_.policy; }
  pid_t pid() const { return pid_; }  // 0 when no process
  // True while a process may exist (starting, running, stopping).
  bool has_process() const;
  // Automatic restarts performed so far.
  int64_t restarts() const { return restarts_; }
  // The delay of the pending (or most recent) automatic restart; 0 once the delay has been reset
  // by a stable run or a manual start.
  int64_t backoff_ms() const { return backoff_.last_ms(); }
  int64_t restart_at_ms() const { return phase_ == Phase::kBackoff ? restart_at_ms_ : 0; }
  // When the current run began; 0 when not running.
  int64_t running_since_ms() const;
  // The last exit code (exited N), or -1.
  int exit_code() const { return exit_code_; }
  // The reason of the last failure ("oom", "exec: ..."), or "".
  const std::string& error() const { return error_; }

 private:
  using Actions = std::vector<Action>;
  void OnStart(Actions* out);
  // Stops the process if there is one; `then_start` starts it again once it is gone (restart).
  void OnStop(Actions* out, bool then_start = false);
  void OnExited(const ev::Exited& e, Actions* out);
  void OnStartFailed(const ev::StartFailed& e, Actions* out);
  void OnTick(Actions* out);
  void Spawn(Actions* out);
  // After the process ended on its own: restart per policy, or settle.
  void MaybeRestart(bool failed, Actions* out);
  bool ShouldRestart(bool failed) const;
  void Publish(std::string event, std::vector<std::pair<std::string, std::string>> detail,
               Actions* out);
  void SetState(Phase phase, std::string text);
  int64_t NextDeadline() const;

  LifecycleConfig config_;
  Backoff backoff_;
  int64_t now_ms_ = 0;
  Phase phase_ = Phase::kCreated;
  std::string state_ = "created";
  Desired desired_ = Desired::kNone;
  pid_t pid_ = 0;
  int64_t started_ms_ = 0;        // when the current/last run began
  int64_t stop_deadline_ms_ = 0;  // stopping: when SIGKILL goes out
  bool kill_sent_ = false;
  bool start_after_stop_ = false;  // restart verb, or a start while stopping
  bool stop_after_start_ = false;  // a stop while starting
  int64_t restart_at_ms_ = 0;
  bool last_failed_ = false;    // the settled exit was a failure (for SetPolicy)
  bool last_retryable_ = true;  // false after an exec failure: no automatic restart
  int64_t restarts_ = 0;
  int exit_code_ = -1;
  std::string error_;
  int64_t timer_at_ms_ = 0;  // the last Timer emitted
};

const char* PhaseName(Lifecycle::Phase phase);

}  // namespace constellation::runtime

#endif  // CONSTELLATION_NODE_RUNTIME_LIFECYCLE_H_
