#define FUSE_USE_VERSION 312
#include "fsd/cluster_fs.h"

#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <linux/falloc.h>
#include <sys/xattr.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <unordered_set>

#include "node/base/log.h"
#include "node/base/thread_name.h"
#include "node/dfs/chunk.h"

namespace constellation {
namespace {

constexpr uint64_t kWindow = kMaxChunkBytes;  // dirty buffers and chunks are cut at 4 MiB
// Sealed windows queued for the background threads, over all files (64 MiB per file by default).
constexpr size_t kMaxQueuedWindows = 32;
// Sealed windows stored but not committed, per file: past this a write commits them (one SetContent
// per 1 GiB of a long sequential write), so no chunk waits long for the metadata that references
// it.
constexpr size_t kMaxSealedPerFile = 256;
constexpr size_t kMaxPooledWindows = 16;  // idle window buffers kept (64 MiB)
constexpr size_t kMaxQueuedInvalidations = 65536;
constexpr size_t kMaxTrackedInodes = 65536;
// A write into committed data that does not cover its window keeps only the bytes written
// (sparse), instead of loading and later rewriting the whole 4 MiB window; the flush stores the
// ranges of all sparse windows packed into shared chunks. Past these bounds a sparse window is
// loaded into a full buffer.
constexpr size_t kMaxSparseRanges = 256;
constexpr size_t kMaxSparseBytes = 1u << 20;
// A window whose committed extents number more than this after a flush is rewritten as one chunk,
// so random writes cannot fragment a file without bound.
constexpr size_t kMaxExtentsPerWindow = 64;

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

timespec ToTimespec(int64_t ns) {
  timespec ts;
  ts.tv_sec = ns / 1000000000;
  ts.tv_nsec = ns % 1000000000;
  if (ts.tv_nsec < 0) {
    ts.tv_nsec += 1000000000;
    ts.tv_sec -= 1;
  }
  return ts;
}

int64_t FromTimespec(const timespec& ts) {
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Ops that create or change an inode return it (FsMeta's contract).
const Inode& MustInode(const FsResult& r) {
  CN_CHECK(r.inode.has_value()) << "an fs op returned no inode";
  return r.inode.value();
}

// A new file's content is empty: no extents yet.
Result<ExtentList> ExtentsOf(const Inode& i) {
  if (i.content.empty()) return ExtentList{};
  return DecodeExtents(i.content);
}

}  // namespace

// A window's bytes in memory: a kWindow buffer, of which the first `len` bytes are the window's
// content from its start (bytes past `len` are garbage, never read).
//
// A sparse window instead holds no buffer, only the byte ranges written since the last flush,
// over the committed content.
struct ClusterFs::Window {
  std::unique_ptr<char[], WindowFree> data;
  size_t len = 0;
  bool sparse = false;
  std::map<uint32_t, std::string> ranges;  // sparse: offset → bytes; disjoint, never adjacent
  size_t sparse_bytes = 0;
};

// A full window handed to a background thread, which stores its chunk and makes it durable.
struct ClusterFs::Sealed {
  Window bytes;       // read-only while !done; released once the chunk is durable
  uint32_t len = 0;   // the chunk's length
  bool done = false;  // guarded by File::mu, as are the fields below
  Status status;      // of the background Put and Sync; on failure `bytes` are kept
  ChunkId id;
};

// The open or dirty state of one inode on this node.
struct ClusterFs::File {
  std::mutex mu;               // guards everything below
  std::condition_variable cv;  // with mu: a sealed window's background store finished
  // Counted up under ClusterFs::mu_ (see Open), down under `mu`.
  std::atomic<uint64_t> opens{0};
  bool open_ref = false;                               // the log holds this node's open reference
  std::optional<Inode> base;                           // the committed inode, as last seen here
  std::map<uint64_t, Window> dirty;                    // window index → buffered bytes
  std::map<uint64_t, std::shared_ptr<Sealed>> sealed;  // window index → stored in the background
  size_t inflight = 0;                                 // sealed windows not done
  size_t memory_bytes = 0;  // bytes held: dirty windows and sealed ones still holding bytes
  uint64_t size = 0;        // logical size, buffered data included (valid when Unflushed)
  int64_t mtime_ns = 0;     // time of the last write (valid when Unflushed)
  uint32_t writer_uid = 0;
  // Another node changed the inode: `base` must be read again (set without `mu`, by the applier).
  std::atomic<bool> base_stale{false};

  // Writes since the last flush: the committed inode is not the whole truth.
  bool unflushed() const { return !dirty.empty() || !sealed.empty(); }
};

ClusterFs::ClusterFs(ClusterFsOptions options) : options_(std::move(options)) {
  for (int i = 0; i < options_.background_threads; ++i) {
    bg_threads_.emplace_back([this] {
      SetThreadName("cn-fs-store");
      BackgroundLoop();
    });
  }
  inval_thread_ = std::thread([this] {
    SetThreadName("cn-fs-inval");
    InvalidateLoop();
  });
}

ClusterFs::~ClusterFs() {
  {
    std::lock_guard<std::mutex> l(bg_mu_);
    bg_stop_ = true;
  }
  bg_cv_.notify_all();
  for (std::thread& t : bg_threads_) t.join();
  {
    std::lock_guard<std::mutex> l(inval_mu_);
    inval_stop_ = true;
  }
  inval_cv_.notify_all();
  inval_thread_.join();
}

void ClusterFs::SetInvalidator(Invalidator invalidator) {
  // Waits for a call in progress: after this returns the old invalidator is never called again.
  std::lock_guard<std::mutex> cl(inval_call_mu_);
  std::lock_guard<std::mutex> l(inval_mu_);
  invalidator_ = std::move(invalidator);
}

bool ClusterFs::KeepCache(uint64_t ino) {
  std::lock_guard<std::mutex> l(mu_);
  if (kernel_cached_.count(ino) > 0) return true;
  if (kernel_cached_.size() >= kMaxTrackedInodes) return false;
  kernel_cached_.insert(ino);
  return true;
}

void ClusterFs::OnFsChanges(const std::vector<FsChange>& changes, bool reset) {
  std::vector<std::pair<uint64_t, std::string>> todo;
  auto inode = [&](uint64_t ino) {
    if (ino != 0) todo.emplace_back(ino, "");
  };
  auto entry = [&](uint64_t parent, const std::string& name) {
    if (parent != 0 && !name.empty()) todo.emplace_back(parent, name);
  };
  bool locks_changed = reset;
  for (const FsChange& c : changes) {
    if (c.node == options_.node_name) continue;  // this kernel saw it happen
    const FsOp& op = c.op;
    locks_changed = locks_changed || op.type == FsOpType::kLock ||
                    op.type == FsOpType::kUnlockOwner || op.type == FsOpType::kReleaseNode;
    inode(op.ino);
    if (c.result.inode) inode(c.result.inode->ino);
    switch (op.type) {
      case FsOpType::kMknod:
      case FsOpType::kMkdir:
      case FsOpType::kSymlink:
      case FsOpType::kLink:
      case FsOpType::kUnlink:
      case FsOpType::kRmdir:
        inode(op.parent);
        entry(op.parent, op.name);
        break;
      case FsOpType::kRename:
        inode(op.parent);
        inode(op.new_parent);
        entry(op.parent, op.name);
        entry(op.new_parent, op.new_name);
        break;
      default:
        break;
    }
  }
  // Only the invalidation thread takes mu_: the applier must not wait for a lock that a thread
  // waiting for this very commit may hold (Open holds mu_ while it waits for a file's lock).
  if (reset) todo.emplace_back(0, "");
  if (todo.empty() && !locks_changed) return;
  {
    std::lock_guard<std::mutex> il(inval_mu_);
    remote_locks_changed_ = remote_locks_changed_ || locks_changed;
    for (auto& t : todo) {
      if (inval_queue_.size() >= kMaxQueuedInvalidations) {
        ++inval_dropped_;
        continue;
      }
      inval_queue_.push_back(std::move(t));
    }
  }
  inval_cv_.notify_one();
}

void ClusterFs::InvalidateLoop() {
  uint64_t dropped_logged = 0;
  for (;;) {
    std::pair<uint64_t, std::string> item;
    Invalidator inv;
    bool locks_changed;
    {
      std::unique_lock<std::mutex> l(inval_mu_);
      inval_cv_.wait(l,
                     [&] { return inval_stop_ || !inval_queue_.empty() || remote_locks_changed_; });
      if (inval_stop_) return;
      locks_changed = remote_locks_changed_;
      remote_locks_changed_ = false;
      if (!locks_changed) {
        item = std::move(inval_queue_.front());
        inval_queue_.pop_front();
      }
      inv = invalidator_;
      if (inval_dropped_ != dropped_logged) {
        CN_LOG(Warning) << "kernel cache invalidations dropped (queue full): "
                        << inval_dropped_ - dropped_logged;
        dropped_logged = inval_dropped_;
      }
    }
    if (locks_changed) {  // the queued invalidations follow at the next rounds
      std::lock_guard<std::mutex> l(mu_);
      ++lock_generation_;
      lock_changed_.notify_all();
      continue;
    }
    // The in-memory committed inodes first, then the kernel's caches.
    std::vector<uint64_t> inodes;
    if (item.second.empty()) {
      std::lock_guard<std::mutex> l(mu_);
      if (item.first == 0) {  // a snapshot replaced the state: everything may be stale
        for (const auto& [ino, f] : files_) f->base_stale = true;
        inodes.assign(kernel_cached_.begin(), kernel_cached_.end());
      } else {
        auto it = files_.find(item.first);
        if (it != files_.end()) it->second->base_stale = true;
        inodes.push_back(item.first);
      }
    }
    // Outside inval_mu_ and mu_: the kernel may wait for requests in flight on the inode.
    std::lock_guard<std::mutex> cl(inval_call_mu_);
    {
      std::lock_guard<std::mutex> l(inval_mu_);
      inv = invalidator_;  // SetInvalidator may have replaced it meanwhile
    }
    if (!item.second.empty()) {
      if (inv.entry) inv.entry(item.first, item.second);
    } else if (inv.inode) {
      for (uint64_t ino : inodes) inv.inode(ino);
    }
  }
}

ClusterFs::Window ClusterFs::NewWindow() {
  Window w;
  {
    std::lock_guard<std::mutex> l(pool_mu_);
    if (!pool_.empty()) {
      w.data = std::move(pool_.back());
      pool_.pop_back();
      return w;
    }
  }
  // Not zeroed: only bytes below `len` are ever read. Aligned for O_DIRECT chunk writes.
  w.data.reset(static_cast<char*>(std::aligned_alloc(4096, kWindow)));
  CN_CHECK(w.data) << "out of memory for a write buffer";
  return w;
}

void ClusterFs::Recycle(Window* w) {
  if (!w->data) return;
  std::lock_guard<std::mutex> l(pool_mu_);
  if (pool_.size() < kMaxPooledWindows) pool_.push_back(std::move(w->data));
  w->data.reset();
  w->len = 0;
}

bool ClusterFs::Seal(const std::shared_ptr<File>& f, uint64_t window) {
  auto it = f->dirty.find(window);
  CN_CHECK(it != f->dirty.end() && it->second.len == kWindow) << "sealing a window not full";
  if (options_.background_threads <= 0 || f->sealed.size() >= kMaxSealedPerFile) return false;
  auto sealed = std::make_shared<Sealed>();
  {
    std::lock_guard<std::mutex> l(bg_mu_);
    if (bg_queue_.size() >= kMaxQueuedWindows) return false;
    sealed->bytes = std::move(it->second);
    sealed->len = static_cast<uint32_t>(kWindow);
    bg_queue_.push_back(Task{f, sealed});
  }
  bg_cv_.notify_one();
  f->dirty.erase(it);
  f->sealed[window] = std::move(sealed);
  f->inflight++;
  return true;
}

void ClusterFs::BackgroundLoop() {
  for (;;) {
    Task t;
    {
      std::unique_lock<std::mutex> l(bg_mu_);
      bg_cv_.wait(l, [&] { return bg_stop_ || !bg_queue_.empty(); });
      if (bg_stop_) return;
      t = std::move(bg_queue_.front());
      bg_queue_.pop_front();
    }
    Sealed* s = t.sealed.get();
    // `bytes` stay unchanged until `done` is set under the file's lock.
    Result<ChunkId> id = options_.chunks->Put(std::string_view(s->bytes.data.get(), s->len));
    Status status = id.status();
    if (status.ok()) status = options_.chunks->Sync(std::span<const ChunkId>(&*id, 1));
    std::lock_guard<std::mutex> l(t.file->mu);
    s->done = true;
    s->status = status;
    if (status.ok()) {
      s->id = *id;
      t.file->memory_bytes -= s->len;
      Recycle(&s->bytes);
    } else {
      CN_LOG(Warning) << "background store of a chunk: " << status.ToString();
    }
    t.file->inflight--;
    t.file->cv.notify_all();
  }
}

Status ClusterFs::Unseal(File* f, std::unique_lock<std::mutex>& l, uint64_t first, uint64_t last) {
  auto touches = [&] {
    auto it = f->sealed.lower_bound(first);
    return it != f->sealed.end() && it->first <= last;
  };
  if (!touches()) return Status::Ok();
  f->cv.wait(l, [&] { return f->inflight == 0; });
  for (auto it = f->sealed.lower_bound(first); it != f->sealed.end() && it->first <= last;) {
    Sealed* s = it->second.get();
    Window w;
    if (s->bytes.data) {  // its store failed: the bytes are still here
      w = std::move(s->bytes);
    } else {
      w = NewWindow();
      CN_ASSIGN_OR_RETURN(size_t n, options_.chunks->Read(s->id, 0, s->len, w.data.get()));
      if (n != s->len) {
        Recycle(&w);
        return Status::Corruption("short chunk read");
      }
      w.len = s->len;
      f->memory_bytes += w.len;
    }
    f->dirty[it->first] = std::move(w);
    it = f->sealed.erase(it);
  }
  return Status::Ok();
}

Command ClusterFs::FsCommand(FsOp* op, const Caller& c) {
  if (op->time_ns == 0) op->time_ns = NowNs();
  op->uid = c.uid;
  op->gid = c.gid;
  Command cmd;
  cmd.type = CommandType::kFs;
  cmd.uid = c.uid;
  cmd.gid = c.gid;
  cmd.pid = c.pid;
  cmd.value = EncodeFsOp(*op);
  return cmd;
}

Result<FsResult> ClusterFs::Propose(FsOp op, const Caller& c) {
  std::string result;
  // Durable at fsync/close (Flush, SyncMetadata), as POSIX and ext4 have it: on a one-node
  // cluster the answer does not wait for the disk sync (node/state/replica.h, Durability).
  CN_RETURN_IF_ERROR(options_.replica->Propose(FsCommand(&op, c), &result, Durability::kDeferred));
  return DecodeFsResult(result);
}

Status ClusterFs::Start() {
  Caller root;
  FsOp init;
  init.type = FsOpType::kInit;
  CN_RETURN_IF_ERROR(Propose(init, root).status());
  FsOp release;
  release.type = FsOpType::kReleaseNode;
  release.node = options_.node_name;
  return Propose(release, root).status();
}

std::shared_ptr<ClusterFs::File> ClusterFs::GetFile(uint64_t ino, bool create) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = files_.find(ino);
  if (it != files_.end()) return it->second;
  if (!create) return nullptr;
  auto f = std::make_shared<File>();
  files_[ino] = f;
  return f;
}

struct stat ClusterFs::ToStat(const Inode& i, const File* f) {
  struct stat st;
  std::memset(&st, 0, sizeof st);
  st.st_ino = i.ino;
  st.st_mode = i.mode;
  st.st_nlink = i.nlink;
  st.st_uid = i.uid;
  st.st_gid = i.gid;
  st.st_rdev = i.rdev;
  st.st_size = static_cast<off_t>(i.size);
  st.st_blksize = 4096;
  st.st_atim = ToTimespec(i.atime_ns);
  st.st_mtim = ToTimespec(i.mtime_ns);
  st.st_ctim = ToTimespec(i.ctime_ns);
  uint64_t allocated = 0;
  if (S_ISREG(i.mode) && !i.content.empty()) {
    Result<ExtentList> ext = DecodeExtents(i.content);
    if (ext.ok()) {
      for (const Extent& e : *ext) allocated += e.length;
    }
  } else if (S_ISDIR(i.mode) || S_ISLNK(i.mode)) {
    allocated = 4096;
  }
  if (f != nullptr && f->unflushed()) {
    st.st_size = static_cast<off_t>(f->size);
    st.st_mtim = st.st_ctim = ToTimespec(f->mtime_ns);
    allocated += f->memory_bytes + f->sealed.size() * kWindow;
  }
  st.st_blocks = static_cast<blkcnt_t>((allocated + 511) / 512);
  return st;
}

Result<struct stat> ClusterFs::GetAttr(uint64_t ino) {
  std::shared_ptr<File> f = GetFile(ino, false);
  if (f) {
    std::lock_guard<std::mutex> l(f->mu);
    if (f->unflushed()) {
      // Buffered writes decide size and mtime; the rest comes from the committed inode.
      CN_RETURN_IF_ERROR(LoadBase(f.get(), ino));
      return ToStat(*f->base, f.get());
    }
  }
  CN_ASSIGN_OR_RETURN(Inode i, FsGetInode(options_.kv, ino));
  return ToStat(i, nullptr);
}

Result<struct stat> ClusterFs::Lookup(uint64_t parent, std::string_view name) {
  if (name.size() > kMaxFsNameBytes) return Status(Code::kNameTooLong, "name too long");
  Result<uint64_t> ino = FsLookup(options_.kv, parent, name);
  if (ino.status().code() == Code::kNotFound) {
    // Made on another node and committed, but maybe not applied here yet: a miss waits for this
    // node to apply what the leader had committed (free on a cluster's only voter).
    CN_RETURN_IF_ERROR(options_.replica->ReadBarrier());
    ino = FsLookup(options_.kv, parent, name);
  }
  CN_RETURN_IF_ERROR(ino.status());
  return GetAttr(*ino);
}

Status ClusterFs::LoadBase(File* f, uint64_t ino) {
  if (f->base && !f->base_stale.exchange(false)) return Status::Ok();
  Result<Inode> i = FsGetInode(options_.kv, ino);
  if (!i.ok()) {
    if (f->base) f->base_stale = true;  // still stale: the next call tries again
    return i.status();
  }
  f->base = std::move(i).value();
  return Status::Ok();
}

Result<struct stat> ClusterFs::SetAttr(uint64_t ino, int to_set, const struct stat& st,
                                       const Caller& c) {
  FsOp op;
  op.type = FsOpType::kSetAttr;
  op.ino = ino;
  uint32_t mask = 0;
  if (to_set & FUSE_SET_ATTR_MODE) {
    mask |= kAttrMode;
    op.mode = st.st_mode;
  }
  if (to_set & FUSE_SET_ATTR_UID) {
    mask |= kAttrUid;
    op.attr_uid = st.st_uid;
  }
  if (to_set & FUSE_SET_ATTR_GID) {
    mask |= kAttrGid;
    op.attr_gid = st.st_gid;
  }
  if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
    mask |= kAttrAtimeNow;
  } else if (to_set & FUSE_SET_ATTR_ATIME) {
    mask |= kAttrAtime;
    op.atime_ns = FromTimespec(st.st_atim);
  }
  if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
    mask |= kAttrMtimeNow;
  } else if (to_set & FUSE_SET_ATTR_MTIME) {
    mask |= kAttrMtime;
    op.mtime_ns = FromTimespec(st.st_mtim);
  }
  // Buffered writes are committed first, so their size and mtime cannot overwrite what this
  // setattr sets (utimensat after write, truncate after write).
  std::shared_ptr<File> f = GetFile(ino, (to_set & FUSE_SET_ATTR_SIZE) != 0);
  std::unique_lock<std::mutex> l;
  if (f) {
    l = std::unique_lock<std::mutex>(f->mu);
    CN_RETURN_IF_ERROR(FlushLocked(f.get(), l, ino, c));
  }
  if (to_set & FUSE_SET_ATTR_SIZE) {
    // Truncation: cut the extent list in the same op as the size.
    CN_RETURN_IF_ERROR(LoadBase(f.get(), ino));
    if (!S_ISREG(f->base->mode)) {
      return S_ISDIR(f->base->mode) ? Status(Code::kIsDirectory, "is a directory")
                                    : Status::InvalidArgument("not a regular file");
    }
    uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size > kMaxFsFileBytes) return Status::TooLarge("file too large");
    CN_ASSIGN_OR_RETURN(ExtentList ext, ExtentsOf(*f->base));
    CN_RETURN_IF_ERROR(TruncateExtents(&ext, size));
    mask |= kAttrSize;
    op.size = size;
    op.value = EncodeExtents(ext);
  }
  op.flags = mask;
  Result<FsResult> r = Propose(op, c);
  if (!r.ok()) {
    if (f) f->base.reset();
    return r.status();
  }
  if (!f) return ToStat(MustInode(*r), nullptr);
  f->base = MustInode(*r);
  return ToStat(MustInode(*r), f.get());
}

