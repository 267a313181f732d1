// Runtime: the I/O shell that owns this node's instances (DESIGN.md §6).
//
// It drives one pure Lifecycle (lifecycle.h) per instance and performs its actions: launching the
// process into its namespaces and cgroup (launcher.h, cgroup.h), signalling it, killing its cgroup
// after the stop grace period, and timers. One event-loop thread waits (epoll) on every instance's
// pidfd and on one timerfd; API calls run on the caller's thread. Both take the runtime's lock, so
// each instance sees one input at a time, in order.
//
// How the lead wires it (fsd/ and node/state/ are not touched by this module):
//   * On start-up: Runtime::Open(options), then SetListener(fn). Open finds the instances
//     recorded under options.data_dir: live processes are adopted (never started twice),
//     processes that ended while no daemon watched are reported `failed lost` (or `failed oom`)
//     and restarted per their policy, and unknown processes in this node's cgroups are killed
//     (never orphaned). Then call Sync() with every InstanceRecord placed on this node: instances
//     not listed are removed.
//   * On every change of a record on this node: Apply(SpecFromRecord) (level-triggered; limits
//     apply live, cmd/env/network/uid at the next start, desired running/stopped starts/stops).
//     The spec is kept in the instance's directory for adoption; a limit change while no process
//     runs reaches that file at the next start, the next other change or Shutdown, so after a
//     crash it may hold older limits until Sync applies the records' (which is why Sync follows
//     Open).
//   * ctl verbs: Control(name, "start" | "stop" | "restart" | "kill [SIG]") (edge-triggered:
//     `start` runs an exited instance again even though its desired state was already running).
//   * rmdir: Remove(name); mkdir of the same name right after is fine (it is recreated once the
//     old one is gone).
//   * Files: `state` = Get().state, `pid`, `exit_code`, `error` from Get(), `stats` =
//     FormatStats(Get()), `log` = LogPath(name) (a regular file appended by the instance itself).
//   * Events: the listener gets every transition (instance_starting, instance_started,
//     instance_stopping, instance_stop_timeout, instance_stopped, instance_exited, instance_failed,
//     instance_restarting, instance_adopted, instance_removed) with the new state text.
//   * Shutdown: options.stop_on_shutdown (flag) stops every instance (SIGTERM, grace, SIGKILL)
//     before the destructor returns; otherwise they keep running for the next daemon to adopt.
//
// Thread-safety: all public methods are safe from any thread. The listener is called without the
// runtime's lock held, one call at a time and in transition order, on whichever thread is
// delivering (usually the one that caused the transition: a caller of Apply/Control/Remove/Sync,
// or the loop thread). It may call any method but Shutdown (and must not destroy the Runtime), and
// should be quick: it holds up later deliveries.
// Transitions before SetListener are kept (up to kMaxPendingTransitions) and delivered by it.
#ifndef CONSTELLATION_NODE_RUNTIME_RUNTIME_H_
#define CONSTELLATION_NODE_RUNTIME_RUNTIME_H_

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "node/base/status.h"
#include "node/env/env.h"
#include "node/runtime/cgroup.h"
#include "node/runtime/launcher.h"
#include "node/runtime/lifecycle.h"

