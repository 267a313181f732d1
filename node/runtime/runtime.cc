#include "node/runtime/runtime.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "node/base/fd.h"
#include "node/base/log.h"
#include "node/base/thread_name.h"
#include "node/runtime/kept_fds_internal.h"
#include "node/runtime/scratch.h"
#include "node/runtime/sysfile.h"

namespace constellation::runtime {

namespace {
// Spec files kept open across all instances (PersistSpec); past it, a rewrite opens the file.
FdBudget kept_spec_fds(4096);
}  // namespace

FdBudget& KeptSpecFds() { return kept_spec_fds; }

// An instance's spec file, kept open for rewrites in place: a limit change rewrote it through
// open, fstat, pwrite and close, an eighth of a cluster leader's CPU under 64 writers.
struct KeptSpecFile {
  Fd fd;
  size_t bytes = 0;  // the file's size: a rewrite that fits is padded to it
  KeptSpecFile() = default;
  KeptSpecFile(const KeptSpecFile&) = delete;
  KeptSpecFile& operator=(const KeptSpecFile&) = delete;
  ~KeptSpecFile() { Reset(); }
  void Reset() {
    if (fd.get() >= 0) {
      fd.Close();
      kept_spec_fds.Give();
    }
    bytes = 0;
  }
};

struct Runtime::Instance {
  explicit Instance(LifecycleConfig config) : lc(config) {}
  uint64_t id = 0;
  std::string name;
  std::string dir;
  InstanceSpec spec;
  Lifecycle lc;
  Cgroup cgroup;
  // The process of the current run.
  int pidfd = -1;
  pid_t pid = 0;
  uint64_t start_ticks = 0;
  int64_t started_unix_ms = 0;
  uint64_t oom_baseline = 0;  // the cgroup's oom_kills when this run began
  // An adopted process ended but its real parent (init) has not reaped it yet.
  bool exit_pending = false;
  int64_t exit_probe_next_ms = 0;
  int64_t exit_probe_until_ms = 0;
  int64_t timer_at_ms = 0;  // the lifecycle's requested tick (0: none)
  bool removing = false;
  // A spawn the core asked for waits in spawns_ (spawn_queued), then runs without the runtime's
  // lock (launching); meanwhile the core is `starting` and takes other inputs as such.
  bool spawn_queued = false;
  bool launching = false;
  // The spec's limits may not be in the cgroup: they changed while no process ran (every start
  // writes them all, PrepareSpawn).
  bool limits_deferred = false;
  // The cgroup's memory limit is not the spec's: the kernel refused it (v1: below what the group
  // uses). Every later limit change tries it again; the next start writes it.
  bool memory_behind = false;
  // The spec file is behind `spec`: limits changed while no process ran (or a write failed), and
  // the file is written at the next start, spec change or shutdown (PersistSpecIfStale). A crash
  // before that leaves the older spec on disk, which the records' Sync replaces (runtime.h).
  bool spec_stale = false;
  std::optional<InstanceSpec> recreate;  // mkdir of the same name while it was being removed
  bool stopped_by_shutdown = false;
  // cpu_percent sampling
  uint64_t last_cpu_ns = 0;
  int64_t last_sample_ms = 0;
  double cpu_percent = 0;
  uint64_t log_trimmed = 0;
  KeptSpecFile spec_file;
};

namespace {

constexpr uint64_t kTimerId = 0;
constexpr uint64_t kWakeId = 1;  // instance ids start above
constexpr int64_t kExitProbeIntervalMs = 50;
constexpr int64_t kExitProbeWindowMs = 5000;
constexpr int64_t kShutdownExtraMs = 5000;
constexpr size_t kMaxStrayCgroups = 4096;

bool ValidName(std::string_view n) {
  if (n.empty() || n.size() > kMaxInstanceNameBytes || !isalnum(static_cast<unsigned char>(n[0])))
    return false;
  for (char c : n) {
    if (!isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '.' && c != '-') return false;
  }
  return true;
}

// Whether `a` and `b` differ in the cgroup limits alone.
bool LimitsOnly(const InstanceSpec& a, const InstanceSpec& b) {
  InstanceSpec c = a;
  c.ram_mb = b.ram_mb;
  c.cpu_percent = b.cpu_percent;
  c.pids_max = b.pids_max;
  return c == b;
}

std::string Escape(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Unescape(std::string_view v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] == '\\' && i + 1 < v.size()) {
      ++i;
      out += v[i] == 'n' ? '\n' : v[i];
    } else {
      out += v[i];
    }
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> ParseKv(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    out.emplace_back(line.substr(0, eq), Unescape(line.substr(eq + 1)));
  }
  return out;
}

std::string EncodeSpec(const InstanceSpec& s) {
  std::string o;
  o += "name=" + Escape(s.name) + "\n";
  o += "cmd=" + Escape(s.cmd) + "\n";
  for (const auto& e : s.env) o += "env=" + Escape(e) + "\n";
  o += "cpu_percent=" + std::to_string(s.cpu_percent) + "\n";
  o += "ram_mb=" + std::to_string(s.ram_mb) + "\n";
  o += "disk_mb=" + std::to_string(s.disk_mb) + "\n";
  o += "pids_max=" + std::to_string(s.pids_max) + "\n";
  o += std::string("restart=") + RestartPolicyName(s.restart) + "\n";
  o += std::string("network=") + (s.isolate_network ? "isolated" : "host") + "\n";
  o += "uid=" + std::to_string(s.uid) + "\n";
  o += "gid=" + std::to_string(s.gid) + "\n";
  o += std::string("desired=") + DesiredName(s.desired) + "\n";
  return o;
}

Result<InstanceSpec> DecodeSpec(const std::string& text) {
  InstanceSpec s;
  auto num = [](const std::string& v) -> Result<int64_t> {
    CN_ASSIGN_OR_RETURN(uint64_t n, ParseU64(v));
    return static_cast<int64_t>(n);
  };
  for (const auto& [k, v] : ParseKv(text)) {
    if (k == "name") {
      s.name = v;
    } else if (k == "cmd") {
      s.cmd = v;
    } else if (k == "env") {
      s.env.push_back(v);
    } else if (k == "cpu_percent") {
      CN_ASSIGN_OR_RETURN(s.cpu_percent, num(v));
    } else if (k == "ram_mb") {
      CN_ASSIGN_OR_RETURN(s.ram_mb, num(v));
    } else if (k == "disk_mb") {
      CN_ASSIGN_OR_RETURN(s.disk_mb, num(v));
    } else if (k == "pids_max") {
      CN_ASSIGN_OR_RETURN(s.pids_max, num(v));
    } else if (k == "restart") {
      CN_ASSIGN_OR_RETURN(s.restart, ParseRestartPolicy(v));
    } else if (k == "network") {
      s.isolate_network = v == "isolated";
    } else if (k == "uid") {
      CN_ASSIGN_OR_RETURN(int64_t n, num(v));
      s.uid = static_cast<uint32_t>(n);
    } else if (k == "gid") {
      CN_ASSIGN_OR_RETURN(int64_t n, num(v));
      s.gid = static_cast<uint32_t>(n);
    } else if (k == "desired") {
      s.desired = v == "running"   ? Desired::kRunning
                  : v == "stopped" ? Desired::kStopped
                                   : Desired::kNone;
    }
  }
  CN_RETURN_IF_ERROR(ValidateSpec(s));
  return s;
}

std::string MbUp(uint64_t bytes) { return std::to_string((bytes + (1 << 20) - 1) >> 20); }

// Writes `limits` to `cg` (`known`: what it holds; null: write all). A memory limit the kernel
// refuses (v1: below what the group uses; the memory limit is written first, so nothing was)
// leaves the group's, and the other limits are still written: a refusal must not hold up every
// later change. kBusy when only that happened; any other failure as it came.
Status WriteLimits(Cgroup& cg, const CgroupLimits& limits, const CgroupLimits* known) {
  Status s = cg.SetLimits(limits, known);
  if (s.code() == Code::kBusy) {
    CgroupLimits others_unknown{limits.memory_bytes, -1, -1};  // memory skipped
    Status others = cg.SetLimits(limits, &others_unknown);
    if (!others.ok()) s = others;
  }
  return s;
}

}  // namespace

