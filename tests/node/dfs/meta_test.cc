#include "node/dfs/meta.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cstring>

#include "catch2/catch.hpp"
#include "node/base/coding.h"
#include "node/env/env_fake.h"

namespace constellation {
namespace {

struct Fs {
  FakeKvStore store;
  uint64_t index = 0;
  int64_t now_ns = 1'000'000'000;

  Fs() { REQUIRE(Do(Op(FsOpType::kInit)).ok()); }

  FsOp Op(FsOpType type) {
    FsOp op;
    op.type = type;
    op.time_ns = (now_ns += 1000);
    op.uid = 1000;
    op.gid = 1000;
    return op;
  }

  // Applies one op the way the state machine does: stage, then write the batch.
  Status Do(const FsOp& op, FsResult* out = nullptr) {
    KvOverlay overlay(&store);
    FsResult r;
    Status s = FsMeta::Apply(++index, op, &overlay, &r);
    KvStore::Batch b;
    overlay.Flush(&b);
    REQUIRE(store.Write(b, false).ok());
    if (out) *out = r;
    return s;
  }

  Result<Inode> Make(FsOpType type, uint64_t parent, const std::string& name, uint32_t mode = 0644,
                     const std::string& value = "") {
    FsOp op = Op(type);
    op.parent = parent;
    op.name = name;
    op.mode = mode;
    op.value = value;
    FsResult r;
    Status s = Do(op, &r);
    if (!s.ok()) return s;
    return *r.inode;
  }

  Status Remove(FsOpType type, uint64_t parent, const std::string& name, FsResult* r = nullptr) {
    FsOp op = Op(type);
    op.parent = parent;
    op.name = name;
    return Do(op, r);
  }

  Status Rename(uint64_t p, const std::string& n, uint64_t np, const std::string& nn,
                uint32_t flags = 0, FsResult* r = nullptr) {
    FsOp op = Op(FsOpType::kRename);
    op.parent = p;
    op.name = n;
    op.new_parent = np;
    op.new_name = nn;
    op.flags = flags;
    return Do(op, r);
  }

  Inode Get(uint64_t ino) {
    Result<Inode> i = FsGetInode(&store, ino);
    REQUIRE(i.ok());
    return *i;
  }

