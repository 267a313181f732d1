// constellationd: the node daemon (node engine + FUSE front in one process).
#define FUSE_USE_VERSION 312
#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <getopt.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "fsd/cluster_fs.h"
#include "fsd/control_tree.h"
#include "fsd/fuse_front.h"
#include "node/agent/instance_agent.h"
#include "node/base/log.h"
#include "node/cluster/cluster_node.h"
#include "node/runtime/launcher.h"
#include "node/runtime/runtime.h"
#include "node/state/replica.h"

namespace constellation {
namespace {

constexpr char kVersion[] = "0.1.0";

constexpr char kUsage[] = R"(usage: constellationd --data DIR --mount DIR [options]

Runs a Constellation node: the replicated state, and the file tree mounted at --mount.

  --data DIR        data directory (created if missing); holds the state store and the lock
  --mount DIR       where to mount the tree (created if missing)
  --name NAME       this node's name (default: the hostname)
  --addr HOST:PORT  the address this node announces to peers (default: --bind, else
                    127.0.0.1:7400)
  --bind HOST:PORT  listen for the cluster's nodes here (ZeroMQ, CURVE-encrypted); without it the
                    node is a cluster of one that nothing can join
  --bootstrap       start a new cluster (the default without --join); prints the join token, also
                    kept in DATA/join_token (mode 0600)
  --join HOST:PORT  join the cluster of the node at HOST:PORT (with --token; ignored once a member).
                    A running node started without it joins later, while its own cluster is still
                    empty, with `echo join HOST:PORT TOKEN > MOUNT/constellation/ctl`
  --token TOKEN     the join token that node printed
  --join-timeout-s N  give up joining (no answer, or not caught up) after N s (default 60; also
                    for `echo join`)
  --key FILE        this node's key pair (from `constellation keygen`; default: DATA/node.key,
                    made at first start)
  --swim NAME=VALUE SWIM failure-detector timing (repeatable; with --bind). Defaults detect a
                    dead node within 3 s: probe_interval_ms=500 probe_timeout_ms=200
                    indirect_checks=3 suspicion_mult=1 suspicion_max_mult=6 (the suspicion
                    timeout, in probe intervals, falls from mult*max_mult to mult as others
                    confirm) gossip_interval_ms=200 gossip_fanout=3 push_pull_interval_ms=30000
                    reconnect_interval_ms=2000 leave_timeout_ms=1000 (a clean stop waits this
                    long at most for its `left` to spread)
  --write-timeout-ms N  a write not committed within N ms fails with EAGAIN (default 10000)
  --agent-nice N    nice value of the thread every commit of this node passes through (-20..19,
                    default -10: not preempted by the clients it answers or by workloads; 0
                    leaves it as inherited). Several nodes on one machine (tools/cluster) use 0
  --log-keep N      applied log entries kept for followers before the log is compacted into a
                    snapshot (default 10000); compaction runs every 2 x N entries, less often
                    for a large state (at least its size / 128 bytes of entries apart)
  --links           also create the links /constellation and /cluster into the mount
  --foreground      stay in the foreground (default: detach once the mount is ready)
  --log FILE        log file (default: DATA/constellationd.log; with --foreground, stderr)
  --log-level L     debug, info, warn or error (default: info)
  --chunk-grace-s N unreferenced chunks younger than N seconds are kept by garbage collection
                    (chunks of writes in flight; default 3600)
  --cache-timeout-ms N  how long the kernel caches cluster/ entries and attributes (default 1000);
                    changes from other nodes invalidate them before that
  --reserve-mb N    refuse new writes (ENOSPC) while the data dir's file system has less than N MiB
                    free, so committed entries can always be applied (default: 64)
  --chunk-cache-mb N  MiB of verified cluster/ chunks kept in memory, so a read that hits one
                    neither reads nor hashes its 4 MiB again; 0: none (default: 1/32 of the
                    machine's memory, at least 256 and at most 2048)

Instances (their state lives in DATA/instances):
  --interpreter EXT=PATH
                    run a `cmd` whose first word ends in .EXT with the interpreter PATH, e.g.
                    --interpreter rads=/usr/local/bin/rads (repeatable; EXT without the dot)
  --leave-instances on SIGTERM/SIGINT leave running instances running; the next daemon finds and
                    adopts them. Default: stop them (SIGTERM, grace period, SIGKILL) before exiting;
                    those that were running start again when the daemon comes back. A crash or
                    kill -9 always leaves them running, to be adopted.
  --stop-grace-s N  seconds between SIGTERM and SIGKILL when an instance stops (default: 10)
  --cgroup-parent P control groups of instances are P/NODE/NAME under each cgroup hierarchy
                    (default: constellation)
  --help            this text
  --version         print the version

SIGTERM or SIGINT unmounts, flushes and exits. A stale mount left by a dead daemon is cleared at
start; a mount point held by a live daemon, a data directory locked by another daemon, and data
written by an incompatible format version are refused.
)";

struct Flags {
  std::string data;
  std::string mount;
  std::string name;
  std::string addr = "127.0.0.1:7400";
  std::string log;
  std::string log_level = "info";
  uint64_t reserve_mb = 64;
  int64_t chunk_cache_mb = -1;  // -1: DefaultChunkCacheMb()
  int64_t chunk_grace_s = 3600;
  int64_t cache_timeout_ms = 1000;
  bool links = false;
  bool foreground = false;
  bool addr_set = false;
  std::string bind;
  std::string join;
  std::string token;
  std::string key_file;
  bool bootstrap = false;
  int64_t write_timeout_ms = 10000;
  int64_t join_timeout_s = 60;
  uint64_t log_keep = 10000;
  int agent_nice = -10;
  std::map<std::string, std::string> interpreters;
  bool leave_instances = false;
  int64_t stop_grace_s = 10;
  std::string cgroup_parent = "constellation";
  std::vector<std::string> swim;  // --swim NAME=VALUE, validated by ParseSwimFlag
};

// A chunk read that misses the cache reads and hashes the whole chunk (up to 4 MiB) for what may
// be a 4 KiB read: a random reader whose file outgrows the cache pays that on most reads (a
// 256 MiB file against a 256 MiB cache: 2,074 reads/s, against 768 MiB: 40,324). So the default
// grows with the machine: 1/32 of its memory, 256 MiB to 2 GiB.
uint64_t DefaultChunkCacheMb() {
  long pages = sysconf(_SC_PHYS_PAGES);
  long page = sysconf(_SC_PAGESIZE);
  uint64_t ram_mb = pages > 0 && page > 0 ? (static_cast<uint64_t>(pages) * page) >> 20 : 0;
  return std::clamp<uint64_t>(ram_mb / 32, 256, 2048);
}

// Parses the value of --`flag`, an integer in [lo, hi]; otherwise says so on stderr.
bool IntFlag(const char* flag, const char* arg, long long lo, long long hi, long long* out) {
  char* end = nullptr;
  long long v = strtoll(arg, &end, 10);
  if (*arg == '\0' || *end != '\0' || v < lo || v > hi) {
    fprintf(stderr, "constellationd: --%s: \"%s\" is not %lld..%lld\n", flag, arg, lo, hi);
    return false;
  }
  *out = v;
  return true;
}

Result<LogLevel> ParseLogLevel(const std::string& s) {
  if (s == "debug") return LogLevel::kDebug;
  if (s == "info") return LogLevel::kInfo;
  if (s == "warn") return LogLevel::kWarning;
  if (s == "error") return LogLevel::kError;
  return Status::InvalidArgument("log-level: \"" + s + "\" is not debug, info, warn or error");
}

std::string Absolute(const std::string& p) {
  if (!p.empty() && p[0] == '/') return p;
  char cwd[4096];
  if (getcwd(cwd, sizeof cwd) == nullptr) return p;
  return std::string(cwd) + "/" + p;
}

Status MkdirAll(const std::string& path) {
  std::string cur;
  size_t i = 0;
  while (i <= path.size()) {
    size_t slash = path.find('/', i);
    if (slash == std::string::npos) slash = path.size();
    cur = path.substr(0, slash);
    if (!cur.empty() && mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
      return Status::FromErrno(errno, "mkdir " + cur);
    }
    i = slash + 1;
  }
  return Status::Ok();
}

// The fstype of the mount at exactly `path`, or "" when `path` is not a mount point.
std::string MountTypeAt(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  std::string found;
  while (std::getline(in, line)) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superopts
    size_t p = 0;
    std::string fields[5];
    for (int f = 0; f < 5 && p != std::string::npos; ++f) {
      size_t e = line.find(' ', p);
      fields[f] = line.substr(p, e == std::string::npos ? std::string::npos : e - p);
      p = e == std::string::npos ? e : e + 1;
    }
    if (fields[4] != path) continue;
    size_t dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    size_t s = dash + 3;
    found = line.substr(s, line.find(' ', s) - s);  // the last mount on a path wins
  }
  return found;
}

