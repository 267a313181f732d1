#include "node/dfs/meta.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>

#include "node/base/coding.h"

namespace constellation {
namespace {

// 2 added Inode::flags; 1 is still read (with every flag set).
constexpr uint16_t kInodeVersion = 2;
constexpr uint16_t kFsOpVersion = 1;
constexpr uint32_t kMaxLinks = 65000;
constexpr int kMaxDepth = 4096;  // bound on the walk up the tree in the rename loop check

std::string InodeKey(uint64_t ino) { return "f/i/" + BigEndian64(ino); }
std::string DentryKey(uint64_t parent, std::string_view name) {
  return "f/d/" + BigEndian64(parent) + std::string(name);
}
std::string CookieKey(uint64_t parent, uint64_t cookie) {
  return "f/c/" + BigEndian64(parent) + BigEndian64(cookie);
}
std::string XattrKey(uint64_t ino, std::string_view name) {
  return "f/x/" + BigEndian64(ino) + std::string(name);
}
std::string OpenKey(uint64_t ino, std::string_view node) {
  return "f/o/" + BigEndian64(ino) + std::string(node);
}
std::string LockKey(uint64_t ino) { return "f/l/" + BigEndian64(ino); }
constexpr char kNextIno[] = "f/n/next_ino";
constexpr char kNextCookie[] = "f/n/next_cookie";

struct Dentry {
  uint64_t ino = 0;
  uint64_t cookie = 0;
};

std::string EncodeLocks(const std::vector<FsLock>& locks) {
  Writer w;
  w.Varint(locks.size());
  for (const FsLock& l : locks) {
    w.Bytes(l.node);
    w.Fixed64(l.owner);
    w.Fixed32(l.pid);
    w.Fixed32(l.type);
    w.Fixed64(l.start);
    w.Fixed64(l.end);
    w.U8(l.flock ? 1 : 0);
  }
  return w.Take();
}

Result<std::vector<FsLock>> DecodeLocks(std::string_view data) {
  Reader r(data);
  uint64_t n = 0;
  if (!r.Varint(&n) || n > kMaxLocksPerInode) return Status::Corruption("locks: bad count");
  std::vector<FsLock> locks(n);
  for (FsLock& l : locks) {
    uint8_t flock = 0;
    if (!r.Bytes(&l.node, 255) || !r.Fixed64(&l.owner) || !r.Fixed32(&l.pid) ||
        !r.Fixed32(&l.type) || !r.Fixed64(&l.start) || !r.Fixed64(&l.end) || !r.U8(&flock)) {
      return Status::Corruption("locks: truncated");
    }
    l.flock = flock == 1;
  }
  if (!r.done()) return Status::Corruption("locks: trailing bytes");
  return locks;
}

bool SameOwner(const FsLock& a, const FsLock& b) {
  return a.node == b.node && a.owner == b.owner && a.flock == b.flock;
}

bool Conflicts(const FsLock& held, const FsLock& want) {
  return held.flock == want.flock && !SameOwner(held, want) && held.start <= want.end &&
         want.start <= held.end && (held.type == F_WRLCK || want.type == F_WRLCK);
}

// POSIX semantics: the owner's locks on [want.start, want.end] are replaced by `want` (or
// removed for F_UNLCK), splitting ranges that stick out; adjacent ranges of one type merge.
void SetOwnerRange(std::vector<FsLock>* locks, const FsLock& want) {
  std::vector<FsLock> out;
  for (const FsLock& l : *locks) {
    if (!SameOwner(l, want) || l.end < want.start || l.start > want.end) {
      out.push_back(l);
      continue;
    }
    if (l.start < want.start) {
      FsLock left = l;
      left.end = want.start - 1;
      out.push_back(left);
    }
    if (l.end > want.end) {
      FsLock right = l;
      right.start = want.end + 1;
      out.push_back(right);
    }
  }
  if (want.type != F_UNLCK) {
    FsLock merged = want;
    std::vector<FsLock> rest;
    for (const FsLock& l : out) {
      bool touches = SameOwner(l, merged) && l.type == merged.type &&
                     (l.end == UINT64_MAX || l.end + 1 >= merged.start) &&
                     (merged.end == UINT64_MAX || merged.end + 1 >= l.start);
      if (touches) {
        merged.start = std::min(merged.start, l.start);
        merged.end = std::max(merged.end, l.end);
      } else {
        rest.push_back(l);
      }
    }
    rest.push_back(merged);
    out = std::move(rest);
  }
  *locks = std::move(out);
}

std::string EncodeDentry(const Dentry& d) {
  Writer w;
  w.Fixed64(d.ino);
  w.Fixed64(d.cookie);
  return w.Take();
}

bool IsDir(const Inode& i) { return S_ISDIR(i.mode); }

Status ValidName(std::string_view name) {
  if (name.empty() || name == "." || name == "..") {
    return Status::InvalidArgument("invalid name \"" + std::string(name) + "\"");
  }
  if (name.size() > kMaxFsNameBytes)
    return Status(Code::kNameTooLong, "name longer than 255 bytes");
  if (name.find('/') != std::string_view::npos || name.find('\0') != std::string_view::npos) {
    return Status::InvalidArgument("name contains '/' or NUL");
  }
  return Status::Ok();
}

// The staged view FsMeta works on, with the helpers every op shares.
class Tx {
 public:
  Tx(KvOverlay* kv, int64_t now_ns) : kv_(kv), now_ns_(now_ns) {}

