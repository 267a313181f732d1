// InstanceAgent: the part of the node agent that runs instances (DESIGN.md §6). It brings this
// node's instance processes (node/runtime) in line with the instance records of the replicated
// state, level-triggered, and publishes every process transition as an event.
//
// Inputs are the committed changes of instance records (OnChanges, wired to
// ReplicaOptions::on_instance_changes). They are coalesced per instance in a bounded table and
// handled, oldest first, by a few worker threads (one instance is handled by one worker at a time,
// so its changes stay in order; different instances start in parallel, the runtime launching
// without its lock held): a worker reads the committed record and
//   * record gone, or placed on another node  -> Runtime::Remove;
//   * otherwise                               -> Runtime::Apply(SpecFromRecord) (limits live, the
//                                                desired state level-triggered), then every ctl
//                                                verb the changes carried, in order ->
//                                                Runtime::Control (edge-triggered: `start` runs an
//                                                exited instance again, `restart`, `kill SIG`).
// A change of the record alone (no verb) of an instance no worker is handling is first offered to
// Runtime::ApplyQuiet on the calling thread: a limit change of an instance with no process is
// taken in memory there, and no worker wakes for it (each wake-up and hand-off was a share of a
// cluster leader's time under many writers). Anything else goes to the workers.
// At Start every record of this node goes to Runtime::Sync, which adopts what still runs, starts
// what should run, and removes what has no record.
//
// Writers wait without holding a thread: AfterCommit(name, wait, done) calls `done` once every
// change of `name` committed before the call has been handled, and additionally
//   * kStarted (ctl start/restart), kSettled (ctl stop): once the instance is neither starting
//     nor stopping (bounded by settle_timeout_ms); after kStarted, a start that failed before the
//     command ran (`failed exec: ...`, `failed start: ...`) gives an error naming why;
//   * kRemoved (rmdir): once the runtime has stopped it and deleted its files.
// `done` runs exactly once, never under the agent's lock: on a worker (also when the change was
// handled before AfterCommit: the caller is mostly the thread every commit passes through, which
// should not spend its time on the replies and wake-ups that `done` makes), on OnChanges' caller
// or the runtime's delivering thread, or on AfterCommit's caller before Start or after Shutdown.
//
// Thread-safety: every method is safe from any thread. Lock order: the agent's lock may be held
// while reading the runtime's status snapshot (Runtime::Get with usage=false), never while calling
// anything else of the runtime.
#ifndef CONSTELLATION_NODE_AGENT_INSTANCE_AGENT_H_
#define CONSTELLATION_NODE_AGENT_INSTANCE_AGENT_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "node/base/status.h"
#include "node/runtime/runtime.h"
#include "node/state/event_hub.h"
#include "node/state/records.h"
#include "node/state/state_machine.h"

namespace constellation {

// Instances with pending changes; beyond it the table is dropped and everything is synced again
// (ctl verbs queued then are lost; the desired state in the records still holds).
inline constexpr size_t kMaxAgentEntries = 100000;
// ctl verbs queued per instance; beyond it the oldest are dropped (the desired state holds).
inline constexpr size_t kMaxQueuedVerbs = 16;

// The runtime's view of a record. `restart` that does not parse counts as never (records are
// validated at apply, so it does not happen).
runtime::InstanceSpec SpecFromRecord(const InstanceRecord& record);

// An event line for constellation/events: "<unix_ms> <event> <instance> state=<state> k=v ...";
// values containing spaces are double-quoted (state="exited 3").
std::string FormatTransition(const runtime::Transition& t);

struct InstanceAgentOptions {
  std::string node_name;
  // Longest a ctl write waits for its instance to settle; then it returns EAGAIN (the state file
  // tells where the instance is). The daemon sets it to the stop grace period plus 10 s.
  int64_t settle_timeout_ms = 20000;
  // Worker threads (1..64). A worker spends most of a start waiting for the new process to exec,
  // so a few keep both the CPUs and the runtime busy when many instances start at once.
  int workers = 4;
};

class InstanceAgent {
 public:
  enum class Wait { kApplied, kStarted, kSettled, kRemoved };
  using Done = std::function<void(Status)>;

