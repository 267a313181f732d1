// Root tests on the live cgroup hierarchy: a group is created, a forked process is put in it, and
// the kernel enforces the limits (memory hog OOM-killed, fork loop stopped by pids.max).
#include "node/runtime/cgroup.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <initializer_list>
#include <string>

#include "catch2/catch.hpp"
#include "node/runtime/kept_fds_internal.h"
#include "node/runtime/sysfile.h"
#include "tests/node/runtime/test_util.h"

namespace constellation::runtime {
namespace {

using testing::CanRunRootTests;
using testing::TestCgroupPath;

// Forks a child that waits for a byte on a pipe before running `body` (so it can be placed in a
// cgroup first) and exits with body's return value.
struct Held {
  pid_t pid = -1;
  int release_fd = -1;
  void Release() {
    char b = 1;
    REQUIRE(write(release_fd, &b, 1) == 1);
    close(release_fd);
  }
};

template <typename F>
Held ForkHeld(F body) {
  int p[2];
  REQUIRE(pipe(p) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(p[1]);
    char b;
    if (read(p[0], &b, 1) != 1) _exit(100);
    _exit(body());
  }
  close(p[0]);
  return {pid, p[1]};
}

int WaitStatus(pid_t pid) {
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  return status;
}

struct Cleanup {
  ~Cleanup() {
    testing::KillTestCgroups();  // what a failed test left running
    testing::RemoveTestCgroups();
  }
};

// The first of `names` found in one of the group's directories, read; "" when none is there.
std::string ReadLimit(const Cgroup& cg, std::initializer_list<const char*> names) {
  for (const std::string& d : cg.dirs()) {
    for (const char* n : names) {
      auto text = ReadSmallFile(d + "/" + n);
      if (text.ok()) return text->substr(0, text->find('\n'));
    }
  }
  return "";
}

TEST_CASE("cgroup: SetLimits with the current limits writes only what changed") {
  if (!CanRunRootTests()) return;
  Cleanup cleanup;
  auto layout = DetectCgroupLayout();
  REQUIRE(layout.ok());
  auto cg = Cgroup::Create(*layout, TestCgroupPath("delta"));
  REQUIRE(cg.ok());
  auto memory = [&] { return ReadLimit(*cg, {"memory.limit_in_bytes", "memory.max"}); };
  auto pids = [&] { return ReadLimit(*cg, {"pids.max"}); };
  CgroupLimits a{.memory_bytes = 64 << 20, .cpu_percent = 50, .pids_max = 20};
  REQUIRE(cg->SetLimits(a).ok());
  REQUIRE(memory() == std::to_string(64 << 20));
  REQUIRE(pids() == "20");

  // Someone else changed pids.max; a memory-only change leaves it alone.
  for (const std::string& d : cg->dirs()) WriteSysFile(d + "/pids.max", "7").ok();
  REQUIRE(pids() == "7");
  // Raise (memsw first on v1), lower (memsw last), unlimited, and back: each as one step.
  CgroupLimits b = a;
  for (int64_t mb : {128, 32, 0, 48}) {
    CgroupLimits next = b;
    next.memory_bytes = mb << 20;
    INFO(mb);
    REQUIRE(cg->SetLimits(next, &b).ok());
    std::string want = mb == 0 ? "" : std::to_string(mb << 20);
    if (mb != 0) REQUIRE(memory() == want);
    b = next;
  }
  REQUIRE(pids() == "7");
  // Removed and made again behind its back: the handles kept for live changes are stale, and the
  // write still lands in the new group.
  for (const std::string& d : cg->dirs()) REQUIRE(rmdir(d.c_str()) == 0);
  REQUIRE(Cgroup::Create(*layout, TestCgroupPath("delta")).ok());
  CgroupLimits c = b;
  c.memory_bytes = 40 << 20;
  REQUIRE(cg->SetLimits(c, &b).ok());
  CHECK(memory() == std::to_string(40 << 20));
  b = c;
  // Without `current` everything is written again.
  REQUIRE(cg->SetLimits(b).ok());
  REQUIRE(pids() == "20");
}

TEST_CASE("cgroup: with no handle left to keep, live limit changes open the file each time") {
  if (!CanRunRootTests()) return;
  Cleanup cleanup;
  auto layout = DetectCgroupLayout();
  REQUIRE(layout.ok());
  testing::BudgetUsedUp used_up(KeptLimitFds());
  const int all = used_up.all();
  auto cg = Cgroup::Create(*layout, TestCgroupPath("nofds"));
  REQUIRE(cg.ok());
  auto memory = [&] { return ReadLimit(*cg, {"memory.limit_in_bytes", "memory.max"}); };
  CgroupLimits a{.memory_bytes = 64 << 20, .cpu_percent = 50, .pids_max = 20};
  REQUIRE(cg->SetLimits(a).ok());
  for (int64_t mb : {96, 32, 80}) {
    CgroupLimits next = a;
    next.memory_bytes = mb << 20;
    REQUIRE(cg->SetLimits(next, &a).ok());
    CHECK(memory() == std::to_string(mb << 20));
    a = next;
  }
  CHECK(KeptLimitFds().used() == all);  // nothing kept beyond the budget
}

TEST_CASE("cgroup: create, limits, stats, processes, remove") {
  if (!CanRunRootTests()) return;
  Cleanup cleanup;
  auto layout = DetectCgroupLayout();
  REQUIRE(layout.ok());
  auto cg = Cgroup::Create(*layout, TestCgroupPath("basic"));
  INFO(cg.status().ToString());
  REQUIRE(cg.ok());
  REQUIRE(Cgroup::Open(*layout, TestCgroupPath("basic")).ok());
  REQUIRE(Cgroup::Open(*layout, TestCgroupPath("nope")).status().code() == Code::kNotFound);

  REQUIRE(cg->SetLimits({.memory_bytes = 64 << 20, .cpu_percent = 50, .pids_max = 20}).ok());
  // Live change, up and down, and back to unlimited.
  REQUIRE(cg->SetLimits({.memory_bytes = 128 << 20, .cpu_percent = 25, .pids_max = 10}).ok());
  REQUIRE(cg->SetLimits({.memory_bytes = 32 << 20, .cpu_percent = 200, .pids_max = 0}).ok());
  REQUIRE(cg->SetLimits({}).ok());
  REQUIRE(cg->SetLimits({.memory_bytes = 64 << 20, .cpu_percent = 25, .pids_max = 16}).ok());
  REQUIRE_FALSE(cg->SetLimits({.memory_bytes = -1}).ok());

  // A process that burns a little CPU and touches 8 MiB, then waits to be released again.
  int again[2];
  REQUIRE(pipe(again) == 0);
  Held h = ForkHeld([&] {
    volatile uint64_t x = 0;
    for (uint64_t i = 0; i < 50'000'000; ++i) x = x + i;
    char* m = static_cast<char*>(malloc(8 << 20));
    memset(m, 1, 8 << 20);
    char b = 0;
    close(again[1]);
    if (read(again[0], &b, 1) < 0) return 2;
    return m[100] == 1 ? 0 : 1;
  });
  close(again[0]);
  REQUIRE(cg->AddProcess(h.pid).ok());
  auto pids = cg->Pids();
  REQUIRE(pids.ok());
  REQUIRE(*pids == std::vector<pid_t>{h.pid});
  h.Release();
  REQUIRE(cg->Remove().code() == Code::kBusy);  // busy while the process lives
  close(again[1]);  // lets it finish (EOF) once its loop and memset are done
  int status = WaitStatus(h.pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);

  auto st = cg->ReadStats();
  INFO(st.status().ToString());
  REQUIRE(st.ok());
  REQUIRE(st->cpu_usage_ns > 1'000'000);       // it ran a 50M-iteration loop in the group
  REQUIRE(st->memory_peak_bytes >= 8u << 20);  // and touched 8 MiB
  REQUIRE(st->oom_kills == 0);
  REQUIRE(st->pids == 0);
  REQUIRE(cg->Remove().ok());
  REQUIRE(Cgroup::Open(*layout, TestCgroupPath("basic")).status().code() == Code::kNotFound);
  REQUIRE(cg->Remove().ok());  // already gone is fine
}

TEST_CASE("cgroup: a memory hog is OOM-killed and counted") {
  if (!CanRunRootTests()) return;
  Cleanup cleanup;
  auto layout = DetectCgroupLayout();
  REQUIRE(layout.ok());
  auto cg = Cgroup::Create(*layout, TestCgroupPath("oom"));
  REQUIRE(cg.ok());
  REQUIRE(cg->SetLimits({.memory_bytes = 16 << 20, .cpu_percent = 0, .pids_max = 16}).ok());
  Held h = ForkHeld([] {
    // Touch up to 256 MiB, one MiB at a time: far past the 16 MiB limit.
    for (int i = 0; i < 256; ++i) {
      void* p = mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return 3;
      memset(p, 0x5a, 1 << 20);
    }
    return 0;  // survived: the limit did not hold
  });
  REQUIRE(cg->AddProcess(h.pid).ok());
  h.Release();
  int status = WaitStatus(h.pid);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGKILL);
  auto st = cg->ReadStats();
  REQUIRE(st.ok());
  REQUIRE(st->oom_kills >= 1);
  REQUIRE(st->memory_peak_bytes <= (16u << 20) + (1u << 20));
  REQUIRE(cg->Remove().ok());
}

TEST_CASE("cgroup: a fork loop stops at pids.max and KillAll ends the group") {
  if (!CanRunRootTests()) return;
  Cleanup cleanup;
  // Orphaned grandchildren come back to this process, so the test reaps them itself.
  REQUIRE(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  auto layout = DetectCgroupLayout();
  REQUIRE(layout.ok());
  auto cg = Cgroup::Create(*layout, TestCgroupPath("pids"));
  REQUIRE(cg.ok());
  REQUIRE(cg->SetLimits({.memory_bytes = 64 << 20, .cpu_percent = 0, .pids_max = 8}).ok());
  int report[2];
  REQUIRE(pipe(report) == 0);
  Held h = ForkHeld([&] {
    close(report[0]);
    int made = 0, err = 0;
    for (int i = 0; i < 64; ++i) {  // bounded "fork bomb"
      pid_t c = fork();
      if (c < 0) {
        err = errno;
        break;
      }
      if (c == 0) {
        pause();
        _exit(0);
      }
      ++made;
    }
    int msg[2] = {made, err};
    if (write(report[1], msg, sizeof msg) != sizeof msg) return 4;
    pause();  // stays until killed
    return 0;
  });
  close(report[1]);
  REQUIRE(cg->AddProcess(h.pid).ok());
  h.Release();
  int msg[2] = {0, 0};
  REQUIRE(read(report[0], msg, sizeof msg) == sizeof msg);
  close(report[0]);
  REQUIRE(msg[0] == 7);  // 8 tasks in all, the parent included
  REQUIRE(msg[1] == EAGAIN);
  auto pids = cg->Pids();
  REQUIRE(pids.ok());
  REQUIRE(pids->size() == 8);

  REQUIRE(cg->KillAll().ok());
  int status = WaitStatus(h.pid);
  REQUIRE(WIFSIGNALED(status));
  // Reap every grandchild (they are ours as subreaper); bounded by the pids limit.
  for (int i = 0; i < 8; ++i) {
    if (waitpid(-1, &status, 0) < 0) {
      REQUIRE(errno == ECHILD);
      break;
    }
  }
  pids = cg->Pids();
  REQUIRE(pids.ok());
  REQUIRE(pids->empty());
  REQUIRE(cg->Remove().ok());
  REQUIRE(prctl(PR_SET_CHILD_SUBREAPER, 0) == 0);
}

}  // namespace
}  // namespace constellation::runtime