Status ValidateSpec(const InstanceSpec& s) {
  if (!ValidName(s.name))
    return Status::InvalidArgument("instance name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,62}");
  if (s.cmd.size() > kMaxSpecCmdBytes) return Status::TooLarge("cmd is longer than 4096 bytes");
  if (s.env.size() > kMaxSpecEnvVars) return Status::TooLarge("more than 256 env variables");
  for (const auto& e : s.env) {
    if (e.size() > kMaxSpecEnvBytes) return Status::TooLarge("env line longer than 8192 bytes");
    size_t eq = e.find('=');
    if (eq == std::string::npos || eq == 0)
      return Status::InvalidArgument("env lines must be KEY=VALUE: '" + e + "'");
    if (e.find('\0') != std::string::npos) return Status::InvalidArgument("NUL in env");
  }
  if (s.cmd.find('\0') != std::string::npos) return Status::InvalidArgument("NUL in cmd");
  if (s.cpu_percent < 0 || s.cpu_percent > kMaxSpecCpuPercent)
    return Status::InvalidArgument("cpu_percent must be 0..100000");
  if (s.ram_mb < 0 || s.ram_mb > kMaxSpecRamMb || (s.ram_mb > 0 && s.ram_mb < 4))
    return Status::InvalidArgument("ram_mb must be 0 (unlimited) or 4..4194304");
  if (s.disk_mb < 0 || s.disk_mb > kMaxSpecDiskMb)
    return Status::InvalidArgument("disk_mb must be 0..16777216");
  if (s.pids_max < 0 || s.pids_max > kMaxSpecPids)
    return Status::InvalidArgument("pids_max must be 0..4194304");
  return Status::Ok();
}

std::string FormatStats(const InstanceStatus& s) {
  char cpu[32];
  snprintf(cpu, sizeof cpu, "%.1f", s.cpu_percent);
  std::string o;
  o += std::string("cpu_percent ") + cpu + "\n";
  o += "ram_mb " + MbUp(s.ram_bytes) + "\n";
  o += "ram_peak_mb " + MbUp(s.ram_peak_bytes) + "\n";
  o += "disk_mb " + MbUp(s.disk_bytes) + "\n";
  o += "restarts " + std::to_string(s.restarts) + "\n";
  o += "uptime_s " + std::to_string(s.uptime_s) + "\n";
  o += "oom_kills " + std::to_string(s.oom_kills) + "\n";
  o += "backoff_ms " + std::to_string(s.backoff_ms) + "\n";
  o += "restart_in_ms " + std::to_string(s.restart_in_ms) + "\n";
  o += "pids " + std::to_string(s.pids) + "\n";
  return o;
}

// ---------------------------------------------------------------------------------------------
// Open, shutdown, loop

Runtime::Runtime(Options options) : options_(std::move(options)) {}

Result<std::unique_ptr<Runtime>> Runtime::Open(Options options) {
  std::unique_ptr<Runtime> rt(new Runtime(std::move(options)));
  CN_RETURN_IF_ERROR(rt->Init());
  return rt;
}

