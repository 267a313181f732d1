#include "node/runtime/scratch.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "node/base/log.h"
#include "node/runtime/sysfile.h"

namespace constellation::runtime {
namespace {

constexpr int kMaxLoopAttempts = 16;
constexpr size_t kMaxWalkEntries = 100000;

std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3') {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

// Runs a tool and waits; exit codes up to `max_ok` count as success (e2fsck: 1 = fixed).
Status RunTool(ProcessSpawner* spawner, std::vector<std::string> argv, int max_ok = 0) {
  if (spawner == nullptr) return Status::Internal("no process spawner for " + argv[0]);
  ProcessSpawner::Spec spec;
  spec.argv = argv;
  auto pid = spawner->Spawn(spec);
  if (!pid.ok()) return pid.status();
  auto st = spawner->Wait(*pid);
  if (!st.ok()) return st.status();
  if (!WIFEXITED(*st) || WEXITSTATUS(*st) > max_ok) {
    return Status::IoError(argv[0] + " failed (status " + std::to_string(*st) + ")");
  }
  return Status::Ok();
}

Result<int64_t> ImageSizeMb(const std::string& image) {
  struct stat st;
  if (stat(image.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + image);
  return static_cast<int64_t>(st.st_size >> 20);
}

Status CreateImage(const ScratchConfig& c) {
  unlink(c.image_path.c_str());
  int fd = open(c.image_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, "create " + c.image_path);
  int rc = ftruncate(fd, static_cast<off_t>(c.disk_mb) << 20);
  int err = errno;
  close(fd);
  if (rc != 0) return Status::FromErrno(err, "size " + c.image_path);
  return RunTool(c.spawner, {c.mkfs, "-q", "-F", "-m", "0", "-E",
                             "root_owner=" + std::to_string(c.uid) + ":" + std::to_string(c.gid),
                             c.image_path});
}

Status MountImage(const ScratchConfig& c) {
  int img = open(c.image_path.c_str(), O_RDWR | O_CLOEXEC);
  if (img < 0) return Status::FromErrno(errno, "open " + c.image_path);
  int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) {
    int err = errno;
    close(img);
    return Status::FromErrno(err, "open /dev/loop-control");
  }
  Status result = Status::Unavailable("no free loop device");
  for (int attempt = 0; attempt < kMaxLoopAttempts; ++attempt) {
    int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (n < 0) {
      result = Status::FromErrno(errno, "LOOP_CTL_GET_FREE");
      break;
    }
    std::string dev = "/dev/loop" + std::to_string(n);
    int lfd = open(dev.c_str(), O_RDWR | O_CLOEXEC);
    if (lfd < 0) {
      result = Status::FromErrno(errno, "open " + dev);
      break;
    }
    struct loop_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.fd = static_cast<uint32_t>(img);
    cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;  // the device frees itself at unmount
    if (ioctl(lfd, LOOP_CONFIGURE, &cfg) != 0) {
      int err = errno;
      close(lfd);
      if (err == EBUSY) continue;  // another process took it first
      result = Status::FromErrno(err, "LOOP_CONFIGURE " + dev);
      break;
    }
    int rc = mount(dev.c_str(), c.work_dir.c_str(), "ext4", MS_NOSUID | MS_NODEV, nullptr);
    int err = errno;
    close(lfd);  // autoclear: the mount holds the device now (or, on failure, nothing does)
    result = rc == 0 ? Status::Ok() : Status::FromErrno(err, "mount " + dev + " on " + c.work_dir);
    break;
  }
  close(ctl);
  close(img);
  return result;
}

Status Unmount(const std::string& dir) {
  if (umount2(dir.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT)
    return Status::FromErrno(errno, "umount " + dir);
  return Status::Ok();
}

Status SetCapacity(const std::string& dev) {
  int lfd = open(dev.c_str(), O_RDWR | O_CLOEXEC);
  if (lfd < 0) return Status::FromErrno(errno, "open " + dev);
  int rc = ioctl(lfd, LOOP_SET_CAPACITY, 0);
  int err = errno;
  close(lfd);
  if (rc != 0) return Status::FromErrno(err, "LOOP_SET_CAPACITY " + dev);
  return Status::Ok();
}

// Online: extend the file, tell the loop device, let ext4 grow while mounted. The ioctl behind
// resize2fs needs CAP_SYS_RESOURCE; without it the file is put back and the grow waits.
Status GrowLive(const ScratchConfig& c, const std::string& dev, int64_t old_mb) {
  if (truncate(c.image_path.c_str(), static_cast<off_t>(c.disk_mb) << 20) != 0)
    return Status::FromErrno(errno, "grow " + c.image_path);
  Status s = SetCapacity(dev);
  if (s.ok()) s = RunTool(c.spawner, {c.resize2fs, dev});
  if (!s.ok()) {
    // The file system still ends at the old size: shrinking the file back loses nothing.
    if (truncate(c.image_path.c_str(), static_cast<off_t>(old_mb) << 20) == 0)
      SetCapacity(dev).ok();
  }
  return s;
}

// Offline (not mounted): extend, check, grow.
Status GrowOffline(const ScratchConfig& c) {
  if (truncate(c.image_path.c_str(), static_cast<off_t>(c.disk_mb) << 20) != 0)
    return Status::FromErrno(errno, "grow " + c.image_path);
  CN_RETURN_IF_ERROR(RunTool(c.spawner, {c.e2fsck, "-f", "-p", c.image_path}, /*max_ok=*/1));
  return RunTool(c.spawner, {c.resize2fs, c.image_path});
}

uint64_t WalkBytes(const std::string& dir, size_t* budget) {
  uint64_t total = 0;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return 0;
  while (dirent* e = readdir(d)) {
    if (*budget == 0) break;
    --*budget;
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    std::string p = dir + "/" + e->d_name;
    struct stat st;
    if (lstat(p.c_str(), &st) != 0) continue;
    total += static_cast<uint64_t>(st.st_blocks) * 512;
    if (S_ISDIR(st.st_mode)) total += WalkBytes(p, budget);
  }
  closedir(d);
  return total;
}

}  // namespace

std::string MountedDevice(const std::string& path) {
  auto info = ReadSmallFile("/proc/self/mountinfo", 4 << 20);
  if (!info.ok()) return "";
  std::string found;
  size_t pos = 0;
  const std::string& t = *info;
  while (pos < t.size()) {
    size_t end = t.find('\n', pos);
    if (end == std::string::npos) end = t.size();
    std::string line = t.substr(pos, end - pos);
    pos = end + 1;
    std::vector<std::string> f;
    size_t a = 0;
    while (a < line.size()) {
      size_t b = line.find(' ', a);
      if (b == std::string::npos) b = line.size();
      f.push_back(line.substr(a, b - a));
      a = b + 1;
    }
    if (f.size() < 10 || Unescape(f[4]) != path) continue;
    for (size_t i = 6; i + 2 < f.size(); ++i) {
      if (f[i] == "-") {
        found = Unescape(f[i + 2]);  // the last mount on the path is the visible one
        break;
      }
    }
  }
  return found;
}

Status PrepareScratch(const ScratchConfig& c, bool idle) {
  if (c.disk_mb < 0) return Status::InvalidArgument("disk_mb must not be negative");
  CN_RETURN_IF_ERROR(MakeDirs(c.work_dir, 0755));
  // Only an image is ever mounted there: without one, skip reading the mount table.
  bool image = PathExists(c.image_path);
  std::string dev = image ? MountedDevice(c.work_dir) : "";
  bool mounted = !dev.empty();
  if (c.disk_mb == 0) {
    if (mounted && idle) {
      CN_RETURN_IF_ERROR(Unmount(c.work_dir));
      unlink(c.image_path.c_str());
      mounted = false;
    }
    if (!mounted && chown(c.work_dir.c_str(), c.uid, c.gid) != 0)
      return Status::FromErrno(errno, "chown " + c.work_dir);
    return Status::Ok();
  }
  if (mounted) {
    auto size = ImageSizeMb(c.image_path);
    if (!size.ok()) return size.status();
    if (*size == c.disk_mb) return Status::Ok();
    if (!idle) {
      // Only a grow can happen under a running instance; anything else waits for the next start.
      if (*size < c.disk_mb) {
        Status s = GrowLive(c, dev, *size);
        if (!s.ok()) CN_LOG(Warning) << "scratch: live grow failed, next start: " << s.ToString();
      }
      return Status::Ok();
    }
    CN_RETURN_IF_ERROR(Unmount(c.work_dir));
  }
  if (!idle) return Status::Ok();  // a quota turned on applies at the next start
  auto size = ImageSizeMb(c.image_path);
  if (size.ok() && *size < c.disk_mb) {
    CN_RETURN_IF_ERROR(GrowOffline(c));
  } else if (!size.ok() || *size != c.disk_mb) {
    CN_RETURN_IF_ERROR(CreateImage(c));  // new, or shrunk: starts empty
  }
  return MountImage(c);
}

Status ReleaseScratch(const ScratchConfig& c) {
  if (!PathExists(c.image_path)) return Status::Ok();
  if (!MountedDevice(c.work_dir).empty()) CN_RETURN_IF_ERROR(Unmount(c.work_dir));
  if (unlink(c.image_path.c_str()) != 0 && errno != ENOENT)
    return Status::FromErrno(errno, "unlink " + c.image_path);
  return Status::Ok();
}

uint64_t ScratchUsedBytes(const std::string& work_dir, const std::string& image_path) {
  if (PathExists(image_path) && !MountedDevice(work_dir).empty()) {
    struct statvfs vfs;
    if (statvfs(work_dir.c_str(), &vfs) != 0) return 0;
    return static_cast<uint64_t>(vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize;
  }
  size_t budget = kMaxWalkEntries;
  return WalkBytes(work_dir, &budget);
}

}  // namespace constellation::runtime