  explicit InstanceAgent(InstanceAgentOptions options);
  ~InstanceAgent();  // Shutdown()
  InstanceAgent(const InstanceAgent&) = delete;
  InstanceAgent& operator=(const InstanceAgent&) = delete;

  // From the state machine's applying thread; never waits for the runtime (ApplyQuiet does not).
  // Ignored until Start.
  void OnChanges(const std::vector<InstanceChange>& changes);

  // Attaches the runtime (whose listener it becomes), syncs it with every record of this node and
  // starts the workers. `state`, `runtime` and `events` must outlive the agent's Shutdown.
  Status Start(const StateMachine* state, runtime::Runtime* runtime, EventHub* events);

  // See the header comment. Before Start (or after Shutdown) `done` runs at once with OK.
  void AfterCommit(const std::string& name, Wait wait, Done done);

  // The runtime, once started (nullptr before): the control tree reads state, stats and logs
  // through it.
  runtime::Runtime* runtime() const;
  // Whether `record` runs on this node.
  bool Ours(const InstanceRecord& record) const;
  // How many changes OnChanges handled on its caller's thread (Runtime::ApplyQuiet took them), so
  // far: no worker was woken for them.
  uint64_t handled_on_commit() const;

  // Stops the workers and answers every waiter (Unavailable: the daemon is stopping). Later
  // transitions are still published as events. Idempotent.
  void Shutdown();

 private:
  // Whether `c` needs no handling here: its instance is neither placed on this node nor held by
  // anything of it (mu_ held).
  bool Elsewhere(const InstanceChange& c) const;
  struct Entry {
    uint64_t changed_seq = 0;  // the newest change queued
    uint64_t handled_seq = 0;  // the newest change handled
    bool queued = false;
    bool trying = false;  // in an OnChanges' TryQuiet round (not queued meanwhile)
    std::vector<std::string> verbs;
    Status last;  // the verdict of the last handling
  };
  struct Waiter {
    std::string name;
    Wait wait;
    uint64_t seq = 0;         // done once handled_seq >= seq (phase 1) ...
    bool handled = false;     // ... then, for the other waits, when the instance gets there
    int64_t deadline_ms = 0;  // steady clock
    Done done;
  };
  using Completions = std::vector<std::pair<Done, Status>>;

  void Loop();
  // mu_ held: the oldest queued instance no worker is handling, removed from the queue; "" if none.
  std::string TakeRunnable();
  // mu_ held: answers the waiters whose deadline has passed (into `out`).
  void ExpireWaiters(Completions* out);
  // Offers the committed record of `name` to Runtime::ApplyQuiet (mu_ not held); whether it took
  // it.
  bool TryQuiet(const std::string& name);
  // `exists`: whether the record was there.
  Status Handle(const std::string& name, const std::vector<std::string>& verbs, bool* exists);
  Status SyncAll();
  void OnTransition(const runtime::Transition& t);
  // mu_ held. Completes (into `out`) the waiters of `name` (all names when empty) that are done;
  // returns whether any of them is left.
  bool CheckWaiters(const std::string& name, Completions* out);
  // mu_ held. Whether a waiter in its second phase is done, and with which verdict.
  bool Settled(const Waiter& w, Status* verdict) const;
  static int64_t SteadyMs();

  const InstanceAgentOptions options_;
  const StateMachine* state_ = nullptr;
  runtime::Runtime* runtime_ = nullptr;
  EventHub* events_ = nullptr;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false;
  bool stopping_ = false;
  bool resync_ = false;  // the table overflowed: sync everything
  uint64_t next_seq_ = 1;
  std::map<std::string, Entry> entries_;
  std::deque<std::string> queue_;
  std::set<std::string> busy_;  // being handled by a worker (kept apart from entries_, which
                                // an overflow clears)
  bool syncing_ = false;        // SyncAll runs (Start, or a worker alone)
  uint64_t handled_on_commit_ = 0;
  std::list<Waiter> waiters_;
  Completions ready_;  // done when AfterCommit was called: for a worker to deliver
  std::vector<std::thread> workers_;
};

}  // namespace constellation

#endif  // CONSTELLATION_NODE_AGENT_INSTANCE_AGENT_H_