Result<struct stat> ClusterFs::Make(FsOpType type, uint64_t parent, std::string_view name,
                                    mode_t mode, dev_t rdev, std::string_view target,
                                    const Caller& c) {
  FsOp op;
  op.type = type;
  op.parent = parent;
  op.name = std::string(name);
  op.mode = mode;
  op.rdev = rdev;
  op.value = std::string(target);
  CN_ASSIGN_OR_RETURN(FsResult r, Propose(op, c));
  return ToStat(MustInode(r), nullptr);
}

Result<struct stat> ClusterFs::Link(uint64_t ino, uint64_t parent, std::string_view name,
                                    const Caller& c) {
  FsOp op;
  op.type = FsOpType::kLink;
  op.ino = ino;
  op.parent = parent;
  op.name = std::string(name);
  CN_ASSIGN_OR_RETURN(FsResult r, Propose(op, c));
  std::shared_ptr<File> f = GetFile(ino, false);
  if (f) {
    std::lock_guard<std::mutex> l(f->mu);
    f->base = MustInode(r);
    return ToStat(MustInode(r), f.get());
  }
  return ToStat(MustInode(r), nullptr);
}

Status ClusterFs::Remove(FsOpType type, uint64_t parent, std::string_view name, const Caller& c) {
  FsOp op;
  op.type = type;
  op.parent = parent;
  op.name = std::string(name);
  // A file or directory this node holds open stays after its last link goes (open-unlinked).
  std::shared_ptr<File> f;
  uint64_t target = 0;
  Result<uint64_t> ino = FsLookup(options_.kv, parent, name);
  if (ino.ok()) {
    target = *ino;
    f = GetFile(target, false);
  }
  std::unique_lock<std::mutex> l;
  if (f) {
    l = std::unique_lock<std::mutex>(f->mu);
    if (f->opens > 0) {
      op.ino = target;
      op.node = options_.node_name;
    }
  }
  Result<FsResult> r = Propose(op, c);
  if (!r.ok()) return r.status();
  if (f) {
    if (op.ino != 0) f->open_ref = true;
    f->base.reset();  // nlink changed
  }
  return Status::Ok();
}

