#include "fsd/control_tree.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <span>

#include "fsd/ctl_parse.h"
#include "node/state/records.h"

namespace constellation {

struct ControlTree::FileSpec {
  const char* name;
  mode_t mode;
  Result<std::string> (ControlTree::*read)(const Node&);
  Result<Command> (ControlTree::*write)(const Node&, std::string_view);
};

namespace {

using T = ControlTree;

constexpr uint64_t kCtlDirIno = kControlInoBit | 1;
constexpr uint64_t kNodesIno = kControlInoBit | 2;
constexpr uint64_t kInstancesIno = kControlInoBit | 3;
constexpr uint64_t kFirstDynamicIno = kControlInoBit | 1000;

constexpr VerbSpec kClusterVerbs[] = {
    {"compact", 0, 0, "compact"},
    {"log-level", 1, 1, "log-level debug|info|warn|error"},
    {"gc", 0, 0, "gc"},
    {"join", 2, 2, "join HOST:PORT TOKEN"},
};

// What audit keeps of a constellation/ctl line: a join token admits nodes to a cluster, so only
// the verb and the address are kept of `join`.
std::string AuditedClusterCtl(std::string_view line) {
  size_t start = line.find_first_not_of(" \t");
  if (start == std::string_view::npos ||
      (line.substr(start, 5) != "join " && line.substr(start, 5) != "join\t")) {
    return std::string(line);
  }
  std::string out = "join";
  size_t a = line.find_first_not_of(" \t", start + 4);
  if (a == std::string_view::npos) return out;
  size_t e = line.find_first_of(" \t", a);
  out += " " + std::string(line.substr(a, e == std::string_view::npos ? e : e - a));
  if (e != std::string_view::npos && line.find_first_not_of(" \t", e) != std::string_view::npos) {
    out += " (token not recorded)";
  }
  return out;
}

constexpr VerbSpec kInstanceVerbs[] = {
    {"start", 0, 0, "start"},
    {"stop", 0, 0, "stop"},
    {"restart", 0, 0, "restart"},
    {"kill", 0, 1, "kill [SIGNAL]"},
};

}  // namespace

// The tables. Order is the order `ls` shows.
struct ControlTree::Tables {
  static const FileSpec kCtlFiles[];
  static const FileSpec kNodeFiles[];
  static const FileSpec kInstanceFiles[];
};
const ControlTree::FileSpec ControlTree::Tables::kCtlFiles[] = {
    {"ctl", 0200, nullptr, &T::WriteClusterCtl}, {"status", 0444, &T::ReadStatus, nullptr},
    {"events", 0444, nullptr, nullptr},  // a stream, served by the FUSE front
    {"audit", 0400, &T::ReadAudit, nullptr},     {"error", 0444, &T::ReadError, nullptr},
};

const ControlTree::FileSpec ControlTree::Tables::kNodeFiles[] = {
    {"status", 0444, &T::ReadNodeFile, nullptr},
    {"addr", 0444, &T::ReadNodeFile, nullptr},
    {"labels", 0644, &T::ReadNodeFile, &T::WriteNodeLabels},
    {"cpu_cores", 0444, &T::ReadNodeFile, nullptr},
    {"ram_mb", 0444, &T::ReadNodeFile, nullptr},
    {"disk_mb", 0444, &T::ReadNodeFile, nullptr},
    {"version", 0444, &T::ReadNodeFile, nullptr},
    {"error", 0444, &T::ReadError, nullptr},
};

const ControlTree::FileSpec ControlTree::Tables::kInstanceFiles[] = {
    {"cmd", 0644, &T::ReadInstanceField, &T::WriteInstanceField},
    {"env", 0644, &T::ReadInstanceField, &T::WriteInstanceField},
    {"cpu_percent", 0644, &T::ReadInstanceField, &T::WriteInstanceField},
    {"ram_mb", 0644, &T::ReadInstanceField, &T::WriteInstanceField},
    {"disk_mb", 0644, &T::ReadInstanceField, &T::WriteInstanceField},
    {"pids_max", 0644, &T::ReadInstanceField, &T::WriteInstanceField},
    {"network", 0644, &T::ReadInstanceField, &T::WriteInstanceField},
    {"restart", 0644, &T::ReadInstanceField, &T::WriteInstanceField},
    {"node", 0644, &T::ReadInstanceField, &T::WriteInstanceField},
    {"placement", 0644, &T::ReadInstanceField, &T::WriteInstanceField},
    {"namespace", 0644, &T::ReadInstanceField, &T::WriteInstanceField},
    {"secrets", 0644, &T::ReadInstanceField, &T::WriteInstanceField},
    {"spec", 0644, &T::ReadInstanceSpec, &T::WriteInstanceSpec},
    {"ctl", 0200, nullptr, &T::WriteInstanceCtl},
    {"state", 0444, &T::ReadInstanceRuntime, nullptr},
    {"pid", 0444, &T::ReadInstanceRuntime, nullptr},
    {"exit_code", 0444, &T::ReadInstanceRuntime, nullptr},
    {"error", 0444, &T::ReadError, nullptr},
    {"stats", 0444, &T::ReadInstanceRuntime, nullptr},
    {"log", 0444, &T::ReadInstanceRuntime, nullptr},
};

const ControlTree::FileSpec* ControlTree::FilesOf(Kind kind, size_t* count) {
  switch (kind) {
    case Kind::kCtlDir:
    case Kind::kCtlFile:
      *count = std::size(Tables::kCtlFiles);
      return Tables::kCtlFiles;
    case Kind::kNodeDir:
    case Kind::kNodeFile:
      *count = std::size(Tables::kNodeFiles);
      return Tables::kNodeFiles;
    case Kind::kInstanceDir:
    case Kind::kInstanceFile:
      *count = std::size(Tables::kInstanceFiles);
      return Tables::kInstanceFiles;
    default:
      *count = 0;
      return nullptr;
  }
}

ControlTree::ControlTree(ControlTreeOptions options) : options_(std::move(options)) {
  auto fixed = [&](uint64_t ino, Kind kind, const std::string& key) {
    inodes_[ino] = Entry{Node{kind, "", -1}, 0};
    ino_by_key_[key] = ino;
  };
  fixed(kRootIno, Kind::kRoot, "/");
  fixed(kClusterIno, Kind::kClusterDir, "cluster");
  fixed(kCtlDirIno, Kind::kCtlDir, "c");
  fixed(kNodesIno, Kind::kNodesDir, "nodes");
  fixed(kInstancesIno, Kind::kInstancesDir, "instances");
  for (size_t i = 0; i < std::size(Tables::kCtlFiles); ++i) {
    uint64_t ino = kControlInoBit | (16 + i);
    inodes_[ino] = Entry{Node{Kind::kCtlFile, "", static_cast<int>(i)}, 0};
    ino_by_key_["cf/" + std::to_string(i)] = ino;
  }
}

static std::string KeyOf(int kind, const std::string& object, int file) {
  return std::to_string(kind) + "/" + std::to_string(file) + "/" + object;
}

uint64_t ControlTree::InoFor(const Node& node, bool count_lookup) {
  std::string key;
  switch (node.kind) {
    case Kind::kRoot:
      return kRootIno;
    case Kind::kClusterDir:
      return kClusterIno;
    case Kind::kCtlDir:
      return kCtlDirIno;
    case Kind::kNodesDir:
      return kNodesIno;
    case Kind::kInstancesDir:
      return kInstancesIno;
    case Kind::kCtlFile:
      return kControlInoBit | (16 + node.file);
    default:
      key = KeyOf(static_cast<int>(node.kind), node.object, node.file);
  }
  std::lock_guard<std::mutex> l(mu_);
  auto it = ino_by_key_.find(key);
  uint64_t ino;
  if (it == ino_by_key_.end()) {
    ino = kFirstDynamicIno + next_ino_++;
    ino_by_key_[key] = ino;
    inodes_[ino] = Entry{node, 0};
  } else {
    ino = it->second;
  }
  if (count_lookup) ++inodes_[ino].nlookup;
  return ino;
}

void ControlTree::Forget(uint64_t ino, uint64_t nlookup) {
  if (ino < kFirstDynamicIno) return;
  std::lock_guard<std::mutex> l(mu_);
  auto it = inodes_.find(ino);
  if (it == inodes_.end()) return;
  it->second.nlookup = nlookup >= it->second.nlookup ? 0 : it->second.nlookup - nlookup;
  if (it->second.nlookup == 0) {
    const Node& n = it->second.node;
    ino_by_key_.erase(KeyOf(static_cast<int>(n.kind), n.object, n.file));
    inodes_.erase(it);
  }
}

size_t ControlTree::inode_count() {
  std::lock_guard<std::mutex> l(mu_);
  return inodes_.size();
}

Result<ControlTree::Node> ControlTree::Resolve(uint64_t ino) {
  Node node;
  {
    std::lock_guard<std::mutex> l(mu_);
    auto it = inodes_.find(ino);
    if (it == inodes_.end()) return Status::NotFound("stale inode");
    node = it->second.node;
  }
  const StateMachine& st = options_.replica->state();
  if ((node.kind == Kind::kInstanceDir || node.kind == Kind::kInstanceFile) &&
      !st.GetInstance(node.object)) {
    return Status::NotFound("instance " + node.object + " no longer exists");
  }
  if ((node.kind == Kind::kNodeDir || node.kind == Kind::kNodeFile) && !st.GetNode(node.object)) {
    return Status::NotFound("node " + node.object + " no longer exists");
  }
  return node;
}

Result<ControlTree::Node> ControlTree::Child(const Node& parent, std::string_view name) {
  if (name.size() > 255) return Status(Code::kNameTooLong, "name longer than 255 bytes");
  const StateMachine& st = options_.replica->state();
  std::string n(name);
  switch (parent.kind) {
    case Kind::kRoot:
      if (name == "cluster") return Node{Kind::kClusterDir, "", -1};
      if (name == "constellation") return Node{Kind::kCtlDir, "", -1};
      return Status::NotFound(n);
    case Kind::kCtlDir:
      if (name == "nodes") return Node{Kind::kNodesDir, "", -1};
      if (name == "instances") return Node{Kind::kInstancesDir, "", -1};
      break;
    case Kind::kNodesDir:
      if (st.GetNode(n)) return Node{Kind::kNodeDir, n, -1};
      return Status::NotFound("no node " + n);
    case Kind::kInstancesDir:
      if (st.GetInstance(n)) return Node{Kind::kInstanceDir, n, -1};
      return Status::NotFound("no instance " + n);
    case Kind::kNodeDir:
    case Kind::kInstanceDir:
      break;
    default:
      return Status::NotFound(n);
  }
  size_t count = 0;
  const FileSpec* files = FilesOf(parent.kind, &count);
  for (size_t i = 0; i < count; ++i) {
    if (name == files[i].name) {
      Kind k = parent.kind == Kind::kCtlDir    ? Kind::kCtlFile
               : parent.kind == Kind::kNodeDir ? Kind::kNodeFile
                                               : Kind::kInstanceFile;
      return Node{k, parent.object, static_cast<int>(i)};
    }
  }
  return Status::NotFound("no file " + n);
}

Result<Attr> ControlTree::AttrFor(const Node& node, uint64_t ino) {
  Attr a;
  a.ino = ino;
  a.mtime_ms = options_.start_ms;
  a.stable = node.kind == Kind::kRoot || node.kind == Kind::kClusterDir ||
             node.kind == Kind::kCtlDir || node.kind == Kind::kNodesDir ||
             node.kind == Kind::kInstancesDir || node.kind == Kind::kCtlFile;
  switch (node.kind) {
    case Kind::kRoot:
      a.mode = S_IFDIR | 0755;
      a.nlink = 4;
      return a;
    case Kind::kClusterDir:
      a.mode = S_IFDIR | 0755;
      a.nlink = 2;
      return a;
    case Kind::kCtlDir:
    case Kind::kNodesDir:
    case Kind::kNodeDir:
      a.mode = S_IFDIR | 0555;
      a.nlink = 2;
      return a;
    case Kind::kInstancesDir:
      a.mode = S_IFDIR | S_ISVTX | 0777;
      a.nlink = 2;
      return a;
    default:
      break;
  }
  size_t count = 0;
  const FileSpec* files = FilesOf(node.kind, &count);
  if (node.kind == Kind::kInstanceDir || node.kind == Kind::kInstanceFile) {
    std::optional<InstanceRecord> r = options_.replica->state().GetInstance(node.object);
    if (!r) return Status::NotFound("instance " + node.object + " no longer exists");
    a.uid = r->uid;
    a.gid = r->gid;
    a.mtime_ms = r->created_ms;
  }
  if (node.kind == Kind::kNodeDir || node.kind == Kind::kInstanceDir) {
    a.mode = S_IFDIR | (node.kind == Kind::kNodeDir ? 0555 : 0755);
    a.nlink = 2;
  } else {
    a.mode = S_IFREG | files[node.file].mode;
  }
  if (node.kind == Kind::kInstanceFile && std::string_view(files[node.file].name) == "log") {
    std::string path = LogPathOf(node.object);
    struct stat st;
    if (!path.empty() && stat(path.c_str(), &st) == 0) {
      a.size = static_cast<uint64_t>(st.st_size);
      a.mtime_ms = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000;
    }
  }
  return a;
}

Result<Attr> ControlTree::Lookup(uint64_t parent, std::string_view name) {
  CN_ASSIGN_OR_RETURN(Node p, Resolve(parent));
  Result<Node> child = Child(p, name);
  if (child.status().code() == Code::kNotFound &&
      (p.kind == Kind::kInstancesDir || p.kind == Kind::kNodesDir)) {
    // A name another node made may be committed but not yet applied here: a miss waits until this
    // node has applied what the leader had committed (free on a cluster's only voter), so a
    // lookup after another node's mkdir returned finds it, as reads of the files do.
    CN_RETURN_IF_ERROR(options_.replica->ReadBarrier());
    child = Child(p, name);
  }
  CN_RETURN_IF_ERROR(child.status());
  return AttrFor(*child, InoFor(*child, /*count_lookup=*/true));
}

Result<Attr> ControlTree::GetAttr(uint64_t ino) {
  CN_ASSIGN_OR_RETURN(Node n, Resolve(ino));
  return AttrFor(n, ino);
}

Result<std::vector<DirEntry>> ControlTree::ReadDir(uint64_t ino) {
  CN_ASSIGN_OR_RETURN(Node n, Resolve(ino));
  std::vector<DirEntry> out;
  auto add = [&](const std::string& name, const Node& child) {
    Result<Attr> a = AttrFor(child, InoFor(child, false));
    if (a.ok()) out.push_back(DirEntry{name, a->ino, a->mode});
  };
  const StateMachine& st = options_.replica->state();
  switch (n.kind) {
    case Kind::kRoot:
      add("cluster", Node{Kind::kClusterDir, "", -1});
      add("constellation", Node{Kind::kCtlDir, "", -1});
      return out;
    case Kind::kClusterDir:
      return out;
    case Kind::kNodesDir:
      for (const std::string& name : st.ListNodes()) add(name, Node{Kind::kNodeDir, name, -1});
      return out;
    case Kind::kInstancesDir:
      for (const std::string& name : st.ListInstances()) {
        add(name, Node{Kind::kInstanceDir, name, -1});
      }
      return out;
    case Kind::kCtlDir:
    case Kind::kNodeDir:
    case Kind::kInstanceDir: {
      size_t count = 0;
      const FileSpec* files = FilesOf(n.kind, &count);
      Kind k = n.kind == Kind::kCtlDir    ? Kind::kCtlFile
               : n.kind == Kind::kNodeDir ? Kind::kNodeFile
                                          : Kind::kInstanceFile;
      for (size_t i = 0; i < count; ++i) {
        add(files[i].name, Node{k, n.object, static_cast<int>(i)});
      }
      if (n.kind == Kind::kCtlDir) {
        add("nodes", Node{Kind::kNodesDir, "", -1});
        add("instances", Node{Kind::kInstancesDir, "", -1});
      }
      return out;
    }
    default:
      return Status(Code::kNotDirectory, "not a directory");
  }
}

bool ControlTree::IsEventsFile(uint64_t ino) {
  Result<Node> n = Resolve(ino);
  return n.ok() && n->kind == Kind::kCtlFile &&
         std::string_view(Tables::kCtlFiles[n->file].name) == "events";
}

bool ControlTree::IsCtlFile(uint64_t ino) {
  Result<Node> n = Resolve(ino);
  if (!n.ok() || n->file < 0) return false;
  size_t count = 0;
  const FileSpec* files = FilesOf(n->kind, &count);
  return std::string_view(files[n->file].name) == "ctl";
}

Result<std::string> ControlTree::Read(uint64_t ino) {
  CN_ASSIGN_OR_RETURN(Node n, Resolve(ino));
  size_t count = 0;
  const FileSpec* files = FilesOf(n.kind, &count);
  if (n.file < 0 || files == nullptr) return Status(Code::kIsDirectory, "is a directory");
  const FileSpec& f = files[n.file];
  if (f.read == nullptr) return Status::PermissionDenied(std::string(f.name) + " is write-only");
  // Replicated state is read linearizably (a ReadIndex round with the leader; free on a node that
  // is its cluster's only voter). `status`, `error` and nodes/<n>/status are this node's own view:
  // always readable.
  bool own_view = f.read == &T::ReadStatus || f.read == &T::ReadError ||
                  (n.kind == Kind::kNodeFile && std::string_view(f.name) == "status");
  if (!own_view) {
    CN_RETURN_IF_ERROR(options_.replica->ReadBarrier());
  }
  return (this->*f.read)(n);
}

std::string ControlTree::PathOf(const Node& n) {
  size_t count = 0;
  const FileSpec* files = FilesOf(n.kind, &count);
  switch (n.kind) {
    case Kind::kCtlFile:
      return files[n.file].name;
    case Kind::kNodesDir:
      return "nodes";
    case Kind::kNodeDir:
      return "nodes/" + n.object;
    case Kind::kNodeFile:
      return "nodes/" + n.object + "/" + files[n.file].name;
    case Kind::kInstancesDir:
      return "instances";
    case Kind::kInstanceDir:
      return "instances/" + n.object;
    case Kind::kInstanceFile:
      return "instances/" + n.object + "/" + files[n.file].name;
    case Kind::kClusterDir:
      return "../cluster";
    default:
      return ".";
  }
}

std::string ControlTree::ErrorKey(const Node& n) {
  switch (n.kind) {
    case Kind::kNodeDir:
    case Kind::kNodeFile:
      return "n/" + n.object;
    case Kind::kInstanceDir:
    case Kind::kInstanceFile:
      return "i/" + n.object;
    default:
      return "c";
  }
}

void ControlTree::SetError(const std::string& key, const Status& verdict) {
  std::lock_guard<std::mutex> l(mu_);
  if (verdict.ok()) {
    errors_.erase(key);
  } else {
    errors_[key] = verdict.message();
  }
}

Status ControlTree::Propose(Command c, const Caller& caller, const std::string& error_key) {
  c.uid = caller.uid;
  c.gid = caller.gid;
  c.pid = caller.pid;
  Status verdict = options_.replica->Propose(std::move(c));
  SetError(error_key, verdict);
  return verdict;
}

void ControlTree::ProposeAsync(Command c, const Caller& caller, const std::string& error_key,
                               Done done) {
  c.uid = caller.uid;
  c.gid = caller.gid;
  c.pid = caller.pid;
  options_.replica->ProposeAsync(std::move(c), Durability::kSynced,
                                 [this, error_key, done = std::move(done)](Status v, std::string) {
                                   SetError(error_key, v);
                                   done(std::move(v));
                                 });
}

Status ControlTree::Refuse(uint64_t parent, std::string_view name, std::string_view op, Status why,
                           const Caller& caller) {
  Result<Node> p = Resolve(parent);
  std::string key = p.ok() ? ErrorKey(*p) : "c";
  Command a;
  a.type = CommandType::kAuditOnly;
  a.op = std::string(op);
  a.path = (p.ok() ? PathOf(*p) : std::string("?")) + "/" + std::string(name.substr(0, 255));
  a.result = CodeName(why.code());
  (void)Propose(std::move(a), caller, key);
  SetError(key, why);
  return why;
}

namespace {

// Waits for an asynchronous verdict.
class Verdict {
 public:
  ControlTree::Done Callback() {
    return [this](Status s) {
      std::lock_guard<std::mutex> l(mu_);
      status_ = std::move(s);
      done_ = true;
      cv_.notify_all();
    };
  }
  Status Wait() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return done_; });
    return status_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  Status status_;
};

}  // namespace