  Result<Inode> Get(uint64_t ino) {
    CN_ASSIGN_OR_RETURN(std::optional<std::string> v, kv_->Lookup(InodeKey(ino)));
    if (!v) return Status::NotFound("no inode " + std::to_string(ino));
    return DecodeInode(*v);
  }
  Result<Inode> GetDir(uint64_t ino) {
    CN_ASSIGN_OR_RETURN(Inode i, Get(ino));
    if (!IsDir(i)) return Status(Code::kNotDirectory, "not a directory");
    // A removed directory kept alive by an open descriptor takes no new entries (as ext4).
    if (i.nlink == 0) return Status::NotFound("the directory was removed");
    return i;
  }
  void Put(const Inode& i) { kv_->Put(InodeKey(i.ino), EncodeInode(i)); }

  Result<std::optional<Dentry>> Lookup(uint64_t parent, std::string_view name) {
    CN_ASSIGN_OR_RETURN(std::optional<std::string> v, kv_->Lookup(DentryKey(parent, name)));
    if (!v) return std::optional<Dentry>();
    Reader r(*v);
    Dentry d;
    if (!r.Fixed64(&d.ino) || !r.Fixed64(&d.cookie)) return Status::Corruption("bad dentry");
    return std::optional<Dentry>(d);
  }

  Result<uint64_t> Next(const char* key, uint64_t first) {
    CN_ASSIGN_OR_RETURN(std::optional<std::string> v, kv_->Lookup(key));
    uint64_t n = v ? FromBigEndian64(*v) : first;
    kv_->Put(key, BigEndian64(n + 1));
    return n;
  }

  // Adds `name` → `ino` in `dir` (whose record the caller holds and stores afterwards).
  Status Link(Inode* dir, std::string_view name, uint64_t ino) {
    CN_ASSIGN_OR_RETURN(uint64_t cookie, Next(kNextCookie, 3));  // 1, 2: "." and ".."
    kv_->Put(DentryKey(dir->ino, name), EncodeDentry(Dentry{ino, cookie}));
    kv_->Put(CookieKey(dir->ino, cookie), std::string(name));
    dir->entries++;
    dir->mtime_ns = dir->ctime_ns = now_ns_;
    return Status::Ok();
  }
  void Unlink(Inode* dir, std::string_view name, const Dentry& d) {
    kv_->Delete(DentryKey(dir->ino, name));
    kv_->Delete(CookieKey(dir->ino, d.cookie));
    dir->entries--;
    dir->mtime_ns = dir->ctime_ns = now_ns_;
  }

  // Before the op stages a new open reference to `ino` (one that exists: the op fails otherwise).
  Status MarkMayBeOpen(uint64_t ino) {
    Result<Inode> i = Get(ino);
    if (i.status().code() == Code::kNotFound) return Status::Ok();
    CN_RETURN_IF_ERROR(i.status());
    if (!(i->flags & kInodeMayBeOpen)) {
      i->flags |= kInodeMayBeOpen;
      Put(*i);
    }
    return Status::Ok();
  }

  Result<bool> IsOpen(uint64_t ino) {
    bool open = false;
    CN_RETURN_IF_ERROR(
        kv_->ScanPrefix("f/o/" + BigEndian64(ino), [&](std::string_view, std::string_view) {
          open = true;
          return false;
        }));
    return open;
  }

  // Drops one link; removes the inode when no link and no open reference remain.
  Status DropLink(Inode* i, FsResult* result) {
    if (i->nlink > 0) i->nlink--;
    if (IsDir(*i)) i->nlink = 0;  // a removed directory has no links left ("." included)
    i->ctime_ns = now_ns_;
    return MaybeFree(*i, result);
  }
  Status MaybeFree(const Inode& i, FsResult* result) {
    if (i.nlink > 0) {
      Put(i);
      return Status::Ok();
    }
    bool open = false;
    if (i.flags & kInodeMayBeOpen) {
      CN_ASSIGN_OR_RETURN(open, IsOpen(i.ino));
    }
    if (open) {
      Put(i);
      return Status::Ok();
    }
    kv_->Delete(InodeKey(i.ino));
    kv_->Delete(LockKey(i.ino));
    std::vector<std::string> xattrs;
    if (i.flags & kInodeMayHaveXattrs) {
      CN_RETURN_IF_ERROR(
          kv_->ScanPrefix("f/x/" + BigEndian64(i.ino), [&](std::string_view k, std::string_view) {
            xattrs.emplace_back(k);
            return true;
          }));
    }
    for (const std::string& k : xattrs) kv_->Delete(k);
    result->freed.push_back(i.ino);
    return Status::Ok();
  }

  KvOverlay* kv() { return kv_; }
  int64_t now() const { return now_ns_; }