void ClusterFs::RemoveAsync(FsOpType type, uint64_t parent, std::string_view name, const Caller& c,
                            std::function<void(Status)> done) {
  Result<uint64_t> ino = FsLookup(options_.kv, parent, name);
  if (ino.ok() && GetFile(*ino, false)) {
    done(Remove(type, parent, name, c));
    return;
  }
  // Not in the file table: nothing of this node keeps the inode, as in Remove without a File.
  FsOp op;
  op.type = type;
  op.parent = parent;
  op.name = std::string(name);
  options_.replica->ProposeAsync(FsCommand(&op, c), Durability::kDeferred,
                                 [done = std::move(done)](Status verdict, std::string result) {
                                   if (verdict.ok()) verdict = DecodeFsResult(result).status();
                                   done(verdict);
                                 });
}

Status ClusterFs::Rename(uint64_t parent, std::string_view name, uint64_t new_parent,
                         std::string_view new_name, unsigned flags, const Caller& c) {
  FsOp op;
  op.type = FsOpType::kRename;
  op.parent = parent;
  op.name = std::string(name);
  op.new_parent = new_parent;
  op.new_name = std::string(new_name);
  op.flags = 0;
  if (flags & RENAME_NOREPLACE) op.flags |= kRenameNoReplace;
  if (flags & RENAME_EXCHANGE) op.flags |= kRenameExchange;
  if (flags & ~static_cast<unsigned>(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
    return Status::InvalidArgument("unsupported rename flags");
  }
  std::shared_ptr<File> victim;
  Result<uint64_t> dst = FsLookup(options_.kv, new_parent, new_name);
  if (dst.ok()) victim = GetFile(*dst, false);
  std::unique_lock<std::mutex> l;
  if (victim) {
    l = std::unique_lock<std::mutex>(victim->mu);
    if (victim->opens > 0 && !(flags & RENAME_EXCHANGE)) {
      op.ino = *dst;
      op.node = options_.node_name;
    }
  }
  Result<FsResult> r = Propose(op, c);
  if (!r.ok()) return r.status();
  if (victim) {
    if (op.ino != 0) victim->open_ref = true;
    victim->base.reset();
  }
  if (r->inode) {
    std::shared_ptr<File> moved = GetFile(r->inode->ino, false);
    if (moved && moved != victim) {
      std::lock_guard<std::mutex> ml(moved->mu);
      moved->base.reset();
    }
  }
  return Status::Ok();
}

Result<std::string> ClusterFs::ReadLink(uint64_t ino) {
  CN_ASSIGN_OR_RETURN(Inode i, FsGetInode(options_.kv, ino));
  if (!S_ISLNK(i.mode)) return Status::InvalidArgument("not a symlink");
  return i.symlink;
}

Status ClusterFs::Open(uint64_t ino) {
  std::shared_ptr<File> f;
  {
    // Count the open while holding the map's lock: Release erases a File whose count is 0 under
    // that lock, so counting after GetFile returned could count on an erased File, and an unlink
    // would then not see the file as open (its data would go while the fd still reads it).
    // Not under f->mu: that may be held across a commit, and mu_ must never wait for one.
    std::lock_guard<std::mutex> l(mu_);
    std::shared_ptr<File>& slot = files_[ino];
    if (!slot) slot = std::make_shared<File>();
    f = slot;
    f->opens.fetch_add(1);
  }
  std::lock_guard<std::mutex> l(f->mu);
  Status s = LoadBase(f.get(), ino);
  if (!s.ok()) f->opens--;  // no release follows a failed open
  return s;
}

Status ClusterFs::Release(uint64_t ino, const Caller& c) {
  std::shared_ptr<File> f = GetFile(ino, false);
  if (!f) return Status::Ok();
  Status s;
  bool drop = false;
  {
    std::unique_lock<std::mutex> l(f->mu);
    s = FlushLocked(f.get(), l, ino, c);
    if (f->opens > 0) f->opens--;
    if (f->opens == 0) {
      if (f->open_ref) {
        FsOp op;
        op.type = FsOpType::kRelease;
        op.ino = ino;
        op.node = options_.node_name;
        Status rs = Propose(op, Caller{}).status();
        if (!rs.ok()) CN_LOG(Warning) << "release of inode " << ino << ": " << rs.ToString();
        f->open_ref = false;
      }
      drop = !f->unflushed();
    }
  }
  if (drop) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = files_.find(ino);
    if (it != files_.end() && it->second == f) {
      // Never wait for f->mu under mu_ (it may be held across a commit): a file busy now is
      // dropped at a later release.
      std::unique_lock<std::mutex> fl(f->mu, std::try_to_lock);
      if (fl.owns_lock() && f->opens == 0 && !f->unflushed()) files_.erase(it);
    }
  }
  return s;
}