Status ControlTree::Write(uint64_t ino, std::string_view data, const Caller& caller) {
  Verdict v;
  WriteAsync(ino, data, caller, v.Callback());
  return v.Wait();
}

void ControlTree::WriteAsync(uint64_t ino, std::string_view data, const Caller& caller, Done done) {
  Result<Node> resolved = Resolve(ino);
  if (!resolved.ok()) return done(resolved.status());
  const Node& n = *resolved;
  size_t count = 0;
  const FileSpec* files = FilesOf(n.kind, &count);
  if (n.file < 0 || files == nullptr) return done(Status(Code::kIsDirectory, "is a directory"));
  const FileSpec& f = files[n.file];
  std::string_view value = data;
  if (!value.empty() && value.back() == '\n') value.remove_suffix(1);
  Status local;
  Command c;
  if (data.size() > kMaxControlWriteBytes) {
    local = Status::TooLarge(std::string(f.name) + ": a value is at most " +
                             std::to_string(kMaxControlWriteBytes) + " bytes");
    value = value.substr(0, 256);
  } else if (f.write == nullptr) {
    local = Status::PermissionDenied(std::string(f.name) + " is read-only");
  } else {
    Result<Command> r = (this->*f.write)(n, value);
    if (r.ok()) {
      c = std::move(r).value();
    } else {
      local = r.status();
    }
  }
  std::string key = ErrorKey(n);
  if (!local.ok()) {
    Command a;
    a.type = CommandType::kAuditOnly;
    a.op = "write";
    a.path = PathOf(n);
    a.value = n.kind == Kind::kCtlFile && f.write == &ControlTree::WriteClusterCtl
                  ? AuditedClusterCtl(value)
                  : std::string(value);
    a.result = CodeName(local.code());
    // Answered once audited, as every refusal.
    return ProposeAsync(std::move(a), caller, key,
                        [this, key, local, done = std::move(done)](Status) {
                          SetError(key, local);
                          done(local);
                        });
  }
  c.op = "write";
  c.path = PathOf(n);
  if (c.value.empty()) c.value = std::string(value);
  InstanceAgent::Wait wait = InstanceAgent::Wait::kApplied;
  if (c.type == CommandType::kInstanceCtl) {
    std::string_view verb = std::string_view(c.value).substr(0, c.value.find(' '));
    if (verb == "start" || verb == "restart") wait = InstanceAgent::Wait::kStarted;
    if (verb == "stop") wait = InstanceAgent::Wait::kSettled;
  }
  bool instance = c.type == CommandType::kInstanceCtl || c.type == CommandType::kInstanceSet ||
                  c.type == CommandType::kInstanceSpec;
  std::string object = c.object;
  ProposeAsync(std::move(c), caller, key,
               [this, key, instance, object, wait, done = std::move(done)](Status s) mutable {
                 if (!s.ok() || !instance || options_.agent == nullptr) return done(s);
                 options_.agent->AfterCommit(object, wait,
                                             [this, key, done = std::move(done)](Status v) {
                                               if (!v.ok()) SetError(key, v);
                                               done(v);
                                             });
               });
}

