#include "node/state/replica.h"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "node/base/coding.h"
#include "node/base/log.h"
#include "node/state/consensus.h"

namespace constellation {
namespace {

constexpr int64_t kTickMs = 100;
constexpr size_t kReplayBatch = 1000;

struct Waiter {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  Status verdict;
  std::string result;
};

std::string EncodeEntry(const LogEntry& e) {
  Writer w;
  w.Fixed64(e.term);
  w.out().append(e.data);
  return w.Take();
}

std::string EncodeHardState(const HardState& hs) {
  Writer w;
  w.Fixed64(hs.term);
  w.Bytes(hs.vote);
  w.Fixed64(hs.commit);
  return w.Take();
}

}  // namespace

struct Replica::Impl {
  ReplicaOptions options;
  Env* env;
  std::unique_ptr<KvStore> kv;
  StateMachine state;
  EventHub events;
  std::unique_ptr<Consensus> consensus;  // agent thread only

  mutable std::mutex mu;  // guards the fields below
  std::condition_variable work_cv;
  std::deque<std::pair<Command, std::shared_ptr<Waiter>>> pending;
  std::unordered_map<uint64_t, std::shared_ptr<Waiter>> waiters;
  uint64_t next_request_id = 1;
  bool stopping = false;
  std::atomic<bool> compact_requested{false};
  uint64_t term = 0;
  uint64_t commit_index = 0;
  uint64_t log_first = 1;

  std::vector<LogEntry> unapplied;  // committed but not yet applied (agent thread only)
  int64_t apply_backoff_ms = 0;     // agent thread only
  uint64_t durable_index = 0;       // last log index known durable (agent thread only)
  std::thread agent;

  Impl(const ReplicaOptions& o)
      : options(o),
        env(o.env ? o.env : DefaultEnv()),
        state(StateMachineOptions{o.audit_keep, o.on_instance_changes}),
        events(o.event_capacity) {}

  void Finish(uint64_t request_id, const Status& verdict, std::string result = {}) {
    std::shared_ptr<Waiter> w;
    {
      std::lock_guard<std::mutex> l(mu);
      auto it = waiters.find(request_id);
      if (it == waiters.end()) return;
      w = std::move(it->second);
      waiters.erase(it);
    }
    std::lock_guard<std::mutex> l(w->mu);
    w->done = true;
    w->verdict = verdict;
    w->result = std::move(result);
    w->cv.notify_all();
  }

  // Applies `entries` in one batch. On a storage failure nothing is applied and the entries stay
  // queued for the next round.
  Status ApplyEntries(std::vector<LogEntry>* entries, bool answer) {
    if (entries->empty()) return Status::Ok();
    KvStore::Batch batch;
    std::vector<std::string> lines;
    struct Answer {
      uint64_t request_id;
      Status verdict;
      std::string result;
    };
    std::vector<Answer> answers;
    for (const LogEntry& e : *entries) {
      Result<Command> c = DecodeCommand(e.data);
      CN_CHECK(c.ok()) << "log entry " << e.index << " cannot be applied: " << c.status().ToString()
                       << " (was it written by a newer daemon? upgrade this node)";
      std::string result;
      Status verdict = state.Apply(e.index, *c, &batch, &lines, &result);
      if (c->node == options.node_name && c->request_id != 0) {
        answers.push_back(Answer{c->request_id, verdict, std::move(result)});
      }
    }
    state.StageInto(&batch);
    uint64_t applied = entries->back().index;
    uint64_t first;
    {
      std::lock_guard<std::mutex> l(mu);
      first = log_first;
    }
    uint64_t compact_to = 0;  // drop log entries [first, compact_to)
    if (compact_requested) {
      compact_to = applied + 1;
    } else if (applied >= first + 2 * options.log_keep) {
      compact_to = applied + 1 - options.log_keep;
    }
    if (compact_to > first) {
      for (uint64_t i = first; i < compact_to; ++i) batch.Delete(keys::kLogPrefix + BigEndian64(i));
      batch.Put(keys::kLogFirst, BigEndian64(compact_to));
    }
    Status s = kv->Write(batch, /*sync=*/false);
    if (!s.ok()) {
      state.DropStaged();
      return s;
    }
    state.CommitStaged();
    entries->clear();
    {
      std::lock_guard<std::mutex> l(mu);
      if (compact_to > first) log_first = compact_to;
      compact_requested = false;
    }
    events.Publish(lines, env->clock->NowUnixMs());
    if (answer) {
      for (Answer& a : answers) Finish(a.request_id, a.verdict, std::move(a.result));
    }
    return Status::Ok();
  }

  // Refuses new commands while free space is below the reserve. Checked once per batch.
  Status CheckFreeSpace(bool idle) {
    if (idle || !env->free_bytes || options.reserve_bytes == 0) return Status::Ok();
    Result<uint64_t> free = env->free_bytes(options.data_dir);
    if (!free.ok() || *free >= options.reserve_bytes) return Status::Ok();
    return Status::NoSpace("the data dir's file system has " + std::to_string(*free >> 20) +
                           " MiB free, below the " + std::to_string(options.reserve_bytes >> 20) +
                           " MiB kept for applying committed entries; free some space");
  }