Status Runtime::Init() {
  Options& o = options_;
  if (!ValidName(o.node)) return Status::InvalidArgument("runtime: bad node name '" + o.node + "'");
  if (o.data_dir.empty()) return Status::InvalidArgument("runtime: data_dir is required");
  CN_RETURN_IF_ERROR(ValidateCgroupPath(o.cgroup_parent));
  LifecycleConfig lc{RestartPolicy::kNever, o.stop_grace_ms, o.backoff};
  CN_RETURN_IF_ERROR(ValidateLifecycleConfig(lc));
  if (o.sample_interval_ms < 10 || o.sample_interval_ms > 60000)
    return Status::InvalidArgument("runtime: sample_interval_ms must be 10..60000");
  if (o.max_instances < 1 || o.max_instances > 100000)
    return Status::InvalidArgument("runtime: max_instances must be 1..100000");
  if (o.pids_max < 0 || o.pids_max > kMaxSpecPids)
    return Status::InvalidArgument("runtime: pids_max must be 0..4194304");
  if (o.max_log_bytes < (1 << 16)) return Status::InvalidArgument("runtime: max_log_bytes < 64K");
  if (o.clock == nullptr) o.clock = DefaultEnv()->clock;
  if (o.spawner == nullptr) o.spawner = DefaultEnv()->spawner;

  // One pidfd per running instance: the default soft limit (1024) is too low for a full node.
  struct rlimit nofile;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < o.max_instances + 256) {
    CN_LOG(Warning) << "runtime: RLIMIT_NOFILE " << nofile.rlim_cur << " is below max_instances "
                    << o.max_instances << " + 256";
  }
  CN_ASSIGN_OR_RETURN(layout_, DetectCgroupLayout());
  cgroup_base_ = o.cgroup_parent + "/" + o.node;
  {
    auto base = Cgroup::Create(layout_, cgroup_base_);
    if (!base.ok()) return Status(base.status().code(), "runtime: " + base.status().message());
  }
  CN_RETURN_IF_ERROR(MakeDirs(o.data_dir, 0711));

  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (epoll_fd_ < 0 || timer_fd_ < 0 || wake_fd_ < 0)
    return Status::FromErrno(errno, "runtime: epoll/timerfd/eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kTimerId;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, timer_fd_, &ev);
  ev.data.u64 = kWakeId;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  next_id_ = kWakeId + 1;

  std::vector<std::string> names;
  if (DIR* d = opendir(o.data_dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_type == DT_DIR && ValidName(e->d_name)) names.push_back(e->d_name);
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  std::unique_lock<std::mutex> lock(mu_);
  next_sample_ms_ = Now() + o.sample_interval_ms;
  for (const std::string& n : names) {
    if (instances_.size() >= o.max_instances) {
      CN_LOG(Error) << "runtime: more instance directories than max_instances; ignoring " << n;
      continue;
    }
    Adopt(n);
  }
  KillStrayCgroups();
  FinalizeRemovals();
  RearmTimer();
  LaunchQueued(&lock);
  lock.unlock();
  thread_ = std::thread([this] {
    SetThreadName("cn-runtime");
    Loop();
  });
  return Status::Ok();
}

Runtime::~Runtime() { Shutdown(); }

void Runtime::SetListener(Listener listener) {
  std::unique_lock<std::mutex> lock(mu_);
  listener_ = std::move(listener);
  UnlockAndDeliver(&lock);
}

void Runtime::Shutdown() {
  std::unique_lock<std::mutex> lock(mu_);
  if (shut_down_) return;
  shut_down_ = true;
  if (options_.stop_on_shutdown) {
    for (auto& [name, inst] : instances_) {
      if (inst->lc.has_process() || inst->lc.phase() == Lifecycle::Phase::kBackoff) {
        inst->stopped_by_shutdown = inst->spec.desired == Desired::kRunning;
        Step(inst.get(), ev::Stop{});
      }
    }
    RearmTimer();
    UnlockAndDeliver(&lock);
    lock.lock();
    auto busy = [this] {
      for (auto& [n, inst] : instances_) {
        if (inst->pidfd >= 0 || inst->lc.has_process()) return true;
      }
      return false;
    };
    // The loop thread handles the exits and the grace-period kills; wait for it (bounded).
    auto deadline = std::chrono::steady_clock::now() +
                    std::chrono::milliseconds(options_.stop_grace_ms + kShutdownExtraMs);
    changed_.wait_until(lock, deadline, [&] { return !busy(); });
    if (busy()) {
      for (auto& [n, inst] : instances_) {
        if (inst->pidfd >= 0) {
          CN_LOG(Warning) << "runtime: instance " << n << " did not stop; killing its cgroup";
          SignalPidfd(inst->pidfd, SIGKILL).ok();
          inst->cgroup.KillAll().ok();
        }
      }
      changed_.wait_for(lock, std::chrono::milliseconds(kShutdownExtraMs), [&] { return !busy(); });
    }
  }
  FinalizeRemovals();   // removals whose process ended just now
  LaunchQueued(&lock);  // fails what they asked for: nothing starts from now on
  // A launch in flight on another thread finishes (bounded by its exec timeout) before the loop
  // and the descriptors it uses go away.
  changed_.wait(lock, [&] { return launching_ == 0 && spawns_.empty(); });
  stopping_ = true;
  uint64_t one = 1;
  ssize_t n = write(wake_fd_, &one, sizeof one);
  (void)n;
  lock.unlock();
  if (thread_.joinable()) thread_.join();
  lock.lock();
  for (auto& [name, inst] : instances_) {
    PersistSpecIfStale(inst.get());
    if (options_.stop_on_shutdown) PersistStatus(inst.get());
    if (inst->pidfd >= 0) close(inst->pidfd);  // the process keeps running: adopted next time
    inst->pidfd = -1;
  }
  UnlockAndDeliver(&lock);
  for (int* fd : {&epoll_fd_, &timer_fd_, &wake_fd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

void Runtime::Loop() {
  epoll_event evs[64];
  while (!stopping_) {
    int n = epoll_wait(epoll_fd_, evs, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      CN_LOG(Error) << "runtime: epoll_wait: " << strerror(errno);
      return;
    }
    std::unique_lock<std::mutex> lock(mu_);
    for (int i = 0; i < n; ++i) {
      uint64_t id = evs[i].data.u64;
      if (id == kTimerId || id == kWakeId) {
        uint64_t buf;
        ssize_t r = read(id == kTimerId ? timer_fd_ : wake_fd_, &buf, sizeof buf);
        (void)r;
        continue;
      }
      auto it = by_id_.find(id);
      if (it != by_id_.end()) OnPidfd(it->second);  // a removed instance's event is stale
    }
    OnTimer();
    SampleAll(&lock);
    FinalizeRemovals();
    RearmTimer();
    UnlockAndDeliver(&lock);
  }
}

int64_t Runtime::Now() const { return options_.clock->MonotonicMs(); }

void Runtime::RearmTimer() {
  int64_t earliest = 0;
  auto consider = [&](int64_t t) {
    if (t > 0 && (earliest == 0 || t < earliest)) earliest = t;
  };
  bool sample = !stray_cgroups_.empty();
  for (auto& [n, inst] : instances_) {
    consider(inst->timer_at_ms);
    if (inst->exit_pending) consider(inst->exit_probe_next_ms);
    if (inst->pidfd >= 0 || inst->removing) sample = true;
  }
  if (sample) consider(next_sample_ms_);
  // Unchanged and still ahead: the armed timer stands (most calls, one per limit change).
  if (earliest == timer_armed_ms_ && (earliest == 0 || earliest > Now())) return;
  timer_armed_ms_ = earliest;
  itimerspec its{};
  if (earliest > 0) {
    int64_t delta = std::max<int64_t>(1, earliest - Now());
    its.it_value.tv_sec = delta / 1000;
    its.it_value.tv_nsec = (delta % 1000) * 1000000;
  }
  timerfd_settime(timer_fd_, 0, &its, nullptr);
}

void Runtime::OnTimer() {
  int64_t now = Now();
  std::vector<Instance*> due;
  for (auto& [n, inst] : instances_) due.push_back(inst.get());
  for (Instance* inst : due) {
    if (inst->timer_at_ms > 0 && now >= inst->timer_at_ms) {
      inst->timer_at_ms = 0;  // a due deadline always changes the core's state (and its timer)
      Step(inst, ev::Tick{});
    }
    if (inst->exit_pending && now >= inst->exit_probe_next_ms) OnPidfd(inst);
  }
}

void Runtime::SampleAll(std::unique_lock<std::mutex>* lock) {
  int64_t now = Now();
  if (now < next_sample_ms_) return;
  next_sample_ms_ = now + options_.sample_interval_ms;
  // The readings (a file per instance) are taken without the lock: with many instances they
  // took milliseconds, and a start waiting for the lock meanwhile was the latency's tail.
  struct Probe {
    uint64_t id;
    Cgroup cgroup;
    std::string log;
    bool running;
    Result<uint64_t> cpu_ns = uint64_t{0};
    uint64_t log_bytes = 0;
  };
  std::vector<Probe> probes;
  probes.reserve(instances_.size());
  for (auto& [n, inst] : instances_) {
    probes.push_back({inst->id, inst->cgroup, inst->dir + "/log", inst->pidfd >= 0});
  }
  lock->unlock();
  for (Probe& p : probes) {
    if (p.running) p.cpu_ns = p.cgroup.CpuUsageNs();
    struct stat st;
    if (stat(p.log.c_str(), &st) == 0) p.log_bytes = static_cast<uint64_t>(st.st_size);
  }
  lock->lock();
  for (Probe& p : probes) {
    auto it = by_id_.find(p.id);
    if (it == by_id_.end()) continue;
    Instance* inst = it->second;
    // A run that began after the reading has its own baseline already.
    if (p.running && p.cpu_ns.ok() && inst->pidfd >= 0 && inst->last_sample_ms < now)
      Sample(inst, *p.cpu_ns, now);
    if (p.log_bytes > options_.max_log_bytes) TrimLog(inst);
  }
  for (auto it = stray_cgroups_.begin(); it != stray_cgroups_.end();) {
    it->KillAll().ok();
    it = it->Remove().ok() ? stray_cgroups_.erase(it) : it + 1;
  }
}

// ---------------------------------------------------------------------------------------------
// Stepping the core and performing its actions

void Runtime::Step(Instance* inst, const Event& event) {
  for (const Action& a : inst->lc.Handle(Now(), event)) Perform(inst, a);
  Refresh(inst);
}

void Runtime::Perform(Instance* inst, const Action& a) {
  switch (a.kind) {
    case Action::Kind::kSpawn:
      // Launched by LaunchQueued once this step is done, without the lock held.
      CN_CHECK(!inst->spawn_queued && !inst->launching) << "spawn while a spawn is pending";
      inst->spawn_queued = true;
      spawns_.push_back(inst->id);
      break;
    case Action::Kind::kSignal:
      if (inst->pidfd >= 0) {
        Status s = SignalPidfd(inst->pidfd, a.sig);
        if (!s.ok()) CN_LOG(Warning) << "runtime: " << inst->name << ": " << s.ToString();
      }
      break;
    case Action::Kind::kKillAll:
      if (inst->pidfd >= 0) SignalPidfd(inst->pidfd, SIGKILL).ok();
      inst->cgroup.KillAll().ok();
      break;
    case Action::Kind::kTimer:
      inst->timer_at_ms = a.at_ms;
      break;
    case Action::Kind::kPublish:
      Publish(inst, a);
      break;
  }
}

void Runtime::Publish(Instance* inst, const Action& a) {
  PersistStatus(inst);
  if (pending_.size() >= kMaxPendingTransitions) {
    pending_.erase(pending_.begin());
    if (++dropped_transitions_ % 1000 == 1)
      CN_LOG(Warning) << "runtime: listener backlog full; dropped " << dropped_transitions_;
  }
  pending_.push_back({inst->name, a.event, a.state, a.detail, options_.clock->NowUnixMs()});
}

std::vector<BindMount> Runtime::ResolveBinds() const {
  std::vector<BindMount> out;
  for (const BindMount& b : options_.binds) {
    struct stat st;
    if (stat(b.source.c_str(), &st) != 0) continue;  // nothing to bind (yet)
    if (lstat(b.target.c_str(), &st) == 0) {
      if (S_ISLNK(st.st_mode)) continue;  // --links: the link already leads into the mount
    } else if (mkdir(b.target.c_str(), 0755) != 0 && errno != EEXIST) {
      CN_LOG(Warning) << "runtime: cannot create bind target " << b.target << ": "
                      << strerror(errno);
      continue;
    }
    out.push_back(b);
  }
  return out;
}

struct Runtime::PreparedLaunch {
  LaunchSpec spec;
  Cgroup cgroup;  // a copy: the instance's may be changed (limits) while the launch runs
  std::string pid_path;
  int64_t started_unix_ms = 0;
  uint64_t oom_baseline = 0;
};

std::optional<Event> Runtime::PrepareSpawn(Instance* inst, PreparedLaunch* p) {
  CN_CHECK(inst->pidfd < 0) << "spawn while a process exists";
  const InstanceSpec& s = inst->spec;
  auto cmd = ResolveCommand(s.cmd, options_.interpreters);
  if (!cmd.ok()) return ev::StartFailed{"start: " + cmd.status().message(), false};
  Status st = MakeDirs(inst->dir, 0711);
  if (!st.ok()) return ev::StartFailed{"start: " + st.message(), true};
  ScratchConfig sc{
      inst->dir + "/work", inst->dir + "/disk.img", s.disk_mb,          s.uid,          s.gid,
      options_.spawner,    options_.mkfs,           options_.resize2fs, options_.e2fsck};
  st = PrepareScratch(sc, /*idle=*/true);
  if (!st.ok())
    return ev::StartFailed{"start: disk: " + st.message(), st.code() == Code::kUnavailable};
  if (inst->cgroup.dirs().empty() || !PathExists(inst->cgroup.dirs()[0])) {
    auto cg = Cgroup::Create(layout_, cgroup_base_ + "/" + inst->name);
    if (!cg.ok()) return ev::StartFailed{"start: cgroup: " + cg.status().message(), false};
    inst->cgroup = *cg;
  }
  // Every start writes all the spec's limits: a new group has none of them, and a change made
  // while nothing ran is only in the spec (limits_deferred). A few writes beside a fork and exec.
  st = inst->cgroup.SetLimits(
      {s.ram_mb << 20, s.cpu_percent, s.pids_max > 0 ? s.pids_max : options_.pids_max});
  if (!st.ok()) return ev::StartFailed{"start: cgroup: " + st.message(), false};
  inst->limits_deferred = false;
  inst->memory_behind = false;
  PersistSpecIfStale(inst);
  auto oom = inst->cgroup.OomKills();
  p->oom_baseline = oom.ok() ? *oom : 0;
  p->cgroup = inst->cgroup;

  LaunchSpec& ls = p->spec;
  ls.hostname = inst->name;
  ls.command = std::move(*cmd);
  bool path = false, home = false, hostname = false;
  for (const std::string& e : s.env) {
    if (e.rfind("CONSTELLATION_INSTANCE=", 0) == 0 || e.rfind("CONSTELLATION_NODE=", 0) == 0)
      continue;  // ours to set
    path = path || e.rfind("PATH=", 0) == 0;
    home = home || e.rfind("HOME=", 0) == 0;
    hostname = hostname || e.rfind("HOSTNAME=", 0) == 0;
    ls.env.push_back(e);
  }
  if (!path) ls.env.push_back(std::string("PATH=") + kDefaultPath);
  if (!home) ls.env.push_back("HOME=" + sc.work_dir);
  if (!hostname) ls.env.push_back("HOSTNAME=" + inst->name);
  ls.env.push_back("CONSTELLATION_INSTANCE=" + inst->name);
  ls.env.push_back("CONSTELLATION_NODE=" + options_.node);
  ls.cwd = sc.work_dir;
  ls.log_path = inst->dir + "/log";
  ls.isolate_network = s.isolate_network;
  ls.uid = s.uid;
  ls.gid = s.gid;
  ls.binds = ResolveBinds();
  ls.cgroup = &p->cgroup;
  p->started_unix_ms = options_.clock->NowUnixMs();
  p->pid_path = inst->dir + "/pid";
  ls.on_created = [p](const Child& c) {
    // Recorded before the command may run: a daemon crash from here on finds it by pid+start time.
    return WriteFileInPlace(p->pid_path, std::to_string(c.pid) + " " +
                                             std::to_string(c.start_ticks) + " " +
                                             std::to_string(p->started_unix_ms) + " " +
                                             std::to_string(p->oom_baseline) + "\n");
  };
  return std::nullopt;
}

Event Runtime::FinishSpawn(Instance* inst, const PreparedLaunch& p, Result<Child> child) {
  if (!child.ok()) {
    WriteFileInPlace(p.pid_path, "").ok();  // no process recorded (emptied, not unlinked)
    return ev::StartFailed{child.status().message(), child.status().code() == Code::kUnavailable};
  }
  inst->oom_baseline = p.oom_baseline;
  inst->pidfd = child->pidfd;
  inst->pid = child->pid;
  inst->start_ticks = child->start_ticks;
  inst->started_unix_ms = p.started_unix_ms;
  inst->exit_pending = false;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = inst->id;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, inst->pidfd, &ev) != 0)
    CN_LOG(Error) << "runtime: epoll add pidfd: " << strerror(errno);
  inst->last_sample_ms = Now();
  auto cpu = inst->cgroup.CpuUsageNs();
  inst->last_cpu_ns = cpu.ok() ? *cpu : 0;
  inst->cpu_percent = 0;
  return ev::Started{child->pid};
}

void Runtime::LaunchQueued(std::unique_lock<std::mutex>* lock) {
  bool any = false;
  while (!spawns_.empty()) {
    auto it = by_id_.find(spawns_.front());
    spawns_.pop_front();
    if (it == by_id_.end()) continue;
    Instance* inst = it->second;
    inst->spawn_queued = false;
    any = true;
    if (shut_down_) {
      // Asked for while the runtime shuts down (a recreated instance): nothing new starts now;
      // the next daemon starts it, as one stopped by a shutdown.
      inst->stopped_by_shutdown = inst->spec.desired == Desired::kRunning;
      Step(inst, ev::StartFailed{"start: the daemon is shutting down", true});
      continue;
    }
    PreparedLaunch p;
    if (std::optional<Event> failed = PrepareSpawn(inst, &p)) {
      Step(inst, *failed);
      continue;
    }
    // Only this thread touches the instance's process fields until `launching` is cleared; the
    // core (still `starting`) and everything else of the instance stay usable meanwhile.
    inst->launching = true;
    ++launching_;
    lock->unlock();
    Result<Child> child = Launch(p.spec);
    lock->lock();
    --launching_;
    inst->launching = false;
    Step(inst, FinishSpawn(inst, p, std::move(child)));
    changed_.notify_all();
  }
  if (any) RearmTimer();
}

void Runtime::WaitLaunched(std::unique_lock<std::mutex>* lock, const std::string& name) {
  changed_.wait(*lock, [&] {
    Instance* inst = Find(name);
    return inst == nullptr || (!inst->spawn_queued && !inst->launching);
  });
}

void Runtime::OnPidfd(Instance* inst) {
  if (inst->pidfd < 0) return;
  ExitInfo e = CollectExit(inst->pidfd);
  if (!e.exited) return;
  if (!e.known) {
    // An adopted process ended; its status appears once init has reaped it. Ask again shortly
    // (the pidfd stays readable, so it leaves the epoll set meanwhile).
    int64_t now = Now();
    if (!inst->exit_pending) {
      inst->exit_pending = true;
      inst->exit_probe_until_ms = now + kExitProbeWindowMs;
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, inst->pidfd, nullptr);
    }
    if (now < inst->exit_probe_until_ms) {
      inst->exit_probe_next_ms = now + kExitProbeIntervalMs;
      return;
    }
  }
  FinishExit(inst, e.known, e.code, e.signal);
}

void Runtime::FinishExit(Instance* inst, bool known, int code, int sig) {
  if (!inst->exit_pending) epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, inst->pidfd, nullptr);
  close(inst->pidfd);
  inst->pidfd = -1;
  inst->pid = 0;
  inst->exit_pending = false;
  inst->cpu_percent = 0;
  auto kills = inst->cgroup.OomKills();
  bool oom = kills.ok() && *kills > inst->oom_baseline;
  // The namespace died with its init; anything left (joined from outside) goes too.
  auto left = inst->cgroup.Pids();
  if (left.ok() && !left->empty()) inst->cgroup.KillAll().ok();
  WriteFileInPlace(inst->dir + "/pid", "").ok();  // no process recorded
  ev::Exited ex;
  ex.code = code;
  ex.signal = sig;
  ex.oom = oom;
  ex.unknown = !known;
  Step(inst, ex);
  changed_.notify_all();
}