Result<Attr> ControlTree::Mkdir(uint64_t parent, std::string_view name, const Caller& caller) {
  CN_ASSIGN_OR_RETURN(Node p, Resolve(parent));
  if (p.kind != Kind::kInstancesDir) {
    return Refuse(parent, name, "mkdir",
                  Status::NotPermitted("directories can only be made in instances/"), caller);
  }
  if (name.size() > 255) return Status(Code::kNameTooLong, "name longer than 255 bytes");
  Command c;
  c.type = CommandType::kInstanceCreate;
  c.op = "mkdir";
  c.object = std::string(name);
  c.path = "instances/" + c.object;
  CN_RETURN_IF_ERROR(Propose(std::move(c), caller, "c"));
  return Lookup(parent, name);
}

Status ControlTree::Rmdir(uint64_t parent, std::string_view name, const Caller& caller) {
  Verdict v;
  RmdirAsync(parent, name, caller, v.Callback());
  return v.Wait();
}

void ControlTree::RmdirAsync(uint64_t parent, std::string_view name, const Caller& caller,
                             Done done) {
  Result<Node> p = Resolve(parent);
  if (!p.ok()) return done(p.status());
  if (p->kind != Kind::kInstancesDir) {
    return done(Refuse(parent, name, "rmdir",
                       Status::NotPermitted("only instances/<name> directories can be removed"),
                       caller));
  }
  std::string n(name.substr(0, 255));
  bool exists = options_.replica->state().GetInstance(n).has_value();
  Command c;
  c.type = CommandType::kInstanceRemove;
  c.op = "rmdir";
  c.object = n;
  c.path = "instances/" + n;
  Status s = Propose(std::move(c), caller, exists ? "i/" + n : "c");
  if (s.ok()) SetError("i/" + n, Status::Ok());
  if (!s.ok() || options_.agent == nullptr) return done(s);
  options_.agent->AfterCommit(n, InstanceAgent::Wait::kRemoved, std::move(done));
}