Status PrepareMountPoint(const std::string& mount) {
  // A FUSE mount whose daemon died answers every request with ENOTCONN. statfs always reaches the
  // daemon (stat may be answered from the kernel's attribute cache), so it tells dead from live.
  std::string type = MountTypeAt(mount);
  if (type.rfind("fuse", 0) == 0) {
    struct statfs sfs;
    if (statfs(mount.c_str(), &sfs) == 0 || errno != ENOTCONN) {
      return Status::Busy("mount point " + mount + " is held by a live daemon (" + type +
                          "); stop it first (tools/down or kill its constellationd)");
    }
    CN_LOG(Warning) << "clearing the stale mount at " << mount << " left by a dead daemon";
    if (umount2(mount.c_str(), MNT_DETACH) != 0) {
      return Status::FromErrno(errno, "cannot clear the stale mount at " + mount);
    }
  }
  struct stat st;
  if (stat(mount.c_str(), &st) != 0 && errno != ENOENT) {
    return Status::FromErrno(errno, "mount point " + mount);
  }
  CN_RETURN_IF_ERROR(MkdirAll(mount));
  return Status::Ok();
}

// Holds DATA/constellationd.pid locked for the daemon's life.
Result<int> LockDataDir(const std::string& data) {
  std::string path = data + "/constellationd.pid";
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {0};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "?";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    close(fd);
    return Status::Busy("data dir " + data + " is locked by another constellationd (pid " + pid +
                        ")");
  }
  std::string pid = std::to_string(getpid()) + "\n";
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    return Status::FromErrno(errno, "write " + path);
  }
  return fd;
}