 private:
  KvOverlay* kv_;
  int64_t now_ns_;
};

Result<Inode> NewInode(Tx* tx, uint64_t index, const FsOp& op, const Inode& parent, uint32_t mode) {
  CN_ASSIGN_OR_RETURN(uint64_t ino, tx->Next(kNextIno, kFsRootIno + 1));
  Inode i;
  i.ino = ino;
  i.generation = index;
  i.mode = mode;
  i.uid = op.uid;
  // BSD group semantics for setgid directories, as ext4: the group is the directory's, and new
  // subdirectories inherit the bit.
  i.gid = (parent.mode & S_ISGID) ? parent.gid : op.gid;
  if ((parent.mode & S_ISGID) && S_ISDIR(mode)) i.mode |= S_ISGID;
  i.nlink = S_ISDIR(mode) ? 2 : 1;
  i.atime_ns = i.mtime_ns = i.ctime_ns = i.btime_ns = op.time_ns;
  i.rdev = op.rdev;
  i.parent_hint = parent.ino;
  return i;
}

Status Create(Tx* tx, uint64_t index, const FsOp& op, uint32_t mode, FsResult* result) {
  CN_RETURN_IF_ERROR(ValidName(op.name));
  CN_ASSIGN_OR_RETURN(Inode parent, tx->GetDir(op.parent));
  CN_ASSIGN_OR_RETURN(std::optional<Dentry> existing, tx->Lookup(op.parent, op.name));
  if (existing) return Status::AlreadyExists(op.name + " exists");
  if (S_ISDIR(mode) && parent.nlink >= kMaxLinks)
    return Status(Code::kTooManyLinks, "too many links");
  CN_ASSIGN_OR_RETURN(Inode i, NewInode(tx, index, op, parent, mode));
  if (S_ISLNK(mode)) {
    i.symlink = op.value;
    i.size = op.value.size();
  }
  CN_RETURN_IF_ERROR(tx->Link(&parent, op.name, i.ino));
  if (S_ISDIR(mode)) parent.nlink++;
  tx->Put(parent);
  tx->Put(i);
  result->inode = i;
  return Status::Ok();
}

// True when `ino` is `ancestor` or below it.
Result<bool> IsWithin(Tx* tx, uint64_t ino, uint64_t ancestor) {
  for (int depth = 0; depth < kMaxDepth; ++depth) {
    if (ino == ancestor) return true;
    if (ino == kFsRootIno) return false;
    CN_ASSIGN_OR_RETURN(Inode i, tx->Get(ino));
    ino = i.parent_hint;
  }
  return Status(Code::kLoop, "directory tree deeper than " + std::to_string(kMaxDepth));
}

Status Rename(Tx* tx, const FsOp& op, FsResult* result) {
  CN_RETURN_IF_ERROR(ValidName(op.name));
  CN_RETURN_IF_ERROR(ValidName(op.new_name));
  if ((op.flags & kRenameNoReplace) && (op.flags & kRenameExchange)) {
    return Status::InvalidArgument("RENAME_NOREPLACE and RENAME_EXCHANGE together");
  }
  if (op.flags & ~(kRenameNoReplace | kRenameExchange)) {
    return Status::InvalidArgument("unsupported rename flags");
  }
  CN_ASSIGN_OR_RETURN(Inode src_dir, tx->GetDir(op.parent));
  CN_ASSIGN_OR_RETURN(std::optional<Dentry> src, tx->Lookup(op.parent, op.name));
  if (!src) return Status::NotFound(op.name + " does not exist");
  bool same_dir = op.new_parent == op.parent;
  Inode dst_dir_storage;
  if (!same_dir) {
    CN_ASSIGN_OR_RETURN(dst_dir_storage, tx->GetDir(op.new_parent));
  }
  Inode& dst_dir = same_dir ? src_dir : dst_dir_storage;
  CN_ASSIGN_OR_RETURN(std::optional<Dentry> dst, tx->Lookup(op.new_parent, op.new_name));
  CN_ASSIGN_OR_RETURN(Inode moved, tx->Get(src->ino));
  if (same_dir && op.name == op.new_name) return Status::Ok();
  if (IsDir(moved) && !same_dir) {
    CN_ASSIGN_OR_RETURN(bool inside, IsWithin(tx, op.new_parent, moved.ino));
    if (inside) return Status::InvalidArgument("cannot move a directory into itself");
  }
  const int64_t now = tx->now();

  if (op.flags & kRenameExchange) {
    if (!dst) return Status::NotFound(op.new_name + " does not exist");
    CN_ASSIGN_OR_RETURN(Inode other, tx->Get(dst->ino));
    if (IsDir(other) && !same_dir) {
      CN_ASSIGN_OR_RETURN(bool inside, IsWithin(tx, op.parent, other.ino));
      if (inside) return Status::InvalidArgument("cannot move a directory into itself");
    }
    tx->kv()->Put(DentryKey(op.parent, op.name), EncodeDentry(Dentry{other.ino, src->cookie}));
    tx->kv()->Put(DentryKey(op.new_parent, op.new_name),
                  EncodeDentry(Dentry{moved.ino, dst->cookie}));
    if (!same_dir) {
      if (IsDir(moved) != IsDir(other)) {
        int delta = IsDir(moved) ? 1 : -1;
        dst_dir.nlink += delta;
        src_dir.nlink -= delta;
      }
      moved.parent_hint = op.new_parent;
      other.parent_hint = op.parent;
    }
    moved.ctime_ns = other.ctime_ns = now;
    src_dir.mtime_ns = src_dir.ctime_ns = dst_dir.mtime_ns = dst_dir.ctime_ns = now;
    tx->Put(moved);
    tx->Put(other);
    tx->Put(src_dir);
    if (!same_dir) tx->Put(dst_dir);
    result->inode = moved;
    return Status::Ok();
  }

  if (dst) {
    if (op.flags & kRenameNoReplace) return Status::AlreadyExists(op.new_name + " exists");
    if (dst->ino == moved.ino) return Status::Ok();  // two links to one file: POSIX says no-op
    CN_ASSIGN_OR_RETURN(Inode victim, tx->Get(dst->ino));
    if (IsDir(moved) && !IsDir(victim)) return Status(Code::kNotDirectory, "not a directory");
    if (!IsDir(moved) && IsDir(victim)) return Status(Code::kIsDirectory, "is a directory");
    if (IsDir(victim) && victim.entries > 0) return Status::NotEmpty(op.new_name + " is not empty");
    tx->Unlink(&dst_dir, op.new_name, *dst);
    if (IsDir(victim)) dst_dir.nlink--;
    CN_RETURN_IF_ERROR(tx->DropLink(&victim, result));
  }
  tx->Unlink(&src_dir, op.name, *src);
  CN_RETURN_IF_ERROR(tx->Link(&dst_dir, op.new_name, moved.ino));
  if (IsDir(moved) && !same_dir) {
    src_dir.nlink--;
    dst_dir.nlink++;
    moved.parent_hint = op.new_parent;
  }
  moved.ctime_ns = now;
  tx->Put(moved);
  tx->Put(src_dir);
  if (!same_dir) tx->Put(dst_dir);
  result->inode = moved;
  return Status::Ok();
}

Status SetAttr(Tx* tx, const FsOp& op, FsResult* result) {
  CN_ASSIGN_OR_RETURN(Inode i, tx->Get(op.ino));
  uint32_t mask = op.flags;
  if (mask & kAttrMode) i.mode = (i.mode & S_IFMT) | (op.mode & 07777);
  bool owner_changed = false;
  if ((mask & kAttrUid) && op.attr_uid != i.uid) {
    i.uid = op.attr_uid;
    owner_changed = true;
  }
  if ((mask & kAttrGid) && op.attr_gid != i.gid) {
    i.gid = op.attr_gid;
    owner_changed = true;
  }
  if ((mask & (kAttrUid | kAttrGid)) && !IsDir(i)) {
    // chown clears set-user-ID, and set-group-ID when group execute is set (ext4, chown(2)),
    // even when the owner does not change, except for root keeping it on directories.
    (void)owner_changed;
    i.mode &= ~S_ISUID;
    if (i.mode & S_IXGRP) i.mode &= ~S_ISGID;
  }
  if (mask & kAttrSize) {
    if (!S_ISREG(i.mode)) {
      return IsDir(i) ? Status(Code::kIsDirectory, "is a directory")
                      : Status::InvalidArgument("not a regular file");
    }
    if (op.size > kMaxFsFileBytes) return Status::TooLarge("file size limit is 16 TiB");
    i.size = op.size;
    i.content = op.value;  // the proposer computed the truncated extent list
    i.mtime_ns = tx->now();
  }
  if (mask & kAttrAtimeNow)
    i.atime_ns = tx->now();
  else if (mask & kAttrAtime)
    i.atime_ns = op.atime_ns;
  if (mask & kAttrMtimeNow)
    i.mtime_ns = tx->now();
  else if (mask & kAttrMtime)
    i.mtime_ns = op.mtime_ns;
  i.ctime_ns = tx->now();
  tx->Put(i);
  result->inode = i;
  return Status::Ok();
}

Status SetXattr(Tx* tx, const FsOp& op, FsResult* result) {
  CN_ASSIGN_OR_RETURN(Inode i, tx->Get(op.ino));
  if (op.name.empty() || op.name.size() > kMaxXattrNameBytes) {
    return Status::OutOfRange("xattr name must be 1..255 bytes");
  }
  if (op.name.rfind("user.", 0) != 0 && op.name.rfind("trusted.", 0) != 0 &&
      op.name.rfind("security.", 0) != 0) {
    return Status::NotSupported("only user.*, trusted.* and security.* xattrs are supported");
  }
  if (op.name.back() == '.')
    return Status::InvalidArgument("xattr name has no name after its namespace");
  if (op.value.size() > kMaxXattrValueBytes) return Status::TooLarge("xattr value over 64 KiB");
  CN_ASSIGN_OR_RETURN(std::optional<std::string> old, tx->kv()->Lookup(XattrKey(op.ino, op.name)));
  if ((op.flags & kXattrCreate) && old) return Status::AlreadyExists(op.name + " exists");
  if ((op.flags & kXattrReplace) && !old) return Status(Code::kNoData, op.name + " is not set");
  if (!old) {
    size_t count = 0;
    CN_RETURN_IF_ERROR(tx->kv()->ScanPrefix(
        "f/x/" + BigEndian64(op.ino),
        [&](std::string_view, std::string_view) { return ++count < kMaxXattrsPerInode; }));
    if (count >= kMaxXattrsPerInode) return Status::NoSpace("too many xattrs on this inode");
  }
  tx->kv()->Put(XattrKey(op.ino, op.name), op.value);
  i.flags |= kInodeMayHaveXattrs;
  i.ctime_ns = tx->now();
  tx->Put(i);
  result->inode = i;
  return Status::Ok();
}

}  // namespace

std::string EncodeInode(const Inode& i) {
  Writer w;
  w.Fixed16(kInodeVersion);
  for (uint64_t v : {i.ino, i.generation, i.size, i.rdev, i.entries, i.parent_hint}) w.Fixed64(v);
  for (uint32_t v : {i.mode, i.uid, i.gid, i.nlink}) w.Fixed32(v);
  for (int64_t v : {i.atime_ns, i.mtime_ns, i.ctime_ns, i.btime_ns})
    w.Fixed64(static_cast<uint64_t>(v));
  w.Bytes(i.symlink);
  w.Bytes(i.content);
  w.Fixed32(i.flags);
  return w.Take();
}

Result<Inode> DecodeInode(std::string_view data) {
  Reader r(data);
  Inode i;
  uint16_t version = 0;
  uint64_t t[4];
  bool ok = r.Fixed16(&version) && (version == 1 || version == kInodeVersion) &&
            r.Fixed64(&i.ino) && r.Fixed64(&i.generation) && r.Fixed64(&i.size) &&
            r.Fixed64(&i.rdev) && r.Fixed64(&i.entries) && r.Fixed64(&i.parent_hint) &&
            r.Fixed32(&i.mode) && r.Fixed32(&i.uid) && r.Fixed32(&i.gid) && r.Fixed32(&i.nlink) &&
            r.Fixed64(&t[0]) && r.Fixed64(&t[1]) && r.Fixed64(&t[2]) && r.Fixed64(&t[3]) &&
            r.Bytes(&i.symlink, kMaxSymlinkBytes) && r.Bytes(&i.content, 64u << 20);
  if (ok && version == 1) i.flags = kInodeMayHaveXattrs | kInodeMayBeOpen;
  if (ok && version >= 2) ok = r.Fixed32(&i.flags);
  ok = ok && r.done();
  if (!ok) return Status::Corruption("inode record: malformed");
  i.atime_ns = static_cast<int64_t>(t[0]);
  i.mtime_ns = static_cast<int64_t>(t[1]);
  i.ctime_ns = static_cast<int64_t>(t[2]);
  i.btime_ns = static_cast<int64_t>(t[3]);
  return i;
}

std::string EncodeFsOp(const FsOp& op) {
  Writer w;
  w.Fixed16(kFsOpVersion);
  w.U8(static_cast<uint8_t>(op.type));
  w.Fixed64(static_cast<uint64_t>(op.time_ns));
  for (uint32_t v : {op.uid, op.gid, op.mode, op.flags, op.attr_uid, op.attr_gid}) w.Fixed32(v);
  for (uint64_t v : {op.ino, op.parent, op.new_parent, op.size, op.rdev}) w.Fixed64(v);
  w.Fixed64(static_cast<uint64_t>(op.atime_ns));
  w.Fixed64(static_cast<uint64_t>(op.mtime_ns));
  w.Bytes(op.name);
  w.Bytes(op.new_name);
  w.Bytes(op.value);
  w.Bytes(op.node);
  w.Fixed64(op.lock_owner);
  w.Fixed32(op.lock_pid);
  w.Fixed32(op.lock_type);
  w.Fixed64(op.lock_start);
  w.Fixed64(op.lock_end);
  w.U8(op.lock_flock ? 1 : 0);
  return w.Take();
}

Result<FsOp> DecodeFsOp(std::string_view data) {
  Reader r(data);
  FsOp op;
  uint16_t version = 0;
  uint8_t type = 0;
  uint64_t time = 0, atime = 0, mtime = 0;
  uint8_t flock = 0;
  if (!r.Fixed16(&version)) return Status::Corruption("fs op: truncated");
  if (version == 0 || version > kFsOpVersion) {
    return Status::NotSupported("fs op: version " + std::to_string(version) + " is too new");
  }
  bool ok = r.U8(&type) && r.Fixed64(&time) && r.Fixed32(&op.uid) && r.Fixed32(&op.gid) &&
            r.Fixed32(&op.mode) && r.Fixed32(&op.flags) && r.Fixed32(&op.attr_uid) &&
            r.Fixed32(&op.attr_gid) && r.Fixed64(&op.ino) && r.Fixed64(&op.parent) &&
            r.Fixed64(&op.new_parent) && r.Fixed64(&op.size) && r.Fixed64(&op.rdev) &&
            r.Fixed64(&atime) && r.Fixed64(&mtime) && r.Bytes(&op.name, kMaxFsNameBytes + 1) &&
            r.Bytes(&op.new_name, kMaxFsNameBytes + 1) && r.Bytes(&op.value, 64u << 20) &&
            r.Bytes(&op.node, 255) && r.Fixed64(&op.lock_owner) && r.Fixed32(&op.lock_pid) &&
            r.Fixed32(&op.lock_type) && r.Fixed64(&op.lock_start) && r.Fixed64(&op.lock_end) &&
            r.U8(&flock) && flock <= 1 && r.done();
  if (!ok) return Status::Corruption("fs op: malformed");
  if (type == 0 || type > static_cast<uint8_t>(FsOpType::kUnlockOwner)) {
    return Status::NotSupported("fs op: unknown type " + std::to_string(type));
  }
  op.type = static_cast<FsOpType>(type);
  op.lock_flock = flock == 1;
  op.time_ns = static_cast<int64_t>(time);
  op.atime_ns = static_cast<int64_t>(atime);
  op.mtime_ns = static_cast<int64_t>(mtime);
  return op;
}

Status KvOverlay::Get(std::string_view key, std::string* value) {
  auto it = staged_.find(key);
  if (it != staged_.end()) {
    if (!it->second) return Status::NotFound(std::string(key));
    *value = *it->second;
    return Status::Ok();
  }
  return base_->Get(key, value);
}

Result<std::optional<std::string>> KvOverlay::Lookup(const std::string& key) {
  std::string v;
  Status s = Get(key, &v);
  if (s.code() == Code::kNotFound) return std::optional<std::string>();
  CN_RETURN_IF_ERROR(s);
  return std::optional<std::string>(std::move(v));
}

Status KvOverlay::Write(const Batch& batch, bool) {
  for (const Op& op : batch.ops()) {
    if (op.is_put) {
      Put(op.key, op.value);
    } else {
      Delete(op.key);
    }
  }
  return Status::Ok();
}

Status KvOverlay::Scan(std::string_view start, std::string_view limit,
                       const std::function<bool(std::string_view, std::string_view)>& fn) {
  std::map<std::string, std::optional<std::string>, std::less<>> merged;
  CN_RETURN_IF_ERROR(base_->Scan(start, limit, [&](std::string_view k, std::string_view v) {
    merged.emplace(std::string(k), std::string(v));
    return true;
  }));
  for (auto it = staged_.lower_bound(start);
       it != staged_.end() && (limit.empty() || it->first < limit); ++it) {
    merged[it->first] = it->second;
  }
  for (const auto& [k, v] : merged) {
    if (v && !fn(k, *v)) break;
  }
  return Status::Ok();
}

Status KvOverlay::ScanPrefix(const std::string& prefix,
                             const std::function<bool(std::string_view, std::string_view)>& fn) {
  std::string limit = prefix;
  limit.push_back('\xff');
  return Scan(prefix, limit, fn);
}

void KvOverlay::Flush(KvStore::Batch* batch) {
  for (auto& [k, v] : staged_) {
    if (v) {
      batch->Put(k, *v);
    } else {
      batch->Delete(k);
    }
  }
  staged_.clear();
}

namespace {
Status ApplyOp(uint64_t index, const FsOp& op, KvOverlay* kv, FsResult* result);
}

Status FsMeta::Apply(uint64_t index, const FsOp& op, KvOverlay* kv, FsResult* result) {
  // Stage into a private overlay, merged only on success: a refused op stages nothing.
  KvOverlay local(kv);
  FsResult r;
  Status s = ApplyOp(index, op, &local, &r);
  if (!s.ok()) return s;
  KvStore::Batch batch;
  local.Flush(&batch);
  CN_RETURN_IF_ERROR(kv->Write(batch, false));
  *result = std::move(r);
  return Status::Ok();
}

namespace {
Status ApplyOp(uint64_t index, const FsOp& op, KvOverlay* kv, FsResult* result) {
  Tx tx(kv, op.time_ns);
  // Unlink, rmdir and rename name in `ino`/`node` an inode the proposing node holds open: if this
  // op removes its last link, the open reference keeps it (and its data) until the node releases
  // it.
  if ((op.type == FsOpType::kUnlink || op.type == FsOpType::kRmdir ||
       op.type == FsOpType::kRename) &&
      op.ino != 0 && !op.node.empty()) {
    CN_ASSIGN_OR_RETURN(std::optional<std::string> v, kv->Lookup(OpenKey(op.ino, op.node)));
    if (!v) {
      kv->Put(OpenKey(op.ino, op.node), BigEndian64(1));
      CN_RETURN_IF_ERROR(tx.MarkMayBeOpen(op.ino));
    }
  }
  switch (op.type) {
    case FsOpType::kInit: {
      CN_ASSIGN_OR_RETURN(std::optional<std::string> root, kv->Lookup(InodeKey(kFsRootIno)));
      if (root) return Status::Ok();
      Inode r;
      r.ino = kFsRootIno;
      r.generation = index;
      r.mode = S_IFDIR | 0755;
      r.nlink = 2;
      r.parent_hint = kFsRootIno;
      r.atime_ns = r.mtime_ns = r.ctime_ns = r.btime_ns = op.time_ns;
      tx.Put(r);
      result->inode = r;
      return Status::Ok();
    }
    case FsOpType::kMknod: {
      uint32_t type = op.mode & S_IFMT;
      if (type == 0) type = S_IFREG;
      if (type != S_IFREG && type != S_IFIFO && type != S_IFSOCK && type != S_IFCHR &&
          type != S_IFBLK) {
        return Status::InvalidArgument("mknod: unsupported file type");
      }
      return Create(&tx, index, op, type | (op.mode & 07777), result);
    }
    case FsOpType::kMkdir:
      return Create(&tx, index, op, S_IFDIR | (op.mode & 07777), result);
    case FsOpType::kSymlink:
      if (op.value.empty()) return Status::NotFound("empty symlink target");
      if (op.value.size() > kMaxSymlinkBytes) return Status(Code::kNameTooLong, "target too long");
      return Create(&tx, index, op, S_IFLNK | 0777, result);
    case FsOpType::kLink: {
      CN_RETURN_IF_ERROR(ValidName(op.name));
      CN_ASSIGN_OR_RETURN(Inode i, tx.Get(op.ino));
      if (IsDir(i)) return Status::NotPermitted("hard links to directories are not allowed");
      if (i.nlink == 0) return Status::NotFound("the file was removed");
      if (i.nlink >= kMaxLinks) return Status(Code::kTooManyLinks, "too many links");
      CN_ASSIGN_OR_RETURN(Inode parent, tx.GetDir(op.parent));
      CN_ASSIGN_OR_RETURN(std::optional<Dentry> existing, tx.Lookup(op.parent, op.name));
      if (existing) return Status::AlreadyExists(op.name + " exists");
      CN_RETURN_IF_ERROR(tx.Link(&parent, op.name, i.ino));
      i.nlink++;
      i.ctime_ns = op.time_ns;
      tx.Put(parent);
      tx.Put(i);
      result->inode = i;
      return Status::Ok();
    }
    case FsOpType::kUnlink:
    case FsOpType::kRmdir: {
      CN_ASSIGN_OR_RETURN(Inode parent, tx.GetDir(op.parent));
      if (op.type == FsOpType::kRmdir && op.name == ".") return Status::InvalidArgument("rmdir .");
      CN_ASSIGN_OR_RETURN(std::optional<Dentry> d, tx.Lookup(op.parent, op.name));
      if (!d) return Status::NotFound(op.name + " does not exist");
      CN_ASSIGN_OR_RETURN(Inode i, tx.Get(d->ino));
      if (op.type == FsOpType::kUnlink && IsDir(i))
        return Status(Code::kIsDirectory, "is a directory");
      if (op.type == FsOpType::kRmdir) {
        if (!IsDir(i)) return Status(Code::kNotDirectory, "not a directory");
        if (i.entries > 0) return Status::NotEmpty(op.name + " is not empty");
        parent.nlink--;
      }
      tx.Unlink(&parent, op.name, *d);
      tx.Put(parent);
      CN_RETURN_IF_ERROR(tx.DropLink(&i, result));
      return Status::Ok();
    }
    case FsOpType::kRename:
      return Rename(&tx, op, result);
    case FsOpType::kSetAttr:
      return SetAttr(&tx, op, result);
    case FsOpType::kSetXattr:
      return SetXattr(&tx, op, result);
    case FsOpType::kRemoveXattr: {
      CN_ASSIGN_OR_RETURN(Inode i, tx.Get(op.ino));
      CN_ASSIGN_OR_RETURN(std::optional<std::string> old, kv->Lookup(XattrKey(op.ino, op.name)));
      if (!old) return Status(Code::kNoData, op.name + " is not set");
      kv->Delete(XattrKey(op.ino, op.name));
      i.ctime_ns = op.time_ns;
      tx.Put(i);
      result->inode = i;
      return Status::Ok();
    }
    case FsOpType::kSetContent: {
      CN_ASSIGN_OR_RETURN(Inode i, tx.Get(op.ino));
      if (!S_ISREG(i.mode)) return Status::InvalidArgument("not a regular file");
      if (op.size > kMaxFsFileBytes) return Status::TooLarge("file size limit is 16 TiB");
      i.content = op.value;
      i.size = op.size;
      i.mtime_ns = i.ctime_ns = op.time_ns;
      // A write by anyone but root clears set-user-ID and set-group-ID (with group execute).
      if (op.uid != 0) {
        i.mode &= ~S_ISUID;
        if (i.mode & S_IXGRP) i.mode &= ~S_ISGID;
      }
      tx.Put(i);
      result->inode = i;
      return Status::Ok();
    }
    case FsOpType::kOpen: {
      CN_ASSIGN_OR_RETURN(Inode i, tx.Get(op.ino));
      CN_ASSIGN_OR_RETURN(std::optional<std::string> v, kv->Lookup(OpenKey(op.ino, op.node)));
      uint64_t n = v ? FromBigEndian64(*v) : 0;
      kv->Put(OpenKey(op.ino, op.node), BigEndian64(n + 1));
      if (!(i.flags & kInodeMayBeOpen)) {
        i.flags |= kInodeMayBeOpen;
        tx.Put(i);
      }
      result->inode = i;
      return Status::Ok();
    }
    case FsOpType::kRelease: {
      CN_ASSIGN_OR_RETURN(std::optional<std::string> v, kv->Lookup(OpenKey(op.ino, op.node)));
      uint64_t n = v ? FromBigEndian64(*v) : 0;
      if (n <= 1) {
        kv->Delete(OpenKey(op.ino, op.node));
      } else {
        kv->Put(OpenKey(op.ino, op.node), BigEndian64(n - 1));
      }
      Result<Inode> i = tx.Get(op.ino);
      if (i.ok() && i->nlink == 0) return tx.MaybeFree(*i, result);
      return Status::Ok();
    }
    case FsOpType::kLock: {
      CN_ASSIGN_OR_RETURN(Inode i, tx.Get(op.ino));
      (void)i;
      if (op.lock_type != F_RDLCK && op.lock_type != F_WRLCK && op.lock_type != F_UNLCK) {
        return Status::InvalidArgument("bad lock type");
      }
      if (op.lock_start > op.lock_end) return Status::InvalidArgument("bad lock range");
      FsLock want{op.node,       op.lock_owner, op.lock_pid,  op.lock_type,
                  op.lock_start, op.lock_end,   op.lock_flock};
      if (want.flock) {
        want.start = 0;
        want.end = UINT64_MAX;
      }
      CN_ASSIGN_OR_RETURN(std::optional<std::string> v, kv->Lookup(LockKey(op.ino)));
      std::vector<FsLock> locks;
      if (v) {
        CN_ASSIGN_OR_RETURN(locks, DecodeLocks(*v));
      }
      if (want.type != F_UNLCK) {
        for (const FsLock& held : locks) {
          if (Conflicts(held, want)) {
            return Status::Unavailable("locked by pid " + std::to_string(held.pid) + " on node " +
                                       held.node);
          }
        }
      }
      if (want.flock) {
        // flock converts or drops the owner's one whole-file lock.
        std::erase_if(locks, [&](const FsLock& l) { return SameOwner(l, want); });
        if (want.type != F_UNLCK) locks.push_back(want);
      } else {
        SetOwnerRange(&locks, want);
      }
      if (locks.size() > kMaxLocksPerInode) {
        return Status::Unavailable("too many locks on this file");
      }
      if (locks.empty()) {
        kv->Delete(LockKey(op.ino));
      } else {
        kv->Put(LockKey(op.ino), EncodeLocks(locks));
      }
      return Status::Ok();
    }
    case FsOpType::kUnlockOwner: {
      CN_ASSIGN_OR_RETURN(std::optional<std::string> v, kv->Lookup(LockKey(op.ino)));
      if (!v) return Status::Ok();
      CN_ASSIGN_OR_RETURN(std::vector<FsLock> locks, DecodeLocks(*v));
      std::erase_if(locks, [&](const FsLock& l) {
        return l.node == op.node && l.owner == op.lock_owner && l.flock == op.lock_flock;
      });
      if (locks.empty()) {
        kv->Delete(LockKey(op.ino));
      } else {
        kv->Put(LockKey(op.ino), EncodeLocks(locks));
      }
      return Status::Ok();
    }
    case FsOpType::kReleaseNode: {
      // Locks held by the node's processes went with them.
      std::vector<std::pair<std::string, std::string>> rewritten;
      CN_RETURN_IF_ERROR(kv->ScanPrefix("f/l/", [&](std::string_view k, std::string_view v) {
        Result<std::vector<FsLock>> locks = DecodeLocks(v);
        if (!locks.ok()) return true;
        size_t before = locks->size();
        std::erase_if(*locks, [&](const FsLock& l) { return l.node == op.node; });
        if (locks->size() != before) {
          rewritten.emplace_back(std::string(k), locks->empty() ? "" : EncodeLocks(*locks));
        }
        return true;
      }));
      for (const auto& [k, v] : rewritten) {
        if (v.empty()) {
          kv->Delete(k);
        } else {
          kv->Put(k, v);
        }
      }
      std::vector<std::pair<std::string, uint64_t>> held;
      CN_RETURN_IF_ERROR(kv->ScanPrefix("f/o/", [&](std::string_view k, std::string_view) {
        if (k.size() > 12 && k.substr(12) == op.node)
          held.emplace_back(k, FromBigEndian64(k.substr(4, 8)));
        return true;
      }));
      for (const auto& [key, ino] : held) {
        kv->Delete(key);
        Result<Inode> i = tx.Get(ino);
        if (i.ok() && i->nlink == 0) CN_RETURN_IF_ERROR(tx.MaybeFree(*i, result));
      }
      return Status::Ok();
    }
  }
  return Status::InvalidArgument("unknown fs op");
}
}  // namespace

Result<Inode> FsGetInode(KvStore* kv, uint64_t ino) {
  std::string v;
  Status s = kv->Get(InodeKey(ino), &v);
  if (s.code() == Code::kNotFound) return Status::NotFound("no inode " + std::to_string(ino));
  CN_RETURN_IF_ERROR(s);
  return DecodeInode(v);
}

Result<uint64_t> FsLookup(KvStore* kv, uint64_t parent, std::string_view name) {
  std::string v;
  Status s = kv->Get(DentryKey(parent, name), &v);
  if (s.code() == Code::kNotFound) return Status::NotFound(std::string(name) + " does not exist");
  CN_RETURN_IF_ERROR(s);
  Reader r(v);
  uint64_t ino = 0;
  if (!r.Fixed64(&ino)) return Status::Corruption("bad dentry");
  return ino;
}

Status FsReadDir(KvStore* kv, uint64_t dir, uint64_t after,
                 const std::function<bool(const FsDirEntry&)>& fn) {
  std::string start = CookieKey(dir, after + 1);
  std::string limit = "f/c/" + BigEndian64(dir + 1);
  std::vector<FsDirEntry> entries;
  CN_RETURN_IF_ERROR(kv->Scan(start, limit, [&](std::string_view k, std::string_view name) {
    entries.push_back(FsDirEntry{std::string(name), 0, FromBigEndian64(k.substr(12, 8))});
    return entries.size() < 1024;  // bounded per call; the caller continues from the cookie
  }));
  for (FsDirEntry& e : entries) {
    Result<uint64_t> ino = FsLookup(kv, dir, e.name);
    if (!ino.ok()) continue;  // removed between the two reads: skip, as a later readdir would
    e.ino = *ino;
    if (!fn(e)) break;
  }
  return Status::Ok();
}

std::string EncodeFsResult(const FsResult& r) {
  Writer w;
  w.U8(r.inode ? 1 : 0);
  if (r.inode) w.Bytes(EncodeInode(*r.inode));
  w.Varint(r.freed.size());
  for (uint64_t ino : r.freed) w.Fixed64(ino);
  return w.Take();
}

Result<FsResult> DecodeFsResult(std::string_view data) {
  Reader rd(data);
  FsResult r;
  uint8_t has = 0;
  uint64_t n = 0;
  if (!rd.U8(&has)) return Status::Corruption("fs result: truncated");
  if (has) {
    std::string inode;
    if (!rd.Bytes(&inode, 64u << 20)) return Status::Corruption("fs result: truncated");
    CN_ASSIGN_OR_RETURN(Inode i, DecodeInode(inode));
    r.inode = std::move(i);
  }
  if (!rd.Varint(&n) || n > (1u << 20)) return Status::Corruption("fs result: bad count");
  for (uint64_t k = 0; k < n; ++k) {
    uint64_t ino = 0;
    if (!rd.Fixed64(&ino)) return Status::Corruption("fs result: truncated");
    r.freed.push_back(ino);
  }
  if (!rd.done()) return Status::Corruption("fs result: trailing bytes");
  return r;
}

Result<std::optional<std::string>> FsGetXattr(KvStore* kv, uint64_t ino, std::string_view name) {
  std::string v;
  Status s = kv->Get(XattrKey(ino, name), &v);
  if (s.code() == Code::kNotFound) return std::optional<std::string>();
  CN_RETURN_IF_ERROR(s);
  return std::optional<std::string>(std::move(v));
}

Status FsListXattr(KvStore* kv, uint64_t ino, std::vector<std::string>* names) {
  std::string prefix = "f/x/" + BigEndian64(ino);
  return kv->Scan(prefix, "f/x/" + BigEndian64(ino + 1), [&](std::string_view k, std::string_view) {
    names->emplace_back(k.substr(prefix.size()));
    return true;
  });
}

Result<std::optional<FsLock>> FsFindConflict(KvStore* kv, uint64_t ino, const FsLock& want) {
  std::string v;
  Status s = kv->Get(LockKey(ino), &v);
  if (s.code() == Code::kNotFound) return std::optional<FsLock>();
  CN_RETURN_IF_ERROR(s);
  CN_ASSIGN_OR_RETURN(std::vector<FsLock> locks, DecodeLocks(v));
  for (const FsLock& held : locks) {
    if (Conflicts(held, want)) return std::optional<FsLock>(held);
  }
  return std::optional<FsLock>();
}

}  // namespace constellation
