// Small file helpers for the runtime's system files (cgroupfs, /proc, its own state files).
// Internal to node/runtime. Thread-safety: stateless functions.
#ifndef CONSTELLATION_NODE_RUNTIME_SYSFILE_H_
#define CONSTELLATION_NODE_RUNTIME_SYSFILE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "node/base/status.h"

namespace constellation::runtime {

// Reads at most `limit` bytes (a longer file is TooLarge).
Result<std::string> ReadSmallFile(const std::string& path, size_t limit = 1 << 20);
// One write(2) of `value` to an existing file (cgroupfs wants a single write per value).
Status WriteSysFile(const std::string& path, std::string_view value);
// Writes `content` to path.tmp and renames it over `path` (no fsync: these files only need to
// survive a crash of the daemon, not of the machine, which takes the processes with it).
Status WriteFileAtomic(const std::string& path, std::string_view content);
// Overwrites `path` in place with one pwrite(2) of `content` padded with '\n' to the file's
// current size, when that is at most one page: no new inode, no rename, no truncate. Creating and
// deleting inodes is what made these writes slow (ext4 scans past recently deleted inodes for
// every new one), and a write within one page is never cut short, even by SIGKILL, so a daemon
// crash leaves the old or the new content whole. Readers must ignore blank lines. A missing file,
// or content longer than a page, goes through WriteFileAtomic (padded to a multiple of 256 bytes,
// so the next writes of similar length fit in place).
Status WriteFileInPlace(const std::string& path, std::string_view content);
// mkdir -p with `mode`; existing directories are fine.
Status MakeDirs(const std::string& path, unsigned mode = 0755);
bool PathExists(const std::string& path);
// Keeps a log file under `max_bytes`: when it is larger, drops its oldest part in place
// (fallocate COLLAPSE_RANGE, whole blocks, leaving about max_bytes/2) so a writer appending with
// O_APPEND carries on; on a file system without collapse (tmpfs) it truncates to 0. Returns the
// bytes dropped (0 when under the bound).
Result<uint64_t> TrimLogHead(const std::string& path, uint64_t max_bytes);
// The value after `key ` (or `key=`) on the line that starts with it in flat-keyed text
// ("oom_kill 3"); NotFound when absent.
Result<uint64_t> FlatKey(std::string_view text, std::string_view key);
// Parses a decimal u64 (surrounding whitespace allowed).
Result<uint64_t> ParseU64(std::string_view text);

}  // namespace constellation::runtime

#endif  // CONSTELLATION_NODE_RUNTIME_SYSFILE_H_