void MakeLinks(const std::string& mount) {
  for (const char* name : {"constellation", "cluster"}) {
    std::string link = std::string("/") + name;
    std::string target = mount + "/" + name;
    char buf[4096];
    ssize_t n = readlink(link.c_str(), buf, sizeof buf - 1);
    if (n >= 0) {
      if (std::string(buf, static_cast<size_t>(n)) == target) continue;
      if (unlink(link.c_str()) != 0) {
        CN_LOG(Warning) << "cannot replace the link " << link << ": " << strerror(errno);
        continue;
      }
    } else if (errno != ENOENT && rmdir(link.c_str()) != 0) {
      // An empty directory (an instance's bind target made before the links existed) gives way.
      CN_LOG(Warning) << link
                      << " exists and is not a link or an empty directory; leaving it alone";
      continue;
    }
    if (symlink(target.c_str(), link.c_str()) != 0) {
      CN_LOG(Warning) << "cannot create the link " << link << ": " << strerror(errno);
    }
  }
}

std::string NodeInfo(const Flags& f) {
  struct sysinfo si;
  int64_t ram_mb = 0;
  if (sysinfo(&si) == 0) ram_mb = static_cast<int64_t>(si.totalram) * si.mem_unit / (1024 * 1024);
  return "addr=" + f.addr + "\ncpu_cores=" + std::to_string(sysconf(_SC_NPROCESSORS_ONLN)) +
         "\nram_mb=" + std::to_string(ram_mb) + "\nversion=" + kVersion + "\n";
}

int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// Where others join: this node's address and its token (which lets the holder join: root only).
void PrintJoinToken(const Flags& f) {
  std::ifstream in(f.data + "/join_token");
  std::string token;
  if (!std::getline(in, token) || token.empty()) return;
  printf(
      "node %s listening on %s\njoin token (also in %s/join_token, mode 0600):\n  %s\n"
      "join another node with:\n  constellationd --data DIR --mount DIR --bind HOST:PORT "
      "--join %s --token %s\n",
      f.name.c_str(), f.addr.c_str(), f.data.c_str(), token.c_str(), f.addr.c_str(), token.c_str());
}

