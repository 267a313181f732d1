// The file-system metadata of cluster/ as replicated state (DESIGN.md §4): inodes, directory
// entries, xattrs and open references, changed only by FsOps applied in log order.
//
// FsMeta is deterministic: an op's outcome depends on the stored state and the op alone (times
// come from the op), so every replica builds the same tree. It reads and writes through a
// KvOverlay, whose staged writes the state machine commits in the same batch as the applied
// index (see node/state/state_machine.h).
//
// Key layout (prefix "f/"):
//   f/i/<be64 ino>                 Inode
//   f/d/<be64 parent><name>        Dentry {ino, cookie}      lookup by name
//   f/c/<be64 parent><be64 cookie> name                      readdir order, stable cookies
//   f/x/<be64 ino><name>           xattr value
//   f/o/<be64 ino><node>           open references held by a node (open-unlinked files)
//   f/n/next_ino, f/n/next_cookie  counters: inode numbers and cookies are never reused
// Thread-safety: FsMeta is used by one thread (the agent) at a time; the read helpers at the end
// take any KvStore and are safe wherever that store is.
#ifndef CONSTELLATION_NODE_DFS_META_H_
#define CONSTELLATION_NODE_DFS_META_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "node/base/status.h"
#include "node/env/env.h"

namespace constellation {

inline constexpr uint64_t kFsRootIno = 2;  // cluster/ (1 is the mount root)
inline constexpr size_t kMaxFsNameBytes = 255;
inline constexpr size_t kMaxSymlinkBytes = 4095;
inline constexpr size_t kMaxXattrNameBytes = 255;
inline constexpr size_t kMaxXattrValueBytes = 64 * 1024;
inline constexpr size_t kMaxXattrsPerInode = 128;
inline constexpr uint64_t kMaxFsFileBytes = 1ull << 44;  // 16 TiB

struct Inode {
  uint64_t ino = 0;
  uint64_t generation = 0;  // the log index that created it
  uint32_t mode = 0;        // type and permission bits
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t nlink = 0;
  uint64_t size = 0;
  uint64_t rdev = 0;
  int64_t atime_ns = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  int64_t btime_ns = 0;
  uint64_t entries = 0;      // directories: number of entries (rmdir needs 0)
  uint64_t parent_hint = 0;  // directories: the parent (for the rename loop check)
  std::string symlink;       // symlinks: the target
  std::string content;  // regular files: the encoded extent list (node/dfs/chunk.h), opaque here
  // kInodeMay* bits: what freeing the inode must look for. Set when the first xattr or open
  // reference is added, never cleared; a record older than the field has them all.
  uint32_t flags = 0;

  bool operator==(const Inode&) const = default;
};

// Inode::flags. Without them, freeing an inode (every last unlink) would scan for keys that
// almost never exist.
inline constexpr uint32_t kInodeMayHaveXattrs = 1u << 0;
inline constexpr uint32_t kInodeMayBeOpen = 1u << 1;  // open references (kOpen, open-unlinked)

std::string EncodeInode(const Inode& inode);
Result<Inode> DecodeInode(std::string_view data);

// Staged writes over a base store: reads see the staged writes. An overlay is itself a KvStore,
// so overlays nest (an op stages into its own overlay and merges it only if it succeeds).
class KvOverlay : public KvStore {
 public:
  explicit KvOverlay(KvStore* base) : base_(base) {}
  Status Get(std::string_view key, std::string* value) override;
  Status Write(const Batch& batch, bool sync) override;  // stages; `sync` is the base's business
  Status Sync() override { return base_->Sync(); }
  Status Scan(std::string_view start, std::string_view limit,
              const std::function<bool(std::string_view, std::string_view)>& fn) override;

  Result<std::optional<std::string>> Lookup(const std::string& key);
  void Put(const std::string& key, std::string value) { staged_[key] = std::move(value); }
  void Delete(const std::string& key) { staged_[key] = std::nullopt; }
  // Every key starting with `prefix`, in order, until fn returns false.
  Status ScanPrefix(const std::string& prefix,
                    const std::function<bool(std::string_view, std::string_view)>& fn);
  // Moves the staged writes into `batch`.
  void Flush(KvStore::Batch* batch);
  void Drop() { staged_.clear(); }

