// Starts an instance's process straight from the daemon: no shim, no per-instance helper process.
//
// Launch() calls clone3(CLONE_VM | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC
// [| CLONE_NEWNET] | CLONE_PIDFD [| CLONE_INTO_CGROUP on v2]) (x86-64; elsewhere libc's clone(),
// without CLONE_INTO_CGROUP). The child is PID 1 of its new PID namespace and execs the
// command itself, so the instance costs no process besides its own. CLONE_VM: until it execs, the
// child runs on a small stack of its own inside the daemon's memory, so no page tables are copied
// and the daemon takes no copy-on-write faults afterwards; it only makes system calls with what
// the parent prepared, starts with every signal blocked (no handler of the daemon's can run in
// it), and the parent ignores errno, which the two share, while the child sets up.
//
// The child joins its cgroup first (v2: it was born there; v1: it writes "0" to `tasks` of each
// hierarchy, which moves a thread without the global lock a cgroup.procs write takes), then waits
// on a pipe until the parent has run `on_created` (the runtime
// records the pid there, so that a daemon crash at any point leaves either a recorded process or
// one that exits without running anything: the child sees EOF instead of the release byte and
// exits). Then it sets up, in this order: a new session; every mount made a slave of the host's
// (host mounts still propagate in, none of its own propagate out); a fresh /proc for its PID
// namespace; the working directory and the bind mounts (e.g. the node's cluster/ and
// constellation/), both before /tmp is replaced, since they may lie under the host's /tmp; a
// private tmpfs on /tmp (mode 1777; its pages are charged to the memory cgroup); the hostname;
// loopback up when the network is isolated; stdin from /dev/null and stdout+stderr appended to the
// log file; the uid/gid; and execs. Any failure is written to a CLOEXEC pipe as
// (stage, errno) and the child exits 127; a successful exec closes the pipe, so Launch knows the
// outcome before it returns, and "no such file" comes back as a Status, not as exit code 127.
//
// Signals and orphans: as PID 1 of its namespace the command receives from the daemon only the
// signals it installed a handler for (plus SIGKILL/SIGSTOP) — the kernel's rule for a namespace's
// init. A program that does not handle SIGTERM is therefore killed with SIGKILL when the stop
// grace period ends. Processes it forks and abandons are re-parented to it; when it exits the
// kernel kills everything left in the namespace and the namespace's init reaps them, so nothing
// outlives the instance. (A command that never waits for its children keeps zombies in its own
// namespace, counted against pids.max, until it exits — as with any container runtime without an
// init shim.)
//
// The child is created with exit_signal 0: the daemon gets no SIGCHLD, a waitpid(-1) elsewhere in
// the daemon cannot steal its status, and SIGCHLD set to SIG_IGN cannot auto-reap it. Exits are
// noticed by polling the pidfd, and CollectExit reaps (waitid P_PIDFD, __WALL): no zombies.
//
// Requires Linux >= 5.4 (clone3, pidfd_open, waitid P_PIDFD); CLONE_INTO_CGROUP needs 5.7 and is
// used on v2 only.
// Thread-safety: Launch may be called from several threads at once. The daemon must not share its
// file descriptors' CLOEXEC-less state assumptions: the child marks every fd >= 3 close-on-exec.
#ifndef CONSTELLATION_NODE_RUNTIME_LAUNCHER_H_
#define CONSTELLATION_NODE_RUNTIME_LAUNCHER_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "node/base/status.h"
#include "node/runtime/cgroup.h"

