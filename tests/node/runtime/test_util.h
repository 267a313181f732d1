// Helpers shared by the runtime's root integration tests.
#ifndef CONSTELLATION_TESTS_NODE_RUNTIME_TEST_UTIL_H_
#define CONSTELLATION_TESTS_NODE_RUNTIME_TEST_UTIL_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "node/base/fd.h"
#include "node/runtime/runtime.h"

namespace constellation::runtime::testing {

// Takes every free slot of `budget` for its lifetime (to reach the paths past a kept-descriptor
// cap); gives them back when it goes.
class BudgetUsedUp {
 public:
  explicit BudgetUsedUp(FdBudget& budget) : budget_(budget) {
    while (budget_.Take()) ++taken_;
  }
  ~BudgetUsedUp() { budget_.Give(taken_); }
  BudgetUsedUp(const BudgetUsedUp&) = delete;
  BudgetUsedUp& operator=(const BudgetUsedUp&) = delete;
  // Slots in use while it holds them: everything.
  int all() const { return budget_.used(); }

 private:
  FdBudget& budget_;
  int taken_ = 0;
};

// True when this process may create cgroups and namespaces (root with the needed controllers).
// Otherwise prints why once; root tests then pass without checking anything.
bool CanRunRootTests();

class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Options for a runtime of node "n1" with its data under `tmp`, in this process's test cgroups,
// with a 1 s stop grace and 64 pids per instance; makes `tmp` traversable for the instances.
Runtime::Options TestRuntimeOptions(const TempDir& tmp);

// A cgroup path unique to this test process: "cn-test-<pid>/<suffix>".
std::string TestCgroupPath(const std::string& suffix);
// SIGKILLs every process in this process's test cgroups and reaps those that are its children.
void KillTestCgroups();
// Removes this process's test cgroups (best effort; run at the end of a test).
void RemoveTestCgroups();

// Lazily unmounts every mount point under `dir` (test scratch spaces left mounted).
void UnmountUnder(const std::string& dir);

std::string ReadFileOrEmpty(const std::string& path);
// Children of this process (by /proc/*/stat ppid) that are zombies.
std::vector<pid_t> ZombieChildren();
bool PathExistsForTest(const std::string& path);
// /proc/<pid>/stat state letter, or 0 when the process is gone.
char ProcState(pid_t pid);

}  // namespace constellation::runtime::testing

#endif  // CONSTELLATION_TESTS_NODE_RUNTIME_TEST_UTIL_H_