  std::vector<std::string> List(uint64_t dir) {
    std::vector<std::string> names;
    REQUIRE(FsReadDir(&store, dir, 0, [&](const FsDirEntry& e) {
              names.push_back(e.name);
              return true;
            }).ok());
    return names;
  }
};

}  // namespace

TEST_CASE("fs: the root exists once") {
  Fs fs;
  Inode root = fs.Get(kFsRootIno);
  CHECK(S_ISDIR(root.mode));
  CHECK(root.nlink == 2);
  CHECK(fs.Do(fs.Op(FsOpType::kInit)).ok());
  CHECK(fs.Get(kFsRootIno) == root);
}

TEST_CASE("fs: create, look up, list in creation order, refuse bad names and duplicates") {
  Fs fs;
  Result<Inode> a = fs.Make(FsOpType::kMknod, kFsRootIno, "a");
  REQUIRE(a.ok());
  CHECK(S_ISREG(a->mode));
  CHECK(a->nlink == 1);
  CHECK(a->uid == 1000);
  CHECK(a->ino > kFsRootIno);
  Result<Inode> d = fs.Make(FsOpType::kMkdir, kFsRootIno, "d", 0755);
  REQUIRE(d.ok());
  CHECK(fs.Get(kFsRootIno).nlink == 3);
  CHECK(fs.Get(kFsRootIno).entries == 2);
  Result<Inode> l = fs.Make(FsOpType::kSymlink, d->ino, "l", 0, "../a");
  REQUIRE(l.ok());
  CHECK(S_ISLNK(l->mode));
  CHECK(l->symlink == "../a");
  CHECK(l->size == 4);
  CHECK(*FsLookup(&fs.store, kFsRootIno, "d") == d->ino);
  CHECK(FsLookup(&fs.store, kFsRootIno, "nope").status().code() == Code::kNotFound);
  CHECK(fs.List(kFsRootIno) == std::vector<std::string>{"a", "d"});
  CHECK(fs.Make(FsOpType::kMknod, kFsRootIno, "a").status().code() == Code::kAlreadyExists);
  CHECK(fs.Make(FsOpType::kMkdir, kFsRootIno, "a").status().code() == Code::kAlreadyExists);
  CHECK(fs.Make(FsOpType::kMknod, a->ino, "x").status().code() == Code::kNotDirectory);
  CHECK(fs.Make(FsOpType::kMknod, 999, "x").status().code() == Code::kNotFound);
  CHECK(fs.Make(FsOpType::kMknod, kFsRootIno, std::string(256, 'n')).status().code() ==
        Code::kNameTooLong);
  CHECK(fs.Make(FsOpType::kMknod, kFsRootIno, std::string(255, 'n')).ok());
  CHECK(fs.Make(FsOpType::kMknod, kFsRootIno, "..").status().code() == Code::kInvalidArgument);
  CHECK(fs.Make(FsOpType::kSymlink, kFsRootIno, "e", 0, "").status().code() == Code::kNotFound);
}

TEST_CASE("fs: readdir cookies stay valid while entries come and go") {
  Fs fs;
  for (int i = 0; i < 10; ++i)
    REQUIRE(fs.Make(FsOpType::kMknod, kFsRootIno, "f" + std::to_string(i)).ok());
  std::vector<FsDirEntry> first;
  REQUIRE(FsReadDir(&fs.store, kFsRootIno, 0, [&](const FsDirEntry& e) {
            first.push_back(e);
            return first.size() < 4;
          }).ok());
  REQUIRE(first.size() == 4);
  // Concurrent changes: remove an entry already listed and one not yet listed, add one.
  REQUIRE(fs.Remove(FsOpType::kUnlink, kFsRootIno, "f1").ok());
  REQUIRE(fs.Remove(FsOpType::kUnlink, kFsRootIno, "f7").ok());
  REQUIRE(fs.Make(FsOpType::kMknod, kFsRootIno, "new").ok());
  std::vector<std::string> rest;
  REQUIRE(FsReadDir(&fs.store, kFsRootIno, first.back().cookie, [&](const FsDirEntry& e) {
            rest.push_back(e.name);
            return true;
          }).ok());
  // Nothing listed twice, nothing that stayed is skipped, the removed one is gone.
  CHECK(rest == std::vector<std::string>{"f4", "f5", "f6", "f8", "f9", "new"});
}

TEST_CASE("fs: link counts, unlink, rmdir, and open-unlinked files") {
  Fs fs;
  Inode d = *fs.Make(FsOpType::kMkdir, kFsRootIno, "d", 0755);
  Inode f = *fs.Make(FsOpType::kMknod, d.ino, "f");
  FsOp link = fs.Op(FsOpType::kLink);
  link.ino = f.ino;
  link.parent = kFsRootIno;
  link.name = "f2";
  REQUIRE(fs.Do(link).ok());
  CHECK(fs.Get(f.ino).nlink == 2);
  link.ino = d.ino;
  link.name = "d2";
  CHECK(fs.Do(link).code() == Code::kNotPermitted);
  CHECK(fs.Remove(FsOpType::kRmdir, kFsRootIno, "d").code() == Code::kNotEmpty);
  CHECK(fs.Remove(FsOpType::kUnlink, kFsRootIno, "d").code() == Code::kIsDirectory);
  CHECK(fs.Remove(FsOpType::kRmdir, kFsRootIno, "f2").code() == Code::kNotDirectory);
  REQUIRE(fs.Remove(FsOpType::kUnlink, d.ino, "f").ok());
  CHECK(fs.Get(f.ino).nlink == 1);
  // Open on node n1, then the last link goes: the inode stays until the release.
  FsOp open = fs.Op(FsOpType::kOpen);
  open.ino = f.ino;
  open.node = "n1";
  REQUIRE(fs.Do(open).ok());
  FsResult r;
  REQUIRE(fs.Remove(FsOpType::kUnlink, kFsRootIno, "f2", &r).ok());
  CHECK(r.freed.empty());
  CHECK(fs.Get(f.ino).nlink == 0);
  FsOp release = fs.Op(FsOpType::kRelease);
  release.ino = f.ino;
  release.node = "n1";
  REQUIRE(fs.Do(release, &r).ok());
  CHECK(r.freed == std::vector<uint64_t>{f.ino});
  CHECK(FsGetInode(&fs.store, f.ino).status().code() == Code::kNotFound);
  REQUIRE(fs.Remove(FsOpType::kRmdir, kFsRootIno, "d").ok());
  CHECK(fs.Get(kFsRootIno).nlink == 2);
  CHECK(fs.Get(kFsRootIno).entries == 0);
}

TEST_CASE("fs: an open directory that is removed stays, empty and closed to new entries") {
  Fs fs;
  Inode d = *fs.Make(FsOpType::kMkdir, kFsRootIno, "d", 0755);
  FsOp rmdir = fs.Op(FsOpType::kRmdir);
  rmdir.parent = kFsRootIno;
  rmdir.name = "d";
  rmdir.ino = d.ino;  // the proposing node holds it open
  rmdir.node = "n1";
  FsResult r;
  REQUIRE(fs.Do(rmdir, &r).ok());
  CHECK(r.freed.empty());
  CHECK(fs.Get(d.ino).nlink == 0);
  CHECK(fs.Get(kFsRootIno).nlink == 2);
  CHECK(fs.Make(FsOpType::kMknod, d.ino, "x").status().code() == Code::kNotFound);
  CHECK(fs.Make(FsOpType::kMkdir, d.ino, "x").status().code() == Code::kNotFound);
  FsOp release = fs.Op(FsOpType::kRelease);
  release.ino = d.ino;
  release.node = "n1";
  REQUIRE(fs.Do(release, &r).ok());
  CHECK(r.freed == std::vector<uint64_t>{d.ino});
  CHECK(FsGetInode(&fs.store, d.ino).status().code() == Code::kNotFound);
}

TEST_CASE("fs: a node that restarts drops its open references") {
  Fs fs;
  Inode f = *fs.Make(FsOpType::kMknod, kFsRootIno, "f");
  for (const char* node : {"n1", "n1", "n2"}) {
    FsOp open = fs.Op(FsOpType::kOpen);
    open.ino = f.ino;
    open.node = node;
    REQUIRE(fs.Do(open).ok());
  }
  REQUIRE(fs.Remove(FsOpType::kUnlink, kFsRootIno, "f").ok());
  FsOp gone = fs.Op(FsOpType::kReleaseNode);
  gone.node = "n1";
  FsResult r;
  REQUIRE(fs.Do(gone, &r).ok());
  CHECK(r.freed.empty());  // n2 still holds it
  gone.node = "n2";
  REQUIRE(fs.Do(gone, &r).ok());
  CHECK(r.freed == std::vector<uint64_t>{f.ino});
}

TEST_CASE("fs: rename replaces, refuses, exchanges and keeps directory link counts") {
  Fs fs;
  Inode a = *fs.Make(FsOpType::kMkdir, kFsRootIno, "a", 0755);
  Inode b = *fs.Make(FsOpType::kMkdir, kFsRootIno, "b", 0755);
  Inode x = *fs.Make(FsOpType::kMknod, a.ino, "x");
  Inode y = *fs.Make(FsOpType::kMknod, b.ino, "y");
  FsResult r;
  REQUIRE(fs.Rename(a.ino, "x", b.ino, "y", 0, &r).ok());
  CHECK(r.freed == std::vector<uint64_t>{y.ino});
  CHECK(*FsLookup(&fs.store, b.ino, "y") == x.ino);
  CHECK(fs.List(a.ino).empty());
  Inode z = *fs.Make(FsOpType::kMknod, a.ino, "z");
  CHECK(fs.Rename(a.ino, "z", b.ino, "y", kRenameNoReplace).code() == Code::kAlreadyExists);
  CHECK(fs.Rename(a.ino, "missing", b.ino, "q").code() == Code::kNotFound);
  CHECK(fs.Rename(a.ino, "z", a.ino, "z").ok());
  // A directory cannot move into itself or below itself.
  Inode sub = *fs.Make(FsOpType::kMkdir, a.ino, "sub", 0755);
  CHECK(fs.Rename(kFsRootIno, "a", sub.ino, "a").code() == Code::kInvalidArgument);
  CHECK(fs.Rename(kFsRootIno, "a", a.ino, "a").code() == Code::kInvalidArgument);
  // Directory over file, file over directory, directory over a non-empty directory.
  CHECK(fs.Rename(a.ino, "sub", b.ino, "y").code() == Code::kNotDirectory);
  CHECK(fs.Rename(b.ino, "y", a.ino, "sub").code() == Code::kIsDirectory);
  Inode full = *fs.Make(FsOpType::kMkdir, b.ino, "full", 0755);
  REQUIRE(fs.Make(FsOpType::kMknod, full.ino, "f").ok());
  CHECK(fs.Rename(a.ino, "sub", b.ino, "full").code() == Code::kNotEmpty);
  // Moving a directory moves one link from the old parent to the new one.
  uint32_t a_links = fs.Get(a.ino).nlink, b_links = fs.Get(b.ino).nlink;
  REQUIRE(fs.Rename(a.ino, "sub", b.ino, "sub").ok());
  CHECK(fs.Get(a.ino).nlink == a_links - 1);
  CHECK(fs.Get(b.ino).nlink == b_links + 1);
  CHECK(fs.Get(sub.ino).parent_hint == b.ino);
  // Exchange a file and a directory across directories.
  REQUIRE(fs.Rename(a.ino, "z", b.ino, "sub", kRenameExchange).ok());
  CHECK(*FsLookup(&fs.store, a.ino, "z") == sub.ino);
  CHECK(*FsLookup(&fs.store, b.ino, "sub") == z.ino);
  CHECK(fs.Get(a.ino).nlink == a_links);
  CHECK(fs.Get(b.ino).nlink == b_links);
  CHECK(fs.Rename(a.ino, "z", b.ino, "nope", kRenameExchange).code() == Code::kNotFound);
  CHECK(fs.Rename(a.ino, "z", b.ino, "y", kRenameExchange | kRenameNoReplace).code() ==
        Code::kInvalidArgument);
}

TEST_CASE("fs: a refused op stages nothing") {
  Fs fs;
  REQUIRE(fs.Make(FsOpType::kMknod, kFsRootIno, "a").ok());
  KvOverlay overlay(&fs.store);
  FsOp op = fs.Op(FsOpType::kMknod);
  op.parent = kFsRootIno;
  op.name = "a";
  FsResult r;
  CHECK(FsMeta::Apply(99, op, &overlay, &r).code() == Code::kAlreadyExists);
  KvStore::Batch b;
  overlay.Flush(&b);
  CHECK(b.empty());
}

TEST_CASE("fs: setattr keeps the type, chown clears set-id bits, times follow the op") {
  Fs fs;
  Inode f = *fs.Make(FsOpType::kMknod, kFsRootIno, "f", 06755);
  CHECK((f.mode & 07777) == 06755);
  FsOp op = fs.Op(FsOpType::kSetAttr);
  op.ino = f.ino;
  op.flags = kAttrUid;
  op.attr_uid = 2000;
  FsResult r;
  REQUIRE(fs.Do(op, &r).ok());
  CHECK(r.inode->uid == 2000);
  CHECK((r.inode->mode & 07777) == 0755);
  CHECK(S_ISREG(r.inode->mode));
  op = fs.Op(FsOpType::kSetAttr);
  op.ino = f.ino;
  op.flags = kAttrMode | kAttrMtime | kAttrAtimeNow;
  op.mode = S_IFDIR | 0600;
  op.mtime_ns = 42;
  REQUIRE(fs.Do(op, &r).ok());
  CHECK(r.inode->mode == (S_IFREG | 0600));
  CHECK(r.inode->mtime_ns == 42);
  CHECK(r.inode->atime_ns == op.time_ns);
  CHECK(r.inode->ctime_ns == op.time_ns);
  op = fs.Op(FsOpType::kSetAttr);
  op.ino = kFsRootIno;
  op.flags = kAttrSize;
  CHECK(fs.Do(op).code() == Code::kIsDirectory);
}

TEST_CASE("fs: setgid directories give their group to new entries") {
  Fs fs;
  FsOp op = fs.Op(FsOpType::kMkdir);
  op.parent = kFsRootIno;
  op.name = "shared";
  op.mode = 02775;
  op.gid = 50;
  FsResult r;
  REQUIRE(fs.Do(op, &r).ok());
  uint64_t shared = r.inode->ino;
  Inode f = *fs.Make(FsOpType::kMknod, shared, "f");
  CHECK(f.gid == 50);
  Inode d = *fs.Make(FsOpType::kMkdir, shared, "d", 0755);
  CHECK(d.gid == 50);
  CHECK((d.mode & S_ISGID) != 0);
}

TEST_CASE("fs: xattrs with create/replace flags, namespaces, and removal with the inode") {
  Fs fs;
  Inode f = *fs.Make(FsOpType::kMknod, kFsRootIno, "f");
  auto set = [&](const std::string& name, const std::string& value, uint32_t flags) {
    FsOp op = fs.Op(FsOpType::kSetXattr);
    op.ino = f.ino;
    op.name = name;
    op.value = value;
    op.flags = flags;
    return fs.Do(op);
  };
  CHECK(set("user.a", "1", 0).ok());
  CHECK(set("user.a", "2", kXattrCreate).code() == Code::kAlreadyExists);
  CHECK(set("user.b", "2", kXattrReplace).code() == Code::kNoData);
  CHECK(set("user.a", "3", kXattrReplace).ok());
  CHECK(set("trusted.t", "x", 0).ok());
  CHECK(set("os2.x", "x", 0).code() == Code::kNotSupported);
  CHECK(set("user.big", std::string(kMaxXattrValueBytes + 1, 'v'), 0).code() == Code::kTooLarge);
  CHECK(**FsGetXattr(&fs.store, f.ino, "user.a") == "3");
  std::vector<std::string> names;
  REQUIRE(FsListXattr(&fs.store, f.ino, &names).ok());
  CHECK(names == std::vector<std::string>{"trusted.t", "user.a"});
  FsOp rm = fs.Op(FsOpType::kRemoveXattr);
  rm.ino = f.ino;
  rm.name = "user.a";
  CHECK(fs.Do(rm).ok());
  CHECK(fs.Do(rm).code() == Code::kNoData);
  REQUIRE(fs.Remove(FsOpType::kUnlink, kFsRootIno, "f").ok());
  CHECK(!FsGetXattr(&fs.store, f.ino, "trusted.t")->has_value());
}

TEST_CASE("fs: ops round-trip through the codec and the decoder refuses garbage") {
  FsOp op;
  op.type = FsOpType::kRename;
  op.time_ns = 123;
  op.parent = 2;
  op.name = "a";
  op.new_parent = 3;
  op.new_name = "b";
  op.flags = kRenameExchange;
  op.value = "v";
  op.node = "n1";
  Result<FsOp> d = DecodeFsOp(EncodeFsOp(op));
  REQUIRE(d.ok());
  CHECK(*d == op);
  std::string data = EncodeFsOp(op);
  for (size_t n = 0; n < data.size(); ++n) CHECK_FALSE(DecodeFsOp(data.substr(0, n)).ok());
  Inode i;
  i.ino = 5;
  i.symlink = "t";
  i.content = "c";
  i.flags = kInodeMayBeOpen;
  CHECK(*DecodeInode(EncodeInode(i)) == i);
  CHECK_FALSE(DecodeInode("x").ok());
  std::string v2 = EncodeInode(i);
  for (size_t n = 0; n < v2.size(); ++n) CHECK_FALSE(DecodeInode(v2.substr(0, n)).ok());
  CHECK_FALSE(DecodeInode(v2 + "x").ok());
}

// A record as version 1 wrote it (no flags): the version and everything but the trailing flags.
std::string InodeVersion1(const Inode& i) {
  std::string v = EncodeInode(i);
  v.resize(v.size() - 4);
  uint16_t one = 1;
  std::memcpy(v.data(), &one, 2);
  return v;
}

TEST_CASE("fs: an inode of format 1 reads with every flag, so freeing it still looks everywhere") {
  Fs fs;
  Inode f = *fs.Make(FsOpType::kMknod, kFsRootIno, "f");
  CHECK(fs.Get(f.ino).flags == 0);
  Result<Inode> old = DecodeInode(InodeVersion1(fs.Get(f.ino)));
  REQUIRE(old.ok());
  CHECK(old->flags == (kInodeMayHaveXattrs | kInodeMayBeOpen));
  // An xattr and an open reference that a format-1 node stored, with the record it left (the
  // store's key layout, node/dfs/meta.cc).
  KvStore::Batch b;
  b.Put("f/i/" + BigEndian64(f.ino), InodeVersion1(fs.Get(f.ino)));
  b.Put("f/x/" + BigEndian64(f.ino) + "user.a", "1");
  b.Put("f/o/" + BigEndian64(f.ino) + "n1", BigEndian64(1));
  REQUIRE(fs.store.Write(b, false).ok());
  FsResult r;
  REQUIRE(fs.Remove(FsOpType::kUnlink, kFsRootIno, "f", &r).ok());
  CHECK(r.freed.empty());  // n1 holds it open
  FsOp release = fs.Op(FsOpType::kRelease);
  release.ino = f.ino;
  release.node = "n1";
  REQUIRE(fs.Do(release, &r).ok());
  CHECK(r.freed == std::vector<uint64_t>{f.ino});
  CHECK(!FsGetXattr(&fs.store, f.ino, "user.a")->has_value());
}

TEST_CASE("fs: the first xattr and the first open reference mark the inode") {
  Fs fs;
  Inode f = *fs.Make(FsOpType::kMknod, kFsRootIno, "f");
  Inode g = *fs.Make(FsOpType::kMknod, kFsRootIno, "g");
  Inode h = *fs.Make(FsOpType::kMknod, kFsRootIno, "h");
  FsOp set = fs.Op(FsOpType::kSetXattr);
  set.ino = f.ino;
  set.name = "user.a";
  set.value = "1";
  REQUIRE(fs.Do(set).ok());
  CHECK(fs.Get(f.ino).flags == kInodeMayHaveXattrs);
  FsOp open = fs.Op(FsOpType::kOpen);
  open.ino = g.ino;
  open.node = "n1";
  REQUIRE(fs.Do(open).ok());
  CHECK(fs.Get(g.ino).flags == kInodeMayBeOpen);
  // Unlinked by the node that holds it open: the op's own open reference keeps it.
  FsOp unlink = fs.Op(FsOpType::kUnlink);
  unlink.parent = kFsRootIno;
  unlink.name = "h";
  unlink.ino = h.ino;
  unlink.node = "n2";
  FsResult r;
  REQUIRE(fs.Do(unlink, &r).ok());
  CHECK(r.freed.empty());
  CHECK(fs.Get(h.ino).flags == kInodeMayBeOpen);
  CHECK(fs.Get(h.ino).nlink == 0);
  // A refused op marks nothing.
  unlink.name = "missing";
  unlink.ino = f.ino;
  CHECK(fs.Do(unlink).code() == Code::kNotFound);
  CHECK(fs.Get(f.ino).flags == kInodeMayHaveXattrs);
}

}  // namespace constellation