// --- readers and writers ------------------------------------------------------------------

Result<std::string> ControlTree::ReadStatus(const Node&) {
  ReplicaStatus s = options_.replica->GetStatus();
  int64_t uptime_s = (options_.now_ms() - options_.start_ms) / 1000;
  size_t alive = options_.nodes_alive                                    ? options_.nodes_alive()
                 : options_.replica->state().GetNode(options_.node_name) ? 1
                                                                         : 0;
  return "cluster " + s.cluster_id + "\nnode " + s.node + "\nleader " +
         (s.leader.empty() ? std::string("none") : s.leader) + "\nterm " + std::to_string(s.term) +
         "\ncommit_index " + std::to_string(s.commit_index) + "\napplied_index " +
         std::to_string(s.applied_index) + "\nnodes_alive " + std::to_string(alive) +
         "\nhealth ok\nversion " + options_.version + "\nuptime_s " + std::to_string(uptime_s) +
         "\n" + (options_.cluster_status ? options_.cluster_status() : std::string());
}

Result<std::string> ControlTree::ReadAudit(const Node&) {
  std::string out;
  CN_RETURN_IF_ERROR(options_.replica->ReadAudit(&out));
  return out;
}

Result<std::string> ControlTree::ReadError(const Node& n) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = errors_.find(ErrorKey(n));
  if (it == errors_.end()) return std::string();
  return it->second + "\n";
}

