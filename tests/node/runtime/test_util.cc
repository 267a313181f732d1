#include "tests/node/runtime/test_util.h"

#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

#include "node/runtime/cgroup.h"

namespace constellation::runtime::testing {

bool CanRunRootTests() {
  static int verdict = -1;
  if (verdict >= 0) return verdict == 1;
  std::string why;
  if (geteuid() != 0) {
    why = "not root";
  } else {
    auto layout = DetectCgroupLayout();
    if (!layout.ok()) why = layout.status().ToString();
  }
  if (!why.empty()) fprintf(stderr, "runtime root tests skipped: %s\n", why.c_str());
  verdict = why.empty() ? 1 : 0;
  return verdict == 1;
}

TempDir::TempDir() {
  // Not under /tmp: instances get a private /tmp and could not see it.
  std::string tmpl = "/var/tmp/cn_rt_XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) abort();
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

Runtime::Options TestRuntimeOptions(const TempDir& tmp) {
  Runtime::Options opts;
  opts.node = "n1";
  opts.data_dir = tmp.path() + "/data";
  opts.cgroup_parent = "cn-test-" + std::to_string(getpid());
  opts.stop_grace_ms = 1000;
  opts.pids_max = 64;
  chmod(tmp.path().c_str(), 0755);
  return opts;
}

std::string TestCgroupPath(const std::string& suffix) {
  return "cn-test-" + std::to_string(getpid()) + "/" + suffix;
}

namespace {
void ForEachTestDir(const std::function<void(const std::string&)>& fn) {
  auto layout = DetectCgroupLayout();
  if (!layout.ok()) return;
  std::vector<std::string> roots;
  if (layout->version == CgroupVersion::kV2) {
    roots.push_back(layout->v2_root);
  } else {
    for (const auto& [c, m] : layout->v1) roots.push_back(m);
  }
  std::string top = "cn-test-" + std::to_string(getpid());
  std::function<void(const std::string&)> walk = [&](const std::string& d) {
    DIR* dir = opendir(d.c_str());
    if (dir == nullptr) return;
    std::vector<std::string> subs;
    while (dirent* e = readdir(dir)) {
      if (e->d_type == DT_DIR && std::string(e->d_name) != "." && std::string(e->d_name) != "..")
        subs.push_back(d + "/" + e->d_name);
    }
    closedir(dir);
    for (const auto& s : subs) walk(s);
    fn(d);  // children first
  };
  for (const std::string& r : roots) walk(r + "/" + top);
}
}  // namespace

void KillTestCgroups() {
  std::vector<pid_t> killed;
  ForEachTestDir([&](const std::string& d) {
    std::istringstream in(ReadFileOrEmpty(d + "/cgroup.procs"));
    pid_t p;
    while (in >> p) {
      if (kill(p, SIGKILL) == 0) killed.push_back(p);
    }
  });
  for (pid_t p : killed) {
    int status;
    waitpid(p, &status, __WALL);  // ECHILD for those that are not ours
  }
}

void RemoveTestCgroups() {
  ForEachTestDir([](const std::string& d) { rmdir(d.c_str()); });
}

void UnmountUnder(const std::string& dir) {
  std::istringstream in(ReadFileOrEmpty("/proc/self/mountinfo"));
  std::string line;
  std::vector<std::string> points;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, dev, root, point;
    if (f >> id >> parent >> dev >> root >> point && point.rfind(dir + "/", 0) == 0)
      points.push_back(point);
  }
  for (auto it = points.rbegin(); it != points.rend(); ++it) umount2(it->c_str(), MNT_DETACH);
}

std::string ReadFileOrEmpty(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool PathExistsForTest(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

char ProcState(pid_t pid) {
  std::string stat = ReadFileOrEmpty("/proc/" + std::to_string(pid) + "/stat");
  size_t p = stat.rfind(')');
  if (p == std::string::npos || p + 2 >= stat.size()) return 0;
  return stat[p + 2];
}

std::vector<pid_t> ZombieChildren() {
  std::vector<pid_t> out;
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return out;
  pid_t self = getpid();
  while (dirent* e = readdir(dir)) {
    char* end;
    long pid = strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    std::string stat = ReadFileOrEmpty(std::string("/proc/") + e->d_name + "/stat");
    size_t p = stat.rfind(')');
    if (p == std::string::npos) continue;
    std::istringstream rest(stat.substr(p + 2));
    char state;
    long ppid;
    if (!(rest >> state >> ppid)) continue;
    if (state == 'Z' && ppid == self) out.push_back(static_cast<pid_t>(pid));
  }
  closedir(dir);
  return out;
}

}  // namespace constellation::runtime::testing
