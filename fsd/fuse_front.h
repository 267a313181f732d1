// FuseFront: serves the tree over the FUSE low-level API. It maps requests to the ControlTree,
// replies exactly once to each, and turns Status into errno only through ToErrno.
//
// constellation/events is a stream: a read with nothing to return is parked (it holds no worker
// thread) and answered by the dispatcher thread when an event is published or the request is
// interrupted (Ctrl-C → EINTR). poll(2) is supported through fuse_lowlevel_notify_poll.
//
// A control-file write holds no worker thread either: it is answered by the thread that learns
// its verdict (the replica's agent thread once it is applied, or the instance agent's worker once
// the runtime acted on it); writes through one open value file are applied one at a time, in
// order. So do rmdir of an instance (answered once the runtime removed it) and unlink and rmdir in
// cluster/ (answered by the replica's agent thread). The destructor waits for every such answer
// still owed (at most the replica's propose_timeout_ms, or the instance agent's settle timeout)
// before it unmounts.
// Thread-safety: the FUSE callbacks run on libfuse's worker threads; everything they share is
// guarded inside.
#ifndef CONSTELLATION_FSD_FUSE_FRONT_H_
#define CONSTELLATION_FSD_FUSE_FRONT_H_

#include <memory>
#include <string>

#include "fsd/control_tree.h"
#include "node/state/event_hub.h"

struct fuse_session;

namespace constellation {

class ClusterFs;

struct FuseFrontOptions {
  ControlTree* tree = nullptr;
  ClusterFs* cluster = nullptr;  // cluster/; nullptr leaves it an empty directory
  EventHub* events = nullptr;
  std::string mount;
  // How long the kernel may cache cluster/'s entries and attributes. Changes made through this
  // kernel update them at once, changes from other nodes invalidate them (ClusterFs::OnFsChanges),
  // so the timeout only bounds staleness when an invalidation was dropped.
  double cluster_cache_timeout_s = 1;
  // libfuse's worker threads: at most max_threads; idle ones beyond max_idle_threads exit. Equal,
  // so that bursts do not create and destroy threads: a commit answers a whole batch of writers at
  // once, and with 16 the workers that went idle together exited, to be started again by the
  // next batch (64 writers: most of the time). The price: an idle worker keeps its request buffer
  // (up to max_write, 1 MiB, of which only what requests touched is resident).
  int max_idle_threads = 64;
  unsigned max_threads = 64;
};

class FuseFront {
 public:
  // Creates the session and mounts it (options: default_permissions, allow_other).
  static Result<std::unique_ptr<FuseFront>> Mount(const FuseFrontOptions& options);
  ~FuseFront();  // waits for the answers still owed (see above), then unmounts

  // Serves requests until the session ends (signal handlers installed by the caller, or Exit()).
  Status Run();
  void Exit();
  fuse_session* session();

 private:
  struct Impl;
  explicit FuseFront(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace constellation

#endif  // CONSTELLATION_FSD_FUSE_FRONT_H_