Result<Command> ControlTree::WriteClusterCtl(const Node&, std::string_view value) {
  CN_ASSIGN_OR_RETURN(ParsedCtl p, ParseCtl(value, kClusterVerbs));
  switch (p.verb) {
    case 0:
      CN_RETURN_IF_ERROR(options_.replica->Compact());
      break;
    case 1:
      if (!options_.set_log_level) return Status::NotSupported("log-level: not available");
      CN_RETURN_IF_ERROR(options_.set_log_level(p.args[0]));
      break;
    case 2:
      if (!options_.collect_garbage) return Status::NotSupported("gc: cluster/ is not served");
      CN_RETURN_IF_ERROR(options_.collect_garbage());
      break;
    case 3:
      if (!options_.join) {
        return Status::InvalidArgument(
            "join: this node was started without --bind, so no other node could reach it; "
            "restart it with --bind HOST:PORT");
      }
      CN_RETURN_IF_ERROR(options_.join(p.args[0], p.args[1]));
      break;
  }
  Command c;
  c.type = CommandType::kNoop;  // local verbs change no replicated state; audited all the same
  c.value = AuditedClusterCtl(value);
  return c;
}

Result<std::string> ControlTree::ReadNodeFile(const Node& n) {
  std::optional<NodeRecord> r = options_.replica->state().GetNode(n.object);
  if (!r) return Status::NotFound("node " + n.object + " no longer exists");
  std::string_view f = Tables::kNodeFiles[n.file].name;
  bool self = n.object == options_.node_name;
  if (f == "status") {
    std::string state = options_.node_state ? options_.node_state(n.object) : "";
    if (state.empty()) state = self && !options_.node_state ? "alive" : "unknown";
    return state + "\n";
  }
  if (f == "addr") return r->addr + "\n";
  if (f == "cpu_cores") return std::to_string(r->cpu_cores) + "\n";
  if (f == "ram_mb") return std::to_string(r->ram_mb) + "\n";
  if (f == "version") return r->version + "\n";
  if (f == "labels") {
    std::string out;
    for (const std::string& l : r->labels) out += l + "\n";
    return out;
  }
  if (f == "disk_mb") {
    struct statvfs vfs;
    if (!self || statvfs(options_.data_dir.c_str(), &vfs) != 0) return std::string("0\n");
    return std::to_string(static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize / (1024 * 1024)) +
           "\n";
  }
  return Status::Internal("unhandled node file");
}

