// Cgroup layout detection from mountinfo text (pure: no cgroupfs touched).
#include <map>

#include "catch2/catch.hpp"
#include "node/runtime/cgroup.h"

namespace constellation::runtime {
namespace {

using Files = std::map<std::string, std::string>;

std::function<Result<std::string>(const std::string&)> Reader(Files files) {
  return [files](const std::string& p) -> Result<std::string> {
    auto it = files.find(p);
    if (it == files.end()) return Status::NotFound(p);
    return it->second;
  };
}

// This machine's layout: v1 controllers, cpu and cpuacct apart, plus an empty v2 hierarchy.
const char kHybrid[] =
    "30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n"
    "34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
    "39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n"
    "40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

TEST_CASE("hybrid host with an empty v2 hierarchy is v1") {
  auto l =
      ParseCgroupLayout(kHybrid, Reader({{"/sys/fs/cgroup/unified/cgroup.controllers", "\n"}}));
  REQUIRE(l.ok());
  REQUIRE(l->version == CgroupVersion::kV1);
  REQUIRE(l->v1.at("memory") == "/sys/fs/cgroup/memory");
  REQUIRE(l->v1.at("cpu") == "/sys/fs/cgroup/cpu");
  REQUIRE(l->v1.at("cpuacct") == "/sys/fs/cgroup/cpuacct");
  REQUIRE(l->v1.at("pids") == "/sys/fs/cgroup/pids");
  REQUIRE(l->v1.count("systemd") == 0);
}

TEST_CASE("v2 with the controllers wins") {
  const char mi[] =
      "25 20 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
      "rw,nsdelegate,memory_recursiveprot\n";
  auto l = ParseCgroupLayout(
      mi,
      Reader({{"/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma\n"}}));
  REQUIRE(l.ok());
  REQUIRE(l->version == CgroupVersion::kV2);
  REQUIRE(l->v2_root == "/sys/fs/cgroup");
  REQUIRE(l->ToString() == "v2 /sys/fs/cgroup");
}

TEST_CASE("v2 missing pids and no v1: not supported, naming what is missing") {
  const char mi[] = "25 20 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
  auto l = ParseCgroupLayout(mi, Reader({{"/sys/fs/cgroup/cgroup.controllers", "cpu memory\n"}}));
  REQUIRE_FALSE(l.ok());
  REQUIRE(l.status().code() == Code::kNotSupported);
  REQUIRE(l.status().message().find("pids") != std::string::npos);
}

TEST_CASE("co-mounted cpu,cpuacct and escaped mount points") {
  const char mi[] =
      "31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
      "34 30 0:31 / /mnt/my\\040cgroups/memory rw - cgroup cgroup rw,memory\n"
      "38 30 0:35 / /sys/fs/cgroup/pids rw shared:3 master:1 - cgroup cgroup rw,pids\n";
  auto l = ParseCgroupLayout(mi, Reader({}));
  REQUIRE(l.ok());
  REQUIRE(l->version == CgroupVersion::kV1);
  REQUIRE(l->v1.at("cpu") == "/sys/fs/cgroup/cpu,cpuacct");
  REQUIRE(l->v1.at("cpuacct") == "/sys/fs/cgroup/cpu,cpuacct");
  REQUIRE(l->v1.at("memory") == "/mnt/my cgroups/memory");
}

TEST_CASE("garbage lines are ignored") {
  auto l = ParseCgroupLayout("nonsense\n\n1 2 3\n - - -\n", Reader({}));
  REQUIRE_FALSE(l.ok());
}

TEST_CASE("cgroup path validation") {
  REQUIRE(ValidateCgroupPath("constellation/node-1/web_1.a").ok());
  REQUIRE_FALSE(ValidateCgroupPath("").ok());
  REQUIRE_FALSE(ValidateCgroupPath("/abs").ok());
  REQUIRE_FALSE(ValidateCgroupPath("a/../b").ok());
  REQUIRE_FALSE(ValidateCgroupPath("a//b").ok());
  REQUIRE_FALSE(ValidateCgroupPath("a/b c").ok());
}

}  // namespace
}  // namespace constellation::runtime
