// ControlTree: the Plan 9-style control files under constellation/ (docs/tree.md), independent of
// FUSE so it can be tested directly. Each object kind has a static table of its files (name, mode,
// reader, writer) and each ctl file a table of verbs. A write goes one way for every file:
// look up the file → its writer turns the value into a Command (or refuses) → the command is
// proposed and applied → the verdict is returned, recorded in audit (refusals too) and kept in the
// object's `error` file.
//
// Inode numbers: 1 is the mount root, 2 is cluster/ (the DFS root, later), and every control-tree
// node has the top bit set, so the two numbering spaces never meet.
// Thread-safety: every method is safe from any thread.
#ifndef CONSTELLATION_FSD_CONTROL_TREE_H_
#define CONSTELLATION_FSD_CONTROL_TREE_H_

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "node/agent/instance_agent.h"
#include "node/base/status.h"
#include "node/state/replica.h"

namespace constellation {

inline constexpr uint64_t kRootIno = 1;
inline constexpr uint64_t kClusterIno = 2;
inline constexpr uint64_t kControlInoBit = 1ull << 63;
inline constexpr size_t kMaxControlWriteBytes = 64 * 1024;

struct Caller {
  uint32_t uid = 0;
  uint32_t gid = 0;
  int32_t pid = 0;
};

struct Attr {
  uint64_t ino = 0;
  mode_t mode = 0;  // including the file type bits
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t nlink = 1;
  int64_t mtime_ms = 0;
  uint64_t size = 0;  // 0 for control values (like /proc); the real size of a file-backed `log`
  // The entry and its attributes never change while the daemon runs (fixed directories and
  // cluster-wide files): the kernel may cache them.
  bool stable = false;
};

struct DirEntry {
  std::string name;
  uint64_t ino;
  mode_t mode;
};

struct ControlTreeOptions {
  Replica* replica = nullptr;
  std::string node_name;
  std::string version;
  std::string data_dir;  // for nodes/<self>/disk_mb
  int64_t start_ms = 0;
  std::function<int64_t()> now_ms;
  // Local (not replicated) `constellation/ctl` verbs.
  std::function<Status(const std::string& level)> set_log_level;
  // `gc`: collects unreferenced chunks of cluster/ now.
  std::function<Status()> collect_garbage;
  // `join HOST:PORT TOKEN`: this node leaves its own cluster for the cluster of the node at
  // HOST:PORT (ClusterNode::JoinCluster, then this node's record there). Unset: a node started
  // without --bind, which no other node could reach.
  std::function<Status(const std::string& addr, const std::string& token)> join;
  // More `key value` lines for `status` (the cluster's: role, voters, refused connections...).
  std::function<std::string()> cluster_status;
  // This node's liveness view (SWIM) for nodes/<n>/status — "alive", "suspect", "dead", "left",
  // or "" for a node not heard of yet — and for `nodes_alive` in status. Unset: a node alone,
  // which sees itself alive and knows nothing of others.
  std::function<std::string(const std::string& node)> node_state;
  std::function<size_t()> nodes_alive;
  // Runs this node's instances: writes to an instance wait for it (see Write), and `state`,
  // `pid`, `exit_code`, `stats` and `log` come from its runtime. nullptr: the files show the
  // records only (unit tests).
  InstanceAgent* agent = nullptr;
};

class ControlTree {
 public:
  explicit ControlTree(ControlTreeOptions options);

  // Lookup counts references the kernel holds (FUSE nlookup); Forget drops them.
  Result<Attr> Lookup(uint64_t parent, std::string_view name);
  void Forget(uint64_t ino, uint64_t nlookup);
  Result<Attr> GetAttr(uint64_t ino);
  Result<std::vector<DirEntry>> ReadDir(uint64_t ino);
  bool IsEventsFile(uint64_t ino);
  // A `ctl` file: each write(2) is one command.
  bool IsCtlFile(uint64_t ino);
  // The content of a file, read from the current state.
  Result<std::string> Read(uint64_t ino);
  // A file whose content is a file on the node's disk, read at any offset (an instance's `log`):
  // tail -f follows it by its size and mtime, which GetAttr reports.
  bool IsFileBacked(uint64_t ino);
  Result<std::string> ReadAt(uint64_t ino, uint64_t offset, size_t size);