Result<std::shared_ptr<const ChunkBytes>> ClusterFs::CommittedChunk(const ReadPiece& p) {
  Result<std::shared_ptr<const ChunkBytes>> chunk = options_.chunks->ReadChunk(p.chunk.id);
  // A chunk the metadata references but the store lacks (quarantined, deleted) is damage, EIO.
  if (chunk.status().code() == Code::kNotFound) {
    return Status::Corruption("chunk " + p.chunk.id.Hex() + " is missing");
  }
  CN_RETURN_IF_ERROR(chunk.status());
  if (p.chunk_offset + p.length > (*chunk)->size()) return Status::Corruption("short chunk read");
  return chunk;
}

Status ClusterFs::ReadCommitted(const Inode& i, uint64_t offset, size_t size, char* out) {
  CN_CHECK(offset + size <= i.size) << "committed read past EOF";
  std::memset(out, 0, size);  // holes
  if (size == 0 || i.content.empty()) return Status::Ok();
  CN_ASSIGN_OR_RETURN(ExtentList ext, ExtentsOf(i));
  CN_ASSIGN_OR_RETURN(std::vector<ReadPiece> pieces, MapRange(ext, offset, size));
  for (const ReadPiece& p : pieces) {
    if (p.hole) continue;
    CN_ASSIGN_OR_RETURN(std::shared_ptr<const ChunkBytes> chunk, CommittedChunk(p));
    std::memcpy(out + (p.file_offset - offset), chunk->view().data() + p.chunk_offset, p.length);
  }
  MaybePrefetch(ext, i.size, offset, size);
  return Status::Ok();
}