Result<Command> ControlTree::WriteNodeLabels(const Node& n, std::string_view value) {
  Command c;
  c.type = CommandType::kNodeSetLabels;
  c.object = n.object;
  c.value = std::string(value);
  return c;
}

Result<std::string> ControlTree::ReadInstanceField(const Node& n) {
  std::optional<InstanceRecord> r = options_.replica->state().GetInstance(n.object);
  if (!r) return Status::NotFound("instance " + n.object + " no longer exists");
  return GetInstanceField(*r, Tables::kInstanceFiles[n.file].name);
}

Result<Command> ControlTree::WriteInstanceField(const Node& n, std::string_view value) {
  Command c;
  c.type = CommandType::kInstanceSet;
  c.object = n.object;
  c.field = Tables::kInstanceFiles[n.file].name;
  c.value = std::string(value);
  return c;
}

Result<std::string> ControlTree::ReadInstanceSpec(const Node& n) {
  std::optional<InstanceRecord> r = options_.replica->state().GetInstance(n.object);
  if (!r) return Status::NotFound("instance " + n.object + " no longer exists");
  return FormatInstanceSpec(*r);
}

Result<Command> ControlTree::WriteInstanceSpec(const Node& n, std::string_view value) {
  Command c;
  c.type = CommandType::kInstanceSpec;
  c.object = n.object;
  c.value = std::string(value);
  return c;
}

