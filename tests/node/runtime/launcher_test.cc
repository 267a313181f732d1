// The launcher: command resolution (pure) and, as root, real launches into namespaces and a
// cgroup. Synchronization is on pidfds and FIFOs, never on sleeps.
#include "node/runtime/launcher.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "catch2/catch.hpp"
#include "tests/node/runtime/test_util.h"

namespace constellation::runtime {
namespace {

using testing::CanRunRootTests;
using testing::ReadFileOrEmpty;
using testing::TempDir;

TEST_CASE("ResolveCommand: plain words, shell syntax, interpreters") {
  std::map<std::string, std::string> interp = {{"rads", "/opt/rads/bin/rads"}};
  auto r = ResolveCommand("python3 -m http.server 8080\n", interp);
  REQUIRE(r.ok());
  REQUIRE(r->argv == std::vector<std::string>{"python3", "-m", "http.server", "8080"});
  REQUIRE(r->script.empty());

  r = ResolveCommand("  sleep   10 ", interp);
  REQUIRE(r->argv == std::vector<std::string>{"sleep", "10"});

  for (const char* shell : {"echo hi > out", "a | b", "x && y", "echo $HOME", "ls *.txt",
                            "FOO=1 env", "echo 'q'", "a;b", "echo ~", "cat <in"}) {
    r = ResolveCommand(shell, interp);
    INFO(shell);
    REQUIRE(r.ok());
    REQUIRE(r->argv == std::vector<std::string>{"/bin/sh", "-c", shell});
  }
  // '=' after the first word is an ordinary argument.
  r = ResolveCommand("app --port=8080", interp);
  REQUIRE(r->argv == std::vector<std::string>{"app", "--port=8080"});

  r = ResolveCommand("jobs/worker.rads --fast", interp);
  REQUIRE(r->argv == std::vector<std::string>{"/opt/rads/bin/rads", "jobs/worker.rads", "--fast"});
  REQUIRE(r->script == "jobs/worker.rads");
  // No mapping for .py, and a dot in a directory name is not an extension.
  r = ResolveCommand("tool.py", interp);
  REQUIRE(r->argv == std::vector<std::string>{"tool.py"});
  r = ResolveCommand("./dir.rads/tool", interp);
  REQUIRE(r->argv == std::vector<std::string>{"./dir.rads/tool"});

  REQUIRE(ResolveCommand("", interp).status().code() == Code::kInvalidArgument);
  REQUIRE(ResolveCommand(" \n", interp).status().code() == Code::kInvalidArgument);
  std::string many;
  for (size_t i = 0; i <= kMaxArgs; ++i) many += "a ";
  REQUIRE(ResolveCommand(many, interp).status().code() == Code::kInvalidArgument);
}

TEST_CASE("ParseInterpreterFlag") {
  std::map<std::string, std::string> m;
  REQUIRE(ParseInterpreterFlag("rads=/usr/local/bin/rads", &m).ok());
  REQUIRE(ParseInterpreterFlag("py=/usr/bin/python3", &m).ok());
  REQUIRE(m == std::map<std::string, std::string>{{"py", "/usr/bin/python3"},
                                                  {"rads", "/usr/local/bin/rads"}});
  REQUIRE_FALSE(ParseInterpreterFlag("rads", &m).ok());
  REQUIRE_FALSE(ParseInterpreterFlag("=/bin/x", &m).ok());
  REQUIRE_FALSE(ParseInterpreterFlag("r.ads=/bin/x", &m).ok());
  REQUIRE_FALSE(ParseInterpreterFlag("rads=relative/path", &m).ok());
  REQUIRE_FALSE(ParseInterpreterFlag("rads=", &m).ok());
}

// One launch environment: a cgroup, a work dir, a log.
struct Fixture {
  TempDir dir;
  CgroupLayout layout;
  Cgroup cg;
  std::string log;
  std::string work;
  Fixture() {
    auto l = DetectCgroupLayout();
    REQUIRE(l.ok());
    layout = *l;
    auto c = Cgroup::Create(layout, testing::TestCgroupPath("launch"));
    REQUIRE(c.ok());
    cg = *c;
    REQUIRE(cg.SetLimits({.memory_bytes = 256 << 20, .cpu_percent = 0, .pids_max = 64}).ok());
    log = dir.path() + "/log";
    work = dir.path() + "/work";
    REQUIRE(mkdir(work.c_str(), 0755) == 0);
  }
  ~Fixture() {
    testing::KillTestCgroups();  // what a failed test left running
    testing::RemoveTestCgroups();
  }
  LaunchSpec Spec(const std::string& cmd) {
    LaunchSpec s;
    s.hostname = "web-1";
    auto r = ResolveCommand(cmd, {{"rads", "/bin/sh"}});
    REQUIRE(r.ok());
    s.command = *r;
    s.env = {"PATH=/usr/bin:/bin", "CONSTELLATION_INSTANCE=web-1", "CONSTELLATION_NODE=n1"};
    s.cwd = work;
    s.log_path = log;
    s.cgroup = &cg;
    return s;
  }
};

// Waits for the process to exit (bounded: 30 s) and reaps it.
ExitInfo WaitExit(const Child& c) {
  struct pollfd p = {c.pidfd, POLLIN, 0};
  REQUIRE(poll(&p, 1, 30000) == 1);
  ExitInfo e = CollectExit(c.pidfd);
  REQUIRE(e.exited);
  REQUIRE(e.known);
  close(c.pidfd);
  return e;
}

TEST_CASE("launch: namespaces, hostname, private /tmp, env, cwd, log, cgroup") {
  if (!CanRunRootTests()) return;
  Fixture f;
  // A marker in the host's /tmp must not be visible inside.
  std::string host_marker = "/tmp/cn_rt_host_marker_" + std::to_string(getpid());
  { std::ofstream(host_marker) << "x"; }
  LaunchSpec s = f.Spec(
      "echo pid=$$; echo host=$(hostname); echo inst=$CONSTELLATION_INSTANCE "
      "node=$CONSTELLATION_NODE;"
      " echo cwd=$(pwd); ls -A /tmp | wc -l | sed 's/^/tmp_entries=/'; echo oops >&2;"
      " echo procs=$(ls /proc | grep -c '^[0-9]');"
      " echo cgroups=$(grep -c ':/" +
      testing::TestCgroupPath("launch") + "$' /proc/self/cgroup); exit 3");
  pid_t seen = 0;
  uint64_t ticks = 0;
  s.on_created = [&](const Child& c) {
    seen = c.pid;
    ticks = c.start_ticks;
    return Status::Ok();
  };
  auto c = Launch(s);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  REQUIRE(c->pid == seen);
  REQUIRE(ticks > 0);
  ExitInfo e = WaitExit(*c);
  REQUIRE(e.code == 3);
  REQUIRE(e.signal == 0);
  unlink(host_marker.c_str());
  std::string out = ReadFileOrEmpty(f.log);
  INFO(out);
  REQUIRE(out.find("pid=1\n") != std::string::npos);  // PID 1 of its namespace
  REQUIRE(out.find("host=web-1\n") != std::string::npos);
  REQUIRE(out.find("inst=web-1 node=n1\n") != std::string::npos);
  REQUIRE(out.find("cwd=" + f.work + "\n") != std::string::npos);
  REQUIRE(out.find("tmp_entries=0\n") != std::string::npos);
  REQUIRE(out.find("oops\n") != std::string::npos);  // stderr too
  // Its own /proc: a handful of its processes, not the host's hundreds.
  auto procs = out.find("procs=");
  REQUIRE(procs != std::string::npos);
  REQUIRE(std::stoi(out.substr(procs + 6)) < 10);
  // In its group of every hierarchy (it joins before its release, so before the command runs).
  REQUIRE(out.find("cgroups=" + std::to_string(f.cg.dirs().size()) + "\n") != std::string::npos);
  REQUIRE(testing::ZombieChildren().empty());
}

TEST_CASE("launch: log is appended across runs") {
  if (!CanRunRootTests()) return;
  Fixture f;
  for (int i = 0; i < 2; ++i) {
    auto c = Launch(f.Spec("echo run"));
    REQUIRE(c.ok());
    REQUIRE(WaitExit(*c).code == 0);
  }
  REQUIRE(ReadFileOrEmpty(f.log) == "run\nrun\n");
}

TEST_CASE("launch: a missing or non-executable command is a Status, and nothing is left") {
  if (!CanRunRootTests()) return;
  Fixture f;
  auto c = Launch(f.Spec("no-such-command-xyz --flag"));
  REQUIRE_FALSE(c.ok());
  REQUIRE(c.status().code() == Code::kNotFound);
  REQUIRE(c.status().message() == "exec: no-such-command-xyz: No such file or directory");

  c = Launch(f.Spec("/nonexistent/bin/tool"));
  REQUIRE(c.status().message() == "exec: /nonexistent/bin/tool: No such file or directory");

  std::string plain = f.dir.path() + "/plain.txt";
  { std::ofstream(plain) << "not a program\n"; }
  chmod(plain.c_str(), 0644);
  c = Launch(f.Spec(plain));
  REQUIRE(c.status().code() == Code::kPermissionDenied);
  REQUIRE(c.status().message() == "exec: " + plain + ": Permission denied");

  // A missing script for a configured interpreter fails at start too.
  c = Launch(f.Spec("missing.rads"));
  REQUIRE(c.status().message() == "exec: missing.rads: No such file or directory");

  // A cwd that does not exist.
  LaunchSpec s = f.Spec("true");
  s.cwd = f.dir.path() + "/nope";
  c = Launch(s);
  REQUIRE(c.status().message() == "start: chdir " + s.cwd + ": No such file or directory");

  REQUIRE(testing::ZombieChildren().empty());
  auto pids = f.cg.Pids();
  REQUIRE(pids.ok());
  REQUIRE(pids->empty());
}

TEST_CASE("launch: a script runs with its interpreter") {
  if (!CanRunRootTests()) return;
  Fixture f;
  { std::ofstream(f.work + "/job.rads") << "echo rads-ran \"$@\"\n"; }
  auto c = Launch(f.Spec("job.rads one two"));
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  REQUIRE(WaitExit(*c).code == 0);
  REQUIRE(ReadFileOrEmpty(f.log) == "rads-ran one two\n");
}

TEST_CASE("launch: on_created failing means the command never runs") {
  if (!CanRunRootTests()) return;
  Fixture f;
  LaunchSpec s = f.Spec("touch ran");
  s.on_created = [](const Child&) { return Status::IoError("pid file: disk full"); };
  auto c = Launch(s);
  REQUIRE(c.status().message() == "pid file: disk full");
  REQUIRE_FALSE(testing::PathExistsForTest(f.work + "/ran"));
  REQUIRE(testing::ZombieChildren().empty());
}

TEST_CASE("launch: daemon fds do not leak into the instance") {
  if (!CanRunRootTests()) return;
  Fixture f;
  int leaky = open("/dev/null", O_RDONLY);  // deliberately without O_CLOEXEC
  REQUIRE(leaky >= 3);
  auto c = Launch(f.Spec("ls /proc/self/fd"));
  REQUIRE(c.ok());
  REQUIRE(WaitExit(*c).code == 0);
  close(leaky);
  std::string out = ReadFileOrEmpty(f.log);
  INFO(out);
  // 0, 1, 2 and the directory ls itself opened.
  REQUIRE(out == "0\n1\n2\n3\n");
}

TEST_CASE("launch: binds, isolated network with loopback up, uid") {
  if (!CanRunRootTests()) return;
  Fixture f;
  std::string src = f.dir.path() + "/shared";
  std::string target = f.dir.path() + "/mnt";
  REQUIRE(mkdir(src.c_str(), 0755) == 0);
  REQUIRE(mkdir(target.c_str(), 0755) == 0);
  { std::ofstream(src + "/hello") << "from-host\n"; }
  LaunchSpec s =
      f.Spec("cat " + target + "/hello; ip -o link show | wc -l; ip -o link show lo; id -u");
  s.binds = {{src, target}};
  s.isolate_network = true;
  s.uid = 65534;
  s.gid = 65534;
  REQUIRE(chmod(f.dir.path().c_str(), 0755) == 0);  // mkdtemp made it 0700
  auto c = Launch(s);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  REQUIRE(WaitExit(*c).code == 0);
  std::string out = ReadFileOrEmpty(f.log);
  INFO(out);
  REQUIRE(out.find("from-host\n1\n") == 0);  // the bind, and exactly one link
  REQUIRE(out.find("lo: <LOOPBACK,UP") != std::string::npos);
  REQUIRE(out.find("\n65534\n") != std::string::npos);
  // The bind was made in the instance's mount namespace only.
  REQUIRE_FALSE(testing::PathExistsForTest(target + "/hello"));
}

TEST_CASE("launch: PID 1 ignores an unhandled SIGTERM; SIGKILL ends the whole namespace") {
  if (!CanRunRootTests()) return;
  Fixture f;
  std::string fifo = f.dir.path() + "/ready";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  // Two background children and PID 1 waiting for them.
  auto c = Launch(f.Spec("sleep 1000 & sleep 1000 & echo up > " + fifo + "; wait"));
  REQUIRE(c.ok());
  std::string up = ReadFileOrEmpty(fifo);  // blocks until the instance wrote
  REQUIRE(up == "up\n");
  auto pids = f.cg.Pids();
  REQUIRE(pids.ok());
  REQUIRE(pids->size() == 3);
  REQUIRE(SignalPidfd(c->pidfd, SIGTERM).ok());  // dropped by the kernel: no handler in PID 1
  REQUIRE(SignalPidfd(c->pidfd, SIGKILL).ok());
  ExitInfo e = WaitExit(*c);
  REQUIRE(e.signal == SIGKILL);  // not SIGTERM
  // The namespace's other processes died with its init and were reaped inside.
  pids = f.cg.Pids();
  REQUIRE(pids.ok());
  REQUIRE(pids->empty());
  REQUIRE(testing::ZombieChildren().empty());
}

TEST_CASE("launch: the daemon's OOM protection is not inherited") {
  if (!CanRunRootTests()) return;
  Fixture f;
  std::string before = ReadFileOrEmpty("/proc/self/oom_score_adj");
  { std::ofstream("/proc/self/oom_score_adj") << "-900"; }
  if (ReadFileOrEmpty("/proc/self/oom_score_adj") != "-900\n") {
    WARN("cannot lower oom_score_adj here (no CAP_SYS_RESOURCE): not checked");
    return;
  }
  auto c = Launch(f.Spec("cat /proc/self/oom_score_adj"));
  { std::ofstream("/proc/self/oom_score_adj") << before; }
  REQUIRE(c.ok());
  REQUIRE(WaitExit(*c).code == 0);
  REQUIRE(ReadFileOrEmpty(f.log) == "0\n");
}

TEST_CASE("launch: a handled SIGTERM reaches PID 1") {
  if (!CanRunRootTests()) return;
  Fixture f;
  std::string fifo = f.dir.path() + "/ready";
  REQUIRE(mkfifo(fifo.c_str(), 0600) == 0);
  auto c =
      Launch(f.Spec("trap 'exit 7' TERM; echo up > " + fifo + "; while :; do sleep 0.05; done"));
  REQUIRE(c.ok());
  REQUIRE(ReadFileOrEmpty(fifo) == "up\n");
  REQUIRE(SignalPidfd(c->pidfd, SIGTERM).ok());
  ExitInfo e = WaitExit(*c);
  REQUIRE(e.code == 7);
}

}  // namespace
}  // namespace constellation::runtime