namespace constellation {

TEST_CASE("fs: POSIX and flock locks conflict, split, merge and go with their owner") {
  Fs fs;
  Inode f = *fs.Make(FsOpType::kMknod, kFsRootIno, "f");
  auto lock = [&](const std::string& node, uint64_t owner, uint32_t type, uint64_t start,
                  uint64_t end, bool flock = false) {
    FsOp op = fs.Op(FsOpType::kLock);
    op.ino = f.ino;
    op.node = node;
    op.lock_owner = owner;
    op.lock_pid = static_cast<uint32_t>(owner);
    op.lock_type = type;
    op.lock_start = start;
    op.lock_end = end;
    op.lock_flock = flock;
    return fs.Do(op);
  };
  auto conflict = [&](uint64_t owner, uint32_t type, uint64_t start, uint64_t end, bool flock) {
    FsLock want{"n1", owner, 0, type, start, end, flock};
    return *FsFindConflict(&fs.store, f.ino, want);
  };
  REQUIRE(lock("n1", 1, F_RDLCK, 0, 99).ok());
  CHECK(lock("n1", 2, F_RDLCK, 50, 150).ok());                         // readers share
  CHECK(lock("n1", 2, F_WRLCK, 50, 60).code() == Code::kUnavailable);  // EAGAIN
  CHECK(lock("n2", 3, F_WRLCK, 100, 200).code() == Code::kUnavailable);
  CHECK(lock("n2", 3, F_WRLCK, 151, 200).ok());
  // The same owner never conflicts with itself: upgrade in place.
  CHECK(lock("n1", 1, F_WRLCK, 0, 10).ok());
  // Unlocking the middle of a range splits it: 50..60 becomes free for owner 1's range only.
  CHECK(lock("n1", 2, F_UNLCK, 0, UINT64_MAX).ok());
  CHECK(lock("n1", 1, F_UNLCK, 20, 30).ok());
  CHECK(!conflict(9, F_WRLCK, 20, 30, false).has_value());
  REQUIRE(conflict(9, F_WRLCK, 31, 31, false).has_value());
  CHECK(conflict(9, F_WRLCK, 31, 31, false)->owner == 1);
  // flock is a namespace of its own.
  CHECK(lock("n1", 5, F_WRLCK, 0, 0, true).ok());
  CHECK(lock("n1", 6, F_RDLCK, 0, 0, true).code() == Code::kUnavailable);
  // Closing drops the owner's POSIX locks; a node restart drops all of its locks.
  FsOp close = fs.Op(FsOpType::kUnlockOwner);
  close.ino = f.ino;
  close.node = "n1";
  close.lock_owner = 1;
  REQUIRE(fs.Do(close).ok());
  CHECK(!conflict(9, F_WRLCK, 0, 99, false).has_value());
  CHECK(conflict(9, F_WRLCK, 0, UINT64_MAX, false).has_value());  // n2's 151..200
  FsOp gone = fs.Op(FsOpType::kReleaseNode);
  gone.node = "n2";
  REQUIRE(fs.Do(gone).ok());
  CHECK(!conflict(9, F_WRLCK, 0, UINT64_MAX, false).has_value());
  CHECK(conflict(9, F_RDLCK, 0, 0, true).has_value());  // n1's flock stays
}

}  // namespace constellation