void Runtime::Sample(Instance* inst, uint64_t cpu_ns, int64_t now) {
  int64_t dt = now - inst->last_sample_ms;
  if (dt > 0 && cpu_ns >= inst->last_cpu_ns) {
    inst->cpu_percent =
        static_cast<double>(cpu_ns - inst->last_cpu_ns) / 1e6 / static_cast<double>(dt) * 100.0;
  }
  inst->last_cpu_ns = cpu_ns;
  inst->last_sample_ms = now;
  Refresh(inst);
}

void Runtime::TrimLog(Instance* inst) {
  auto dropped = TrimLogHead(inst->dir + "/log", options_.max_log_bytes);
  if (!dropped.ok()) {
    CN_LOG(Warning) << "runtime: " << inst->name << ": " << dropped.status().ToString();
  } else if (*dropped > 0) {
    inst->log_trimmed += *dropped;
    PersistStatus(inst);
    Refresh(inst);
  }
}

// ---------------------------------------------------------------------------------------------
// Persistence and adoption

void Runtime::PrepareFiles(const Instance* inst) {
  // Creating a file costs far more than writing one that exists (up to a millisecond each on an
  // ext4 without a journal that recently deleted many inodes), so a start only writes.
  const InstanceSpec& s = inst->spec;
  if (s.disk_mb == 0) {  // a quota's image is made at the start, with the process's limits
    ScratchConfig sc{
        inst->dir + "/work", inst->dir + "/disk.img", 0, s.uid, s.gid, nullptr, "", "", ""};
    Status st = PrepareScratch(sc, /*idle=*/true);
    if (!st.ok()) CN_LOG(Warning) << "runtime: " << inst->name << ": " << st.ToString();
  }
  int fd = open((inst->dir + "/log").c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd >= 0) close(fd);
  WriteFileInPlace(inst->dir + "/pid", "").ok();
}

