#include "node/agent/instance_agent.h"

#include <algorithm>
#include <chrono>

#include "node/base/log.h"
#include "node/base/thread_name.h"

namespace constellation {
namespace {

bool Unsettled(const std::string& state) { return state == "starting" || state == "stopping"; }

// A start that never ran the command: the state's reason as the writer's error. The code follows
// the cause, so the shell shows "No such file or directory" for a missing command.
Status StartFailure(const std::string& state) {
  std::string reason = state.substr(std::string("failed ").size());
  Code code = Code::kIoError;
  if (reason.find("No such file or directory") != std::string::npos) {
    code = Code::kNotFound;
  } else if (reason.find("Permission denied") != std::string::npos) {
    code = Code::kPermissionDenied;
  } else if (reason.find("Exec format error") != std::string::npos ||
             reason.rfind("start: cmd", 0) == 0) {
    code = Code::kInvalidArgument;
  }
  return Status(code, "start failed: " + reason);
}

std::string Quoted(const std::string& v) {
  if (!v.empty() && v.find_first_of(" \t\"") == std::string::npos) return v;
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    out += c == '\n' ? ' ' : c;
  }
  return out + "\"";
}

}  // namespace

runtime::InstanceSpec SpecFromRecord(const InstanceRecord& r) {
  runtime::InstanceSpec s;
  s.name = r.name;
  s.cmd = r.cmd;
  s.env = r.env;
  s.cpu_percent = r.cpu_percent;
  s.ram_mb = r.ram_mb;
  s.disk_mb = r.disk_mb;
  s.pids_max = r.pids_max;
  Result<runtime::RestartPolicy> p = runtime::ParseRestartPolicy(r.restart);
  s.restart = p.ok() ? *p : runtime::RestartPolicy::kNever;
  s.isolate_network = r.network == "isolated";
  s.uid = r.uid;
  s.gid = r.gid;
  s.desired = r.desired == "running"   ? runtime::Desired::kRunning
              : r.desired == "stopped" ? runtime::Desired::kStopped
                                       : runtime::Desired::kNone;
  return s;
}

std::string FormatTransition(const runtime::Transition& t) {
  std::string line =
      std::to_string(t.unix_ms) + " " + t.event + " " + t.instance + " state=" + Quoted(t.state);
  for (const auto& [k, v] : t.detail) {
    if (k == "state") continue;
    line += " " + k + "=" + Quoted(v);
  }
  return line;
}

InstanceAgent::InstanceAgent(InstanceAgentOptions options) : options_(std::move(options)) {}

InstanceAgent::~InstanceAgent() { Shutdown(); }

int64_t InstanceAgent::SteadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

runtime::Runtime* InstanceAgent::runtime() const {
  std::lock_guard<std::mutex> l(mu_);
  return started_ ? runtime_ : nullptr;
}

bool InstanceAgent::Ours(const InstanceRecord& record) const {
  // New records name the node they were made on (the state machine places them there). An empty
  // node is a record made before that: it can only be from a one-node data dir, so it is ours.
  return record.node.empty() || record.node == options_.node_name;
}

bool InstanceAgent::Elsewhere(const InstanceChange& c) const {
  // Every node sees every change; most are of instances placed on other nodes, and waking a
  // worker to find that out cost a follower a tenth of its CPU under 64 writers. Skipped only when
  // nothing of this node can hold the instance: not placed here, no handling queued or running
  // (which could be creating it from an earlier change), no resync, and not in the runtime.
  if (c.exists && (c.node.empty() || c.node == options_.node_name)) return false;
  if (resync_ || syncing_ || busy_.count(c.name) > 0) return false;
  auto it = entries_.find(c.name);
  if (it != entries_.end() && (it->second.queued || it->second.trying)) return false;
  return !runtime_->Has(c.name);
}