void ClusterFs::MaybePrefetch(const ExtentList& ext, uint64_t file_size, uint64_t offset,
                              size_t size) {
  // Chunk files are separate files, so the kernel's readahead stops at each one. A read that
  // crosses the quarter mark of its window asks for the next window's chunk, which then has
  // three quarters of a window's reading (some milliseconds) to be read and verified. A random
  // reader crosses that mark rarely (once per window's worth of reads).
  constexpr uint64_t kPrefetchAt = kWindow / 4;
  uint64_t end = offset + size;
  uint64_t next = (end / kWindow + 1) * kWindow;
  if (end % kWindow >= kPrefetchAt &&
      (offset / kWindow != end / kWindow || offset % kWindow < kPrefetchAt) && next < file_size) {
    Result<std::vector<ReadPiece>> ahead = MapRange(ext, next, 1);
    if (ahead.ok() && !ahead->empty() && !ahead->front().hole) {
      options_.chunks->Prefetch(ahead->front().chunk.id);
    }
  }
}

Result<ClusterFs::ReadBytes> ClusterFs::Read(uint64_t ino, uint64_t offset, size_t size) {
  std::shared_ptr<File> f = GetFile(ino, true);
  std::lock_guard<std::mutex> l(f->mu);
  CN_RETURN_IF_ERROR(LoadBase(f.get(), ino));
  const Inode& base = *f->base;
  uint64_t eof = f->unflushed() ? f->size : base.size;
  ReadBytes got;
  if (offset >= eof) return got;
  size = static_cast<size_t>(std::min<uint64_t>(size, eof - offset));
  if (!f->unflushed() && !base.content.empty()) {
    // Nothing buffered: a read inside one stored chunk is answered from the cached chunk itself.
    CN_ASSIGN_OR_RETURN(ExtentList ext, ExtentsOf(base));
    CN_ASSIGN_OR_RETURN(std::vector<ReadPiece> pieces, MapRange(ext, offset, size));
    if (pieces.size() == 1 && !pieces[0].hole) {
      const ReadPiece& p = pieces[0];
      CN_ASSIGN_OR_RETURN(got.chunk, CommittedChunk(p));
      MaybePrefetch(ext, base.size, offset, size);
      got.offset = p.chunk_offset;
      got.length = static_cast<size_t>(p.length);
      return got;
    }
  }
  got.owned.assign(size, '\0');
  std::string& out = got.owned;
  uint64_t pos = offset;
  while (pos < offset + size) {
    uint64_t window = pos / kWindow;
    uint64_t window_end = std::min<uint64_t>((window + 1) * kWindow, offset + size);
    char* dst = out.data() + (pos - offset);
    uint64_t in = pos - window * kWindow;
    size_t n = static_cast<size_t>(window_end - pos);
    auto d = f->dirty.find(window);
    auto sl = f->sealed.find(window);
    if (d != f->dirty.end() && d->second.sparse) {
      if (pos < base.size) {
        size_t have = static_cast<size_t>(std::min<uint64_t>(n, base.size - pos));
        CN_RETURN_IF_ERROR(ReadCommitted(base, pos, have, dst));
      }
      const std::map<uint32_t, std::string>& ranges = d->second.ranges;
      auto r = ranges.upper_bound(static_cast<uint32_t>(in));
      if (r != ranges.begin()) --r;
      for (; r != ranges.end() && r->first < in + n; ++r) {
        uint64_t from = std::max<uint64_t>(r->first, in);
        uint64_t to = std::min<uint64_t>(r->first + r->second.size(), in + n);
        if (from < to)
          std::memcpy(dst + (from - in), r->second.data() + (from - r->first), to - from);
      }
    } else if (d != f->dirty.end()) {
      // Bytes past the window's buffered length and before EOF are a hole written over later.
      if (in < d->second.len) {
        std::memcpy(dst, d->second.data.get() + in, std::min<uint64_t>(d->second.len - in, n));
      }
    } else if (sl != f->sealed.end()) {
      const Sealed& sd = *sl->second;
      if (sd.bytes.data) {
        std::memcpy(dst, sd.bytes.data.get() + in, n);
      } else {
        CN_ASSIGN_OR_RETURN(size_t got, options_.chunks->Read(sd.id, in, n, dst));
        if (got != n) return Status::Corruption("short chunk read");
      }
    } else if (pos < base.size) {
      size_t have = static_cast<size_t>(std::min<uint64_t>(n, base.size - pos));
      CN_RETURN_IF_ERROR(ReadCommitted(base, pos, have, dst));
    }
    pos = window_end;
  }
  return got;
}

void ClusterFs::AddRange(Window* w, uint32_t in, std::string_view bytes, size_t* memory_bytes) {
  uint64_t start = in;
  uint64_t end = in + bytes.size();
  // Ranges that overlap or touch [start, end) merge with it into one.
  auto first = w->ranges.upper_bound(in);
  if (first != w->ranges.begin()) {
    auto prev = std::prev(first);
    if (prev->first + prev->second.size() >= start) first = prev;
  }
  auto last = first;
  while (last != w->ranges.end() && last->first <= end) ++last;
  if (first != last) {
    start = std::min<uint64_t>(start, first->first);
    auto back = std::prev(last);
    end = std::max<uint64_t>(end, back->first + back->second.size());
  }
  std::string merged(end - start, '\0');
  for (auto it = first; it != last; ++it) {
    std::memcpy(merged.data() + (it->first - start), it->second.data(), it->second.size());
    w->sparse_bytes -= it->second.size();
    *memory_bytes -= it->second.size();
  }
  std::memcpy(merged.data() + (in - start), bytes.data(), bytes.size());
  w->ranges.erase(first, last);
  w->sparse_bytes += merged.size();
  *memory_bytes += merged.size();
  w->ranges.emplace(static_cast<uint32_t>(start), std::move(merged));
}