  using Done = std::function<void(Status)>;
  // Applies one write(2): `data` is one whole value; a trailing newline is dropped. The verdict
  // comes once the command is committed and applied and, for an instance of this node, once the
  // runtime has acted on it: a limit is set on the running process; `start`/`restart` have
  // exec'd the command (or failed to: the error names why); `stop` has stopped it (SIGTERM, the
  // grace period, SIGKILL). `done` is called exactly once, possibly later on another thread.
  // WriteAsync itself never waits for the replica or the runtime (so a `done` may start the next
  // write), except for writes to constellation/ctl, whose local verbs (join) run in the call.
  void WriteAsync(uint64_t ino, std::string_view data, const Caller& caller, Done done);
  Status Write(uint64_t ino, std::string_view data, const Caller& caller);  // waits for it
  Result<Attr> Mkdir(uint64_t parent, std::string_view name, const Caller& caller);
  // rmdir of an instance answers once its process is stopped and its files are gone.
  void RmdirAsync(uint64_t parent, std::string_view name, const Caller& caller, Done done);
  Status Rmdir(uint64_t parent, std::string_view name, const Caller& caller);
  // The refusal for operations the tree does not allow (create, unlink, rename ...), with its
  // message stored in the right `error` file and the attempt audited.
  Status Refuse(uint64_t parent, std::string_view name, std::string_view op, Status why,
                const Caller& caller);

  // Inodes currently remembered (for tests of Forget).
  size_t inode_count();

 private:
  enum class Kind {
    kRoot,
    kClusterDir,
    kCtlDir,
    kCtlFile,
    kNodesDir,
    kNodeDir,
    kNodeFile,
    kInstancesDir,
    kInstanceDir,
    kInstanceFile
  };
  struct Node {
    Kind kind;
    std::string object;  // node or instance name
    int file = -1;       // index in the kind's file table
  };
  struct FileSpec;
  struct Tables;  // the static file tables, in the .cc
  friend struct Tables;
  struct Entry {
    Node node;
    uint64_t nlookup = 0;
  };

  Result<Node> Resolve(uint64_t ino);
  uint64_t InoFor(const Node& node, bool count_lookup);
  Result<Attr> AttrFor(const Node& node, uint64_t ino);
  Result<Node> Child(const Node& parent, std::string_view name);
  static const FileSpec* FilesOf(Kind kind, size_t* count);
  std::string PathOf(const Node& node);
  std::string ErrorKey(const Node& node);
  void SetError(const std::string& key, const Status& verdict);
  Status Propose(Command c, const Caller& caller, const std::string& error_key);
  // Without waiting (Replica::ProposeAsync): `done` runs on the replica's agent thread.
  void ProposeAsync(Command c, const Caller& caller, const std::string& error_key, Done done);

  // Readers and writers named by the tables.
  Result<std::string> ReadStatus(const Node& n);
  Result<std::string> ReadAudit(const Node& n);
  Result<std::string> ReadError(const Node& n);
  Result<Command> WriteClusterCtl(const Node& n, std::string_view value);
  Result<std::string> ReadNodeFile(const Node& n);
  Result<Command> WriteNodeLabels(const Node& n, std::string_view value);
  Result<std::string> ReadInstanceField(const Node& n);
  Result<Command> WriteInstanceField(const Node& n, std::string_view value);
  Result<std::string> ReadInstanceSpec(const Node& n);
  Result<Command> WriteInstanceSpec(const Node& n, std::string_view value);
  Result<Command> WriteInstanceCtl(const Node& n, std::string_view value);
  Result<std::string> ReadInstanceRuntime(const Node& n);
  std::string LogPathOf(const std::string& instance);  // "" without a runtime
  Result<std::string> ReadLog(const std::string& instance, uint64_t offset, size_t size);

  const ControlTreeOptions options_;
  std::mutex mu_;  // guards the maps below
  std::unordered_map<uint64_t, Entry> inodes_;
  std::map<std::string, uint64_t> ino_by_key_;
  uint64_t next_ino_ = 1000;
  std::map<std::string, std::string> errors_;  // error key → message
};

}  // namespace constellation

#endif  // CONSTELLATION_FSD_CONTROL_TREE_H_
