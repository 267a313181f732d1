#include "node/runtime/launcher.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/sched.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "node/runtime/sysfile.h"

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

namespace constellation::runtime {
namespace {

// PIDFD_GET_INFO (Linux 6.15, include/uapi/linux/pidfd.h); declared here because the build
// host's kernel headers may predate it. The ABI is versioned by size: this is version 0 plus the
// exit fields.
struct PidfdInfo {
  uint64_t mask;
  uint64_t cgroupid;
  uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
  int32_t exit_code;
  uint32_t coredump_mask;
  uint32_t spare1;
};
constexpr uint64_t kPidfdInfoExit = 1ULL << 3;
constexpr unsigned long kPidfdGetInfo = _IOWR(0xFF, 11, PidfdInfo);

enum Stage : int32_t {
  kSession = 1,
  kMountSlave,
  kMountProc,
  kMountTmp,
  kBind,
  kHostname,
  kLoopback,
  kStdio,
  kSetgid,
  kSetuid,
  kChdir,
  kScript,
  kExec,
  kCgroup,
};

struct ChildError {
  int32_t stage;
  int32_t err;
  int32_t index;
};

// Everything the child needs, prepared by the parent: after clone the child only makes system
// calls (no allocation: another daemon thread may have held the allocator's lock at clone time).
struct ChildPlan {
  int sync_fd = -1;
  int err_fd = -1;
  int null_fd = -1;
  int log_fd = -1;
  std::vector<int> tasks_fds;  // v1: <group>/tasks of each hierarchy, joined by the child itself
  const char* hostname = nullptr;
  size_t hostname_len = 0;
  bool net = false;
  bool proc = true;
  const char* tmp_opts = nullptr;
  std::vector<std::pair<const char*, const char*>> binds;
  const char* cwd = nullptr;
  uid_t uid = 0;
  gid_t gid = 0;
  const char* script = nullptr;
  std::vector<const char*> candidates;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
};

// The child shares the daemon's memory until it execs (CLONE_VM), so its code must not be
// instrumented to write the shadow memory of its private stack (sanitizer builds).
#define CN_CHILD_CODE __attribute__((no_sanitize("address", "undefined")))

// Its stack: a fresh mapping with a guard page below, unmapped once the child has exec'd or died.
constexpr size_t kChildStackBytes = 64 << 10;
constexpr size_t kGuardBytes = 4096;

[[noreturn]] CN_CHILD_CODE void ChildFail(const ChildPlan& p, int32_t stage, int err,
                                          int32_t index = 0) {
  ChildError e{stage, err, index};
  ssize_t n = write(p.err_fd, &e, sizeof e);
  (void)n;
  _exit(127);
}

[[noreturn]] CN_CHILD_CODE void ChildMain(const ChildPlan& p) {
  // v1: "0" in `tasks` moves the writing thread itself, which the kernel does without the global
  // threadgroup lock; the parent writing our pid to cgroup.procs waited for an RCU grace period
  // (milliseconds: the start latency's tail). This process has one thread, so the thread is all
  // of it. Done first, while the parent records us: before the release, so before anything of
  // the command's can run.
  for (size_t i = 0; i < p.tasks_fds.size(); ++i) {
    if (write(p.tasks_fds[i], "0", 1) != 1) ChildFail(p, kCgroup, errno, static_cast<int32_t>(i));
  }
  // Every signal is blocked until the dispositions are reset below: a handler of the daemon's
  // must never run in this process, which shares the daemon's memory. So this read is never
  // interrupted either.
  char b;
  ssize_t n = read(p.sync_fd, &b, 1);
  if (n != 1) _exit(126);  // the parent gave up or died before releasing us: run nothing
  close(p.sync_fd);

  // Dispositions and mask come from whichever daemon thread cloned us: back to defaults.
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) {
    if (s != SIGKILL && s != SIGSTOP) sigaction(s, &dfl, nullptr);  // EINVAL for glibc's own
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);