namespace constellation::runtime {

// Bounds on a spec (they mirror node/state/records.h, which validated the record already).
inline constexpr size_t kMaxInstanceNameBytes = 63;
inline constexpr size_t kMaxSpecCmdBytes = 4096;
inline constexpr size_t kMaxSpecEnvVars = 256;
inline constexpr size_t kMaxSpecEnvBytes = 8192;
inline constexpr int64_t kMaxSpecCpuPercent = 100000;
inline constexpr int64_t kMaxSpecRamMb = 4194304;
inline constexpr int64_t kMaxSpecDiskMb = 16777216;
inline constexpr int64_t kMaxSpecPids = 4194304;
// Transitions waiting for delivery; beyond it the oldest are dropped (counted in the log).
inline constexpr size_t kMaxPendingTransitions = 65536;

// What the runtime needs from an InstanceRecord. The lead fills it from the record:
//   name, cmd, env, cpu_percent, ram_mb, disk_mb as is; restart =
//   ParseRestartPolicy(record.restart); isolate_network = (record's `network` file == "isolated");
//   uid/gid = the record's owner; desired = "running" -> kRunning, "stopped" -> kStopped, "" ->
//   kNone.
struct InstanceSpec {
  std::string name;
  std::string cmd;
  std::vector<std::string> env;  // KEY=VALUE
  int64_t cpu_percent = 100;     // 100 = one core; 0 = unlimited
  int64_t ram_mb = 256;          // 0 = unlimited
  int64_t disk_mb = 0;           // 0 = no quota (plain work directory)
  int64_t pids_max = 0;          // 0 = Options::pids_max
  RestartPolicy restart = RestartPolicy::kNever;
  bool isolate_network = false;
  uint32_t uid = 0;  // the process runs as this user (the instance's owner)
  uint32_t gid = 0;
  Desired desired = Desired::kNone;

  bool operator==(const InstanceSpec&) const = default;
};
Status ValidateSpec(const InstanceSpec& spec);

// One instance as the files show it.
struct InstanceStatus {
  std::string name;
  std::string state;   // the `state` file, e.g. "running", "exited 3", "failed oom"
  pid_t pid = 0;       // in the node's PID namespace; 0 when none
  int exit_code = -1;  // the last `exited N`, or -1
  std::string error;   // the last failure's reason ("oom", "exec: x: No such file..."), or ""
  Desired desired = Desired::kNone;
  // stats
  double cpu_percent = 0;  // over the last sampling interval; 100 = one core
  uint64_t ram_bytes = 0;  // working set
  uint64_t ram_peak_bytes = 0;
  uint64_t disk_bytes = 0;         // used in the work directory
  int64_t restarts = 0;            // automatic restarts
  int64_t uptime_s = 0;            // of the current run; 0 when not running
  uint64_t oom_kills = 0;          // ever, in this instance's cgroup
  int64_t backoff_ms = 0;          // the pending (or last) restart delay; 0 once reset
  int64_t restart_in_ms = 0;       // time until the pending automatic restart; 0 when none
  uint64_t pids = 0;               // processes in the cgroup
  uint64_t log_trimmed_bytes = 0;  // dropped from the log's head to keep it under its bound
};

// The `stats` file: "cpu_percent 24.8\nram_mb 12\nram_peak_mb 15\ndisk_mb 0\nrestarts 0\n
// uptime_s 42\noom_kills 0\nbackoff_ms 0\nrestart_in_ms 0\npids 1\n" (MiB rounded up).
std::string FormatStats(const InstanceStatus& status);

struct Transition {
  std::string instance;
  std::string event;  // instance_started ...
  std::string state;  // the state text after it
  std::vector<std::pair<std::string, std::string>> detail;
  int64_t unix_ms = 0;
};

class Runtime {
 public:
  struct Options {
    std::string node;      // CONSTELLATION_NODE; part of the cgroup path
    std::string data_dir;  // per-instance state: <data_dir>/<name>/{spec,status,pid,log,work/}
    std::string cgroup_parent = "constellation";  // groups are <parent>/<node>/<name>
    // Bound into every instance when the source exists (the lead passes M/cluster -> /cluster and
    // M/constellation -> /constellation). A missing target directory is created (empty); a target
    // that is a symbolic link (constellationd --links) is left alone: it already leads into M.
    std::vector<BindMount> binds;
    std::map<std::string, std::string> interpreters;  // extension -> interpreter path
    int64_t stop_grace_ms = 10000;
    BackoffConfig backoff;
    int64_t pids_max = 4096;            // per instance unless its spec says otherwise
    bool stop_on_shutdown = true;       // false: leave instances running for the next daemon
    int64_t sample_interval_ms = 1000;  // CPU sampling (cpu_percent) and log-size checks
    size_t max_instances = 10000;
    uint64_t max_log_bytes = 64ull << 20;  // beyond: the oldest part is dropped
    std::string mkfs = "mkfs.ext4";
    std::string resize2fs = "resize2fs";
    std::string e2fsck = "e2fsck";
    Clock* clock = nullptr;             // default: DefaultEnv()->clock
    ProcessSpawner* spawner = nullptr;  // default: DefaultEnv()->spawner (mkfs, resize2fs)
  };
  using Listener = std::function<void(const Transition&)>;