Status ClusterFs::Densify(File* f, uint64_t window) {
  Window& w = f->dirty.at(window);
  uint64_t start = window * kWindow;
  uint64_t have = f->base->size > start ? std::min<uint64_t>(kWindow, f->base->size - start) : 0;
  Window full = NewWindow();
  Status s = ReadCommitted(*f->base, start, static_cast<size_t>(have), full.data.get());
  if (!s.ok()) {
    Recycle(&full);
    return s;  // the window stays sparse, which is still right
  }
  full.len = static_cast<size_t>(have);
  for (const auto& [in, bytes] : w.ranges) {
    if (full.len < in) std::memset(full.data.get() + full.len, 0, in - full.len);
    std::memcpy(full.data.get() + in, bytes.data(), bytes.size());
    full.len = std::max<size_t>(full.len, in + bytes.size());
  }
  f->memory_bytes = f->memory_bytes - w.sparse_bytes + full.len;
  w = std::move(full);
  return Status::Ok();
}

Status ClusterFs::Write(uint64_t ino, uint64_t offset, std::string_view data, const Caller& c) {
  if (offset + data.size() > kMaxFsFileBytes) return Status::TooLarge("file too large");
  if (data.empty()) return Status::Ok();
  std::shared_ptr<File> f = GetFile(ino, true);
  std::unique_lock<std::mutex> l(f->mu);
  CN_RETURN_IF_ERROR(LoadBase(f.get(), ino));
  if (!S_ISREG(f->base->mode)) return Status::InvalidArgument("not a regular file");
  if (f->memory_bytes + data.size() > options_.max_dirty_bytes_per_inode) {
    // Let the background stores catch up first: they free their windows' memory.
    f->cv.wait(l, [&] { return f->inflight == 0; });
    if (f->memory_bytes + data.size() > options_.max_dirty_bytes_per_inode) {
      CN_RETURN_IF_ERROR(FlushLocked(f.get(), l, ino, c));
    }
  }
  if (f->sealed.size() >= kMaxSealedPerFile) CN_RETURN_IF_ERROR(FlushLocked(f.get(), l, ino, c));
  uint64_t last = offset + data.size() - 1;
  CN_RETURN_IF_ERROR(Unseal(f.get(), l, offset / kWindow, last / kWindow));
  if (!f->unflushed()) f->size = f->base->size;
  uint64_t pos = offset;
  size_t done = 0;
  while (done < data.size()) {
    uint64_t window = pos / kWindow;
    uint64_t in = pos - window * kWindow;
    size_t n = static_cast<size_t>(std::min<uint64_t>(kWindow - in, data.size() - done));
    auto it = f->dirty.find(window);
    uint64_t start = window * kWindow;
    uint64_t have = f->base->size > start ? std::min<uint64_t>(kWindow, f->base->size - start) : 0;
    if (it == f->dirty.end()) {
      if (have > 0 && !(in == 0 && n >= have)) {
        // Into committed bytes it does not all cover: keep just the bytes written.
        it = f->dirty.emplace(window, Window{}).first;
        it->second.sparse = true;
      } else {
        // Past the committed bytes, or over all of them: a full buffer from the window's start.
        Window w = NewWindow();
        w.len = static_cast<size_t>(have);
        f->memory_bytes += w.len;
        it = f->dirty.emplace(window, std::move(w)).first;
      }
    }
    if (it->second.sparse) {
      Window& w = it->second;
      AddRange(&w, static_cast<uint32_t>(in), data.substr(done, n), &f->memory_bytes);
      if (w.ranges.size() > kMaxSparseRanges || w.sparse_bytes > kMaxSparseBytes) {
        CN_RETURN_IF_ERROR(Densify(f.get(), window));
      }
      done += n;
      pos += n;
      continue;
    }
    Window& w = it->second;
    if (w.len < in) std::memset(w.data.get() + w.len, 0, in - w.len);  // a hole in the window
    std::memcpy(w.data.get() + in, data.data() + done, n);
    if (w.len < in + n) {
      f->memory_bytes += in + n - w.len;
      w.len = in + n;
    }
    done += n;
    pos += n;
    // A writer that filled a window to its end has moved on: store it in the background.
    if (in + n == kWindow && w.len == kWindow) (void)Seal(f, window);
  }
  f->size = std::max<uint64_t>(f->size, offset + data.size());
  f->mtime_ns = NowNs();
  f->writer_uid = c.uid;
  return Status::Ok();
}