  if (setsid() < 0) ChildFail(p, kSession, errno);
  if (mount(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr) != 0)
    ChildFail(p, kMountSlave, errno);
  // EPERM: a host that masks parts of its /proc (a container) forbids a fresh one; the instance
  // then keeps the host's view rather than not starting.
  if (p.proc && mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0 &&
      errno != EPERM)
    ChildFail(p, kMountProc, errno);
  // The working directory and the binds' sources may lie under /tmp (a daemon whose data dir or
  // mount is there): both are taken before the private /tmp hides them.
  if (chdir(p.cwd) != 0) ChildFail(p, kChdir, errno);
  for (size_t i = 0; i < p.binds.size(); ++i) {
    if (mount(p.binds[i].first, p.binds[i].second, nullptr, MS_BIND | MS_REC, nullptr) != 0)
      ChildFail(p, kBind, errno, static_cast<int32_t>(i));
  }
  if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, p.tmp_opts) != 0)
    ChildFail(p, kMountTmp, errno);
  if (sethostname(p.hostname, p.hostname_len) != 0) ChildFail(p, kHostname, errno);
  // A daemon protected from the OOM killer (oom_score_adj -1000) must not pass that on: the
  // instance's memory cgroup could not kill it when it exceeds ram_mb.
  int adj = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
  if (adj >= 0) {
    ssize_t w = write(adj, "0", 1);
    (void)w;
    close(adj);
  }
  if (p.net) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) ChildFail(p, kLoopback, errno);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    memcpy(ifr.ifr_name, "lo", 3);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) ChildFail(p, kLoopback, errno);
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP | IFF_RUNNING);
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) ChildFail(p, kLoopback, errno);
    close(s);
  }
  if (dup2(p.null_fd, 0) < 0 || dup2(p.log_fd, 1) < 0 || dup2(p.log_fd, 2) < 0)
    ChildFail(p, kStdio, errno);
  if (p.gid != 0 || p.uid != 0) {
    // Raw system calls: libc's wrappers would try to change the ids of every thread of the
    // daemon (whose thread list this process sees in the shared memory).
    if (syscall(SYS_setgroups, 0, nullptr) != 0 || syscall(SYS_setgid, p.gid) != 0)
      ChildFail(p, kSetgid, errno);
    if (syscall(SYS_setuid, p.uid) != 0) ChildFail(p, kSetuid, errno);
  }
  if (p.script != nullptr && access(p.script, R_OK) != 0) ChildFail(p, kScript, errno);

  // Nothing of the daemon's (FUSE device, sockets, the store) may leak into the instance.
  if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    for (int fd = 3; fd < 65536; ++fd) {
      int flags = fcntl(fd, F_GETFD);
      if (flags >= 0) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    }
  }
  // execvp's rules: keep looking past ENOENT/ENOTDIR, remember EACCES, stop on anything else.
  int err = ENOENT;
  bool eacces = false;
  int32_t index = 0;
  for (size_t i = 0; i < p.candidates.size(); ++i) {
    execve(p.candidates[i], p.argv, p.envp);
    err = errno;
    index = static_cast<int32_t>(i);
    if (err == EACCES) {
      eacces = true;
    } else if (err != ENOENT && err != ENOTDIR) {
      break;
    }
  }
  if (eacces && (err == ENOENT || err == ENOTDIR)) err = EACCES;
  ChildFail(p, kExec, err, index);
}

CN_CHILD_CODE int ChildEntry(void* plan) { ChildMain(*static_cast<const ChildPlan*>(plan)); }

