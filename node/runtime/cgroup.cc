#include "node/runtime/cgroup.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include "node/base/fd.h"
#include "node/runtime/kept_fds_internal.h"
#include "node/runtime/sysfile.h"

namespace constellation::runtime {
namespace {

const char* const kRequired[] = {"memory", "cpu", "pids"};
constexpr int kMaxKillPasses = 64;
constexpr int64_t kCpuPeriodUs = 100000;

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string Unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (size_t j = 1; j <= 3; ++j) {
        if (i + j >= s.size() || s[i + j] < '0' || s[i + j] > '7') {
          ok = false;
          break;
        }
        v = v * 8 + (s[i + j] - '0');
      }
      if (ok) {
        out += static_cast<char>(v);
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t end = s.find(sep, pos);
    if (end == std::string_view::npos) end = s.size();
    if (end > pos) out.push_back(s.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

std::string Join(const std::string& a, const std::string& b) {
  if (b.empty()) return a;
  return a.back() == '/' ? a + b : a + "/" + b;
}

}  // namespace

std::string CgroupLayout::ToString() const {
  if (version == CgroupVersion::kV2) return "v2 " + v2_root;
  std::string s = "v1";
  for (const auto& [c, m] : v1) s += " " + c + "=" + m;
  return s;
}

Result<CgroupLayout> ParseCgroupLayout(
    std::string_view mountinfo,
    const std::function<Result<std::string>(const std::string&)>& read_file) {
  std::vector<std::string> v2_mounts;
  std::map<std::string, std::string> v1;
  for (std::string_view line : Split(mountinfo, '\n')) {
    std::vector<std::string_view> f = Split(line, ' ');
    // id parent dev root mountpoint options [optional...] - fstype source superoptions
    auto dash = std::find(f.begin(), f.end(), std::string_view("-"));
    if (f.size() < 7 || dash == f.end() || std::distance(dash, f.end()) < 4) continue;
    std::string_view fstype = *(dash + 1);
    std::string mount_point = Unescape(f[4]);
    if (fstype == "cgroup2") {
      v2_mounts.push_back(mount_point);
    } else if (fstype == "cgroup") {
      for (std::string_view opt : Split(*(dash + 3), ',')) {
        std::string o(opt);
        if (o == "memory" || o == "cpu" || o == "cpuacct" || o == "pids")
          v1.emplace(o, mount_point);
      }
    }
  }
  for (const std::string& m : v2_mounts) {
    auto controllers = read_file(Join(m, "cgroup.controllers"));
    if (!controllers.ok()) continue;
    std::set<std::string> have;
    for (std::string_view c : Split(*controllers, ' ')) {
      std::string s(c);
      while (!s.empty() && (s.back() == '\n')) s.pop_back();
      if (!s.empty()) have.insert(s);
    }
    bool all = true;
    for (const char* r : kRequired) all = all && have.count(r) > 0;
    if (all) {
      CgroupLayout layout;
      layout.version = CgroupVersion::kV2;
      layout.v2_root = m;
      return layout;
    }
  }
  std::string missing;
  for (const char* r : kRequired) {
    if (!v1.count(r)) missing += std::string(missing.empty() ? "" : ", ") + r;
  }
  if (!missing.empty()) {
    return Status::NotSupported(
        "no cgroup hierarchy offers the " + missing +
        " controller(s): need cgroup v2 with memory, cpu and pids, or v1 mounts of each");
  }
  CgroupLayout layout;
  layout.version = CgroupVersion::kV1;
  layout.v1 = std::move(v1);
  return layout;
}

Result<CgroupLayout> DetectCgroupLayout() {
  CN_ASSIGN_OR_RETURN(std::string mountinfo, ReadSmallFile("/proc/self/mountinfo", 4 << 20));
  return ParseCgroupLayout(mountinfo, [](const std::string& p) { return ReadSmallFile(p, 4096); });
}

Status ValidateCgroupPath(std::string_view path) {
  if (path.empty() || path.size() > 1024) return Status::InvalidArgument("bad cgroup path");
  for (std::string_view part : Split(path, '/')) {
    if (part == "." || part == "..")
      return Status::InvalidArgument("cgroup path may not contain . or ..");
    for (char c : part) {
      if (!(isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-'))
        return Status::InvalidArgument("bad character in cgroup path '" + std::string(path) + "'");
    }
  }
  if (path.front() == '/' || path.find("//") != std::string_view::npos)
    return Status::InvalidArgument("cgroup path must be relative: '" + std::string(path) + "'");
  return Status::Ok();
}

namespace {
// Limit-file handles kept open across all groups; past it, writes open the file each time.
FdBudget kept_limit_fds(4096);
}  // namespace

FdBudget& KeptLimitFds() { return kept_limit_fds; }

struct Cgroup::LimitFiles {
  std::mutex mu;
  std::map<std::string, int> fds;  // path -> O_WRONLY fd; guarded by mu
  int memsw = -1;                  // v1: memory.memsw.limit_in_bytes exists (1) or not (0)

  void CloseAll() {
    std::lock_guard<std::mutex> l(mu);
    for (auto& [path, fd] : fds) close(fd);
    kept_limit_fds.Give(static_cast<int>(fds.size()));
    fds.clear();
  }
  ~LimitFiles() { CloseAll(); }
};

Cgroup::Cgroup(CgroupVersion version, std::string path, std::vector<std::string> dirs,
               std::map<std::string, std::string> by_controller)
    : version_(version),
      path_(std::move(path)),
      dirs_(std::move(dirs)),
      by_controller_(std::move(by_controller)),
      files_(std::make_shared<LimitFiles>()) {}

Status Cgroup::WriteLimit(const std::string& path, std::string_view value, bool keep) const {
  if (files_ == nullptr) return WriteSysFile(path, value);
  std::lock_guard<std::mutex> l(files_->mu);
  auto it = files_->fds.find(path);
  if (it == files_->fds.end()) {
    Status s = WriteSysFile(path, value);
    // Only a file written again later (a live change) is worth a handle.
    if (s.ok() && keep && kept_limit_fds.Take()) {
      int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd >= 0) {
        files_->fds[path] = fd;
      } else {
        kept_limit_fds.Give();
      }
    }
    return s;
  }
  ssize_t n;
  do {
    n = pwrite(it->second, value.data(), value.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno == ENODEV) {
    // The group was removed (and maybe made again) behind our back: drop the stale handle.
    close(it->second);
    files_->fds.erase(it);
    kept_limit_fds.Give();
    return WriteSysFile(path, value);
  }
  if (n < 0) return Status::FromErrno(errno, "write '" + std::string(value) + "' to " + path);
  if (static_cast<size_t>(n) != value.size()) return Status::IoError("short write to " + path);
  return Status::Ok();
}

bool Cgroup::HasMemsw() const {
  std::string memsw = Dir("memory") + "/memory.memsw.limit_in_bytes";
  if (files_ == nullptr) return PathExists(memsw);
  std::lock_guard<std::mutex> l(files_->mu);
  if (files_->memsw < 0) files_->memsw = PathExists(memsw) ? 1 : 0;
  return files_->memsw == 1;
}

Result<Cgroup> Cgroup::Create(const CgroupLayout& layout, const std::string& path) {
  CN_RETURN_IF_ERROR(ValidateCgroupPath(path));
  if (layout.version == CgroupVersion::kV2) {
    std::string cur = layout.v2_root;
    for (std::string_view part : Split(path, '/')) {
      // Idempotent: enabling an enabled controller is a no-op.
      Status s = WriteSysFile(Join(cur, "cgroup.subtree_control"), "+memory +cpu +pids");
      if (!s.ok()) {
        return Status(s.code(), "enable controllers in " + cur +
                                    " (a v2 group with processes "
                                    "cannot delegate them): " +
                                    s.message());
      }
      cur = Join(cur, std::string(part));
      if (mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
        return Status::FromErrno(errno, "mkdir " + cur);
    }
    // No swap: ram_mb must be the real limit.
    if (PathExists(Join(cur, "memory.swap.max"))) {
      CN_RETURN_IF_ERROR(WriteSysFile(Join(cur, "memory.swap.max"), "0"));
    }
    return Cgroup(CgroupVersion::kV2, path, {cur}, {});
  }
  std::vector<std::string> dirs;
  std::map<std::string, std::string> by;
  for (const auto& [controller, mount] : layout.v1) {
    std::string dir = Join(mount, path);
    by[controller] = dir;
    if (std::find(dirs.begin(), dirs.end(), dir) != dirs.end()) continue;
    CN_RETURN_IF_ERROR(MakeDirs(dir));
    dirs.push_back(dir);
  }
  return Cgroup(CgroupVersion::kV1, path, std::move(dirs), std::move(by));
}

Result<Cgroup> Cgroup::Open(const CgroupLayout& layout, const std::string& path) {
  CN_RETURN_IF_ERROR(ValidateCgroupPath(path));
  if (layout.version == CgroupVersion::kV2) {
    std::string dir = Join(layout.v2_root, path);
    if (!PathExists(dir)) return Status::NotFound("no cgroup " + dir);
    return Cgroup(CgroupVersion::kV2, path, {dir}, {});
  }
  std::vector<std::string> dirs;
  std::map<std::string, std::string> by;
  for (const auto& [controller, mount] : layout.v1) {
    std::string dir = Join(mount, path);
    by[controller] = dir;
    if (PathExists(dir) && std::find(dirs.begin(), dirs.end(), dir) == dirs.end())
      dirs.push_back(dir);
  }
  if (!PathExists(by["memory"])) return Status::NotFound("no cgroup " + by["memory"]);
  return Cgroup(CgroupVersion::kV1, path, std::move(dirs), std::move(by));
}

std::string Cgroup::Dir(const std::string& controller) const {
  if (version_ == CgroupVersion::kV2) return dirs_.empty() ? "" : dirs_[0];
  auto it = by_controller_.find(controller);
  return it == by_controller_.end() ? "" : it->second;
}

Status Cgroup::SetLimits(const CgroupLimits& l, const CgroupLimits* current) const {
  if (dirs_.empty()) return Status::Internal("cgroup not created");
  if (l.memory_bytes < 0 || l.cpu_percent < 0 || l.pids_max < 0)
    return Status::InvalidArgument("cgroup limits must not be negative");
  // Each file written is an open and a path walk through the cgroup file system: a limit change
  // on a busy node (one ram_mb write) writes only what changed.
  bool live = current != nullptr;
  bool memory = current == nullptr || current->memory_bytes != l.memory_bytes;
  bool cpu = current == nullptr || current->cpu_percent != l.cpu_percent;
  bool pids = current == nullptr || current->pids_max != l.pids_max;
  if (version_ == CgroupVersion::kV2) {
    const std::string& d = dirs_[0];
    if (memory) {
      CN_RETURN_IF_ERROR(WriteLimit(
          d + "/memory.max", l.memory_bytes == 0 ? "max" : std::to_string(l.memory_bytes), live));
    }
    if (cpu) {
      std::string max = l.cpu_percent == 0 ? "max" : std::to_string(l.cpu_percent * 1000);
      CN_RETURN_IF_ERROR(
          WriteLimit(d + "/cpu.max", max + " " + std::to_string(kCpuPeriodUs), live));
    }
    if (pids) {
      CN_RETURN_IF_ERROR(
          WriteLimit(d + "/pids.max", l.pids_max == 0 ? "max" : std::to_string(l.pids_max), live));
    }
    return Status::Ok();
  }
  if (memory) {
    std::string mem = Dir("memory");
    std::string want = l.memory_bytes == 0 ? "-1" : std::to_string(l.memory_bytes);
    std::string memsw = mem + "/memory.memsw.limit_in_bytes";
    bool has_memsw = HasMemsw();
    // memory.limit must stay <= memsw.limit: raising writes memsw first, lowering last. Without
    // `current` the direction is unknown; the kernel's EINVAL then says it was a raise.
    bool raise = current != nullptr &&
                 (l.memory_bytes == 0 ||
                  (current->memory_bytes != 0 && l.memory_bytes > current->memory_bytes));
    if (has_memsw && raise) CN_RETURN_IF_ERROR(WriteLimit(memsw, want, live));
    Status s = WriteLimit(mem + "/memory.limit_in_bytes", want, live);
    if (!s.ok() && has_memsw && !raise && s.code() == Code::kInvalidArgument) {
      CN_RETURN_IF_ERROR(WriteLimit(memsw, want, live));
      s = WriteLimit(mem + "/memory.limit_in_bytes", want, live);
      raise = true;
    }
    if (!s.ok()) {
      if (s.code() == Code::kBusy) {
        return Status::Busy("memory limit " + want + " is below what the instance uses now (" +
                            s.message() + ")");
      }
      return s;
    }
    if (has_memsw && !raise) CN_RETURN_IF_ERROR(WriteLimit(memsw, want, live));
  }
  if (cpu) {
    std::string dir = Dir("cpu");
    // The period is ours alone (kCpuPeriodUs); it is written with every full application only.
    if (current == nullptr) {
      CN_RETURN_IF_ERROR(WriteSysFile(dir + "/cpu.cfs_period_us", std::to_string(kCpuPeriodUs)));
    }
    CN_RETURN_IF_ERROR(WriteLimit(dir + "/cpu.cfs_quota_us",
                                  l.cpu_percent == 0 ? "-1" : std::to_string(l.cpu_percent * 1000),
                                  live));
  }
  if (pids) {
    CN_RETURN_IF_ERROR(WriteLimit(Dir("pids") + "/pids.max",
                                  l.pids_max == 0 ? "max" : std::to_string(l.pids_max), live));
  }
  return Status::Ok();
}

Result<CgroupStats> Cgroup::ReadStats() const {
  if (dirs_.empty()) return Status::Internal("cgroup not created");
  CgroupStats st;
  if (version_ == CgroupVersion::kV2) {
    const std::string& d = dirs_[0];
    CN_ASSIGN_OR_RETURN(std::string cpu, ReadSmallFile(d + "/cpu.stat"));
    auto usec = FlatKey(cpu, "usage_usec");
    if (usec.ok()) st.cpu_usage_ns = *usec * 1000;
    CN_ASSIGN_OR_RETURN(std::string cur, ReadSmallFile(d + "/memory.current"));
    CN_ASSIGN_OR_RETURN(uint64_t usage, ParseU64(cur));
    auto stat = ReadSmallFile(d + "/memory.stat");
    uint64_t inactive = 0;
    if (stat.ok()) {
      auto v = FlatKey(*stat, "inactive_file");
      if (v.ok()) inactive = *v;
    }
    st.memory_bytes = usage > inactive ? usage - inactive : 0;
    auto peak = ReadSmallFile(d + "/memory.peak");
    if (peak.ok()) {
      auto v = ParseU64(*peak);
      if (v.ok()) st.memory_peak_bytes = *v;
    }
    auto events = ReadSmallFile(d + "/memory.events");
    if (events.ok()) {
      auto v = FlatKey(*events, "oom_kill");
      if (v.ok()) st.oom_kills = *v;
    }
    auto pids = ReadSmallFile(d + "/pids.current");
    if (pids.ok()) {
      auto v = ParseU64(*pids);
      if (v.ok()) st.pids = *v;
    }
    return st;
  }
  std::string acct = Dir("cpuacct");
  if (!acct.empty()) {
    auto u = ReadSmallFile(acct + "/cpuacct.usage");
    if (u.ok()) {
      auto v = ParseU64(*u);
      if (v.ok()) st.cpu_usage_ns = *v;
    }
  }
  std::string mem = Dir("memory");
  CN_ASSIGN_OR_RETURN(std::string cur, ReadSmallFile(mem + "/memory.usage_in_bytes"));
  CN_ASSIGN_OR_RETURN(uint64_t usage, ParseU64(cur));
  uint64_t inactive = 0;
  auto stat = ReadSmallFile(mem + "/memory.stat");
  if (stat.ok()) {
    auto v = FlatKey(*stat, "total_inactive_file");
    if (!v.ok()) v = FlatKey(*stat, "inactive_file");
    if (v.ok()) inactive = *v;
  }
  st.memory_bytes = usage > inactive ? usage - inactive : 0;
  auto peak = ReadSmallFile(mem + "/memory.max_usage_in_bytes");
  if (peak.ok()) {
    auto v = ParseU64(*peak);
    if (v.ok()) st.memory_peak_bytes = *v;
  }
  auto oom = ReadSmallFile(mem + "/memory.oom_control");
  if (oom.ok()) {
    auto v = FlatKey(*oom, "oom_kill");
    if (v.ok()) st.oom_kills = *v;
  }
  auto pids = ReadSmallFile(Dir("pids") + "/pids.current");
  if (pids.ok()) {
    auto v = ParseU64(*pids);
    if (v.ok()) st.pids = *v;
  }
  return st;
}

Result<uint64_t> Cgroup::CpuUsageNs() const {
  if (dirs_.empty()) return Status::Internal("cgroup not created");
  if (version_ == CgroupVersion::kV2) {
    CN_ASSIGN_OR_RETURN(std::string cpu, ReadSmallFile(dirs_[0] + "/cpu.stat"));
    CN_ASSIGN_OR_RETURN(uint64_t usec, FlatKey(cpu, "usage_usec"));
    return usec * 1000;
  }
  std::string acct = Dir("cpuacct");
  if (acct.empty()) return uint64_t{0};
  CN_ASSIGN_OR_RETURN(std::string u, ReadSmallFile(acct + "/cpuacct.usage"));
  return ParseU64(u);
}

Result<uint64_t> Cgroup::OomKills() const {
  if (dirs_.empty()) return Status::Internal("cgroup not created");
  if (version_ == CgroupVersion::kV2) {
    CN_ASSIGN_OR_RETURN(std::string events, ReadSmallFile(dirs_[0] + "/memory.events"));
    return FlatKey(events, "oom_kill");
  }
  CN_ASSIGN_OR_RETURN(std::string oom, ReadSmallFile(Dir("memory") + "/memory.oom_control"));
  return FlatKey(oom, "oom_kill");
}

Result<std::vector<pid_t>> Cgroup::Pids() const {
  if (dirs_.empty()) return Status::Internal("cgroup not created");
  std::string dir = version_ == CgroupVersion::kV2 ? dirs_[0] : Dir("pids");
  CN_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(dir + "/cgroup.procs", 16 << 20));
  std::vector<pid_t> out;
  for (std::string_view line : Split(text, '\n')) {
    auto v = ParseU64(line);
    if (v.ok()) out.push_back(static_cast<pid_t>(*v));
  }
  return out;
}

Status Cgroup::AddProcess(pid_t pid) const {
  if (dirs_.empty()) return Status::Internal("cgroup not created");
  std::string p = std::to_string(pid);
  for (const std::string& d : dirs_) CN_RETURN_IF_ERROR(WriteSysFile(d + "/cgroup.procs", p));
  return Status::Ok();
}

Status Cgroup::KillAll() const {
  if (dirs_.empty()) return Status::Internal("cgroup not created");
  if (version_ == CgroupVersion::kV2 && PathExists(dirs_[0] + "/cgroup.kill")) {
    return WriteSysFile(dirs_[0] + "/cgroup.kill", "1");
  }
  std::set<pid_t> killed;
  for (int pass = 0; pass < kMaxKillPasses; ++pass) {
    CN_ASSIGN_OR_RETURN(std::vector<pid_t> pids, Pids());
    bool fresh = false;
    for (pid_t p : pids) {
      if (killed.insert(p).second) fresh = true;
      kill(p, SIGKILL);
    }
    if (!fresh) return Status::Ok();
  }
  return Status::Ok();
}

Status Cgroup::Remove() const {
  if (files_ != nullptr) files_->CloseAll();
  for (const std::string& d : dirs_) {
    if (rmdir(d.c_str()) != 0 && errno != ENOENT) {
      if (errno == EBUSY) return Status::Busy("cgroup " + d + " still has processes");
      return Status::FromErrno(errno, "rmdir " + d);
    }
  }
  return Status::Ok();
}

Result<int> Cgroup::OpenDirFd() const {
  if (dirs_.empty()) return Status::Internal("cgroup not created");
  if (version_ != CgroupVersion::kV2) return Status::NotSupported("CLONE_INTO_CGROUP needs v2");
  int fd = open(dirs_[0].c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + dirs_[0]);
  return fd;
}

}  // namespace constellation::runtime