void InstanceAgent::OnChanges(const std::vector<InstanceChange>& changes) {
  std::vector<std::string> quiet;  // tried on this thread (TryQuiet), in order
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!started_ || stopping_) return;
    size_t queued = 0;
    for (const InstanceChange& c : changes) {
      if (Elsewhere(c)) continue;
      if (entries_.size() >= kMaxAgentEntries && !entries_.count(c.name)) {
        // Beyond the table's bound: forget the queue and sync everything from the records.
        if (!resync_) {
          CN_LOG(Warning) << "instance agent: more than " << kMaxAgentEntries
                          << " instances changed at once; syncing all of them";
        }
        resync_ = true;
        entries_.clear();
        queue_.clear();
        quiet.clear();
      }
      Entry& e = entries_[c.name];
      e.changed_seq = next_seq_++;
      if (!c.verb.empty()) {
        if (e.verbs.size() >= kMaxQueuedVerbs) e.verbs.erase(e.verbs.begin());
        e.verbs.push_back(c.verb);
      }
      if (e.queued || e.trying) continue;  // whoever has it reads the record after this change
      // A change of the record alone, of an instance nothing else is handling: the runtime may
      // take it in memory, and then no worker needs waking (TryQuiet, below).
      if (c.verb.empty() && c.exists && !resync_ && !syncing_ && busy_.count(c.name) == 0) {
        e.trying = true;
        quiet.push_back(c.name);
        continue;
      }
      e.queued = true;
      queue_.push_back(c.name);
      ++queued;
    }
    // One worker per newly queued instance (all of them for a resync, or many changes): waking
    // every worker for one start cost more than the start's own hand-offs.
    if (resync_ || queued >= static_cast<size_t>(options_.workers)) {
      cv_.notify_all();
    } else if (queued > 0 || quiet.empty()) {
      for (size_t i = 0; i < std::max<size_t>(queued, 1); ++i) cv_.notify_one();
    }
  }
  if (quiet.empty()) return;
  Completions out;
  for (const std::string& name : quiet) {
    bool applied = TryQuiet(name);
    std::lock_guard<std::mutex> l(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) continue;  // the table overflowed meanwhile: the resync has it
    Entry& e = it->second;
    e.trying = false;
    if (resync_ || stopping_) continue;
    if (applied && e.verbs.empty()) {
      // Only this thread changes changed_seq, and TryQuiet read the record after every change so
      // far: all of them are handled. (A verb of a later change in the batch needs a worker.)
      e.handled_seq = e.changed_seq;
      e.last = Status::Ok();
      ++handled_on_commit_;
      CheckWaiters(name, &out);
    } else {
      e.queued = true;
      queue_.push_back(name);
      cv_.notify_one();
    }
  }
  for (auto& [fn, st] : out) fn(st);
}

uint64_t InstanceAgent::handled_on_commit() const {
  std::lock_guard<std::mutex> l(mu_);
  return handled_on_commit_;
}

bool InstanceAgent::TryQuiet(const std::string& name) {
  std::optional<InstanceRecord> r = state_->GetInstance(name);
  if (!r || !Ours(*r)) return false;
  return runtime_->ApplyQuiet(SpecFromRecord(*r));
}

Status InstanceAgent::Start(const StateMachine* state, runtime::Runtime* rt, EventHub* events) {
  {
    std::lock_guard<std::mutex> l(mu_);
    state_ = state;
    runtime_ = rt;
    events_ = events;
    started_ = true;  // changes are queued from now on, so none slips between Sync and the worker
    // ... and none is applied beside the Sync (OnChanges' quiet path), which would apply the
    // specs it read before the change over it.
    syncing_ = true;
  }
  rt->SetListener([this](const runtime::Transition& t) { OnTransition(t); });
  Status s = SyncAll();
  {
    std::lock_guard<std::mutex> l(mu_);
    syncing_ = false;
  }
  int n = std::clamp(options_.workers, 1, 64);
  for (int i = 0; i < n; ++i)
    workers_.emplace_back([this] {
      SetThreadName("cn-agent");
      Loop();
    });
  return s;
}

Status InstanceAgent::SyncAll() {
  std::vector<runtime::InstanceSpec> specs;
  for (const std::string& name : state_->ListInstances()) {
    std::optional<InstanceRecord> r = state_->GetInstance(name);
    if (!r || !Ours(*r)) continue;
    runtime::InstanceSpec spec = SpecFromRecord(*r);
    Status v = runtime::ValidateSpec(spec);
    if (!v.ok()) {
      CN_LOG(Error) << "instance agent: record " << name << " cannot run: " << v.ToString();
      continue;
    }
    specs.push_back(std::move(spec));
  }
  Status s = runtime_->Sync(specs);
  if (!s.ok()) CN_LOG(Warning) << "instance agent: sync: " << s.ToString();
  return s;
}