#if defined(__x86_64__)
// clone3 whose child calls fn(arg) on args->stack (fn never returns). libc has no such wrapper:
// its clone() runs a function on a new stack but cannot pass CLONE_INTO_CGROUP. Returns the
// child's pid, or -1 with errno.
long Clone3Fn(struct clone_args* args, int (*fn)(void*), void* arg) {
  register long rax asm("rax") = SYS_clone3;
  register struct clone_args* rdi asm("rdi") = args;
  register size_t rsi asm("rsi") = sizeof *args;
  register int (*r12)(void*) asm("r12") = fn;
  register void* r13 asm("r13") = arg;
  asm volatile(
      "syscall\n\t"
      "testq %%rax, %%rax\n\t"
      "jnz 1f\n\t"
      // The child, on its new stack (16-byte aligned; the call keeps the ABI's alignment).
      "xorl %%ebp, %%ebp\n\t"
      "movq %%r13, %%rdi\n\t"
      "callq *%%r12\n\t"
      "movl $60, %%eax\n\t"  // exit(127), should fn ever return
      "movl $127, %%edi\n\t"
      "syscall\n\t"
      "1:\n\t"
      : "+r"(rax)
      : "r"(rdi), "r"(rsi), "r"(r12), "r"(r13)
      : "rcx", "r11", "memory");
  if (rax < 0) {
    errno = static_cast<int>(-rax);
    return -1;
  }
  return rax;
}
#endif

// Moves `fd` to a number >= 3 (stdio slots are the child's), keeping it close-on-exec.
int AboveStdio(int fd) {
  if (fd < 0 || fd > 2) return fd;
  int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  close(fd);
  return moved;
}

struct Fds {
  int sync[2] = {-1, -1};
  int err[2] = {-1, -1};
  int null_fd = -1;
  int log_fd = -1;
  int cg_fd = -1;
  std::vector<int> tasks;
  ~Fds() {
    for (int fd : {sync[0], sync[1], err[0], err[1], null_fd, log_fd, cg_fd}) {
      if (fd >= 0) close(fd);
    }
    for (int fd : tasks) close(fd);
  }
};

bool HasShellSyntax(std::string_view cmd) {
  if (cmd.find_first_of("|&;<>()$`\\\"'*?[#~{}\n") != std::string_view::npos) return true;
  size_t end = cmd.find_first_of(" \t");
  return cmd.substr(0, end).find('=') != std::string_view::npos;
}

void ReapBlocking(int pidfd) {
  siginfo_t si;
  while (waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &si, WEXITED | __WALL) <
             0 &&
         errno == EINTR) {
  }
}

Status ChildStatus(const ChildError& e, const LaunchSpec& spec) {
  auto what = [&]() -> std::string {
    switch (e.stage) {
      case kSession:
        return "start: setsid";
      case kMountSlave:
        return "start: make mounts private";
      case kMountProc:
        return "start: mount /proc";
      case kMountTmp:
        return "start: mount tmpfs on /tmp";
      case kBind:
        if (e.index >= 0 && static_cast<size_t>(e.index) < spec.binds.size()) {
          return "start: bind " + spec.binds[e.index].source + " on " + spec.binds[e.index].target;
        }
        return "start: bind mount";
      case kHostname:
        return "start: sethostname";
      case kLoopback:
        return "start: bring up lo";
      case kStdio:
        return "start: redirect stdio";
      case kSetgid:
        return "start: setgid " + std::to_string(spec.gid);
      case kSetuid:
        return "start: setuid " + std::to_string(spec.uid);
      case kChdir:
        return "start: chdir " + spec.cwd;
      case kScript:
        return "exec: " + spec.command.script;
      case kExec:
        return "exec: " + spec.command.argv[0];
      case kCgroup:
        if (e.index >= 0 && static_cast<size_t>(e.index) < spec.cgroup->dirs().size())
          return "start: cgroup: join " + spec.cgroup->dirs()[e.index];
        return "start: cgroup: join";
      default:
        return "start: unknown step";
    }
  };
  Status s = Status::FromErrno(e.err, what());
  // Only clone-time shortages are transient; a failure inside the child is not (it would fail
  // the same way again), so EAGAIN there is not reported as Unavailable.
  if (s.code() == Code::kUnavailable) return Status::IoError(s.message());
  return s;
}

}  // namespace