 private:
  KvStore* base_;
  std::map<std::string, std::optional<std::string>, std::less<>> staged_;
};

enum class FsOpType : uint8_t {
  kInit = 1,   // creates the root if missing
  kMknod = 2,  // regular file, fifo, socket, device (mode carries the type)
  kMkdir = 3,
  kSymlink = 4,
  kLink = 5,
  kUnlink = 6,
  kRmdir = 7,
  kRename = 8,
  kSetAttr = 9,
  kSetXattr = 10,
  kRemoveXattr = 11,
  kSetContent = 12,  // new extent list and size after data was written (fsync/close)
  kOpen = 13,        // a node holds the inode open (keeps an unlinked file alive)
  kRelease = 14,
  kReleaseNode = 15,  // a node restarted or left: drop all its open references and locks
  kLock = 16,         // take, change or drop a POSIX (fcntl) or BSD (flock) lock
  kUnlockOwner = 17,  // drop every lock of (node, lock_owner) on an inode (close, last release)
};

// Which attributes kSetAttr changes.
enum FsAttrMask : uint32_t {
  kAttrMode = 1,
  kAttrUid = 2,
  kAttrGid = 4,
  kAttrSize = 8,
  kAttrAtime = 16,
  kAttrMtime = 32,
  kAttrAtimeNow = 64,
  kAttrMtimeNow = 128,
  kAttrCtime = 256,
};

// Rename flags, as in renameat2(2).
inline constexpr uint32_t kRenameNoReplace = 1;
inline constexpr uint32_t kRenameExchange = 2;
// SetXattr flags, as in setxattr(2).
inline constexpr uint32_t kXattrCreate = 1;
inline constexpr uint32_t kXattrReplace = 2;

struct FsOp {
  FsOpType type = FsOpType::kInit;
  int64_t time_ns = 0;  // the proposer's clock: the op's timestamp on every replica
  uint32_t uid = 0;     // caller
  uint32_t gid = 0;
  uint64_t ino = 0;  // target inode (link, setattr, xattr, content, open)
  uint64_t parent = 0;
  std::string name;
  uint64_t new_parent = 0;  // rename
  std::string new_name;
  uint32_t mode = 0;
  uint32_t flags = 0;  // rename / xattr flags; attr mask for kSetAttr
  uint32_t attr_uid = 0;
  uint32_t attr_gid = 0;
  uint64_t size = 0;
  uint64_t rdev = 0;
  int64_t atime_ns = 0;
  int64_t mtime_ns = 0;
  std::string value;  // symlink target, xattr value, content
  std::string node;   // kOpen/kRelease/kReleaseNode, locks
  // Locks: owner is the kernel's lock owner (per open-file table), pid the process for F_GETLK.
  uint64_t lock_owner = 0;
  uint32_t lock_pid = 0;
  uint32_t lock_type = 0;  // F_RDLCK, F_WRLCK or F_UNLCK
  uint64_t lock_start = 0;
  uint64_t lock_end = 0;    // inclusive; UINT64_MAX = to the end of the file, however it grows
  bool lock_flock = false;  // a whole-file flock(2) lock (a namespace apart from fcntl locks)

  bool operator==(const FsOp&) const = default;
};

// A lock held on an inode.
struct FsLock {
  std::string node;
  uint64_t owner = 0;
  uint32_t pid = 0;
  uint32_t type = 0;  // F_RDLCK or F_WRLCK
  uint64_t start = 0;
  uint64_t end = 0;  // inclusive
  bool flock = false;
  bool operator==(const FsLock&) const = default;
};
inline constexpr size_t kMaxLocksPerInode = 1024;

// The first lock held by someone else that conflicts with `want` (same namespace, overlapping,
// one of them a write lock), if any.
Result<std::optional<FsLock>> FsFindConflict(KvStore* kv, uint64_t ino, const FsLock& want);

std::string EncodeFsOp(const FsOp& op);
Result<FsOp> DecodeFsOp(std::string_view data);

// What an op produced, for the proposer: the inode it created or changed (lookup/attr replies),
// and for unlink/rename the inode whose last link went and is no longer open anywhere, so its
// chunks can be released.
struct FsResult {
  std::optional<Inode> inode;
  std::vector<uint64_t> freed;
};

std::string EncodeFsResult(const FsResult& result);
Result<FsResult> DecodeFsResult(std::string_view data);

class FsMeta {
 public:
  // Applies `op` as log entry `index`. The Status is the op's verdict (ENOENT, EEXIST, ENOTEMPTY,
  // ... as Codes); on a refusal nothing is staged.
  static Status Apply(uint64_t index, const FsOp& op, KvOverlay* kv, FsResult* result);
};

// Reads of committed state.
Result<Inode> FsGetInode(KvStore* kv, uint64_t ino);
Result<uint64_t> FsLookup(KvStore* kv, uint64_t parent, std::string_view name);
struct FsDirEntry {
  std::string name;
  uint64_t ino;
  uint64_t cookie;  // pass back as `after` to continue
};
// Entries of `dir` with cookie > `after`, in cookie order, until fn returns false.
Status FsReadDir(KvStore* kv, uint64_t dir, uint64_t after,
                 const std::function<bool(const FsDirEntry&)>& fn);
Result<std::optional<std::string>> FsGetXattr(KvStore* kv, uint64_t ino, std::string_view name);
Status FsListXattr(KvStore* kv, uint64_t ino, std::vector<std::string>* names);

}  // namespace constellation

#endif  // CONSTELLATION_NODE_DFS_META_H_
