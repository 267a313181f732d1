// An instance's writable work directory, and its disk quota (internal to node/runtime).
//
// disk_mb == 0: a plain directory, no quota. disk_mb > 0: a sparse file of disk_mb MiB holding an
// ext4 file system (mkfs.ext4 -m 0), attached to a free loop device (LOOP_CONFIGURE, autoclear) and
// mounted on the work directory in the daemon's mount namespace, so every instance started later
// sees it. Writes past the quota fail with ENOSPC (ext4's own metadata takes a few percent).
// The scratch space keeps its content across restarts of the instance. Growing disk_mb keeps the
// content: live where the kernel lets the daemon resize a mounted ext4 (needs CAP_SYS_RESOURCE:
// image extended, LOOP_SET_CAPACITY, online resize2fs), otherwise at the next start (e2fsck -f,
// offline resize2fs). Shrinking it, or turning the quota on or off, applies at the next start and
// starts from an empty work directory.
//
// Thread-safety: functions on distinct directories may run concurrently.
#ifndef CONSTELLATION_NODE_RUNTIME_SCRATCH_H_
#define CONSTELLATION_NODE_RUNTIME_SCRATCH_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "node/base/status.h"
#include "node/env/env.h"

namespace constellation::runtime {

struct ScratchConfig {
  std::string work_dir;    // the instance's working directory (mount point when quota'd)
  std::string image_path;  // the sparse image file
  int64_t disk_mb = 0;
  uid_t uid = 0;  // owner of the work directory's root
  gid_t gid = 0;
  ProcessSpawner* spawner = nullptr;  // runs mkfs.ext4 and resize2fs
  std::string mkfs = "mkfs.ext4";
  std::string resize2fs = "resize2fs";
  std::string e2fsck = "e2fsck";
};

// Makes the work directory match the config. `idle`: no process uses it now, so it may be
// unmounted, recreated or shrunk; otherwise only a live grow is done and other changes wait.
Status PrepareScratch(const ScratchConfig& config, bool idle);
// Unmounts (lazily) and deletes the image. The directory itself is left for the caller.
Status ReleaseScratch(const ScratchConfig& config);
// Bytes used in the work directory: the file system's used blocks when quota'd, otherwise the
// sum of allocated blocks of at most 100000 entries (a bound: beyond it the sum is a floor).
uint64_t ScratchUsedBytes(const std::string& work_dir, const std::string& image_path);
// The device mounted on `path` ("/dev/loop3"), or "" when nothing is mounted there.
std::string MountedDevice(const std::string& path);

}  // namespace constellation::runtime

#endif  // CONSTELLATION_NODE_RUNTIME_SCRATCH_H_