Result<ResolvedCommand> ResolveCommand(std::string_view cmd,
                                       const std::map<std::string, std::string>& interpreters) {
  while (!cmd.empty() && (cmd.back() == '\n' || cmd.back() == ' ' || cmd.back() == '\t'))
    cmd.remove_suffix(1);
  while (!cmd.empty() && (cmd.front() == ' ' || cmd.front() == '\t')) cmd.remove_prefix(1);
  if (cmd.empty()) return Status::InvalidArgument("cmd is empty: write a command line to cmd");
  ResolvedCommand out;
  if (HasShellSyntax(cmd)) {
    out.argv = {"/bin/sh", "-c", std::string(cmd)};
    return out;
  }
  size_t pos = 0;
  while (pos < cmd.size()) {
    size_t start = cmd.find_first_not_of(" \t", pos);
    if (start == std::string_view::npos) break;
    size_t end = cmd.find_first_of(" \t", start);
    if (end == std::string_view::npos) end = cmd.size();
    out.argv.emplace_back(cmd.substr(start, end - start));
    if (out.argv.size() > kMaxArgs) {
      return Status::InvalidArgument("cmd has more than " + std::to_string(kMaxArgs) + " words");
    }
    pos = end;
  }
  const std::string& first = out.argv[0];
  size_t slash = first.rfind('/');
  size_t dot = first.rfind('.');
  if (dot != std::string::npos && (slash == std::string::npos || dot > slash) &&
      dot + 1 < first.size()) {
    auto it = interpreters.find(first.substr(dot + 1));
    if (it != interpreters.end()) {
      out.script = first;
      out.argv.insert(out.argv.begin(), it->second);
    }
  }
  return out;
}

