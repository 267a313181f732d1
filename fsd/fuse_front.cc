#define FUSE_USE_VERSION 312
#include "fsd/fuse_front.h"

#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <condition_variable>
#include <csignal>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "fsd/cluster_fs.h"
#include "fsd/errno.h"
#include "node/base/log.h"
#include "node/base/thread_name.h"

namespace constellation {
namespace {

struct QueuedWrite {
  fuse_req_t req;
  fuse_ino_t ino;
  std::string data;
  off_t off;
};

struct Handle {
  uint64_t ino = 0;
  bool cluster = false;  // a file of cluster/ (ClusterFs), not a control file
  bool events = false;
  bool accumulate = false;   // writes build one value (all but ctl files), see Write
  bool file_backed = false;  // an instance's log: read at any offset (ControlTree::ReadAt)
  std::mutex mu;             // guards the fields below
  std::string written;       // what this open file has written, by offset
  // A value write in flight (Write): the writes behind it wait here, so each builds on the value
  // the one before it left.
  bool writing = false;
  std::deque<QueuedWrite> queued;
  bool has_snapshot = false;
  std::string snapshot;
  uint64_t cursor = 0;
  fuse_pollhandle* ph = nullptr;
};

constexpr double kStableTimeoutS = 3600;

Handle* HandleOf(fuse_file_info* fi) { return reinterpret_cast<Handle*>(fi->fh); }

struct stat ToStat(const Attr& a) {
  struct stat st;
  std::memset(&st, 0, sizeof st);
  st.st_ino = a.ino;
  st.st_mode = a.mode;
  st.st_nlink = a.nlink;
  st.st_uid = a.uid;
  st.st_gid = a.gid;
  st.st_blksize = 4096;
  st.st_size = static_cast<off_t>(a.size);
  st.st_mtim.tv_sec = a.mtime_ms / 1000;
  st.st_mtim.tv_nsec = (a.mtime_ms % 1000) * 1000000;
  st.st_ctim = st.st_mtim;
  st.st_atim = st.st_mtim;
  return st;
}

Caller CallerOf(fuse_req_t req) {
  const fuse_ctx* ctx = fuse_req_ctx(req);
  return Caller{static_cast<uint32_t>(ctx->uid), static_cast<uint32_t>(ctx->gid),
                static_cast<int32_t>(ctx->pid)};
}

}  // namespace

struct FuseFront::Impl {
  FuseFrontOptions options;
  ControlTree* tree;
  EventHub* hub;
  ClusterFs* cluster;
  fuse_session* se = nullptr;
  bool mounted = false;

  // A read of constellation/events waiting for an event, answered by the dispatcher.
  struct Parked {
    fuse_req_t req;
    Handle* handle;
    size_t size;
    bool registering;  // fuse_req_interrupt_func not yet returned: nobody may reply yet
    bool interrupted;
  };
  std::mutex mu;  // guards the fields below
  std::condition_variable cv;
  std::map<uint64_t, Parked> parked;
  uint64_t next_token = 1;
  std::set<Handle*> event_handles;
  std::set<Handle*> handles;  // every open file, so shutdown frees those never released
  bool wake = false;
  bool stopping = false;
  std::thread dispatcher;
  // A blocking lock request (F_SETLKW, flock without LOCK_NB) that met a conflict. It waits here
  // and holds no worker: with a worker each, enough waiters took every worker, and the unlock
  // that would have let them go never found one (every request of the mount then hung). The
  // locker tries them again, oldest first, whenever a lock changed since their last try.
  struct LockWait {
    fuse_req_t req;
    std::function<Status()> attempt;
    uint64_t tried_at;  // ClusterFs::LockGeneration() before the last try
    bool registering;   // as Parked's
    bool interrupted;
  };
  std::map<uint64_t, LockWait> lock_waits;  // guarded by mu
  std::condition_variable locker_cv;        // to the locker: a first wait, or stopping
  bool lock_interrupts = false;             // guarded by mu: a wait was interrupted
  std::thread locker;
  // Requests answered later by another thread (control-file writes, rmdir of an instance, unlink
  // and rmdir in cluster/); the session outlives them (~FuseFront).
  size_t late_replies = 0;
  std::condition_variable late_cv;

  void LateReplyStarted() {
    std::lock_guard<std::mutex> l(mu);
    ++late_replies;
  }
  void LateReplyEnded() {
    std::lock_guard<std::mutex> l(mu);
    if (--late_replies == 0) late_cv.notify_all();
  }
  // A completion that answers `req` with its verdict, counted until it has.
  std::function<void(Status)> ReplyLater(fuse_req_t req) {
    LateReplyStarted();
    return [this, req](Status v) {
      ReplyStatus(req, v);
      LateReplyEnded();
    };
  }

  static Impl* From(fuse_req_t req) { return static_cast<Impl*>(fuse_req_userdata(req)); }

  // Called after every commit: wakes the dispatcher only when someone waits for events.
  void Wake() {
    std::lock_guard<std::mutex> l(mu);
    if (parked.empty() && event_handles.empty()) return;
    wake = true;
    cv.notify_one();
  }

  // The interrupt callback never replies (libfuse may call it with the request's lock held); it
  // marks the read and lets the dispatcher answer EINTR.
  static void OnInterrupt(fuse_req_t req, void* data) {
    Impl* self = From(req);
    uint64_t token = reinterpret_cast<uintptr_t>(data);
    std::lock_guard<std::mutex> l(self->mu);
    auto it = self->parked.find(token);
    if (it == self->parked.end()) return;
    it->second.interrupted = true;
    self->wake = true;
    self->cv.notify_one();
  }