  // A committed entry could not be applied (the store refused the batch): wait before retrying,
  // doubling up to a second, and log once per retry rather than in a hot loop.
  void ApplyFailed(const Status& s) {
    apply_backoff_ms = apply_backoff_ms == 0 ? 10 : std::min<int64_t>(apply_backoff_ms * 2, 1000);
    CN_LOG(Error) << "applying committed entries failed, retrying in " << apply_backoff_ms
                  << " ms: " << s.ToString();
    std::unique_lock<std::mutex> l(mu);
    work_cv.wait_for(l, std::chrono::milliseconds(apply_backoff_ms), [&] { return stopping; });
  }

  void Run() {
    int64_t last_tick = env->clock->MonotonicMs();
    for (;;) {
      std::vector<std::pair<Command, std::shared_ptr<Waiter>>> batch;
      bool stop;
      {
        std::unique_lock<std::mutex> l(mu);
        work_cv.wait_for(l, std::chrono::milliseconds(kTickMs), [&] {
          return stopping || !pending.empty() || consensus->HasReady() || !unapplied.empty() ||
                 compact_requested;
        });
        while (!pending.empty() && batch.size() < options.max_batch) {
          batch.push_back(std::move(pending.front()));
          pending.pop_front();
        }
        stop = stopping && pending.empty();
      }
      int64_t now = env->clock->MonotonicMs();
      if (now - last_tick >= kTickMs) {
        consensus->Tick();
        last_tick = now;
      }
      Status room = CheckFreeSpace(batch.empty());
      for (auto& [cmd, waiter] : batch) {
        Status s = room.ok() ? consensus->Propose(EncodeCommand(cmd)) : room;
        if (!s.ok()) Finish(cmd.request_id, s);
      }
      // Entries left over from a failed apply go first, in order.
      if (!unapplied.empty()) {
        Status s = ApplyEntries(&unapplied, true);
        if (!s.ok()) {
          ApplyFailed(s);
          if (stop) return;
          continue;
        }
        apply_backoff_ms = 0;
      }
      if (consensus->HasReady()) {
        Ready rd = consensus->GetReady();
        // Committed entries that were durable before this Ready are applied (and their proposers
        // answered) first, without waiting for this Ready's log sync; any made durable by this
        // Ready's own write are applied after it.
        std::vector<LogEntry> after_persist;
        for (LogEntry& e : rd.committed_entries) {
          (e.index <= durable_index ? unapplied : after_persist).push_back(std::move(e));
        }
        if (!unapplied.empty()) {
          Status s = ApplyEntries(&unapplied, true);
          if (!s.ok()) ApplyFailed(s);
        }
        if (!rd.entries.empty() || rd.hard_state) {
          KvStore::Batch log_batch;
          for (const LogEntry& e : rd.entries) {
            log_batch.Put(keys::kLogPrefix + BigEndian64(e.index), EncodeEntry(e));
          }
          if (rd.hard_state) log_batch.Put(keys::kHardState, EncodeHardState(*rd.hard_state));
          Status s = kv->Write(log_batch, /*sync=*/true);
          if (!s.ok()) {
            CN_LOG(Error) << "log write failed: " << s.ToString();
            consensus->PersistFailed();
            for (const LogEntry& e : rd.entries) {
              Result<Command> c = DecodeCommand(e.data);
              if (c.ok()) Finish(c->request_id, s);
            }
            rd.entries.clear();
          } else if (!rd.entries.empty()) {
            durable_index = rd.entries.back().index;
          }
        }
        // Messages would be sent here (Raft); the single voter has none.
        if (!after_persist.empty()) {
          for (LogEntry& e : after_persist) unapplied.push_back(std::move(e));
          Status s = ApplyEntries(&unapplied, true);
          if (!s.ok()) ApplyFailed(s);
        }
        consensus->Advance();
        std::lock_guard<std::mutex> l(mu);
        term = consensus->term();
        commit_index = consensus->commit_index();
      } else if (compact_requested) {
        KvStore::Batch b;
        uint64_t applied = state.applied_index();
        std::lock_guard<std::mutex> l(mu);
        for (uint64_t i = log_first; i <= applied; ++i) b.Delete(keys::kLogPrefix + BigEndian64(i));
        b.Put(keys::kLogFirst, BigEndian64(applied + 1));
        if (kv->Write(b, false).ok()) log_first = applied + 1;
        compact_requested = false;
      }
      if (stop && !consensus->HasReady() && unapplied.empty()) return;
    }
  }
};

Result<std::unique_ptr<Replica>> Replica::Open(const ReplicaOptions& options) {
  auto impl = std::make_unique<Impl>(options);
  Impl& m = *impl;
  CN_ASSIGN_OR_RETURN(m.kv, m.env->open_kv(options.data_dir + "/state"));
  CN_RETURN_IF_ERROR(m.state.Load(m.kv.get()));
  std::string v;
  if (m.kv->Get(keys::kLogFirst, &v).ok()) m.log_first = FromBigEndian64(v);
  uint64_t term = 0;
  if (m.kv->Get(keys::kHardState, &v).ok()) {
    Reader r(v);
    if (!r.Fixed64(&term)) return Status::Corruption("hard state: malformed");
  }
  // Replay the durable log past the applied index; everything durable is committed (one voter).
  uint64_t applied = m.state.applied_index();
  uint64_t last_index = applied;
  Status replay;
  CN_RETURN_IF_ERROR(m.kv->Scan(
      keys::kLogPrefix + BigEndian64(applied + 1), "l0",
      [&](std::string_view k, std::string_view d) {
        uint64_t index = FromBigEndian64(k.substr(2));
        Reader r(d);
        uint64_t entry_term = 0;
        if (index != last_index + 1 || !r.Fixed64(&entry_term)) {
          replay =
              Status::Corruption("log: gap or malformed entry at index " + std::to_string(index));
          return false;
        }
        m.unapplied.push_back(LogEntry{index, entry_term, std::string(d.substr(8))});
        last_index = index;
        if (m.unapplied.size() >= kReplayBatch) replay = m.ApplyEntries(&m.unapplied, false);
        return replay.ok();
      }));
  CN_RETURN_IF_ERROR(replay);
  CN_RETURN_IF_ERROR(m.ApplyEntries(&m.unapplied, false));
  if (last_index > applied) {
    CN_LOG(Info) << "replayed log entries " << applied + 1 << ".." << last_index;
  }
  if (last_index < m.log_first - 1) last_index = m.log_first - 1;
  m.durable_index = last_index;
  m.consensus = NewSingleVoter(options.node_name, last_index, term);
  m.term = m.consensus->term();
  m.commit_index = m.consensus->commit_index();
  std::unique_ptr<Replica> replica(new Replica(std::move(impl)));
  replica->impl_->agent = std::thread([p = replica->impl_.get()] { p->Run(); });
  if (replica->impl_->state.cluster_id().empty()) {
    char id[17];
    snprintf(id, sizeof id, "%016llx",
             static_cast<unsigned long long>(replica->impl_->env->random->Next()));
    Command c;
    c.type = CommandType::kBootstrap;
    c.value = id;
    CN_RETURN_IF_ERROR(replica->Propose(std::move(c)));
  }
  return replica;
}

Replica::Replica(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Replica::~Replica() {
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    impl_->stopping = true;
  }
  impl_->work_cv.notify_all();
  if (impl_->agent.joinable()) impl_->agent.join();
  std::lock_guard<std::mutex> l(impl_->mu);
  for (auto& [id, w] : impl_->waiters) {
    std::lock_guard<std::mutex> wl(w->mu);
    w->done = true;
    w->verdict = Status::Unavailable("daemon is shutting down");
    w->cv.notify_all();
  }
}

Status Replica::Propose(Command command, std::string* result) {
  Impl& m = *impl_;
  auto waiter = std::make_shared<Waiter>();
  command.time_ms = m.env->clock->NowUnixMs();
  command.node = m.options.node_name;
  {
    std::lock_guard<std::mutex> l(m.mu);
    if (m.stopping) return Status::Unavailable("daemon is shutting down");
    if (m.pending.size() >= m.options.max_pending) {
      return Status::Unavailable("commit queue is full (" + std::to_string(m.options.max_pending) +
                                 " proposals waiting); retry");
    }
    command.request_id = m.next_request_id++;
    m.waiters[command.request_id] = waiter;
    m.pending.emplace_back(command, waiter);
  }
  m.work_cv.notify_one();
  std::unique_lock<std::mutex> l(waiter->mu);
  if (!waiter->cv.wait_for(l, std::chrono::milliseconds(m.options.propose_timeout_ms),
                           [&] { return waiter->done; })) {
    l.unlock();
    std::lock_guard<std::mutex> ml(m.mu);
    m.waiters.erase(command.request_id);
    return Status::Unavailable("the command was not applied within " +
                               std::to_string(m.options.propose_timeout_ms) + " ms");
  }
  if (result != nullptr) *result = std::move(waiter->result);
  return waiter->verdict;
}

const StateMachine& Replica::state() const { return impl_->state; }
EventHub* Replica::events() { return &impl_->events; }
KvStore* Replica::store() { return impl_->kv.get(); }

ReplicaStatus Replica::GetStatus() const {
  ReplicaStatus s;
  s.cluster_id = impl_->state.cluster_id();
  s.node = impl_->options.node_name;
  s.applied_index = impl_->state.applied_index();
  std::lock_guard<std::mutex> l(impl_->mu);
  s.leader = impl_->options.node_name;
  s.term = impl_->term;
  s.commit_index = impl_->commit_index;
  s.log_first_index = impl_->log_first;
  return s;
}

Status Replica::ReadAudit(std::string* out) const {
  return impl_->state.ReadAudit(impl_->kv.get(), out);
}

Status Replica::Compact() {
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    impl_->compact_requested = true;
  }
  impl_->work_cv.notify_one();
  return Status::Ok();
}

}  // namespace constellation