Status InstanceAgent::Handle(const std::string& name, const std::vector<std::string>& verbs,
                             bool* exists) {
  std::optional<InstanceRecord> r = state_->GetInstance(name);
  *exists = r.has_value();
  if (!r || !Ours(*r)) {
    Status s = runtime_->Remove(name);
    return s.code() == Code::kNotFound ? Status::Ok() : s;
  }
  runtime::InstanceSpec spec = SpecFromRecord(*r);
  // With verbs, the desired state is theirs to change (a `restart` must not also start it here).
  if (!verbs.empty()) spec.desired = runtime::Desired::kNone;
  Status s = runtime_->Apply(spec);
  if (!s.ok()) CN_LOG(Warning) << "instance agent: apply " << name << ": " << s.ToString();
  for (const std::string& verb : verbs) {
    Status c = runtime_->Control(name, verb);
    if (!c.ok()) {
      CN_LOG(Warning) << "instance agent: " << name << " " << verb << ": " << c.ToString();
      if (s.ok()) s = c;
    }
  }
  return s;
}

void InstanceAgent::AfterCommit(const std::string& name, Wait wait, Done done) {
  Completions out;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!started_ || stopping_) {
      out.emplace_back(std::move(done), Status::Ok());
    } else {
      Waiter w;
      w.name = name;
      w.wait = wait;
      auto it = entries_.find(name);
      w.seq = it == entries_.end() ? 0 : it->second.changed_seq;
      w.deadline_ms = SteadyMs() + options_.settle_timeout_ms;
      w.done = std::move(done);
      // Every deadline is settle_timeout_ms after its call, so only the first waiter's can be
      // earlier than what the workers already wait for: waking one for every write (64 writers:
      // most of the agent's wake-ups) bought nothing.
      bool first = waiters_.empty();
      waiters_.push_back(std::move(w));
      Completions now;
      CheckWaiters(name, &now);
      if (first && !waiters_.empty()) cv_.notify_one();
      // Already handled (on the committing thread, mostly: OnChanges' quiet path): a worker
      // answers, so the thread every commit passes through does not spend its time on replies
      // and the wake-ups of their writers. One wake-up per batch of them.
      if (!now.empty()) {
        bool idle = ready_.empty();
        for (auto& c : now) ready_.push_back(std::move(c));
        if (idle) cv_.notify_one();
      }
    }
  }
  for (auto& [fn, s] : out) fn(s);
}

bool InstanceAgent::Settled(const Waiter& w, Status* verdict) const {
  Result<runtime::InstanceStatus> st = runtime_->Get(w.name, /*usage=*/false);
  *verdict = Status::Ok();
  if (!st.ok()) return true;  // gone: nothing is left to wait for
  if (w.wait == Wait::kRemoved) return false;
  if (Unsettled(st->state)) return false;
  if (w.wait == Wait::kStarted &&
      (st->state.rfind("failed exec:", 0) == 0 || st->state.rfind("failed start:", 0) == 0)) {
    *verdict = StartFailure(st->state);
  }
  return true;
}

bool InstanceAgent::CheckWaiters(const std::string& name, Completions* out) {
  bool left = false;
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    Waiter& w = *it;
    if (!name.empty() && w.name != name) {
      ++it;
      continue;
    }
    if (!w.handled) {
      auto e = entries_.find(w.name);
      bool handled = e == entries_.end() ? !resync_ : e->second.handled_seq >= w.seq && !resync_;
      if (!handled) {
        left = true;
        ++it;
        continue;
      }
      w.handled = true;
      Status last = e == entries_.end() ? Status::Ok() : e->second.last;
      if (!last.ok() || w.wait == Wait::kApplied) {
        out->emplace_back(std::move(w.done), last);
        it = waiters_.erase(it);
        continue;
      }
    }
    Status verdict;
    if (Settled(w, &verdict)) {
      out->emplace_back(std::move(w.done), verdict);
      it = waiters_.erase(it);
      continue;
    }
    left = true;
    ++it;
  }
  return left;
}

void InstanceAgent::OnTransition(const runtime::Transition& t) {
  EventHub* hub;
  {
    std::lock_guard<std::mutex> l(mu_);
    hub = events_;
  }
  // The record's removal was published when it was committed; the runtime's is the end of it.
  if (hub != nullptr && t.event != "instance_removed") {
    hub->Publish({FormatTransition(t)}, t.unix_ms);
  }
  Completions out;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_) return;
    if (t.event == "instance_removed") {
      for (auto it = waiters_.begin(); it != waiters_.end();) {
        if (it->name == t.instance && it->handled && it->wait == Wait::kRemoved) {
          out.emplace_back(std::move(it->done), Status::Ok());
          it = waiters_.erase(it);
        } else {
          ++it;
        }
      }
    }
    CheckWaiters(t.instance, &out);
  }
  for (auto& [fn, s] : out) fn(s);
}