  void Dispatch() {
    for (;;) {
      std::vector<std::pair<fuse_req_t, std::string>> answers;
      std::vector<fuse_req_t> interrupted;
      std::vector<fuse_pollhandle*> polls;
      bool stop;
      {
        std::unique_lock<std::mutex> l(mu);
        cv.wait(l, [&] { return wake || stopping; });
        wake = false;
        stop = stopping;
        for (auto it = parked.begin(); it != parked.end();) {
          Parked& p = it->second;
          if (p.registering) {
            ++it;
            continue;
          }
          if (p.interrupted || stop) {
            interrupted.push_back(p.req);
            it = parked.erase(it);
            continue;
          }
          std::lock_guard<std::mutex> hl(p.handle->mu);
          std::string data = hub->Read(&p.handle->cursor, p.size);
          if (data.empty()) {
            ++it;
            continue;
          }
          answers.emplace_back(p.req, std::move(data));
          it = parked.erase(it);
        }
        for (Handle* h : event_handles) {
          std::lock_guard<std::mutex> hl(h->mu);
          if (h->ph != nullptr && hub->HasNew(h->cursor)) {
            polls.push_back(h->ph);
            h->ph = nullptr;
          }
        }
      }
      for (auto& [req, data] : answers) fuse_reply_buf(req, data.data(), data.size());
      for (fuse_req_t req : interrupted) fuse_reply_err(req, EINTR);
      for (fuse_pollhandle* ph : polls) {
        fuse_lowlevel_notify_poll(ph);
        fuse_pollhandle_destroy(ph);
      }
      if (stop) return;
    }
  }

  void ReadEvents(fuse_req_t req, Handle* h, size_t size, int flags) {
    {
      std::lock_guard<std::mutex> hl(h->mu);
      std::string data = hub->Read(&h->cursor, size);
      if (!data.empty()) {
        fuse_reply_buf(req, data.data(), data.size());
        return;
      }
    }
    if (flags & O_NONBLOCK) {
      fuse_reply_err(req, EAGAIN);
      return;
    }
    uint64_t token;
    {
      std::lock_guard<std::mutex> l(mu);
      token = next_token++;
      parked[token] = Parked{req, h, size, true, false};
    }
    fuse_req_interrupt_func(req, &Impl::OnInterrupt, reinterpret_cast<void*>(token));
    std::lock_guard<std::mutex> l(mu);
    auto it = parked.find(token);
    if (it != parked.end()) it->second.registering = false;
    // An event may have arrived while registering: let the dispatcher look again.
    wake = true;
    cv.notify_one();
  }

  // --- FUSE operations ------------------------------------------------------------------------

  static void ReplyStatus(fuse_req_t req, const Status& s) { fuse_reply_err(req, ToErrno(s)); }

  static void ReplyEntry(fuse_req_t req, const Result<Attr>& a) {
    if (!a.ok()) return ReplyStatus(req, a.status());
    fuse_entry_param e;
    std::memset(&e, 0, sizeof e);
    e.ino = a->ino;
    e.generation = 1;
    e.attr = ToStat(*a);
    // Fixed entries are cached; everything else is looked up afresh (timeouts 0), because
    // instances come and go and their files change owner with them.
    e.attr_timeout = a->stable ? kStableTimeoutS : 0;
    e.entry_timeout = a->stable ? kStableTimeoutS : 0;
    fuse_reply_entry(req, &e);
  }

  // --- cluster/ ---------------------------------------------------------------------------------
  // Requests for inodes of cluster/ go to ClusterFs; the kernel caches its entries and attributes
  // for options.cluster_cache_timeout_s (see FuseFrontOptions).

  static bool IsCluster(fuse_req_t req, fuse_ino_t ino) {
    return From(req)->cluster != nullptr && ClusterFs::Owns(ino);
  }

  static void ReplyClusterEntry(fuse_req_t req, const Result<struct stat>& st) {
    if (!st.ok()) return ReplyStatus(req, st.status());
    fuse_entry_param e;
    std::memset(&e, 0, sizeof e);
    e.ino = st->st_ino;
    e.generation = 1;
    e.attr = *st;
    e.attr_timeout = From(req)->options.cluster_cache_timeout_s;
    e.entry_timeout = From(req)->options.cluster_cache_timeout_s;
    fuse_reply_entry(req, &e);
  }

  static void ReplyClusterAttr(fuse_req_t req, const Result<struct stat>& st) {
    if (!st.ok()) return ReplyStatus(req, st.status());
    fuse_reply_attr(req, &*st, From(req)->options.cluster_cache_timeout_s);
  }

  static void ReplyXattr(fuse_req_t req, const Result<std::string>& v, size_t size) {
    if (!v.ok()) return ReplyStatus(req, v.status());
    if (size == 0) {
      fuse_reply_xattr(req, v->size());
    } else if (v->size() > size) {
      fuse_reply_err(req, ERANGE);
    } else {
      fuse_reply_buf(req, v->data(), v->size());
    }
  }

  static void ReadLink(fuse_req_t req, fuse_ino_t ino) {
    if (!IsCluster(req, ino)) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    Result<std::string> t = From(req)->cluster->ReadLink(ino);
    if (!t.ok()) return ReplyStatus(req, t.status());
    fuse_reply_readlink(req, t->c_str());
  }