Status ParseInterpreterFlag(std::string_view flag,
                            std::map<std::string, std::string>* interpreters) {
  size_t eq = flag.find('=');
  if (eq == std::string_view::npos || eq == 0 || eq > 16)
    return Status::InvalidArgument("--interpreter wants EXT=PATH, e.g. rads=/usr/local/bin/rads");
  std::string ext(flag.substr(0, eq));
  std::string path(flag.substr(eq + 1));
  for (char c : ext) {
    if (!isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-')
      return Status::InvalidArgument("--interpreter extension '" + ext + "': letters, digits, _ -");
  }
  if (path.empty() || path[0] != '/' || path.size() > 4096)
    return Status::InvalidArgument("--interpreter path must be absolute: '" + path + "'");
  (*interpreters)[ext] = path;
  return Status::Ok();
}

Result<Child> Launch(const LaunchSpec& spec) {
  if (spec.cgroup == nullptr) return Status::InvalidArgument("launch: no cgroup");
  if (spec.command.argv.empty()) return Status::InvalidArgument("launch: empty argv");
  if (spec.cwd.empty() || spec.log_path.empty())
    return Status::InvalidArgument("launch: cwd and log_path are required");
  if (spec.hostname.empty() || spec.hostname.size() > 64)
    return Status::InvalidArgument("launch: hostname must be 1..64 bytes");

  // Where to look for argv[0], computed here so the child does no allocation.
  const std::string& file = spec.command.argv[0];
  std::vector<std::string> candidates;
  if (file.find('/') != std::string::npos) {
    candidates.push_back(file);
  } else {
    std::string path = kDefaultPath;
    for (const std::string& e : spec.env) {
      if (e.rfind("PATH=", 0) == 0) path = e.substr(5);
    }
    size_t pos = 0;
    while (pos <= path.size() && candidates.size() < 256) {
      size_t end = path.find(':', pos);
      if (end == std::string::npos) end = path.size();
      std::string dir = path.substr(pos, end - pos);
      candidates.push_back((dir.empty() ? "." : dir) + "/" + file);
      pos = end + 1;
    }
  }
  std::vector<char*> argv, envp;
  for (const auto& a : spec.command.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : spec.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  std::string tmp_opts = "mode=1777";
  if (spec.tmp_size_mb > 0) tmp_opts += ",size=" + std::to_string(spec.tmp_size_mb) + "m";

  Fds fds;
  fds.null_fd = AboveStdio(open("/dev/null", O_RDWR | O_CLOEXEC));
  if (fds.null_fd < 0) return Status::FromErrno(errno, "start: open /dev/null");
  fds.log_fd = AboveStdio(
      open(spec.log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640));
  if (fds.log_fd < 0) return Status::FromErrno(errno, "start: open log " + spec.log_path);
  if (pipe2(fds.sync, O_CLOEXEC) != 0 || pipe2(fds.err, O_CLOEXEC) != 0)
    return Status::FromErrno(errno, "start: pipe");
  for (int* fd : {&fds.sync[0], &fds.sync[1], &fds.err[0], &fds.err[1]}) *fd = AboveStdio(*fd);

  ChildPlan plan;
  plan.sync_fd = fds.sync[0];
  plan.err_fd = fds.err[1];
  plan.null_fd = fds.null_fd;
  plan.log_fd = fds.log_fd;
  plan.hostname = spec.hostname.c_str();
  plan.hostname_len = spec.hostname.size();
  plan.net = spec.isolate_network;
  plan.proc = spec.mount_proc;
  plan.tmp_opts = tmp_opts.c_str();
  for (const auto& b : spec.binds) plan.binds.push_back({b.source.c_str(), b.target.c_str()});
  plan.cwd = spec.cwd.c_str();
  plan.uid = spec.uid;
  plan.gid = spec.gid;
  plan.script = spec.command.script.empty() ? nullptr : spec.command.script.c_str();
  for (const auto& c : candidates) plan.candidates.push_back(c.c_str());
  plan.argv = argv.data();
  plan.envp = envp.data();

  // CLONE_VM: the child runs on its own small stack in the daemon's memory until it execs, so the
  // clone copies no page tables and the daemon's threads take no copy-on-write faults afterwards
  // (with a daemon of a few MB that was a quarter of a mass start's CPU). No CLONE_VFORK: the
  // child waits for its release while this thread places it in its cgroup and records it.
  void* stack = mmap(nullptr, kChildStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED)
    return Status::Unavailable(std::string("start: stack: ") + strerror(errno));
  struct StackGuard {
    void* base;
    ~StackGuard() { munmap(base, kChildStackBytes + kGuardBytes); }
  } stack_guard{stack};
  mprotect(stack, kGuardBytes, PROT_NONE);
  char* stack_low = static_cast<char*>(stack) + kGuardBytes;
  int pidfd = -1;
  uint64_t flags =
      CLONE_VM | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_PIDFD;
  if (spec.isolate_network) flags |= CLONE_NEWNET;
  // On v2 the child is born in its cgroup (CLONE_INTO_CGROUP): no migration afterwards, which on
  // cgroup v1 costs an RCU grace period (milliseconds under load) for the first cgroup.procs write.
  bool into_cgroup = false;
#if defined(__x86_64__)
  if (spec.cgroup->version() == CgroupVersion::kV2) {
    CN_ASSIGN_OR_RETURN(fds.cg_fd, spec.cgroup->OpenDirFd());
    into_cgroup = true;
    flags |= CLONE_INTO_CGROUP;
  }
#endif
  if (spec.cgroup->version() == CgroupVersion::kV1) {
    for (const std::string& d : spec.cgroup->dirs()) {
      int fd = AboveStdio(open((d + "/tasks").c_str(), O_WRONLY | O_CLOEXEC));
      if (fd < 0) return Status::FromErrno(errno, "start: cgroup: open " + d + "/tasks");
      fds.tasks.push_back(fd);
    }
    plan.tasks_fds = fds.tasks;
  }
  // Every signal is blocked across the clone so that the child starts with none deliverable.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
#if defined(__x86_64__)
  struct clone_args args;
  memset(&args, 0, sizeof args);
  args.flags = flags;
  args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  args.exit_signal = 0;  // no SIGCHLD: exits are seen on the pidfd (see launcher.h)
  args.stack = reinterpret_cast<uint64_t>(stack_low);
  args.stack_size = kChildStackBytes;
  if (into_cgroup) args.cgroup = static_cast<uint64_t>(fds.cg_fd);
  long r = Clone3Fn(&args, ChildEntry, &plan);
#else
  // Elsewhere libc's clone() (exit signal 0 in the low byte), and the cgroup joined below.
  long r = clone(ChildEntry, stack_low + kChildStackBytes, static_cast<int>(flags), &plan, &pidfd);
#endif
  int clone_err = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (r < 0) {
    int err = clone_err;
    if (err == EAGAIN || err == ENOMEM || err == ENOSPC || err == EUSERS) {
      return Status::Unavailable(std::string("start: clone: ") + strerror(err));
    }
    return Status::FromErrno(err, "start: clone");
  }

  Child child;
  child.pid = static_cast<pid_t>(r);
  child.pidfd = pidfd;
  close(fds.sync[0]);
  fds.sync[0] = -1;
  close(fds.err[1]);
  fds.err[1] = -1;
  // Undo a child that was never released: EOF on its pipe makes it exit without running anything;
  // SIGKILL covers the rest. Always reaped.
  auto abandon = [&](Status why) -> Status {
    close(fds.sync[1]);
    fds.sync[1] = -1;
    SignalPidfd(child.pidfd, SIGKILL).ok();
    ReapBlocking(child.pidfd);
    close(child.pidfd);
    return why;
  };
  auto ticks = ProcessStartTicks(child.pid);
  if (!ticks.ok()) return abandon(Status::Internal("start: " + ticks.status().message()));
  child.start_ticks = *ticks;
  if (!into_cgroup && plan.tasks_fds.empty()) {
    Status s = spec.cgroup->AddProcess(child.pid);
    if (!s.ok()) return abandon(Status(s.code(), "start: cgroup: " + s.message()));
  }
  if (spec.on_created) {
    Status s = spec.on_created(child);
    if (!s.ok()) return abandon(s);
  }
  char go = 1;
  if (write(fds.sync[1], &go, 1) != 1) return abandon(Status::FromErrno(errno, "start: release"));
  close(fds.sync[1]);
  fds.sync[1] = -1;

  // From the release until exec the child may set errno, which it shares with this thread (the
  // same memory, the same thread-local block): errno is not trusted here. poll and read on our
  // own pipe fail only when interrupted, so any failure means "again".
  ChildError e;
  ssize_t n = -1;
  struct pollfd pfd = {fds.err[0], POLLIN, 0};
  int pr;
  do {
    pr = poll(&pfd, 1, static_cast<int>(spec.exec_timeout_ms));
  } while (pr < 0);
  if (pr == 0) {
    SignalPidfd(child.pidfd, SIGKILL).ok();
    ReapBlocking(child.pidfd);
    close(child.pidfd);
    return Status::TimedOut("start: the process did not exec within " +
                            std::to_string(spec.exec_timeout_ms) + " ms");
  }
  do {
    n = read(fds.err[0], &e, sizeof e);
  } while (n < 0);
  if (n == 0) return child;  // the pipe closed on exec: running
  ReapBlocking(child.pidfd);
  close(child.pidfd);
  if (n != static_cast<ssize_t>(sizeof e))
    return Status::Internal("start: the process failed before exec (short report)");
  return ChildStatus(e, spec);
}

ExitInfo CollectExit(int pidfd) {
  ExitInfo out;
  siginfo_t si;
  memset(&si, 0, sizeof si);
  int r = waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &si,
                 WEXITED | WNOHANG | __WALL);
  if (r == 0) {
    if (si.si_pid == 0) return out;  // still running
    out.exited = true;
    out.known = true;
    if (si.si_code == CLD_EXITED) {
      out.code = si.si_status;
    } else {
      out.signal = si.si_status;
    }
    return out;
  }
  if (errno != ECHILD) return out;
  // Not our child: exited once the pidfd is readable.
  struct pollfd pfd = {pidfd, POLLIN, 0};
  if (poll(&pfd, 1, 0) <= 0 || (pfd.revents & (POLLIN | POLLHUP)) == 0) return out;
  out.exited = true;
  PidfdInfo info;
  memset(&info, 0, sizeof info);
  info.mask = kPidfdInfoExit;
  if (ioctl(pidfd, kPidfdGetInfo, &info) == 0 && (info.mask & kPidfdInfoExit) != 0) {
    out.known = true;
    int status = info.exit_code;
    if (WIFEXITED(status)) {
      out.code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      out.signal = WTERMSIG(status);
    }
  }
  return out;
}

Status RebindInto(int pidfd, const std::vector<BindMount>& binds) {
  // Detached copies of the sources, made here: the target namespace may not see them.
  std::vector<int> trees;
  struct Closer {
    std::vector<int>* fds;
    ~Closer() {
      for (int fd : *fds) close(fd);
    }
  } closer{&trees};
  for (const BindMount& b : binds) {
    long fd = syscall(SYS_open_tree, AT_FDCWD, b.source.c_str(),
                      OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    if (fd < 0) return Status::FromErrno(errno, "rebind: open_tree " + b.source);
    trees.push_back(static_cast<int>(fd));
  }
  Status result;
  std::thread helper([&] {
    if (unshare(CLONE_FS) != 0) {
      result = Status::FromErrno(errno, "rebind: unshare(CLONE_FS)");
      return;
    }
    if (setns(pidfd, CLONE_NEWNS) != 0) {
      result = Status::FromErrno(errno, "rebind: setns");
      return;
    }
    for (size_t i = 0; i < binds.size(); ++i) {
      const std::string& target = binds[i].target;
      // The stale mount goes first (EINVAL: nothing was mounted there; fine).
      if (umount2(target.c_str(), MNT_DETACH) != 0 && errno != EINVAL) {
        result = Status::FromErrno(errno, "rebind: unmount " + target);
        return;
      }
      if (syscall(SYS_move_mount, trees[i], "", AT_FDCWD, target.c_str(),
                  MOVE_MOUNT_F_EMPTY_PATH) != 0) {
        result = Status::FromErrno(errno, "rebind: mount " + binds[i].source + " on " + target);
        return;
      }
    }
  });
  helper.join();
  return result;
}

Result<int> OpenPidfd(pid_t pid) {
  long fd = syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) return Status::FromErrno(errno, "pidfd_open " + std::to_string(pid));
  return static_cast<int>(fd);
}

Status SignalPidfd(int pidfd, int sig) {
  if (syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) != 0) {
    if (errno == ESRCH) return Status::Ok();  // already gone: nothing to signal
    return Status::FromErrno(errno, "pidfd_send_signal");
  }
  return Status::Ok();
}