Status ClusterFs::FlushLocked(File* f, std::unique_lock<std::mutex>& l, uint64_t ino,
                              const Caller& c) {
  if (!f->unflushed()) return Status::Ok();
  f->cv.wait(l, [&] { return f->inflight == 0; });
  if (!f->unflushed()) return Status::Ok();  // another flush committed it meanwhile
  CN_RETURN_IF_ERROR(LoadBase(f, ino));
  CN_ASSIGN_OR_RETURN(ExtentList ext, ExtentsOf(*f->base));
  // A failed background store goes back to the dirty windows, to be stored again below.
  for (auto it = f->sealed.begin(); it != f->sealed.end();) {
    if (it->second->status.ok()) {
      ++it;
      continue;
    }
    f->dirty[it->first] = std::move(it->second->bytes);
    it = f->sealed.erase(it);
  }
  for (const auto& [window, sd] : f->sealed) {
    // Only a truncation shrinks the size, and it flushes first: sealed windows are inside.
    CN_CHECK((window + 1) * kWindow <= f->size) << "a sealed window past EOF";
    Extent e;
    e.file_offset = window * kWindow;
    e.length = sd->len;
    e.chunk = ChunkRef{sd->id, sd->len};
    CN_RETURN_IF_ERROR(OverwriteExtent(&ext, e));
  }
  std::vector<ChunkId> ids;
  std::vector<uint64_t> sparse_windows;
  // The ranges of sparse windows, packed into shared chunks: one store per 4 MiB of them.
  Window pack = NewWindow();
  std::vector<Extent> packed;  // chunk id filled in when the pack is stored
  auto store_pack = [&]() -> Status {
    if (pack.len == 0) return Status::Ok();
    CN_ASSIGN_OR_RETURN(ChunkId id,
                        options_.chunks->Put(std::string_view(pack.data.get(), pack.len)));
    for (Extent& e : packed) {
      e.chunk = ChunkRef{id, static_cast<uint32_t>(pack.len)};
      CN_RETURN_IF_ERROR(OverwriteExtent(&ext, e));
    }
    ids.push_back(id);
    packed.clear();
    pack.len = 0;
    return Status::Ok();
  };
  Status st = [&]() -> Status {
    for (auto& [window, w] : f->dirty) {
      uint64_t start = window * kWindow;
      if (start >= f->size) continue;  // cut off by a later truncate
      if (w.sparse) {
        sparse_windows.push_back(window);
        for (const auto& [in, bytes] : w.ranges) {
          if (start + in >= f->size) break;
          size_t len = static_cast<size_t>(std::min<uint64_t>(bytes.size(), f->size - start - in));
          if (pack.len + len > kWindow) CN_RETURN_IF_ERROR(store_pack());
          std::memcpy(pack.data.get() + pack.len, bytes.data(), len);
          Extent e;
          e.file_offset = start + in;
          e.length = len;
          e.chunk_offset = static_cast<uint32_t>(pack.len);
          packed.push_back(e);
          pack.len += len;
        }
        continue;
      }
      size_t len = static_cast<size_t>(std::min<uint64_t>(w.len, f->size - start));
      if (len == 0) continue;
      CN_ASSIGN_OR_RETURN(ChunkId id, options_.chunks->Put(std::string_view(w.data.get(), len)));
      Extent e;
      e.file_offset = start;
      e.length = len;
      e.chunk = ChunkRef{id, static_cast<uint32_t>(len)};
      CN_RETURN_IF_ERROR(OverwriteExtent(&ext, e));
      ids.push_back(id);
    }
    CN_RETURN_IF_ERROR(store_pack());
    // Windows fragmented by small writes become one chunk again (read back through the new
    // extents: the packs just stored are readable before they are durable).
    for (uint64_t window : sparse_windows) {
      uint64_t start = window * kWindow;
      uint64_t end = std::min<uint64_t>(start + kWindow, f->size);
      auto lo = std::lower_bound(ext.begin(), ext.end(), start,
                                 [](const Extent& e, uint64_t off) { return e.end() <= off; });
      size_t count = 0;
      for (auto it = lo; it != ext.end() && it->file_offset < end; ++it) ++count;
      if (count <= kMaxExtentsPerWindow) continue;
      pack.len = static_cast<size_t>(end - start);
      CN_ASSIGN_OR_RETURN(std::vector<ReadPiece> pieces, MapRange(ext, start, pack.len));
      std::memset(pack.data.get(), 0, pack.len);
      for (const ReadPiece& p : pieces) {
        if (p.hole) continue;
        CN_ASSIGN_OR_RETURN(size_t got,
                            options_.chunks->Read(p.chunk.id, p.chunk_offset, p.length,
                                                  pack.data.get() + (p.file_offset - start)));
        if (got != p.length) return Status::Corruption("short chunk read");
      }
      CN_ASSIGN_OR_RETURN(ChunkId id,
                          options_.chunks->Put(std::string_view(pack.data.get(), pack.len)));
      Extent e;
      e.file_offset = start;
      e.length = pack.len;
      e.chunk = ChunkRef{id, static_cast<uint32_t>(pack.len)};
      CN_RETURN_IF_ERROR(OverwriteExtent(&ext, e));
      ids.push_back(id);
      pack.len = 0;
    }
    return Status::Ok();
  }();
  Recycle(&pack);
  CN_RETURN_IF_ERROR(st);
  CN_RETURN_IF_ERROR(options_.chunks->Sync(ids));
  FsOp op;
  op.type = FsOpType::kSetContent;
  op.ino = ino;
  op.size = f->size;
  op.value = EncodeExtents(ext);
  op.time_ns = f->mtime_ns;
  Caller writer = c;
  writer.uid = f->writer_uid;
  CN_ASSIGN_OR_RETURN(FsResult r, Propose(op, writer));
  f->base = MustInode(r);
  for (auto& [window, w] : f->dirty) Recycle(&w);
  f->dirty.clear();
  f->sealed.clear();
  f->memory_bytes = 0;
  return Status::Ok();
}

Status ClusterFs::Flush(uint64_t ino, const Caller& c) {
  std::shared_ptr<File> f = GetFile(ino, false);
  if (f) {
    std::unique_lock<std::mutex> l(f->mu);
    CN_RETURN_IF_ERROR(FlushLocked(f.get(), l, ino, c));
  }
  return SyncMetadata();
}

Status ClusterFs::SyncMetadata() { return options_.replica->SyncBarrier(); }

Status ClusterFs::Fallocate(uint64_t ino, int mode, uint64_t offset, uint64_t length,
                            const Caller& c) {
  std::shared_ptr<File> f = GetFile(ino, true);
  std::unique_lock<std::mutex> l(f->mu);
  CN_RETURN_IF_ERROR(FlushLocked(f.get(), l, ino, c));
  CN_RETURN_IF_ERROR(LoadBase(f.get(), ino));
  if (!S_ISREG(f->base->mode)) return Status(Code::kNotSupported, "not a regular file");
  if (offset + length > kMaxFsFileBytes) return Status::TooLarge("file too large");
  FsOp op;
  op.type = FsOpType::kSetContent;
  op.ino = ino;
  op.size = f->base->size;
  if (mode == 0) {
    if (offset + length <= f->base->size) return Status::Ok();
    op.size = offset + length;
    op.value = f->base->content;
  } else if (mode == FALLOC_FL_KEEP_SIZE) {
    return Status::Ok();
  } else if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
    CN_ASSIGN_OR_RETURN(ExtentList ext, ExtentsOf(*f->base));
    CN_RETURN_IF_ERROR(PunchHole(&ext, offset, length));
    op.value = EncodeExtents(ext);
  } else {
    return Status::NotSupported("fallocate mode " + std::to_string(mode) + " is not supported");
  }
  CN_ASSIGN_OR_RETURN(FsResult r, Propose(op, c));
  f->base = MustInode(r);
  return Status::Ok();
}

Status ClusterFs::ReadDir(
    uint64_t ino, uint64_t offset,
    const std::function<bool(const std::string&, const struct stat&, uint64_t)>& fn) {
  CN_ASSIGN_OR_RETURN(Inode dir, FsGetInode(options_.kv, ino));
  if (!S_ISDIR(dir.mode)) return Status(Code::kNotDirectory, "not a directory");
  struct stat st;
  std::memset(&st, 0, sizeof st);
  st.st_mode = S_IFDIR;
  if (offset < 1) {
    st.st_ino = ino;
    if (!fn(".", st, 1)) return Status::Ok();
  }
  if (offset < 2) {
    st.st_ino = dir.parent_hint == 0 ? ino : dir.parent_hint;
    if (!fn("..", st, 2)) return Status::Ok();
  }
  Status inner;
  CN_RETURN_IF_ERROR(
      FsReadDir(options_.kv, ino, std::max<uint64_t>(offset, 2), [&](const FsDirEntry& e) {
        Result<Inode> i = FsGetInode(options_.kv, e.ino);
        struct stat est;
        std::memset(&est, 0, sizeof est);
        est.st_ino = e.ino;
        est.st_mode = i.ok() ? (i->mode & S_IFMT) : S_IFREG;
        return fn(e.name, est, e.cookie);
      }));
  return inner;
}

Result<struct statvfs> ClusterFs::StatFs() {
  struct statvfs v;
  if (statvfs(options_.chunks->dir().c_str(), &v) != 0) {
    return Status::FromErrno(errno, "statvfs " + options_.chunks->dir());
  }
  v.f_namemax = kMaxFsNameBytes;
  return v;
}

namespace {
uint64_t LockEnd(const struct flock& l) {
  return l.l_len == 0 ? UINT64_MAX : static_cast<uint64_t>(l.l_start + l.l_len - 1);
}
}  // namespace