  static Result<std::unique_ptr<Runtime>> Open(Options options);
  // Delivers the transitions so far (adoption at Open included), then every later one.
  void SetListener(Listener listener);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Creates the instance or brings it in line with `spec` (see the header comment). Returns once
  // the change is applied: when it starts the instance, after the command has exec'd (or failed:
  // the state says why; the Status is still OK). A memory limit the kernel refuses (v1 cannot
  // lower it below current use: Busy) stays in the spec while the group keeps its old one; the
  // rest of the change is applied, every later limit change tries the memory limit again (a
  // refusal then is not reported), and the next start writes it; a runtime that adopts the
  // instance finds the refusal again. Busy is returned to the change that asked for it. Any other
  // limit the kernel refuses leaves the old limits and returns the error.
  Status Apply(const InstanceSpec& spec);
  // Apply's quiet case alone, for a caller that must not wait (the instance agent on the thread
  // every commit passes through): applies `spec` only if that touches nothing but memory — the
  // instance exists and is not being removed, and either nothing changes or only its limits
  // change while no process runs or is about to (the file and the group get them at the next
  // start, as with Apply). Returns whether it applied; false changes nothing, and Apply does the
  // whole work. Never waits for the runtime's lock (a start can hold it until exec): a held lock
  // is false.
  bool ApplyQuiet(const InstanceSpec& spec);
  // start | stop | restart | kill [SIGNAL] (default SIGTERM). NotFound for an unknown instance.
  Status Control(const std::string& name, std::string_view verb);
  // Stops the instance (SIGTERM, grace, SIGKILL) and deletes its cgroup, scratch space, log and
  // state. Returns at once; `instance_removed` is published when it is gone.
  Status Remove(const std::string& name);
  // Apply for each spec, Remove for every instance not listed.
  Status Sync(const std::vector<InstanceSpec>& specs);

  // Get and List never wait for the runtime's lock (a start holds it until exec): they read a
  // snapshot refreshed after every change, so file reads stay fast while instances start.
  // usage=false leaves out what needs file reads (ram, oom_kills, pids, disk): it only takes a
  // short internal lock, never does I/O.
  Result<InstanceStatus> Get(const std::string& name, bool usage = true) const;
  // Whether Get would find `name` (a removal in progress counts until it is finished).
  bool Has(const std::string& name) const;
  std::vector<std::string> List() const;
  // <data_dir>/<name>/log; exists once the instance has been started.
  std::string LogPath(const std::string& name) const;
  std::string WorkDir(const std::string& name) const;
  const CgroupLayout& cgroup_layout() const { return layout_; }

  // Stops the loop (and, with stop_on_shutdown, every instance first). Idempotent; the destructor
  // calls it.
  void Shutdown();

  struct Instance;  // internal

 private:
  explicit Runtime(Options options);
  Status Init();
  void Loop();