// Runs the node; `ready` is called once the mount is serving. Returns the exit code.
int Serve(const Flags& flags, const std::function<void(const std::string& error)>& ready) {
  Flags f = flags;
  Status s = MkdirAll(f.data);
  Result<int> lock = s.ok() ? LockDataDir(f.data) : Result<int>(s);
  if (!lock.ok()) {
    ready(lock.status().message());
    return 1;
  }
  s = PrepareMountPoint(f.mount);
  if (!s.ok()) {
    ready(s.message());
    return 1;
  }
  // The agent exists before the replica so that it sees every change committed once it starts.
  InstanceAgentOptions ao;
  ao.node_name = f.name;
  ao.settle_timeout_ms = f.stop_grace_s * 1000 + 10000;
  auto agent = std::make_unique<InstanceAgent>(ao);
  ReplicaOptions ro;
  ro.data_dir = f.data;
  ro.node_name = f.name;
  ro.reserve_bytes = f.reserve_mb << 20;
  ro.propose_timeout_ms = f.write_timeout_ms;
  ro.log_keep = f.log_keep;
  ro.agent_nice = f.agent_nice;
  std::unique_ptr<ClusterNode> cluster_node;
  if (!f.bind.empty()) {
    ClusterNodeOptions co;
    co.data_dir = f.data;
    co.node_name = f.name;
    co.bind = f.bind;
    co.addr = f.addr;
    co.key_file = f.key_file;
    co.join = f.join;
    co.token = f.token;
    co.join_timeout_ms = f.join_timeout_s * 1000;
    for (const std::string& kv : f.swim) (void)ParseSwimFlag(kv, &co);  // checked in Main
    Result<std::unique_ptr<ClusterNode>> cn = ClusterNode::Start(co);
    if (!cn.ok()) {
      ready("cannot start the cluster transport on " + f.bind + ": " + cn.status().message());
      return 1;
    }
    cluster_node = std::move(cn).value();
    cluster_node->Configure(&ro);
    f.addr = cluster_node->address();
  }
  ro.on_instance_changes = [a = agent.get()](const std::vector<InstanceChange>& c) {
    a->OnChanges(c);
  };
  // cluster/ exists only after the replica: until then (the replay at open) there is no cache.
  std::atomic<ClusterFs*> fs_caches{nullptr};
  ro.on_fs_changes = [&fs_caches](const std::vector<FsChange>& c, bool reset) {
    if (ClusterFs* fs = fs_caches.load()) fs->OnFsChanges(c, reset);
  };
  Result<std::unique_ptr<Replica>> replica = Replica::Open(ro);
  if (!replica.ok()) {
    ready("cannot open the data dir " + f.data + ": " + replica.status().message());
    return 1;
  }
  // Whatever way Serve returns, the cluster stops feeding the replica before it goes.
  struct DetachFirst {
    ClusterNode* node;
    ~DetachFirst() {
      if (node != nullptr) node->Detach();
    }
  } detach_first{cluster_node.get()};
  if (cluster_node) {
    s = cluster_node->Attach(replica->get());
    if (!s.ok()) {
      ready(s.message());
      return 1;
    }
  }
  Command node;
  node.type = CommandType::kNodeUpdate;
  node.object = f.name;
  node.value = NodeInfo(f);
  std::optional<NodeRecord> have = (*replica)->state().GetNode(f.name);
  NodeRecord want = have.value_or(NodeRecord{});
  if (!have || have->addr != f.addr || have->version != kVersion ||
      have->cpu_cores != sysconf(_SC_NPROCESSORS_ONLN)) {
    s = (*replica)->Propose(node);
    if (!s.ok()) {
      ready("cannot record this node: " + s.message());
      return 1;
    }
  }
  ChunkStoreOptions co;
  co.min_free_bytes = f.reserve_mb << 20;
  co.grace_ms = f.chunk_grace_s * 1000;
  uint64_t cache_mb =
      f.chunk_cache_mb >= 0 ? static_cast<uint64_t>(f.chunk_cache_mb) : DefaultChunkCacheMb();
  co.max_cache_bytes = cache_mb << 20;
  CN_LOG(Info) << "chunk cache: " << cache_mb << " MiB";
  Result<std::unique_ptr<ChunkStore>> chunks = ChunkStore::Open(f.data + "/chunks", co);
  if (!chunks.ok()) {
    ready("cannot open the chunk store in " + f.data + "/chunks: " + chunks.status().message());
    return 1;
  }
  ClusterFsOptions cfo;
  cfo.replica = replica->get();
  cfo.kv = (*replica)->store();
  cfo.chunks = chunks->get();
  cfo.node_name = f.name;
  ClusterFs cluster(cfo);
  s = cluster.Start();
  if (!s.ok()) {
    ready("cannot start cluster/: " + s.message());
    return 1;
  }
  std::atomic<fuse_session*> session{nullptr};  // once mounted
  ControlTreeOptions to;
  to.replica = replica->get();
  to.node_name = f.name;
  to.version = kVersion;
  to.data_dir = f.data;
  to.start_ms = NowMs();
  to.now_ms = NowMs;
  to.collect_garbage = [&cluster]() { return cluster.CollectGarbage().status(); };
  if (cluster_node) {
    to.cluster_status = [&replica, &cluster_node]() {
      ReplicaStatus st = (*replica)->GetStatus();
      ClusterCounters c = cluster_node->counters();
      auto join = [](const std::vector<std::string>& v) {
        std::string out;
        for (const std::string& s : v) out += (out.empty() ? "" : ",") + s;
        return out.empty() ? std::string("-") : out;
      };
      return "role " + st.role + "\nvoters " + join(st.voters) + "\nlearners " + join(st.learners) +
             "\naddr " + cluster_node->address() + "\npeers_refused " + std::to_string(c.refused) +
             "\nhandshakes_failed " + std::to_string(c.handshake_failed) + "\nmessages_malformed " +
             std::to_string(c.malformed) + "\n";
    };
    to.join = [&replica, &cluster_node, &f, &session](const std::string& addr,
                                                      const std::string& token) -> Status {
      std::optional<NodeRecord> before = (*replica)->state().GetNode(f.name);
      // A stop (SIGTERM ends the FUSE session) must not wait for the join's timeout.
      CN_RETURN_IF_ERROR(cluster_node->JoinCluster(addr, token, [&session] {
        fuse_session* se = session.load();
        return se != nullptr && fuse_session_exited(se) != 0;
      }));
      // This node's record in the cluster it joined, as at start, with the labels it had.
      Command node;
      node.type = CommandType::kNodeUpdate;
      node.object = f.name;
      node.value = NodeInfo(f);
      Status s = (*replica)->Propose(node);
      if (s.ok() && before && !before->labels.empty()) {
        Command labels;
        labels.type = CommandType::kNodeSetLabels;
        labels.object = f.name;
        for (const std::string& l : before->labels) labels.value += l + "\n";
        s = (*replica)->Propose(labels);
      }
      if (!s.ok())
        return Status(s.code(), "joined, but recording this node failed: " + s.message());
      return Status::Ok();
    };
    to.node_state = [&cluster_node](const std::string& n) { return cluster_node->NodeState(n); };
    to.nodes_alive = [&cluster_node]() { return cluster_node->NodesAlive(); };
  }
  to.set_log_level = [](const std::string& level) -> Status {
    CN_ASSIGN_OR_RETURN(LogLevel l, ParseLogLevel(level));
    SetLogLevel(l);
    return Status::Ok();
  };
  to.agent = agent.get();
  ControlTree tree(to);
  FuseFrontOptions fo;
  fo.tree = &tree;
  fo.events = (*replica)->events();
  fo.cluster = &cluster;
  fo.cluster_cache_timeout_s = static_cast<double>(f.cache_timeout_ms) / 1000;
  fo.mount = f.mount;
  Result<std::unique_ptr<FuseFront>> front = FuseFront::Mount(fo);
  if (!front.ok()) {
    ready(front.status().message());
    return 1;
  }
  if (fuse_set_signal_handlers((*front)->session()) != 0) {
    ready("cannot install signal handlers");
    return 1;
  }
  fuse_session* se = (*front)->session();
  session = se;
  cluster.SetInvalidator(ClusterFs::Invalidator{
      [se](uint64_t ino) { (void)fuse_lowlevel_notify_inval_inode(se, ino, 0, 0); },
      [se](uint64_t parent, const std::string& name) {
        (void)fuse_lowlevel_notify_inval_entry(se, parent, name.data(), name.size());
      }});
  fs_caches = &cluster;
  if (f.links) MakeLinks(f.mount);
  // The runtime starts once the tree is served: starting an instance bind-mounts M/cluster and
  // M/constellation into it, which the FUSE loop must answer. Start-up is reported (ready) after
  // the instances are adopted and synced with their records.
  std::unique_ptr<runtime::Runtime> rt;
  bool startup_failed = false;
  std::thread starter([&] {
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, nullptr);  // the kill below must reach the FUSE loop
    runtime::Runtime::Options ro;
    ro.node = f.name;
    ro.data_dir = f.data + "/instances";
    ro.cgroup_parent = f.cgroup_parent;
    ro.binds = {{f.mount + "/cluster", "/cluster"}, {f.mount + "/constellation", "/constellation"}};
    ro.interpreters = f.interpreters;
    ro.stop_on_shutdown = !f.leave_instances;
    ro.stop_grace_ms = f.stop_grace_s * 1000;
    Result<std::unique_ptr<runtime::Runtime>> opened = runtime::Runtime::Open(ro);
    if (!opened.ok()) {
      startup_failed = true;
      ready("cannot start the instance runtime: " + opened.status().message());
      kill(getpid(), SIGTERM);  // ends the FUSE loop
      return;
    }
    rt = std::move(opened).value();
    CN_LOG(Info) << "instances: cgroups " << rt->cgroup_layout().ToString() << "; "
                 << rt->List().size() << " found in " << ro.data_dir;
    Status synced = agent->Start(&(*replica)->state(), rt.get(), (*replica)->events());
    if (!synced.ok())
      CN_LOG(Warning) << "instances: not all records could be applied: " << synced.ToString();
    CN_LOG(Info) << "node " << f.name << " serving " << f.mount << " (data " << f.data
                 << ", cluster " << (*replica)->GetStatus().cluster_id << ")";
    ready("");
  });
  // Garbage collection of chunks every 10 minutes (and on `echo gc > constellation/ctl`).
  std::mutex gc_mu;
  std::condition_variable gc_cv;
  bool gc_stop = false;
  std::thread gc([&] {
    std::unique_lock<std::mutex> l(gc_mu);
    while (!gc_cv.wait_for(l, std::chrono::minutes(10), [&] { return gc_stop; })) {
      l.unlock();
      Result<std::string> r = cluster.CollectGarbage();
      if (!r.ok()) CN_LOG(Warning) << "garbage collection: " << r.status().ToString();
      l.lock();
    }
  });
  s = (*front)->Run();
  if (cluster_node) cluster_node->Leave();  // others see `left` at once, not `dead` in seconds
  starter.join();
  {
    std::lock_guard<std::mutex> l(gc_mu);
    gc_stop = true;
  }
  gc_cv.notify_all();
  gc.join();
  fuse_remove_signal_handlers((*front)->session());
  CN_LOG(Info) << "shutting down";
  fs_caches = nullptr;
  cluster.SetInvalidator({});  // no kernel notifications once the session goes
  agent->Shutdown();           // answers writes still waiting for their instance
  front->reset();              // unmounts
  if (cluster_node) cluster_node->Detach();
  if (rt) {
    CN_LOG(Info) << (f.leave_instances ? "leaving instances running"
                                       : "stopping instances (SIGTERM, then SIGKILL after " +
                                             std::to_string(f.stop_grace_s) + " s)");
    rt.reset();
  }
  replica->reset();  // finishes the work in hand and closes the store
  detach_first.node = nullptr;
  cluster_node.reset();
  close(*lock);
  if (startup_failed) return 1;
  if (!s.ok()) {
    CN_LOG(Error) << s.ToString();
    return 1;
  }
  CN_LOG(Info) << "stopped cleanly";
  return 0;
}