Result<Command> ControlTree::WriteInstanceCtl(const Node& n, std::string_view value) {
  CN_ASSIGN_OR_RETURN(ParsedCtl p, ParseCtl(value, kInstanceVerbs));
  Command c;
  c.type = CommandType::kInstanceCtl;
  c.object = n.object;
  c.value = kInstanceVerbs[p.verb].word;
  if (p.verb == 3) {  // kill [SIGNAL]
    int sig = 15;
    if (!p.args.empty()) {
      CN_ASSIGN_OR_RETURN(sig, ParseSignal(p.args[0]));
    }
    c.value += " " + std::to_string(sig);
  }
  return c;
}

std::string ControlTree::LogPathOf(const std::string& instance) {
  runtime::Runtime* rt = options_.agent == nullptr ? nullptr : options_.agent->runtime();
  return rt == nullptr ? std::string() : rt->LogPath(instance);
}

bool ControlTree::IsFileBacked(uint64_t ino) {
  Result<Node> n = Resolve(ino);
  return n.ok() && n->kind == Kind::kInstanceFile &&
         std::string_view(Tables::kInstanceFiles[n->file].name) == "log";
}

Result<std::string> ControlTree::ReadAt(uint64_t ino, uint64_t offset, size_t size) {
  CN_ASSIGN_OR_RETURN(Node n, Resolve(ino));
  return ReadLog(n.object, offset, size);
}