void Runtime::PersistSpecIfStale(Instance* inst) {
  if (!inst->spec_stale) return;
  Status s = PersistSpec(inst);
  if (!s.ok()) CN_LOG(Warning) << "runtime: " << inst->name << ": spec: " << s.ToString();
}

Status Runtime::PersistSpec(Instance* inst) {
  // Until a write succeeds the file is behind `spec`: a start or the shutdown tries again.
  inst->spec_stale = true;
  std::string content = EncodeSpec(inst->spec);
  KeptSpecFile& f = inst->spec_file;
  if (f.fd.get() >= 0 && content.size() <= f.bytes) {
    // The same bytes WriteFileInPlace would write: padded with newlines to the file's size.
    content.resize(f.bytes, '\n');
    if (PwriteAll(f.fd.get(), content.data(), content.size(), 0)) {
      inst->spec_stale = false;
      return Status::Ok();
    }
    CN_LOG(Warning) << "runtime: " << inst->name << ": rewriting the spec through its kept "
                    << "descriptor failed (" << strerror(errno) << "); writing it anew";
  }
  f.Reset();
  std::string path = inst->dir + "/spec";
  CN_RETURN_IF_ERROR(WriteFileInPlace(path, content));
  inst->spec_stale = false;
  // Kept for the next rewrite (WriteFileInPlace may have replaced the file by a rename).
  if (!kept_spec_fds.Take()) return Status::Ok();
  Fd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  struct stat st;
  if (fd.get() < 0 || fstat(fd.get(), &st) != 0 || st.st_size > 4096) {
    kept_spec_fds.Give();
    return Status::Ok();
  }
  f.fd = std::move(fd);
  f.bytes = static_cast<size_t>(st.st_size);
  return Status::Ok();
}

void Runtime::PersistStatus(const Instance* inst) {
  std::string o = "state=" + Escape(inst->lc.state()) + "\n";
  o += "restarts=" + std::to_string(inst->lc.restarts()) + "\n";
  o += "log_trimmed=" + std::to_string(inst->log_trimmed) + "\n";
  o += std::string("shutdown=") + (inst->stopped_by_shutdown ? "1" : "0") + "\n";
  // In place, not through a rename: a start writes it twice, and creating (and deleting) an inode
  // per write was most of a mass start's cost (see WriteFileInPlace).
  Status s = WriteFileInPlace(inst->dir + "/status", o);
  if (!s.ok()) CN_LOG(Warning) << "runtime: " << inst->name << ": " << s.ToString();
}