int Main(int argc, char** argv) {
  Flags f;
  static const option kOptions[] = {{"data", required_argument, nullptr, 'd'},
                                    {"mount", required_argument, nullptr, 'm'},
                                    {"name", required_argument, nullptr, 'n'},
                                    {"addr", required_argument, nullptr, 'a'},
                                    {"links", no_argument, nullptr, 'L'},
                                    {"foreground", no_argument, nullptr, 'f'},
                                    {"log", required_argument, nullptr, 'l'},
                                    {"log-level", required_argument, nullptr, 'v'},
                                    {"help", no_argument, nullptr, 'h'},
                                    {"version", no_argument, nullptr, 'V'},
                                    {"reserve-mb", required_argument, nullptr, 'r'},
                                    {"chunk-grace-s", required_argument, nullptr, 'g'},
                                    {"cache-timeout-ms", required_argument, nullptr, 'T'},
                                    {"bind", required_argument, nullptr, 'b'},
                                    {"join", required_argument, nullptr, 'j'},
                                    {"token", required_argument, nullptr, 't'},
                                    {"bootstrap", no_argument, nullptr, 'B'},
                                    {"key", required_argument, nullptr, 'k'},
                                    {"write-timeout-ms", required_argument, nullptr, 'w'},
                                    {"log-keep", required_argument, nullptr, 'K'},
                                    {"agent-nice", required_argument, nullptr, 'N'},
                                    {"join-timeout-s", required_argument, nullptr, 'J'},
                                    {"interpreter", required_argument, nullptr, 'i'},
                                    {"leave-instances", no_argument, nullptr, 'E'},
                                    {"stop-grace-s", required_argument, nullptr, 's'},
                                    {"cgroup-parent", required_argument, nullptr, 'c'},
                                    {"swim", required_argument, nullptr, 'S'},
                                    {"chunk-cache-mb", required_argument, nullptr, 'C'},
                                    {nullptr, 0, nullptr, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "", kOptions, nullptr)) != -1) {
    switch (c) {
      case 'd':
        f.data = optarg;
        break;
      case 'm':
        f.mount = optarg;
        break;
      case 'n':
        f.name = optarg;
        break;
      case 'a':
        f.addr = optarg;
        f.addr_set = true;
        break;
      case 'b':
        f.bind = optarg;
        break;
      case 'j':
        f.join = optarg;
        break;
      case 't':
        f.token = optarg;
        break;
      case 'B':
        f.bootstrap = true;
        break;
      case 'k':
        f.key_file = optarg;
        break;
      case 'J': {
        long long v;
        if (!IntFlag("join-timeout-s", optarg, 1, 86400, &v)) return 2;
        f.join_timeout_s = v;
        break;
      }
      case 'w':
      case 'K': {
        long long v;
        if (!IntFlag(c == 'w' ? "write-timeout-ms" : "log-keep", optarg, 1, 100'000'000, &v)) {
          return 2;
        }
        if (c == 'w') {
          f.write_timeout_ms = v;
        } else {
          f.log_keep = static_cast<uint64_t>(v);
        }
        break;
      }
      case 'L':
        f.links = true;
        break;
      case 'f':
        f.foreground = true;
        break;
      case 'l':
        f.log = optarg;
        break;
      case 'v':
        f.log_level = optarg;
        break;
      case 'g': {
        long long v;
        if (!IntFlag("chunk-grace-s", optarg, 1, 30 * 86400, &v)) return 2;
        f.chunk_grace_s = v;
        break;
      }
      case 'T': {
        long long v;
        if (!IntFlag("cache-timeout-ms", optarg, 0, 86400000, &v)) return 2;
        f.cache_timeout_ms = v;
        break;
      }
      case 'r': {
        long long v;
        if (!IntFlag("reserve-mb", optarg, 0, 1 << 20, &v)) return 2;
        f.reserve_mb = static_cast<uint64_t>(v);
        break;
      }
      case 'C': {
        long long v;
        if (!IntFlag("chunk-cache-mb", optarg, 0, 1 << 20, &v)) return 2;
        f.chunk_cache_mb = v;
        break;
      }
      case 'i': {
        Status is = runtime::ParseInterpreterFlag(optarg, &f.interpreters);
        if (!is.ok()) {
          fprintf(stderr, "constellationd: --interpreter: %s\n", is.message().c_str());
          return 2;
        }
        break;
      }
      case 'E':
        f.leave_instances = true;
        break;
      case 'N': {
        long long v;
        if (!IntFlag("agent-nice", optarg, -20, 19, &v)) return 2;
        f.agent_nice = static_cast<int>(v);
        break;
      }
      case 's': {
        long long v;
        if (!IntFlag("stop-grace-s", optarg, 0, 3600, &v)) return 2;
        f.stop_grace_s = v;
        break;
      }
      case 'c': {
        Status cs = runtime::ValidateCgroupPath(optarg);
        if (!cs.ok()) {
          fprintf(stderr, "constellationd: --cgroup-parent: %s\n", cs.message().c_str());
          return 2;
        }
        f.cgroup_parent = optarg;
        break;
      }
      case 'S': {
        ClusterNodeOptions scratch;
        Status ss = ParseSwimFlag(optarg, &scratch);
        if (!ss.ok()) {
          fprintf(stderr, "constellationd: --swim: %s\n", ss.message().c_str());
          return 2;
        }
        f.swim.push_back(optarg);
        break;
      }
      case 'h':
        fputs(kUsage, stdout);
        return 0;
      case 'V':
        printf("constellationd %s\n", kVersion);
        return 0;
      default:
        fputs(kUsage, stderr);
        return 2;
    }
  }
  if (optind < argc || f.data.empty() || f.mount.empty()) {
    fprintf(stderr, "constellationd: --data and --mount are required\n\n%s", kUsage);
    return 2;
  }
  if (!f.join.empty() && (f.bootstrap || f.token.empty() || f.bind.empty())) {
    fprintf(stderr, "constellationd: --join needs --token and --bind, and not --bootstrap\n");
    return 2;
  }
  if (f.bootstrap && f.bind.empty()) {
    fprintf(stderr, "constellationd: --bootstrap needs --bind (the address others join)\n");
    return 2;
  }
  if (!f.bind.empty() && !f.addr_set) f.addr = f.bind;
  if (f.name.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    f.name = host;
  }
  Status ns = ValidateName(f.name, "node name");
  Result<LogLevel> level = ParseLogLevel(f.log_level);
  if (!ns.ok() || !level.ok()) {
    fprintf(stderr, "constellationd: %s\n", (!ns.ok() ? ns : level.status()).message().c_str());
    return 2;
  }
  SetLogLevel(*level);
  f.data = Absolute(f.data);
  f.mount = Absolute(f.mount);
  if (f.log.empty() && !f.foreground) f.log = f.data + "/constellationd.log";
  if (!f.log.empty()) {
    Status s = MkdirAll(f.log.substr(0, f.log.rfind('/')));
    int fd = open(f.log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
      fprintf(stderr, "constellationd: cannot open log %s: %s\n", f.log.c_str(), strerror(errno));
      return 1;
    }
    SetLogFd(fd);
  }
  if (f.foreground) {
    return Serve(f, [&f](const std::string& error) {
      if (!error.empty()) {
        fprintf(stderr, "constellationd: %s\n", error.c_str());
      } else if (!f.bind.empty()) {
        PrintJoinToken(f);
        fflush(stdout);
      }
    });
  }
  // Detach, but report start-up success or failure through a pipe before the parent exits, so
  // `constellationd ... && ls M` works and errors reach the terminal.
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) {
    perror("constellationd: pipe");
    return 1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    perror("constellationd: fork");
    return 1;
  }
  if (pid > 0) {
    close(pipefd[1]);
    std::string msg;
    char buf[512];
    ssize_t n;
    while ((n = read(pipefd[0], buf, sizeof buf)) > 0) msg.append(buf, static_cast<size_t>(n));
    if (msg.empty()) {
      fprintf(stderr, "constellationd: the daemon died during start-up; see %s\n", f.log.c_str());
      return 1;
    }
    if (msg != "ok") {
      fprintf(stderr, "constellationd: %s\n", msg.c_str());
      return 1;
    }
    if (!f.bind.empty()) PrintJoinToken(f);
    return 0;
  }
  close(pipefd[0]);
  setsid();
  int devnull = open("/dev/null", O_RDWR);
  if (devnull >= 0) {
    dup2(devnull, 0);
    dup2(devnull, 1);
    close(devnull);
  }
  int logfd = open(f.log.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (logfd >= 0) {
    dup2(logfd, 2);  // crashes and sanitizer reports land in the log too
    close(logfd);
  }
  int status_fd = pipefd[1];
  return Serve(f, [&status_fd](const std::string& error) {
    std::string msg = error.empty() ? "ok" : error;
    if (!error.empty()) CN_LOG(Error) << error;
    ssize_t w = write(status_fd, msg.data(), msg.size());
    (void)w;
    close(status_fd);
    status_fd = -1;
  });
}

}  // namespace
}  // namespace constellation

int main(int argc, char** argv) { return constellation::Main(argc, argv); }