Result<std::string> ControlTree::ReadLog(const std::string& instance, uint64_t offset,
                                         size_t size) {
  std::string path = LogPathOf(instance);
  std::string out;
  if (path.empty()) return out;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return out;  // never started: an empty log
    return Status::FromErrno(errno, "open " + path);
  }
  out.resize(std::min<size_t>(size, 1 << 20));
  ssize_t r;
  do {
    r = pread(fd, out.data(), out.size(), static_cast<off_t>(offset));
  } while (r < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (r < 0) return Status::FromErrno(err, "read " + path);
  out.resize(static_cast<size_t>(r));
  return out;
}

Result<std::string> ControlTree::ReadInstanceRuntime(const Node& n) {
  std::optional<InstanceRecord> r = options_.replica->state().GetInstance(n.object);
  if (!r) return Status::NotFound("instance " + n.object + " no longer exists");
  std::string_view f = Tables::kInstanceFiles[n.file].name;
  if (f == "log") return ReadLog(n.object, 0, 1 << 20);
  runtime::Runtime* rt = options_.agent == nullptr ? nullptr : options_.agent->runtime();
  Result<runtime::InstanceStatus> st = rt == nullptr
                                           ? Result<runtime::InstanceStatus>(Status::NotFound(""))
                                           : rt->Get(n.object, /*usage=*/f == "stats");
  if (!st.ok()) {
    // Not (yet) known to this node's runtime: what the record says.
    if (f == "state") return r->state + "\n";
    if (f == "stats") return runtime::FormatStats(runtime::InstanceStatus{});
    return std::string();
  }
  if (f == "state") return st->state + "\n";
  if (f == "pid") return st->pid > 0 ? std::to_string(st->pid) + "\n" : std::string();
  if (f == "exit_code") {
    return st->exit_code >= 0 ? std::to_string(st->exit_code) + "\n" : std::string();
  }
  if (f == "stats") return runtime::FormatStats(*st);
  return Status::Internal("unhandled instance file");
}

}  // namespace constellation