namespace constellation::runtime {

inline constexpr size_t kMaxArgs = 4096;
inline constexpr char kDefaultPath[] =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

struct ResolvedCommand {
  std::vector<std::string> argv;
  // The script given to an interpreter (argv[1]); checked readable before exec so a missing script
  // fails the start instead of the interpreter exiting non-zero. Empty otherwise.
  std::string script;
};

// Turns an instance's `cmd` into argv:
//  - a command with shell syntax (any of | & ; < > ( ) $ ` \ " ' * ? [ # ~ { }, a newline, or a
//    first word with '=') runs as /bin/sh -c CMD;
//  - otherwise it is split on blanks and argv[0] is found on PATH at exec time;
//  - when argv[0] ends in ".EXT" and `interpreters` maps EXT to a path (constellationd
//    --interpreter rads=PATH), the interpreter runs with the script and its arguments.
// InvalidArgument for an empty command or more than kMaxArgs words.
Result<ResolvedCommand> ResolveCommand(std::string_view cmd,
                                       const std::map<std::string, std::string>& interpreters);

// Parses one `constellationd --interpreter EXT=PATH` flag into `interpreters`: EXT is
// [A-Za-z0-9_-]{1,16} (no dot), PATH absolute. InvalidArgument otherwise.
Status ParseInterpreterFlag(std::string_view flag,
                            std::map<std::string, std::string>* interpreters);

struct BindMount {
  std::string source;  // an existing path on the host
  std::string target;  // an existing path (mount point) inside the instance's view
};

struct Child {
  pid_t pid = 0;             // in the daemon's PID namespace
  int pidfd = -1;            // owned by the caller
  uint64_t start_ticks = 0;  // /proc/<pid>/stat starttime: the pid's identity across pid reuse
};

struct LaunchSpec {
  std::string hostname;  // the instance name
  ResolvedCommand command;
  std::vector<std::string> env;  // KEY=VALUE, exactly the instance's environment
  std::string cwd;               // must exist
  std::string log_path;          // stdout+stderr, opened O_APPEND|O_CREAT (0640)
  bool isolate_network = false;  // new network namespace with only loopback, up
  bool mount_proc = true;        // a /proc showing only the instance's PID namespace
  uint32_t uid = 0;
  uint32_t gid = 0;
  int64_t tmp_size_mb = 0;  // size= of the /tmp tmpfs; 0: the kernel's default
  std::vector<BindMount> binds;
  const Cgroup* cgroup = nullptr;  // required: the process is in it before it runs anything
  // Runs after the child exists, before it is released to exec (on v1 it may still be joining its
  // cgroup, which it does before it waits for the release). A non-OK
  // status kills and reaps the child and becomes Launch's result.
  std::function<Status(const Child&)> on_created;
  int64_t exec_timeout_ms = 10000;  // from release to exec; the child is killed after
};

// Starts the process and returns once it has exec'd. Errors carry the reason the instance's state
// shows after "failed ": "exec: <file>: <strerror>" when the command cannot be executed
// (NotFound, PermissionDenied, InvalidArgument for ENOEXEC), "start: <step>: <strerror>" when
// the setup failed. Unavailable (EAGAIN, ENOMEM from clone) is transient: worth retrying.
Result<Child> Launch(const LaunchSpec& spec);

// The exit of a process, from its pidfd.
struct ExitInfo {
  bool exited = false;  // false: still running
  bool known = false;   // code/signal are valid
  int code = 0;
  int signal = 0;
};
// Never blocks. Reaps our own child (waitid P_PIDFD, WNOHANG, __WALL). For a process that is not
// our child (one adopted after a daemon restart: its parent is now init) reads the status with
// PIDFD_GET_INFO (Linux 6.15+), which the kernel keeps once init has reaped it; until then, or on
// older kernels, the result is exited but not known.
ExitInfo CollectExit(int pidfd);

// Replaces, in the mount namespace of the process behind `pidfd`, whatever is mounted on each
// bind's target with a fresh bind of its source (taken in the caller's namespace). For instances
// adopted by a new daemon: their binds of the dead daemon's FUSE mounts answer ENOTCONN, the new
// mounts' are live. Runs in a short-lived thread of its own (setns of a mount namespace needs a
// thread that shares no file system context), so the caller's namespace is never changed.
// Binds are replaced in order; the first failure stops and is returned (the ones before stay).
Status RebindInto(int pidfd, const std::vector<BindMount>& binds);

Result<int> OpenPidfd(pid_t pid);
Status SignalPidfd(int pidfd, int sig);
// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot). NotFound when gone.
Result<uint64_t> ProcessStartTicks(pid_t pid);
// Parent pid from /proc/<pid>/stat.
Result<pid_t> ParentPid(pid_t pid);

}  // namespace constellation::runtime

#endif  // CONSTELLATION_NODE_RUNTIME_LAUNCHER_H_