void Runtime::Adopt(const std::string& name) {
  std::string dir = options_.data_dir + "/" + name;
  std::string group = cgroup_base_ + "/" + name;
  auto text = ReadSmallFile(dir + "/spec", 1 << 20);
  Result<InstanceSpec> spec = text.ok() ? DecodeSpec(*text) : Result<InstanceSpec>(text.status());
  if (!spec.ok() || spec->name != name) {
    // Not an instance this runtime can manage: make sure nothing of it runs, keep the files.
    CN_LOG(Error) << "runtime: " << dir << " has no valid spec ("
                  << (spec.ok() ? "name mismatch" : spec.status().ToString())
                  << "); its processes are killed and the directory left alone";
    auto cg = Cgroup::Open(layout_, group);
    if (cg.ok()) {
      cg->KillAll().ok();
      if (!cg->Remove().ok() && stray_cgroups_.size() < kMaxStrayCgroups)
        stray_cgroups_.push_back(*cg);
    }
    return;
  }
  auto inst = std::make_unique<Instance>(
      LifecycleConfig{spec->restart, options_.stop_grace_ms, options_.backoff});
  inst->id = next_id_++;
  inst->name = name;
  inst->dir = dir;
  inst->spec = *spec;
  auto cg = Cgroup::Create(layout_, group);
  if (cg.ok()) {
    inst->cgroup = *cg;
    // The spec may hold a memory limit the group refused before this runtime (memory_behind is
    // not on disk): found again here, and tried again at every limit change, as before.
    Status s = WriteLimits(inst->cgroup, LimitsOf(*spec), nullptr);
    if (s.code() == Code::kBusy) {
      inst->memory_behind = true;
      CN_LOG(Info) << "runtime: " << name << ": " << s.ToString() << " (kept; tried again later)";
    } else if (!s.ok()) {
      CN_LOG(Warning) << "runtime: " << name << ": limits: " << s.ToString();
    }
  } else {
    CN_LOG(Error) << "runtime: " << name << ": " << cg.status().ToString();
  }
  std::string state = "created";
  int64_t restarts = 0;
  bool by_shutdown = false;
  if (auto st = ReadSmallFile(dir + "/status", 1 << 16); st.ok()) {
    for (const auto& [k, v] : ParseKv(*st)) {
      if (k == "state") state = v;
      if (k == "restarts") restarts = ParseU64(v).ok() ? static_cast<int64_t>(*ParseU64(v)) : 0;
      if (k == "log_trimmed") inst->log_trimmed = ParseU64(v).ok() ? *ParseU64(v) : 0;
      if (k == "shutdown") by_shutdown = v == "1";
    }
  }
  Instance* raw = inst.get();
  by_id_[raw->id] = raw;
  instances_[name] = std::move(inst);
  Refresh(raw);

  bool had_process = state == "starting" || state == "running" || state == "stopping";
  auto pid_text = ReadSmallFile(dir + "/pid", 256);
  if (pid_text.ok()) {
    std::istringstream in(*pid_text);
    long long pid = 0;
    unsigned long long ticks = 0, baseline = 0;
    long long started_unix = 0;
    in >> pid >> ticks >> started_unix >> baseline;
    raw->oom_baseline = baseline;
    int fd = -1;
    if (pid > 0) {
      auto pfd = OpenPidfd(static_cast<pid_t>(pid));
      // The pidfd pins the process; its start time proves it is the one recorded (not a reuse).
      if (pfd.ok()) {
        auto t = ProcessStartTicks(static_cast<pid_t>(pid));
        if (t.ok() && *t == ticks) {
          fd = *pfd;
        } else {
          close(*pfd);
        }
      }
    }
    if (fd >= 0) {
      raw->pidfd = fd;
      raw->pid = static_cast<pid_t>(pid);
      raw->start_ticks = ticks;
      raw->started_unix_ms = started_unix;
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = raw->id;
      epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
      auto cpu = raw->cgroup.CpuUsageNs();
      raw->last_cpu_ns = cpu.ok() ? *cpu : 0;
      raw->last_sample_ms = Now();
      int64_t age = std::max<int64_t>(0, options_.clock->NowUnixMs() - started_unix);
      CN_LOG(Info) << "runtime: adopted " << name << " pid " << pid;
      // Its binds still lead to the mounts of the daemon that started it (ENOTCONN once that
      // one died): give it this daemon's.
      if (std::vector<BindMount> binds = ResolveBinds(); !binds.empty()) {
        Status rb = RebindInto(fd, binds);
        if (!rb.ok()) CN_LOG(Warning) << "runtime: " << name << ": " << rb.ToString();
      }
      Step(raw, ev::Adopted{raw->pid, Now() - age, spec->desired});
      return;
    }
    // Gone. Whether it counts as lost depends on what the status file last said (a crash between
    // writing the final state and removing the pid file leaves a settled state and a stale pid).
    unlink((dir + "/pid").c_str());
  }
  // No live process of ours. Anything still in the group is unknown: never leave it running.
  if (!raw->cgroup.dirs().empty()) {
    auto pids = raw->cgroup.Pids();
    if (pids.ok() && !pids->empty()) {
      CN_LOG(Warning) << "runtime: " << name << ": killing " << pids->size()
                      << " unrecorded process(es) in its cgroup";
      raw->cgroup.KillAll().ok();
    }
  }
  if (had_process) {
    auto kills = raw->cgroup.OomKills();
    bool oom = kills.ok() && *kills > raw->oom_baseline;
    CN_LOG(Info) << "runtime: " << name << " ended while no daemon watched it";
    Step(raw, ev::Lost{oom, spec->desired});
    return;
  }
  Step(raw, ev::Restore{state, spec->desired, restarts});
  if (by_shutdown && spec->desired == Desired::kRunning) {
    Step(raw, ev::Start{});  // stopped only because the daemon stopped: it comes back
  }
}

void Runtime::KillStrayCgroups() {
  std::string base_dir = layout_.version == CgroupVersion::kV2
                             ? layout_.v2_root + "/" + cgroup_base_
                             : layout_.v1.at("memory") + "/" + cgroup_base_;
  DIR* d = opendir(base_dir.c_str());
  if (d == nullptr) return;
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    if (e->d_type == DT_DIR && ValidName(e->d_name) && !instances_.count(e->d_name))
      names.push_back(e->d_name);
  }
  closedir(d);
  for (const std::string& n : names) {
    auto cg = Cgroup::Open(layout_, cgroup_base_ + "/" + n);
    if (!cg.ok()) continue;
    auto pids = cg->Pids();
    if (pids.ok() && !pids->empty()) {
      CN_LOG(Warning) << "runtime: killing " << pids->size() << " process(es) in stray cgroup "
                      << n;
    }
    cg->KillAll().ok();
    if (!cg->Remove().ok() && stray_cgroups_.size() < kMaxStrayCgroups)
      stray_cgroups_.push_back(*cg);
  }
}

// ---------------------------------------------------------------------------------------------
// API

Runtime::Instance* Runtime::Find(const std::string& name) const {
  auto it = instances_.find(name);
  return it == instances_.end() ? nullptr : it->second.get();
}

Status Runtime::Apply(const InstanceSpec& spec) {
  CN_RETURN_IF_ERROR(ValidateSpec(spec));
  std::unique_lock<std::mutex> lock(mu_);
  if (shut_down_) return Status::Unavailable("runtime is shut down");
  bool quiet = false;
  Status s = ApplyLocked(spec, &quiet);
  FinalizeRemovals();
  if (!quiet) RearmTimer();
  LaunchQueued(&lock);
  WaitLaunched(&lock, spec.name);
  UnlockAndDeliver(&lock);
  return s;
}

