// Per-instance control groups on cgroup v2 or v1, detected (never assumed).
//
// Detection reads /proc/self/mountinfo: v2 is used when a cgroup2 mount offers memory, cpu and
// pids in its cgroup.controllers; otherwise v1, with one mount per controller (memory, cpu, pids
// required; cpuacct for CPU usage, possibly co-mounted with cpu as "cpu,cpuacct"). A host with v1
// controllers plus an empty v2 hierarchy (systemd's "hybrid" layout) is therefore v1.
//
// A group is named by a path relative to each hierarchy's root ("constellation/node1/web-1").
// On v1 it exists once per hierarchy (memory/..., cpu/..., pids/..., cpuacct/...); on v2 once, and
// Create enables +memory +cpu +pids in cgroup.subtree_control of every ancestor on the way.
//
// Limits map as:            v2                        v1
//   memory_bytes            memory.max (+swap.max 0)  memory.limit_in_bytes (+memsw = same)
//   cpu_percent             cpu.max "Q 100000"        cpu.cfs_quota_us Q, cpu.cfs_period_us 100000
//   pids_max                pids.max                  pids.max
// with Q = cpu_percent * 1000 µs per 100 ms period (100 = one core). 0 means unlimited for each.
// Stats read the group's own accounting: CPU time (v2 cpu.stat usage_usec; v1 cpuacct.usage),
// memory working set (usage minus inactive file cache), peak (v2 memory.peak, v1
// memory.max_usage_in_bytes), OOM kills (v2 memory.events oom_kill; v1 memory.oom_control
// oom_kill), pids.current.
//
// Thread-safety: Cgroup is a value (paths, plus write handles on its limit files that its copies
// share, guarded inside); its methods do file I/O only and may be called from any thread.
// Concurrent SetLimits on one group race like two shell writers would.
#ifndef CONSTELLATION_NODE_RUNTIME_CGROUP_H_
#define CONSTELLATION_NODE_RUNTIME_CGROUP_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "node/base/status.h"

namespace constellation::runtime {

enum class CgroupVersion { kV1, kV2 };

struct CgroupLayout {
  CgroupVersion version = CgroupVersion::kV2;
  std::string v2_root;  // v2: the unified hierarchy's mount point
  // v1: controller ("memory", "cpu", "cpuacct", "pids") -> its hierarchy's mount point.
  std::map<std::string, std::string> v1;
  // "v2 /sys/fs/cgroup" or "v1 cpu=/sys/fs/cgroup/cpu memory=..."
  std::string ToString() const;
};

// Detects from mountinfo text; `read_file` reads a cgroup.controllers file. NotSupported when no
// hierarchy offers memory, cpu and pids.
Result<CgroupLayout> ParseCgroupLayout(
    std::string_view mountinfo,
    const std::function<Result<std::string>(const std::string&)>& read_file);
// The live system's layout (/proc/self/mountinfo).
Result<CgroupLayout> DetectCgroupLayout();

struct CgroupLimits {
  int64_t memory_bytes = 0;  // 0: unlimited
  int64_t cpu_percent = 0;   // 100 = one core; 0: unlimited
  int64_t pids_max = 0;      // 0: unlimited
  bool operator==(const CgroupLimits&) const = default;
};

struct CgroupStats {
  uint64_t cpu_usage_ns = 0;       // cumulative CPU time of the group
  uint64_t memory_bytes = 0;       // working set: usage minus inactive file cache
  uint64_t memory_peak_bytes = 0;  // high-water mark of usage; 0 when the kernel keeps none
  uint64_t oom_kills = 0;          // processes the OOM killer killed in this group, ever
  uint64_t pids = 0;               // processes (tasks) now in the group
};

class Cgroup {
 public:
  Cgroup() = default;
  // Creates `path` (and missing ancestors) in every hierarchy; an existing group is reused.
  static Result<Cgroup> Create(const CgroupLayout& layout, const std::string& path);
  // The group `path` as it is: NotFound when it does not exist (in the memory hierarchy, for v1).
  static Result<Cgroup> Open(const CgroupLayout& layout, const std::string& path);

  // Applies the three limits (idempotent; may be called while processes run). Lowering the memory
  // limit below current usage makes the kernel reclaim, and on v1 may fail with Busy. With
  // `current` (the limits the group has now, as a successful SetLimits left them) only the limits
  // that differ are written; without it, all of them.
  Status SetLimits(const CgroupLimits& limits, const CgroupLimits* current = nullptr) const;
  Result<CgroupStats> ReadStats() const;
  // Only cpu_usage_ns (one file read, for periodic sampling). 0 when cpuacct is not mounted (v1).
  Result<uint64_t> CpuUsageNs() const;
  // Only oom_kills (one file read, at every start and exit).
  Result<uint64_t> OomKills() const;
  // Processes (thread-group ids) in the group, from cgroup.procs (of the pids hierarchy on v1).
  Result<std::vector<pid_t>> Pids() const;
  // Moves `pid` into the group in every hierarchy.
  Status AddProcess(pid_t pid) const;
  // SIGKILLs every process in the group: cgroup.kill on v2 when the kernel has it, otherwise
  // passes over cgroup.procs (at most 64) until a pass finds nothing new. Does not wait for them
  // to die.
  Status KillAll() const;
  // Removes the group (rmdir in every hierarchy). Busy while processes remain; missing is fine.
  // Closes the limit files' handles first.
  Status Remove() const;
  // v2: an O_DIRECTORY fd for clone3(CLONE_INTO_CGROUP); the caller closes it. NotSupported on v1.
  Result<int> OpenDirFd() const;

  CgroupVersion version() const { return version_; }
  const std::string& path() const { return path_; }
  // The group's directory in each hierarchy (one on v2).
  const std::vector<std::string>& dirs() const { return dirs_; }

 private:
  Cgroup(CgroupVersion version, std::string path, std::vector<std::string> dirs,
         std::map<std::string, std::string> by_controller);
  // The group's directory for `controller` ("" when that controller is not mounted).
  std::string Dir(const std::string& controller) const;
  // A live limit change writes through handles kept open (LimitFiles), one write(2) rather than
  // an open, a path walk and a close; the first write of a file and writes past the process-wide
  // bound on kept handles go through WriteSysFile.
  Status WriteLimit(const std::string& path, std::string_view value, bool keep) const;
  bool HasMemsw() const;

  struct LimitFiles;

  CgroupVersion version_ = CgroupVersion::kV2;
  std::string path_;
  std::vector<std::string> dirs_;
  std::map<std::string, std::string> by_controller_;  // v1: controller -> group dir
  std::shared_ptr<LimitFiles> files_;
};

// Validates a group path: relative, components of [A-Za-z0-9_.-], no "." or "..".
Status ValidateCgroupPath(std::string_view path);

}  // namespace constellation::runtime

#endif  // CONSTELLATION_NODE_RUNTIME_CGROUP_H_