Result<struct flock> ClusterFs::GetLock(uint64_t ino, uint64_t owner, const struct flock& want) {
  FsLock w{options_.node_name,
           owner,
           0,
           static_cast<uint32_t>(want.l_type),
           static_cast<uint64_t>(want.l_start),
           LockEnd(want),
           false};
  CN_ASSIGN_OR_RETURN(std::optional<FsLock> held, FsFindConflict(options_.kv, ino, w));
  struct flock out = want;
  if (!held) {
    out.l_type = F_UNLCK;
    return out;
  }
  out.l_type = static_cast<short>(held->type);
  out.l_start = static_cast<off_t>(held->start);
  out.l_len = held->end == UINT64_MAX ? 0 : static_cast<off_t>(held->end - held->start + 1);
  // A pid means something only on its own node.
  out.l_pid = held->node == options_.node_name ? static_cast<pid_t>(held->pid) : 0;
  return out;
}

Status ClusterFs::SetLock(uint64_t ino, uint64_t owner, const struct flock& lock, const Caller& c) {
  if (lock.l_start < 0 || lock.l_len < 0) return Status::InvalidArgument("bad lock range");
  FsOp op;
  op.type = FsOpType::kLock;
  op.ino = ino;
  op.node = options_.node_name;
  op.lock_owner = owner;
  op.lock_pid = static_cast<uint32_t>(lock.l_pid != 0 ? lock.l_pid : c.pid);
  op.lock_type = static_cast<uint32_t>(lock.l_type);
  op.lock_start = static_cast<uint64_t>(lock.l_start);
  op.lock_end = LockEnd(lock);
  CN_LOG(Debug) << "fcntl lock ino=" << ino << " owner=" << owner << " type=" << lock.l_type;
  CN_RETURN_IF_ERROR(Propose(op, c).status());
  std::lock_guard<std::mutex> l(mu_);
  if (lock.l_type != F_UNLCK) lockers_.insert({ino, owner, false});
  ++lock_generation_;
  lock_changed_.notify_all();
  return Status::Ok();
}

Status ClusterFs::Flock(uint64_t ino, uint64_t owner, int how, const Caller& c) {
  FsOp op;
  op.type = FsOpType::kLock;
  op.ino = ino;
  op.node = options_.node_name;
  op.lock_owner = owner;
  op.lock_pid = static_cast<uint32_t>(c.pid);
  op.lock_flock = true;
  switch (how & ~LOCK_NB) {
    case LOCK_SH:
      op.lock_type = F_RDLCK;
      break;
    case LOCK_EX:
      op.lock_type = F_WRLCK;
      break;
    case LOCK_UN:
      op.lock_type = F_UNLCK;
      break;
    default:
      return Status::InvalidArgument("bad flock operation");
  }
  op.lock_end = UINT64_MAX;
  CN_RETURN_IF_ERROR(Propose(op, c).status());
  std::lock_guard<std::mutex> l(mu_);
  if (op.lock_type != F_UNLCK) lockers_.insert({ino, owner, true});
  ++lock_generation_;
  lock_changed_.notify_all();
  return Status::Ok();
}

Status ClusterFs::UnlockOwner(uint64_t ino, uint64_t owner, bool flock) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (lockers_.erase({ino, owner, flock}) == 0) return Status::Ok();  // never locked here
  }
  FsOp op;
  op.type = FsOpType::kUnlockOwner;
  op.ino = ino;
  op.node = options_.node_name;
  op.lock_owner = owner;
  op.lock_flock = flock;
  Status s = Propose(op, Caller{}).status();
  std::lock_guard<std::mutex> l(mu_);
  ++lock_generation_;
  lock_changed_.notify_all();
  return s;
}

uint64_t ClusterFs::LockGeneration() {
  std::lock_guard<std::mutex> l(mu_);
  return lock_generation_;
}

void ClusterFs::WaitLockChange(uint64_t seen, int64_t timeout_ms) {
  std::unique_lock<std::mutex> l(mu_);
  lock_changed_.wait_for(l, std::chrono::milliseconds(timeout_ms),
                         [&] { return lock_generation_ != seen || lock_wake_; });
  lock_wake_ = false;
}

void ClusterFs::WakeLockWaiters() {
  std::lock_guard<std::mutex> l(mu_);
  lock_wake_ = true;
  lock_changed_.notify_all();
}

Result<std::string> ClusterFs::CollectGarbage() {
  std::unordered_set<ChunkId, ChunkIdHash> referenced;
  // Chunks stored in the background but not yet committed, taken BEFORE the scan of the store:
  // one committed after this point is in the scan; one stored after it is inside the grace period.
  std::vector<std::shared_ptr<File>> files;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& [ino, f] : files_) files.push_back(f);
  }
  for (const std::shared_ptr<File>& f : files) {
    std::lock_guard<std::mutex> l(f->mu);
    for (const auto& [window, sd] : f->sealed) {
      if (sd->done && sd->status.ok()) referenced.insert(sd->id);
    }
  }
  // Every chunk a committed inode references, from one consistent scan of the store.
  Status bad;
  CN_RETURN_IF_ERROR(options_.kv->Scan("f/i/", "f/i0", [&](std::string_view, std::string_view v) {
    Result<Inode> i = DecodeInode(v);
    if (!i.ok()) {
      bad = i.status();
      return false;
    }
    Result<ExtentList> ext = ExtentsOf(*i);
    if (!ext.ok()) {
      bad = ext.status();
      return false;
    }
    for (const Extent& e : *ext) referenced.insert(e.chunk.id);
    return true;
  }));
  // Never collect on a partial picture: a chunk missed here would be a lost file.
  CN_RETURN_IF_ERROR(bad);
  CN_ASSIGN_OR_RETURN(ChunkStore::CollectResult r, options_.chunks->Collect([&](const ChunkId& id) {
    return referenced.count(id) > 0;
  }));
  std::string summary = "chunks examined=" + std::to_string(r.examined) +
                        " deleted=" + std::to_string(r.deleted) +
                        " bytes_freed=" + std::to_string(r.bytes_freed);
  CN_LOG(Info) << "garbage collection: " << summary;
  return summary;
}

Status ClusterFs::SetXattr(uint64_t ino, std::string_view name, std::string_view value, int flags,
                           const Caller& c) {
  FsOp op;
  op.type = FsOpType::kSetXattr;
  op.ino = ino;
  op.name = std::string(name);
  op.value = std::string(value);
  op.flags = 0;
  if (flags & XATTR_CREATE) op.flags |= kXattrCreate;
  if (flags & XATTR_REPLACE) op.flags |= kXattrReplace;
  return Propose(op, c).status();
}

Result<std::string> ClusterFs::GetXattr(uint64_t ino, std::string_view name) {
  CN_ASSIGN_OR_RETURN(std::optional<std::string> v, FsGetXattr(options_.kv, ino, name));
  if (!v) return Status(Code::kNoData, std::string(name) + " is not set");
  return *v;
}

Result<std::vector<std::string>> ClusterFs::ListXattr(uint64_t ino) {
  std::vector<std::string> names;
  CN_RETURN_IF_ERROR(FsListXattr(options_.kv, ino, &names));
  return names;
}

Status ClusterFs::RemoveXattr(uint64_t ino, std::string_view name, const Caller& c) {
  FsOp op;
  op.type = FsOpType::kRemoveXattr;
  op.ino = ino;
  op.name = std::string(name);
  return Propose(op, c).status();
}

}  // namespace constellation