  static void StatFs(fuse_req_t req, fuse_ino_t ino) {
    if (!IsCluster(req, ino)) {
      struct statvfs v;
      std::memset(&v, 0, sizeof v);
      v.f_namemax = 255;
      v.f_bsize = 4096;
      fuse_reply_statfs(req, &v);
      return;
    }
    Result<struct statvfs> v = From(req)->cluster->StatFs();
    if (!v.ok()) return ReplyStatus(req, v.status());
    fuse_reply_statfs(req, &*v);
  }

  static void SetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value,
                       size_t size, int flags) {
    if (!IsCluster(req, ino)) {
      fuse_reply_err(req, ENOTSUP);
      return;
    }
    ReplyStatus(req, From(req)->cluster->SetXattr(ino, name, std::string_view(value, size), flags,
                                                  CallerOf(req)));
  }

  static void GetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
    if (!IsCluster(req, ino)) {
      fuse_reply_err(req, ENODATA);
      return;
    }
    ReplyXattr(req, From(req)->cluster->GetXattr(ino, name), size);
  }

  static void ListXattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
    if (!IsCluster(req, ino)) {
      if (size == 0) {
        fuse_reply_xattr(req, 0);
      } else {
        fuse_reply_buf(req, nullptr, 0);
      }
      return;
    }
    Result<std::vector<std::string>> names = From(req)->cluster->ListXattr(ino);
    if (!names.ok()) return ReplyStatus(req, names.status());
    std::string buf;
    for (const std::string& n : *names) {
      buf += n;
      buf.push_back('\0');
    }
    ReplyXattr(req, buf, size);
  }

  static void RemoveXattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
    if (!IsCluster(req, ino)) {
      fuse_reply_err(req, ENOTSUP);
      return;
    }
    ReplyStatus(req, From(req)->cluster->RemoveXattr(ino, name, CallerOf(req)));
  }

  static void Fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                        fuse_file_info*) {
    if (!IsCluster(req, ino)) {
      fuse_reply_err(req, EOPNOTSUPP);
      return;
    }
    ReplyStatus(req, From(req)->cluster->Fallocate(ino, mode, static_cast<uint64_t>(off),
                                                   static_cast<uint64_t>(len), CallerOf(req)));
  }

  // A lock request: tried at once; a blocking one that meets a conflict waits in lock_waits
  // until granted or interrupted (Ctrl-C reaches the holder of a FUSE request as an interrupt).
  static void LockOrWait(fuse_req_t req, bool block, std::function<Status()> attempt) {
    Impl* self = From(req);
    uint64_t generation = self->cluster->LockGeneration();
    Status s = attempt();
    if (s.code() != Code::kUnavailable || !block) return ReplyStatus(req, s);
    uint64_t token;
    {
      std::lock_guard<std::mutex> l(self->mu);
      if (self->stopping) {
        fuse_reply_err(req, EINTR);
        return;
      }
      token = self->next_token++;
      self->lock_waits[token] = LockWait{req, std::move(attempt), generation, true, false};
    }
    self->locker_cv.notify_one();
    fuse_req_interrupt_func(req, &Impl::OnLockInterrupt, reinterpret_cast<void*>(token));
    {
      std::lock_guard<std::mutex> l(self->mu);
      self->lock_waits.at(token).registering = false;
    }
    // A lock may have changed since the try (or the request was interrupted meanwhile).
    self->cluster->WakeLockWaiters();
  }

  // As OnInterrupt, for lock waits: marks the wait for the locker to answer EINTR.
  static void OnLockInterrupt(fuse_req_t req, void* data) {
    Impl* self = From(req);
    uint64_t token = reinterpret_cast<uintptr_t>(data);
    {
      std::lock_guard<std::mutex> l(self->mu);
      auto it = self->lock_waits.find(token);
      if (it == self->lock_waits.end()) return;
      it->second.interrupted = true;
      self->lock_interrupts = true;
    }
    self->cluster->WakeLockWaiters();
  }

  // The locker thread: answers the waits that were interrupted (EINTR), tries again, oldest
  // first, those that have not been tried since the last lock change, answers those whose try
  // ended (granted, or an error), and sleeps until a lock changes, here or on another node (or
  // 100 ms pass: nothing depends on that). At shutdown every wait left is answered EINTR.
  void LockLoop() {
    for (;;) {
      uint64_t generation = cluster->LockGeneration();
      std::vector<fuse_req_t> interrupted;
      std::vector<uint64_t> due;  // tokens not tried since the last lock change, oldest first
      bool stop;
      {
        std::unique_lock<std::mutex> l(mu);
        locker_cv.wait(l, [&] { return !lock_waits.empty() || stopping; });
        stop = stopping;
        lock_interrupts = false;
        for (auto it = lock_waits.begin(); it != lock_waits.end();) {
          LockWait& w = it->second;
          if (!w.registering && (w.interrupted || stop)) {
            interrupted.push_back(w.req);
            it = lock_waits.erase(it);
            continue;
          }
          if (!w.registering && w.tried_at != generation) due.push_back(it->first);
          ++it;
        }
      }
      for (fuse_req_t req : interrupted) fuse_reply_err(req, EINTR);
      if (stop) {
        std::lock_guard<std::mutex> l(mu);
        if (lock_waits.empty()) return;
        continue;  // one still registering: answered at the next round
      }
      bool tried = false;
      for (uint64_t token : due) {
        std::function<Status()> attempt;
        {
          std::lock_guard<std::mutex> l(mu);
          // A try may wait for a commit (seconds without a quorum): an interrupt or the
          // shutdown is answered first, and the waits not tried yet keep their turn.
          if (lock_interrupts || stopping) break;
          LockWait& w = lock_waits.at(token);  // only this thread erases
          w.tried_at = generation;
          attempt = w.attempt;
        }
        tried = true;
        Status s = attempt();
        if (s.code() == Code::kUnavailable) continue;
        fuse_req_t req;
        {
          std::lock_guard<std::mutex> l(mu);
          auto it = lock_waits.find(token);
          req = it->second.req;
          lock_waits.erase(it);
        }
        ReplyStatus(req, s);
      }
      if (!tried) cluster->WaitLockChange(generation, 100);
    }
  }

  static void GetLk(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock) {
    if (!IsCluster(req, ino)) {
      fuse_reply_err(req, ENOLCK);
      return;
    }
    Result<struct flock> l = From(req)->cluster->GetLock(ino, fi->lock_owner, *lock);
    if (!l.ok()) return ReplyStatus(req, l.status());
    fuse_reply_lock(req, &*l);
  }

  static void SetLk(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, struct flock* lock,
                    int sleep) {
    if (!IsCluster(req, ino)) {
      fuse_reply_err(req, ENOLCK);
      return;
    }
    struct flock l = *lock;
    uint64_t owner = fi->lock_owner;
    Caller c = CallerOf(req);
    ClusterFs* cluster = From(req)->cluster;
    LockOrWait(req, sleep != 0, [=] { return cluster->SetLock(ino, owner, l, c); });
  }

  static void Flock(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, int op) {
    if (!IsCluster(req, ino)) {
      fuse_reply_err(req, ENOLCK);
      return;
    }
    uint64_t owner = fi->lock_owner;
    Caller c = CallerOf(req);
    ClusterFs* cluster = From(req)->cluster;
    LockOrWait(req, (op & LOCK_NB) == 0, [=] { return cluster->Flock(ino, owner, op, c); });
  }

  static void FsyncDir(fuse_req_t req, fuse_ino_t ino, int, fuse_file_info*) {
    // Control-tree operations are durable when they return; cluster/ ones by this barrier.
    if (IsCluster(req, ino)) return ReplyStatus(req, From(req)->cluster->SyncMetadata());
    fuse_reply_err(req, 0);
  }

  static void ClusterReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off) {
    std::string buf(size, '\0');
    size_t used = 0;
    Status s = From(req)->cluster->ReadDir(
        ino, static_cast<uint64_t>(off),
        [&](const std::string& name, const struct stat& st, uint64_t next) {
          size_t need = fuse_add_direntry(req, &buf[used], size - used, name.c_str(), &st,
                                          static_cast<off_t>(next));
          if (need > size - used) return false;
          used += need;
          return true;
        });
    if (!s.ok()) return ReplyStatus(req, s);
    fuse_reply_buf(req, buf.data(), used);
  }

  static void ClusterOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi, bool created,
                          const struct stat* st) {
    Impl* self = From(req);
    Status s = self->cluster->Open(ino);
    if (!s.ok()) return ReplyStatus(req, s);
    auto* h = new Handle;
    h->ino = ino;
    h->cluster = true;
    {
      std::lock_guard<std::mutex> l(self->mu);
      self->handles.insert(h);
    }
    fi->fh = reinterpret_cast<uint64_t>(h);
    // Remote changes invalidate the kernel's pages (ClusterFs::OnFsChanges), for inodes it tracks.
    fi->keep_cache = self->cluster->KeepCache(ino) ? 1 : 0;
    int rc;
    if (created) {
      fuse_entry_param e;
      std::memset(&e, 0, sizeof e);
      e.ino = ino;
      e.generation = 1;
      e.attr = *st;
      e.attr_timeout = self->options.cluster_cache_timeout_s;
      e.entry_timeout = self->options.cluster_cache_timeout_s;
      rc = fuse_reply_create(req, &e, fi);
    } else {
      rc = fuse_reply_open(req, fi);
    }
    if (rc != 0) {
      (void)self->cluster->Release(ino, Caller{});
      std::lock_guard<std::mutex> l(self->mu);
      self->handles.erase(h);
      delete h;
    }
  }

  static void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    if (parent == kRootIno && std::strcmp(name, "cluster") == 0 && From(req)->cluster) {
      return ReplyClusterEntry(req, From(req)->cluster->GetAttr(kFsRootIno));
    }
    if (IsCluster(req, parent))
      return ReplyClusterEntry(req, From(req)->cluster->Lookup(parent, name));
    ReplyEntry(req, From(req)->tree->Lookup(parent, name));
  }

  static void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
    if (IsCluster(req, ino)) return fuse_reply_none(req);
    From(req)->tree->Forget(ino, nlookup);
    fuse_reply_none(req);
  }

  static void ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
    for (size_t i = 0; i < count; ++i) From(req)->tree->Forget(forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
  }

  static void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
    if (IsCluster(req, ino)) return ReplyClusterAttr(req, From(req)->cluster->GetAttr(ino));
    Result<Attr> a = From(req)->tree->GetAttr(ino);
    if (!a.ok()) return ReplyStatus(req, a.status());
    struct stat st = ToStat(*a);
    fuse_reply_attr(req, &st, a->stable ? kStableTimeoutS : 0);
  }

  static void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
                      fuse_file_info*) {
    if (IsCluster(req, ino)) {
      return ReplyClusterAttr(req, From(req)->cluster->SetAttr(ino, to_set, *attr, CallerOf(req)));
    }
    Result<Attr> a = From(req)->tree->GetAttr(ino);
    if (!a.ok()) return ReplyStatus(req, a.status());
    if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
      {
        fuse_reply_err(req, EPERM);
        return;
      }
    }
    if ((to_set & FUSE_SET_ATTR_SIZE) && S_ISDIR(a->mode)) {
      fuse_reply_err(req, EISDIR);
      return;
    }
    // Truncation (the shell's `>`) and timestamps are accepted and change nothing: a control
    // file's value changes only by write(2).
    struct stat st = ToStat(*a);
    fuse_reply_attr(req, &st, 0);
  }

  static void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
    if (IsCluster(req, ino)) return ClusterReadDir(req, ino, size, off);
    Result<std::vector<DirEntry>> entries = From(req)->tree->ReadDir(ino);
    if (!entries.ok()) return ReplyStatus(req, entries.status());
    std::vector<DirEntry> all;
    all.push_back(DirEntry{".", ino, S_IFDIR});
    all.push_back(DirEntry{"..", ino, S_IFDIR});
    for (DirEntry& e : *entries) all.push_back(std::move(e));
    std::string buf(size, '\0');
    size_t used = 0;
    for (size_t i = static_cast<size_t>(off); i < all.size(); ++i) {
      struct stat st;
      std::memset(&st, 0, sizeof st);
      st.st_ino = all[i].ino;
      st.st_mode = all[i].mode;
      size_t need = fuse_add_direntry(req, &buf[used], size - used, all[i].name.c_str(), &st,
                                      static_cast<off_t>(i + 1));
      if (need > size - used) break;
      used += need;
    }
    fuse_reply_buf(req, buf.data(), used);
  }

  static void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    if (IsCluster(req, ino)) return ClusterOpen(req, ino, fi, false, nullptr);
    Impl* self = From(req);
    Result<Attr> a = self->tree->GetAttr(ino);
    if (!a.ok()) return ReplyStatus(req, a.status());
    if (S_ISDIR(a->mode)) {
      fuse_reply_err(req, EISDIR);
      return;
    }
    auto* h = new Handle;
    h->ino = ino;
    h->events = self->tree->IsEventsFile(ino);
    h->accumulate = !self->tree->IsCtlFile(ino);
    h->file_backed = self->tree->IsFileBacked(ino);
    fi->direct_io = 1;
    fi->keep_cache = 0;
    {
      std::lock_guard<std::mutex> l(self->mu);
      self->handles.insert(h);
      if (h->events) {
        fi->nonseekable = 1;
        h->cursor = self->hub->Subscribe();
        self->event_handles.insert(h);
      }
    }
    fi->fh = reinterpret_cast<uint64_t>(h);
    if (fuse_reply_open(req, fi) != 0) {
      // The opener is gone (interrupted): no release will follow.
      std::lock_guard<std::mutex> l(self->mu);
      self->event_handles.erase(h);
      self->handles.erase(h);
      delete h;
    }
  }

  static void Release(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
    Impl* self = From(req);
    Handle* h = HandleOf(fi);
    if (h->cluster) {
      if (fi->flock_release) {
        Status u = self->cluster->UnlockOwner(h->ino, fi->lock_owner, true);
        if (!u.ok()) CN_LOG(Warning) << "flock release of inode " << h->ino << ": " << u.ToString();
      }
      Status s = self->cluster->Release(h->ino, CallerOf(req));
      if (!s.ok()) CN_LOG(Warning) << "release of inode " << h->ino << ": " << s.ToString();
    }
    {
      std::lock_guard<std::mutex> l(self->mu);
      self->event_handles.erase(h);
      self->handles.erase(h);
    }
    if (h->ph != nullptr) fuse_pollhandle_destroy(h->ph);
    delete h;
    fuse_reply_err(req, 0);
  }

  // A directory under cluster/ counts as open like a file, so rmdir of an open directory keeps it
  // (nlink 0, empty) until the last close, as on ext4. Control-tree directories need no state.
  static void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    fi->fh = 0;
    if (IsCluster(req, ino)) {
      Status s = From(req)->cluster->Open(ino);
      if (!s.ok()) return ReplyStatus(req, s);
      if (fuse_reply_open(req, fi) != 0) (void)From(req)->cluster->Release(ino, Caller{});
      return;
    }
    fuse_reply_open(req, fi);
  }

  static void ReleaseDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
    if (IsCluster(req, ino)) {
      Status s = From(req)->cluster->Release(ino, CallerOf(req));
      if (!s.ok()) CN_LOG(Warning) << "release of directory " << ino << ": " << s.ToString();
    }
    fuse_reply_err(req, 0);
  }

  static void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
    Impl* self = From(req);
    Handle* h = HandleOf(fi);
    if (h->cluster) {
      Result<ClusterFs::ReadBytes> data =
          self->cluster->Read(ino, static_cast<uint64_t>(off), size);
      if (!data.ok()) return ReplyStatus(req, data.status());
      std::string_view bytes = data->view();
      fuse_reply_buf(req, bytes.data(), bytes.size());
      return;
    }
    if (h->events) return self->ReadEvents(req, h, size, fi->flags);
    if (h->file_backed) {
      Result<std::string> data = self->tree->ReadAt(ino, static_cast<uint64_t>(off), size);
      if (!data.ok()) return ReplyStatus(req, data.status());
      fuse_reply_buf(req, data->data(), data->size());
      return;
    }
    std::string slice;
    {
      std::lock_guard<std::mutex> hl(h->mu);
      // Offset 0 takes a fresh snapshot; later offsets continue the same one, so a reader that
      // needs several reads sees one consistent value.
      if (off == 0 || !h->has_snapshot) {
        Result<std::string> content = self->tree->Read(ino);
        if (!content.ok()) return ReplyStatus(req, content.status());
        h->snapshot = std::move(content).value();
        h->has_snapshot = true;
      }
      if (static_cast<size_t>(off) < h->snapshot.size()) {
        slice = h->snapshot.substr(static_cast<size_t>(off), size);
      }
    }
    fuse_reply_buf(req, slice.data(), slice.size());
  }

  // Each write(2) is applied before it returns. For value files the value is everything written
  // through this open file so far (offsets 0..end), because shells split one `printf 'a\nb\n' >
  // f` into a write per line; each write then applies the whole content written so far. A ctl
  // file takes one command per write(2). Control-file writes are answered later, by the thread
  // that learns the verdict, without holding this worker thread.
  static void Write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
                    fuse_file_info* fi) {
    Impl* self = From(req);
    Handle* h = HandleOf(fi);
    if (h->cluster) {
      Status s = self->cluster->Write(ino, static_cast<uint64_t>(off), std::string_view(buf, size),
                                      CallerOf(req));
      if (!s.ok()) return ReplyStatus(req, s);
      fuse_reply_write(req, size);
      return;
    }
    self->LateReplyStarted();
    if (!h->accumulate) {
      return self->tree->WriteAsync(ino, std::string_view(buf, size), CallerOf(req),
                                    [self, req, size](Status v) {
                                      if (v.ok()) {
                                        fuse_reply_write(req, size);
                                      } else {
                                        ReplyStatus(req, v);
                                      }
                                      self->LateReplyEnded();
                                    });
    }
    QueuedWrite w{req, ino, std::string(buf, size), off};
    {
      std::lock_guard<std::mutex> hl(h->mu);
      if (h->writing) {
        h->queued.push_back(std::move(w));
        return;
      }
      h->writing = true;
    }
    WriteValue(self, h, std::move(w));
  }

  // One value write of `h`, which has `writing` set: only this chain of writes touches
  // h->written until it clears the flag.
  static void WriteValue(Impl* self, Handle* h, QueuedWrite w) {
    size_t size = w.data.size();
    size_t end = static_cast<size_t>(w.off) + size;
    std::string next;
    bool keep = false;
    if (w.off < 0 || end > kMaxControlWriteBytes) {
      // Too large: let the tree refuse (and audit) it without building the whole value.
      next.assign(kMaxControlWriteBytes + 1, '\0');
      std::memcpy(next.data(), w.data.data(), std::min(size, next.size()));
    } else {
      {
        std::lock_guard<std::mutex> hl(h->mu);
        next = h->written;
      }
      if (next.size() < end) next.resize(end, '\0');
      std::memcpy(next.data() + w.off, w.data.data(), size);
      keep = true;
    }
    fuse_req_t req = w.req;
    // Shared by the call and its completion, which keeps it: one copy of the value, not two.
    auto value = std::make_shared<std::string>(std::move(next));
    self->tree->WriteAsync(w.ino, *value, CallerOf(req),
                           [self, h, req, size, keep, value](Status v) {
                             ValueWritten(self, h, req, size, keep ? value.get() : nullptr, v);
                           });
  }

  // The verdict of WriteValue's write: `next` (null for a refused oversized value) becomes what
  // the file has written when it was applied; then the next queued write starts and `req` is
  // answered. `h` is used before the answer, which may let the file be closed.
  static void ValueWritten(Impl* self, Handle* h, fuse_req_t req, size_t size, std::string* next,
                           const Status& v) {
    std::optional<QueuedWrite> more;
    {
      std::lock_guard<std::mutex> hl(h->mu);
      if (v.ok() && next != nullptr) h->written = std::move(*next);
      if (h->queued.empty()) {
        h->writing = false;
      } else {
        more = std::move(h->queued.front());
        h->queued.pop_front();
      }
    }
    if (more) WriteValue(self, h, std::move(*more));
    if (v.ok()) {
      fuse_reply_write(req, size);
    } else {
      ReplyStatus(req, v);
    }
    self->LateReplyEnded();
  }

  static void Poll(fuse_req_t req, fuse_ino_t, fuse_file_info* fi, fuse_pollhandle* ph) {
    Impl* self = From(req);
    Handle* h = HandleOf(fi);
    if (!h->events) {
      if (ph != nullptr) fuse_pollhandle_destroy(ph);
      fuse_reply_poll(req, POLLIN | POLLOUT);
      return;
    }
    unsigned revents = 0;
    {
      std::lock_guard<std::mutex> l(self->mu);
      std::lock_guard<std::mutex> hl(h->mu);
      if (self->hub->HasNew(h->cursor)) {
        revents = POLLIN;
        if (ph != nullptr) fuse_pollhandle_destroy(ph);
      } else if (ph != nullptr) {
        if (h->ph != nullptr) fuse_pollhandle_destroy(h->ph);
        h->ph = ph;
      }
    }
    fuse_reply_poll(req, revents);
  }

  static void Mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
    if (IsCluster(req, parent)) {
      return ReplyClusterEntry(req, From(req)->cluster->Make(FsOpType::kMkdir, parent, name, mode,
                                                             0, "", CallerOf(req)));
    }
    ReplyEntry(req, From(req)->tree->Mkdir(parent, name, CallerOf(req)));
  }

  // The worker goes back to the channel while the removal commits; the reply comes from the
  // thread that learns the verdict (one hop fewer per unlink).
  static void ClusterRemove(fuse_req_t req, FsOpType type, fuse_ino_t parent, const char* name) {
    Impl* m = From(req);
    m->cluster->RemoveAsync(type, parent, name, CallerOf(req), m->ReplyLater(req));
  }

  static void Rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
    if (IsCluster(req, parent)) {
      return ClusterRemove(req, FsOpType::kRmdir, parent, name);
    }
    From(req)->tree->RmdirAsync(parent, name, CallerOf(req), From(req)->ReplyLater(req));
  }

  static void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
                     fuse_file_info* fi) {
    if (IsCluster(req, parent)) {
      Result<struct stat> st = From(req)->cluster->Make(
          FsOpType::kMknod, parent, name, S_IFREG | (mode & 07777), 0, "", CallerOf(req));
      if (!st.ok()) return ReplyStatus(req, st.status());
      return ClusterOpen(req, st->st_ino, fi, true, &*st);
    }
    ReplyStatus(req, From(req)->tree->Refuse(
                         parent, name, "create",
                         Status::NotFound(std::string("no file named ") + name +
                                          " here; the control files are fixed (docs/tree.md)"),
                         CallerOf(req)));
  }

  static void Mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
    if (IsCluster(req, parent)) {
      return ReplyClusterEntry(req, From(req)->cluster->Make(FsOpType::kMknod, parent, name, mode,
                                                             rdev, "", CallerOf(req)));
    }
    ReplyStatus(req, From(req)->tree->Refuse(
                         parent, name, "mknod",
                         Status::NotPermitted("files cannot be created in the control tree"),
                         CallerOf(req)));
  }

  static void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
    if (IsCluster(req, parent)) {
      return ClusterRemove(req, FsOpType::kUnlink, parent, name);
    }
    ReplyStatus(req, From(req)->tree->Refuse(
                         parent, name, "unlink",
                         Status::NotPermitted("control files cannot be removed; rmdir the "
                                              "instance instead"),
                         CallerOf(req)));
  }

  static void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
                     const char* new_name, unsigned flags) {
    if (IsCluster(req, parent) != IsCluster(req, new_parent)) {
      fuse_reply_err(req, EXDEV);
      return;
    }
    if (IsCluster(req, parent)) {
      return ReplyStatus(req, From(req)->cluster->Rename(parent, name, new_parent, new_name, flags,
                                                         CallerOf(req)));
    }
    ReplyStatus(req, From(req)->tree->Refuse(
                         parent, name, "rename",
                         Status::NotPermitted("objects of the control tree cannot be renamed"),
                         CallerOf(req)));
  }

  static void Symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
    if (target != nullptr && IsCluster(req, parent)) {
      return ReplyClusterEntry(req, From(req)->cluster->Make(FsOpType::kSymlink, parent, name, 0, 0,
                                                             target, CallerOf(req)));
    }
    ReplyStatus(
        req, From(req)->tree->Refuse(
                 parent, name, "symlink",
                 Status::NotPermitted("links cannot be made in the control tree"), CallerOf(req)));
  }

  static void Link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char* name) {
    if (IsCluster(req, ino) != IsCluster(req, parent)) {
      fuse_reply_err(req, EXDEV);
      return;
    }
    if (IsCluster(req, parent)) {
      return ReplyClusterEntry(req, From(req)->cluster->Link(ino, parent, name, CallerOf(req)));
    }
    Symlink(req, nullptr, parent, name);
  }

  static void Fsync(fuse_req_t req, fuse_ino_t ino, int, fuse_file_info*) {
    if (IsCluster(req, ino)) return ReplyStatus(req, From(req)->cluster->Flush(ino, CallerOf(req)));
    // Every acknowledged write is already durable.
    fuse_reply_err(req, 0);
  }

  // close(2): data of cluster/ files is committed before close returns.
  static void Flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    if (IsCluster(req, ino)) {
      Status s = From(req)->cluster->Flush(ino, CallerOf(req));
      // close(2) drops the closing process's POSIX locks on the file.
      Status u = From(req)->cluster->UnlockOwner(ino, fi->lock_owner, false);
      return ReplyStatus(req, s.ok() ? u : s);
    }
    fuse_reply_err(req, 0);
  }

  static void Init(void* userdata, fuse_conn_info* conn) {
    (void)userdata;
    conn->max_write = 1u << 20;  // large writes: fewer round trips for sequential I/O
    conn->max_readahead = 1u << 20;
    // One node: every change to cluster/ data passes through this kernel, so its page cache is
    // never stale; without this the kernel drops cached pages whenever a file's mtime moves,
    // which races with processes sharing a file through mmap (SQLite's WAL index).
    if (conn->capable & FUSE_CAP_EXPLICIT_INVAL_DATA) conn->want |= FUSE_CAP_EXPLICIT_INVAL_DATA;
    conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
    // open(O_TRUNC) then arrives as a separate truncate (setattr), which ClusterFs handles.
    conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
    // Locks on cluster/ are state in the log (ClusterFs::SetLock), not the kernel's local ones.
    if (conn->capable & FUSE_CAP_POSIX_LOCKS) conn->want |= FUSE_CAP_POSIX_LOCKS;
    if (conn->capable & FUSE_CAP_FLOCK_LOCKS) conn->want |= FUSE_CAP_FLOCK_LOCKS;
  }
};