  // All below run with mu_ held.
  // `quiet` (optional) is set when only the in-memory spec changed: no timer, process or status
  // snapshot moved.
  Status ApplyLocked(const InstanceSpec& spec, bool* quiet = nullptr);
  // The quiet case of ApplyLocked (ApplyQuiet): when nothing changes, or only limits while `inst`
  // is idle, takes `spec` in memory and returns true; otherwise changes nothing.
  bool TakeQuietLocked(Instance* inst, const InstanceSpec& spec);
  // No process runs, is queued to start or is starting.
  static bool Idle(const Instance& inst);
  // The group's limits for `spec` (pids_max 0: the runtime's default).
  CgroupLimits LimitsOf(const InstanceSpec& spec) const;
  void RemoveLocked(Instance* inst);
  void FinalizeRemovals();
  void Step(Instance* inst, const Event& event);
  void Perform(Instance* inst, const Action& action);
  // A spawn in three parts: prepared with mu_ held (directories, cgroup, the LaunchSpec; an
  // Event when it fails already), launched without it, finished with it again.
  struct PreparedLaunch;
  std::optional<Event> PrepareSpawn(Instance* inst, PreparedLaunch* prepared);
  Event FinishSpawn(Instance* inst, const PreparedLaunch& prepared, Result<Child> child);
  // Launches every queued spawn, each with mu_ released while the process is made and execs, so
  // that starts of different instances run in parallel (each caller that queued one launches).
  void LaunchQueued(std::unique_lock<std::mutex>* lock);
  // Until `name` has no spawn queued or in flight (on whichever thread launches it).
  void WaitLaunched(std::unique_lock<std::mutex>* lock, const std::string& name);
  void OnPidfd(Instance* inst);
  void FinishExit(Instance* inst, bool known, int code, int sig);
  void OnTimer();
  // Every sample_interval_ms: cpu_percent and the log bounds of every instance. Releases the lock
  // while it reads.
  void SampleAll(std::unique_lock<std::mutex>* lock);
  void Sample(Instance* inst, uint64_t cpu_ns, int64_t now_ms);
  void TrimLog(Instance* inst);
  void RearmTimer();
  void Adopt(const std::string& name);
  // Copies what Get shows of `inst` into snapshots_ (mu_ held; takes status_mu_).
  void Refresh(const Instance* inst);
  void KillStrayCgroups();
  // The work directory (without a quota), log and pid files, made when the instance is created.
  void PrepareFiles(const Instance* inst);
  Status PersistSpec(Instance* inst);
  void PersistSpecIfStale(Instance* inst);
  void PersistStatus(const Instance* inst);
  Instance* Find(const std::string& name) const;
  int64_t Now() const;
  void Publish(Instance* inst, const Action& action);
  std::vector<BindMount> ResolveBinds() const;
  // Unlocks, then delivers queued transitions unless another thread is already delivering.
  void UnlockAndDeliver(std::unique_lock<std::mutex>* lock);

  Options options_;
  Listener listener_;
  CgroupLayout layout_;
  std::string cgroup_base_;  // <parent>/<node>

  // What Get/List read, guarded by status_mu_ alone (taken after mu_, never before it).
  struct Snapshot {
    InstanceStatus status;         // the fields kept in memory (no cgroup readings)
    int64_t running_since_ms = 0;  // monotonic; 0 when not running
    int64_t restart_at_ms = 0;     // monotonic; 0 when no restart is pending
    Cgroup cgroup;
    std::string dir;
    bool removing = false;
  };
  mutable std::mutex status_mu_;
  std::map<std::string, Snapshot> snapshots_;

  mutable std::mutex mu_;
  // An instance's process ended (Shutdown waits on it) or a launch finished (WaitLaunched).
  std::condition_variable changed_;
  std::map<std::string, std::unique_ptr<Instance>> instances_;
  std::map<uint64_t, Instance*> by_id_;
  uint64_t next_id_ = 1;
  std::deque<uint64_t> spawns_;      // instance ids whose spawn the core asked for
  int launching_ = 0;                // launches in flight (mu_ released)
  std::vector<Transition> pending_;  // transitions not yet delivered
  bool delivering_ = false;          // a thread is calling the listener
  uint64_t dropped_transitions_ = 0;
  int64_t next_sample_ms_ = 0;
  std::vector<Cgroup> stray_cgroups_;  // killed, to be removed once empty
  int epoll_fd_ = -1;
  int timer_fd_ = -1;
  int64_t timer_armed_ms_ = 0;  // the deadline timer_fd_ was last armed for (0: disarmed)
  bool any_removing_ = false;   // some instance is being removed (FinalizeRemovals has work)
  int wake_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  bool shut_down_ = false;
};

}  // namespace constellation::runtime

#endif  // CONSTELLATION_NODE_RUNTIME_RUNTIME_H_