namespace {
// Fields after the ")" that ends the command name: index 0 is field 3 (state).
Result<std::vector<std::string>> StatFields(pid_t pid) {
  auto text = ReadSmallFile("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!text.ok()) return Status::NotFound("process " + std::to_string(pid) + " is gone");
  size_t p = text->rfind(')');
  if (p == std::string::npos) return Status::Corruption("bad /proc stat");
  std::vector<std::string> f;
  size_t pos = p + 2;
  while (pos < text->size()) {
    size_t end = text->find(' ', pos);
    if (end == std::string::npos) end = text->size();
    f.push_back(text->substr(pos, end - pos));
    pos = end + 1;
  }
  if (f.size() < 20) return Status::Corruption("short /proc stat");
  return f;
}
}  // namespace

Result<uint64_t> ProcessStartTicks(pid_t pid) {
  CN_ASSIGN_OR_RETURN(auto f, StatFields(pid));
  return ParseU64(f[19]);
}

Result<pid_t> ParentPid(pid_t pid) {
  CN_ASSIGN_OR_RETURN(auto f, StatFields(pid));
  CN_ASSIGN_OR_RETURN(uint64_t ppid, ParseU64(f[1]));
  return static_cast<pid_t>(ppid);
}

}  // namespace constellation::runtime