bool Runtime::ApplyQuiet(const InstanceSpec& spec) {
  if (!ValidateSpec(spec).ok()) return false;  // Apply says why
  std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
  if (!lock.owns_lock() || shut_down_) return false;
  Instance* inst = Find(spec.name);
  return inst != nullptr && !inst->removing && TakeQuietLocked(inst, spec);
}

bool Runtime::TakeQuietLocked(Instance* inst, const InstanceSpec& spec) {
  InstanceSpec merged = spec;
  merged.desired = spec.desired == Desired::kNone ? inst->spec.desired : spec.desired;
  if (merged == inst->spec) return true;  // level-triggered repeats cost nothing
  if (!Idle(*inst) || !LimitsOnly(inst->spec, merged)) return false;
  // Nothing runs in the group for the limits to limit: the cgroup writes (an eighth of a cluster
  // leader's CPU under 64 ram_mb writers) wait for the next start. Nothing of the status snapshot
  // or the timers moves either, and only a start reads the limits from the file's copy (an
  // adoption after a restart is followed by the records' Sync): the file waits too
  // (PersistSpecIfStale; a rewrite per change was a twentieth of a cluster leader's CPU).
  if (!(LimitsOf(merged) == LimitsOf(inst->spec))) inst->limits_deferred = true;
  inst->spec = std::move(merged);
  inst->spec_stale = true;
  return true;
}

bool Runtime::Idle(const Instance& inst) {
  return !inst.lc.has_process() && !inst.spawn_queued && !inst.launching && inst.pidfd < 0;
}

CgroupLimits Runtime::LimitsOf(const InstanceSpec& spec) const {
  return CgroupLimits{spec.ram_mb << 20, spec.cpu_percent,
                      spec.pids_max > 0 ? spec.pids_max : options_.pids_max};
}

Status Runtime::ApplyLocked(const InstanceSpec& spec, bool* quiet) {
  Instance* inst = Find(spec.name);
  CgroupLimits limits = LimitsOf(spec);
  if (inst != nullptr && inst->removing) {
    inst->recreate = spec;  // created afresh once the old one is gone
    return Status::Ok();
  }
  if (inst != nullptr && TakeQuietLocked(inst, spec)) {
    if (quiet != nullptr) *quiet = true;
    return Status::Ok();
  }
  Status refused;  // a memory limit this change asked for, which the kernel refused
  if (inst == nullptr) {
    if (instances_.size() >= options_.max_instances) {
      return Status::TooLarge("this node runs at most " + std::to_string(options_.max_instances) +
                              " instances");
    }
    auto fresh = std::make_unique<Instance>(
        LifecycleConfig{spec.restart, options_.stop_grace_ms, options_.backoff});
    fresh->id = next_id_++;
    fresh->name = spec.name;
    fresh->dir = options_.data_dir + "/" + spec.name;
    fresh->spec = spec;
    fresh->spec.desired = Desired::kNone;  // set below through the core
    CN_RETURN_IF_ERROR(MakeDirs(fresh->dir, 0711));
    CN_ASSIGN_OR_RETURN(fresh->cgroup, Cgroup::Create(layout_, cgroup_base_ + "/" + spec.name));
    Status s = fresh->cgroup.SetLimits(limits);
    if (!s.ok()) {
      fresh->cgroup.Remove().ok();
      return s;
    }
    inst = fresh.get();
    by_id_[inst->id] = inst;
    instances_[spec.name] = std::move(fresh);
    // A leftover directory of an earlier instance of this name (removed while its files could not
    // be deleted) must not leak its log, pid or status into the new one.
    unlink((inst->dir + "/pid").c_str());
    unlink((inst->dir + "/status").c_str());
    PersistStatus(inst);
    Refresh(inst);
    CN_RETURN_IF_ERROR(PersistSpec(inst));
    PrepareFiles(inst);
  } else {
    const InstanceSpec& old = inst->spec;
    CgroupLimits old_limits = LimitsOf(old);
    if (!(limits == old_limits)) {
      if (Idle(*inst)) {
        inst->limits_deferred = true;  // as in TakeQuietLocked: the next start writes them
      } else {
        // With limits deferred (a start is queued), the group holds none of old_limits, and with
        // memory behind not their memory limit: all.
        bool unknown = inst->limits_deferred || inst->memory_behind;
        Status s = WriteLimits(inst->cgroup, limits, unknown ? nullptr : &old_limits);
        if (s.code() == Code::kBusy) {  // the group keeps its memory limit, the spec the new one
          inst->memory_behind = true;
          inst->limits_deferred = false;
          if (limits.memory_bytes != old_limits.memory_bytes) refused = s;
        } else if (!s.ok()) {
          inst->cgroup.SetLimits(old_limits).ok();  // never half-applied: all of them again
          inst->limits_deferred = true;             // and once more at the start, to be sure
          return s;
        } else {
          inst->limits_deferred = false;
          inst->memory_behind = false;
        }
      }
    }
    if (spec.disk_mb != old.disk_mb && inst->lc.has_process()) {
      ScratchConfig sc{inst->dir + "/work",
                       inst->dir + "/disk.img",
                       spec.disk_mb,
                       spec.uid,
                       spec.gid,
                       options_.spawner,
                       options_.mkfs,
                       options_.resize2fs,
                       options_.e2fsck};
      CN_RETURN_IF_ERROR(PrepareScratch(sc, /*idle=*/false));  // grows live; the rest waits
    }
    if (spec.restart != old.restart) Step(inst, ev::SetPolicy{spec.restart});
  }
  Desired before = inst->spec.desired;
  InstanceSpec merged = spec;
  merged.desired = spec.desired == Desired::kNone ? before : spec.desired;
  if (merged == inst->spec) {  // a new instance with nothing to start (kNone)
    if (quiet != nullptr) *quiet = true;
    return Status::Ok();
  }
  inst->spec = merged;
  Status persisted = PersistSpec(inst);
  Refresh(inst);
  if (merged.desired != before) {
    inst->stopped_by_shutdown = false;
    Step(inst, merged.desired == Desired::kRunning ? Event(ev::Start{}) : Event(ev::Stop{}));
  }
  return refused.ok() ? persisted : refused;
}

Status Runtime::Control(const std::string& name, std::string_view verb) {
  std::string v(verb);
  while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
  std::string word = v.substr(0, v.find(' '));
  std::string arg = word.size() < v.size() ? v.substr(word.size() + 1) : "";
  Event e;
  Desired desired = Desired::kNone;
  if (word == "start" && arg.empty()) {
    e = ev::Start{};
    desired = Desired::kRunning;
  } else if (word == "stop" && arg.empty()) {
    e = ev::Stop{};
    desired = Desired::kStopped;
  } else if (word == "restart" && arg.empty()) {
    e = ev::Restart{};
    desired = Desired::kRunning;
  } else if (word == "kill") {
    int sig = SIGTERM;
    if (!arg.empty()) {
      CN_ASSIGN_OR_RETURN(sig, ParseSignal(arg));
    }
    e = ev::Kill{sig};
  } else {
    return Status::InvalidArgument("verbs: start | stop | restart | kill [SIGNAL]");
  }
  std::unique_lock<std::mutex> lock(mu_);
  if (shut_down_) return Status::Unavailable("runtime is shut down");
  Instance* inst = Find(name);
  if (inst == nullptr || inst->removing) return Status::NotFound("no instance " + name);
  Status s;
  if (desired != Desired::kNone && inst->spec.desired != desired) {
    inst->spec.desired = desired;
    s = PersistSpec(inst);
  }
  inst->stopped_by_shutdown = false;
  Step(inst, e);
  RearmTimer();
  LaunchQueued(&lock);
  WaitLaunched(&lock, name);
  UnlockAndDeliver(&lock);
  return s;
}