FuseFront::FuseFront(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<FuseFront>> FuseFront::Mount(const FuseFrontOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  impl->tree = options.tree;
  impl->hub = options.events;
  impl->cluster = options.cluster;
  static const fuse_lowlevel_ops ops = [] {
    fuse_lowlevel_ops o;
    std::memset(&o, 0, sizeof o);
    o.lookup = &Impl::Lookup;
    o.forget = &Impl::Forget;
    o.forget_multi = &Impl::ForgetMulti;
    o.getattr = &Impl::GetAttr;
    o.setattr = &Impl::SetAttr;
    o.readdir = &Impl::ReadDir;
    o.opendir = &Impl::OpenDir;
    o.releasedir = &Impl::ReleaseDir;
    o.open = &Impl::Open;
    o.release = &Impl::Release;
    o.read = &Impl::Read;
    o.write = &Impl::Write;
    o.poll = &Impl::Poll;
    o.mkdir = &Impl::Mkdir;
    o.rmdir = &Impl::Rmdir;
    o.create = &Impl::Create;
    o.mknod = &Impl::Mknod;
    o.unlink = &Impl::Unlink;
    o.rename = &Impl::Rename;
    o.symlink = &Impl::Symlink;
    o.link = &Impl::Link;
    o.fsync = &Impl::Fsync;
    o.flush = &Impl::Flush;
    o.init = &Impl::Init;
    o.readlink = &Impl::ReadLink;
    o.statfs = &Impl::StatFs;
    o.setxattr = &Impl::SetXattr;
    o.getxattr = &Impl::GetXattr;
    o.listxattr = &Impl::ListXattr;
    o.removexattr = &Impl::RemoveXattr;
    o.fallocate = &Impl::Fallocate;
    o.fsyncdir = &Impl::FsyncDir;
    o.getlk = &Impl::GetLk;
    o.setlk = &Impl::SetLk;
    o.flock = &Impl::Flock;
    return o;
  }();
  const char* argv[] = {
      "constellationd", "-o",
      "default_permissions,allow_other,fsname=constellation,subtype=constellation"};
  fuse_args args = FUSE_ARGS_INIT(3, const_cast<char**>(argv));
  impl->se = fuse_session_new(&args, &ops, sizeof ops, impl.get());
  fuse_opt_free_args(&args);
  if (impl->se == nullptr) return Status::IoError("fuse_session_new failed");
  if (fuse_session_mount(impl->se, options.mount.c_str()) != 0) {
    fuse_session_destroy(impl->se);
    impl->se = nullptr;
    return Status::IoError("cannot mount FUSE at " + options.mount + " (see the log above)");
  }
  impl->mounted = true;
  Impl* raw = impl.get();
  impl->hub->SetListener([raw] { raw->Wake(); });
  impl->dispatcher = std::thread([raw] {
    SetThreadName("cn-fuse-events");
    raw->Dispatch();
  });
  if (impl->cluster != nullptr) {
    impl->locker = std::thread([raw] {
      SetThreadName("cn-fuse-locks");
      raw->LockLoop();
    });
  }
  return std::unique_ptr<FuseFront>(new FuseFront(std::move(impl)));
}

FuseFront::~FuseFront() {
  {
    // Requests still waiting for their verdict reply through the session.
    std::unique_lock<std::mutex> l(impl_->mu);
    impl_->late_cv.wait(l, [&] { return impl_->late_replies == 0; });
  }
  impl_->hub->SetListener(nullptr);
  {
    std::lock_guard<std::mutex> l(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  impl_->locker_cv.notify_all();
  if (impl_->cluster != nullptr) impl_->cluster->WakeLockWaiters();
  if (impl_->dispatcher.joinable()) impl_->dispatcher.join();
  if (impl_->locker.joinable()) impl_->locker.join();
  if (impl_->mounted) fuse_session_unmount(impl_->se);
  if (impl_->se != nullptr) fuse_session_destroy(impl_->se);
  // Files still open when the loop ended never get their release.
  for (Handle* h : impl_->handles) {
    if (h->ph != nullptr) fuse_pollhandle_destroy(h->ph);
    delete h;
  }
}

Status FuseFront::Run() {
  fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_idle_threads(cfg, impl_->options.max_idle_threads);
  fuse_loop_cfg_set_max_threads(cfg, impl_->options.max_threads);
  int rc = fuse_session_loop_mt(impl_->se, cfg);
  fuse_loop_cfg_destroy(cfg);
  if (rc != 0 && rc != SIGTERM && rc != SIGINT && rc != SIGHUP) {
    return Status::IoError("FUSE loop ended with " + std::to_string(rc));
  }
  return Status::Ok();
}

void FuseFront::Exit() { fuse_session_exit(impl_->se); }
fuse_session* FuseFront::session() { return impl_->se; }

}  // namespace constellation