std::string InstanceAgent::TakeRunnable() {
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (busy_.count(*it)) continue;  // its worker takes the new change next, in order
    std::string name = std::move(*it);
    queue_.erase(it);
    return name;
  }
  return "";
}

void InstanceAgent::ExpireWaiters(Completions* out) {
  if (waiters_.empty()) return;
  int64_t now = SteadyMs();
  // Deadlines grow along the list (each is settle_timeout_ms after its AfterCommit, appended in
  // call order), so the expired ones are a prefix.
  while (!waiters_.empty() && waiters_.front().deadline_ms <= now) {
    Waiter& w = waiters_.front();
    std::string what = "the change is not applied to the process yet";
    if (w.handled) {
      Result<runtime::InstanceStatus> st = runtime_->Get(w.name, /*usage=*/false);
      what = "the instance is still " + (st.ok() ? st->state : std::string("changing"));
    }
    out->emplace_back(
        std::move(w.done),
        Status::Unavailable(what + " after " + std::to_string(options_.settle_timeout_ms / 1000) +
                            " s; its state file tells how it goes on"));
    waiters_.pop_front();
  }
}

void InstanceAgent::Loop() {
  std::unique_lock<std::mutex> l(mu_);
  auto runnable = [&] {
    for (const std::string& n : queue_) {
      if (!busy_.count(n)) return true;
    }
    return false;
  };
  // A resync runs alone: it waits for the handlings in progress, and none starts meanwhile.
  auto can_sync = [&] { return resync_ && !syncing_ && busy_.empty(); };
  while (!stopping_) {
    int64_t next = waiters_.empty() ? 0 : waiters_.front().deadline_ms;  // (ExpireWaiters)
    auto ready = [&] {
      return stopping_ || !ready_.empty() || can_sync() || (!resync_ && runnable());
    };
    if (next == 0) {
      cv_.wait(l, ready);
    } else {
      cv_.wait_for(l, std::chrono::milliseconds(std::max<int64_t>(1, next - SteadyMs())), ready);
    }
    if (stopping_) break;
    Completions out;
    out.swap(ready_);
    if (can_sync()) {
      syncing_ = true;
      l.unlock();
      Status s = SyncAll();
      l.lock();
      syncing_ = false;
      resync_ = false;
      // What was queued before the sync is in it; what is queued still gets handled in turn.
      for (auto& [n, e] : entries_) {
        if (e.queued) continue;
        e.handled_seq = e.changed_seq;
        e.last = s;
      }
      CheckWaiters("", &out);
      cv_.notify_all();
    } else if (!resync_ && !syncing_) {
      std::string name = TakeRunnable();
      if (!name.empty()) {
        Entry& e = entries_[name];
        std::vector<std::string> verbs;
        verbs.swap(e.verbs);
        uint64_t seq = e.changed_seq;
        e.queued = false;
        busy_.insert(name);
        l.unlock();
        bool exists = true;
        Status s = Handle(name, verbs, &exists);
        l.lock();
        busy_.erase(name);
        auto it = entries_.find(name);
        bool again = it != entries_.end() && it->second.queued;
        if (it != entries_.end()) {
          it->second.handled_seq = std::max(it->second.handled_seq, seq);
          it->second.last = s;
          bool waited = CheckWaiters(name, &out);
          // A removed instance's entry goes once nothing refers to it; a live one stays so that
          // a writer that comes after the handling still finds its verdict. (A record made again
          // after the handling read it queued a change of its own: `queued` keeps the entry.)
          if (!it->second.queued && !waited && !exists) entries_.erase(it);
        }
        // Its next change (queued meanwhile), or a resync waiting for the workers to be idle.
        if (resync_ || again) cv_.notify_all();
      }
    }
    ExpireWaiters(&out);
    if (!out.empty()) {
      l.unlock();
      for (auto& [fn, s] : out) fn(s);
      l.lock();
    }
  }
}

void InstanceAgent::Shutdown() {
  Completions out;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_) return;
    stopping_ = true;
    out.swap(ready_);  // decided already: their verdicts stand
    for (Waiter& w : waiters_) {
      out.emplace_back(std::move(w.done), Status::Unavailable("the daemon is stopping"));
    }
    waiters_.clear();
  }
  cv_.notify_all();
  for (std::thread& w : workers_) {
    if (w.joinable()) w.join();
  }
  for (auto& [fn, s] : out) fn(s);
}

}  // namespace constellation