Status Runtime::Remove(const std::string& name) {
  std::unique_lock<std::mutex> lock(mu_);
  Instance* inst = Find(name);
  if (inst == nullptr) return Status::NotFound("no instance " + name);
  if (inst->removing) {
    inst->recreate.reset();  // rmdir after a quick mkdir: it stays removed
  } else {
    RemoveLocked(inst);
  }
  FinalizeRemovals();
  RearmTimer();
  UnlockAndDeliver(&lock);
  return Status::Ok();
}

void Runtime::RemoveLocked(Instance* inst) {
  inst->removing = true;
  any_removing_ = true;
  Refresh(inst);
  inst->spec.desired = Desired::kStopped;
  PersistSpec(inst).ok();
  Step(inst, ev::Stop{});
}

void Runtime::FinalizeRemovals() {
  if (!any_removing_) return;
  std::vector<std::string> done;
  size_t removing = 0;
  for (auto& [name, inst] : instances_) {
    removing += inst->removing ? 1 : 0;
    if (inst->removing && inst->pidfd < 0 && !inst->lc.has_process() && !inst->launching)
      done.push_back(name);
  }
  any_removing_ = removing > done.size();
  for (const std::string& name : done) {
    Instance* inst = Find(name);
    inst->cgroup.KillAll().ok();
    Status s = inst->cgroup.Remove();
    if (!s.ok()) {
      CN_LOG(Warning) << "runtime: remove " << name << ": " << s.ToString() << " (retried)";
      if (stray_cgroups_.size() < kMaxStrayCgroups) stray_cgroups_.push_back(inst->cgroup);
    }
    ScratchConfig sc{inst->dir + "/work", inst->dir + "/disk.img", 0, 0, 0, nullptr, "", "", ""};
    bool had_image = PathExists(sc.image_path);
    s = ReleaseScratch(sc);
    if (!s.ok()) CN_LOG(Warning) << "runtime: remove " << name << ": " << s.ToString();
    std::error_code ec;
    // Never delete through a file system that is still mounted there.
    if (!had_image || MountedDevice(sc.work_dir).empty())
      std::filesystem::remove_all(inst->dir, ec);
    if (ec) CN_LOG(Warning) << "runtime: remove " << inst->dir << ": " << ec.message();
    pending_.push_back({name, "instance_removed", "removed", {}, options_.clock->NowUnixMs()});
    std::optional<InstanceSpec> again = std::move(inst->recreate);
    by_id_.erase(inst->id);
    instances_.erase(name);
    {
      std::lock_guard<std::mutex> lock(status_mu_);
      snapshots_.erase(name);
    }
    if (again) {
      Status a = ApplyLocked(*again);
      if (!a.ok()) CN_LOG(Warning) << "runtime: recreate " << name << ": " << a.ToString();
    }
  }
}

Status Runtime::Sync(const std::vector<InstanceSpec>& specs) {
  for (const auto& s : specs) CN_RETURN_IF_ERROR(ValidateSpec(s));
  std::unique_lock<std::mutex> lock(mu_);
  if (shut_down_) return Status::Unavailable("runtime is shut down");
  std::map<std::string, const InstanceSpec*> want;
  for (const auto& s : specs) want[s.name] = &s;
  Status first;
  for (auto& [name, inst] : instances_) {
    if (!want.count(name) && !inst->removing) RemoveLocked(inst.get());
  }
  for (const auto& s : specs) {
    Status st = ApplyLocked(s);
    if (!st.ok() && first.ok()) first = st;
  }
  FinalizeRemovals();
  RearmTimer();
  LaunchQueued(&lock);
  for (const auto& s : specs) WaitLaunched(&lock, s.name);
  UnlockAndDeliver(&lock);
  return first;
}

bool Runtime::Has(const std::string& name) const {
  std::lock_guard<std::mutex> lock(status_mu_);
  return snapshots_.count(name) > 0;
}

Result<InstanceStatus> Runtime::Get(const std::string& name, bool usage) const {
  InstanceStatus out;
  Cgroup cg;
  std::string work, image;
  {
    std::lock_guard<std::mutex> lock(status_mu_);
    auto it = snapshots_.find(name);
    if (it == snapshots_.end()) return Status::NotFound("no instance " + name);
    const Snapshot& snap = it->second;
    out = snap.status;
    int64_t now = Now();
    if (snap.restart_at_ms > 0) out.restart_in_ms = std::max<int64_t>(0, snap.restart_at_ms - now);
    if (snap.running_since_ms > 0)
      out.uptime_s = std::max<int64_t>(0, now - snap.running_since_ms) / 1000;
    cg = snap.cgroup;
    work = snap.dir + "/work";
    image = snap.dir + "/disk.img";
  }
  if (!usage) return out;
  // File reads outside the lock.
  if (!cg.dirs().empty()) {
    auto st = cg.ReadStats();
    if (st.ok()) {
      out.ram_bytes = st->memory_bytes;
      out.ram_peak_bytes = std::max(st->memory_peak_bytes, st->memory_bytes);
      out.oom_kills = st->oom_kills;
      out.pids = st->pids;
    }
  }
  out.disk_bytes = ScratchUsedBytes(work, image);
  return out;
}

std::vector<std::string> Runtime::List() const {
  std::lock_guard<std::mutex> lock(status_mu_);
  std::vector<std::string> out;
  for (const auto& [name, snap] : snapshots_) {
    if (!snap.removing) out.push_back(name);
  }
  return out;
}

void Runtime::Refresh(const Instance* inst) {
  const Lifecycle& lc = inst->lc;
  Snapshot snap;
  InstanceStatus& out = snap.status;
  out.name = inst->name;
  out.state = lc.state();
  out.pid = inst->pid;
  out.exit_code = lc.exit_code();
  out.error = lc.error();
  out.desired = inst->spec.desired;
  out.cpu_percent = inst->cpu_percent;
  out.restarts = lc.restarts();
  out.backoff_ms = lc.backoff_ms();
  out.log_trimmed_bytes = inst->log_trimmed;
  snap.running_since_ms = lc.running_since_ms();
  snap.restart_at_ms = lc.restart_at_ms();
  snap.cgroup = inst->cgroup;
  snap.dir = inst->dir;
  snap.removing = inst->removing;
  std::lock_guard<std::mutex> lock(status_mu_);
  snapshots_[inst->name] = std::move(snap);
}

std::string Runtime::LogPath(const std::string& name) const {
  return options_.data_dir + "/" + name + "/log";
}

std::string Runtime::WorkDir(const std::string& name) const {
  return options_.data_dir + "/" + name + "/work";
}

void Runtime::UnlockAndDeliver(std::unique_lock<std::mutex>* lock) {
  LaunchQueued(lock);
  if (delivering_ || !listener_ || pending_.empty()) {
    lock->unlock();
    return;
  }
  delivering_ = true;
  while (!pending_.empty() && listener_) {
    std::vector<Transition> batch;
    batch.swap(pending_);
    Listener fn = listener_;
    lock->unlock();
    for (const Transition& t : batch) fn(t);
    lock->lock();
  }
  delivering_ = false;
  lock->unlock();
}

}  // namespace constellation::runtime
