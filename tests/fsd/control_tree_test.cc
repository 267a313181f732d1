#include "fsd/control_tree.h"

#include <sys/stat.h>

#include "catch2/catch.hpp"
#include "node/env/env_fake.h"

namespace constellation {
namespace {

struct Fixture {
  FakeKvStore kv;
  FakeClock clock;
  FakeRandom random{7};
  Env env;
  std::unique_ptr<Replica> replica;
  std::unique_ptr<ControlTree> tree;
  std::string log_level;
  Caller root{0, 0, 1};
  Caller user{1000, 1000, 2};

  Fixture() {
    env = *DefaultEnv();
    env.clock = &clock;
    env.random = &random;
    env.open_kv = [this](const std::string&) -> Result<std::unique_ptr<KvStore>> {
      return kv.Share();
    };
    ReplicaOptions ro;
    ro.data_dir = "/unused";
    ro.node_name = "n1";
    ro.env = &env;
    auto r = Replica::Open(ro);
    REQUIRE(r.ok());
    replica = std::move(r).value();
    Command node;
    node.type = CommandType::kNodeUpdate;
    node.object = "n1";
    node.value = "addr=127.0.0.1:7400\ncpu_cores=2\nram_mb=1024\nversion=0.1.0\n";
    REQUIRE(replica->Propose(node).ok());
    ControlTreeOptions o;
    o.replica = replica.get();
    o.node_name = "n1";
    o.version = "0.1.0";
    o.data_dir = "/";
    o.now_ms = [this] { return clock.NowUnixMs(); };
    o.start_ms = clock.NowUnixMs();
    o.set_log_level = [this](const std::string& l) -> Status {
      if (l != "debug" && l != "info") return Status::InvalidArgument("log-level: bad level");
      log_level = l;
      return Status::Ok();
    };
    tree = std::make_unique<ControlTree>(o);
  }

  uint64_t Ino(const std::string& path) {
    uint64_t ino = kRootIno;
    size_t start = 0;
    while (start < path.size()) {
      size_t slash = path.find('/', start);
      if (slash == std::string::npos) slash = path.size();
      Result<Attr> a = tree->Lookup(ino, path.substr(start, slash - start));
      if (!a.ok()) return 0;
      ino = a->ino;
      start = slash + 1;
    }
    return ino;
  }

  std::string Read(const std::string& path) {
    Result<std::string> r = tree->Read(Ino(path));
    REQUIRE(r.ok());
    return *r;
  }
};

std::vector<std::string> Names(const std::vector<DirEntry>& entries) {
  std::vector<std::string> out;
  for (const DirEntry& e : entries) out.push_back(e.name);
  return out;
}

}  // namespace

TEST_CASE("the tree lists its fixed files with their modes") {
  Fixture f;
  auto root = f.tree->ReadDir(kRootIno);
  REQUIRE(root.ok());
  CHECK(Names(*root) == std::vector<std::string>{"cluster", "constellation"});
  auto ctl = f.tree->ReadDir(f.Ino("constellation"));
  REQUIRE(ctl.ok());
  CHECK(Names(*ctl) == std::vector<std::string>{"ctl", "status", "events", "audit", "error",
                                                "nodes", "instances"});
  CHECK(f.tree->GetAttr(f.Ino("constellation/ctl"))->mode == (S_IFREG | 0200));
  CHECK(f.tree->GetAttr(f.Ino("constellation/audit"))->mode == (S_IFREG | 0400));
  CHECK(f.tree->GetAttr(f.Ino("constellation/instances"))->mode == (S_IFDIR | S_ISVTX | 0777));
  CHECK(f.tree->GetAttr(kClusterIno)->mode == (S_IFDIR | 0755));
  CHECK(f.tree->IsEventsFile(f.Ino("constellation/events")));
  CHECK(f.Ino("constellation/nope") == 0);
  CHECK((f.Ino("constellation/status") & kControlInoBit) != 0);
}

TEST_CASE("mkdir creates an instance owned by the caller with every file") {
  Fixture f;
  uint64_t instances = f.Ino("constellation/instances");
  Result<Attr> dir = f.tree->Mkdir(instances, "web-1", f.user);
  REQUIRE(dir.ok());
  CHECK(dir->uid == 1000);
  CHECK(dir->mode == (S_IFDIR | 0755));
  auto files = f.tree->ReadDir(dir->ino);
  REQUIRE(files.ok());
  CHECK(files->size() == 20);
  Result<Attr> ram = f.tree->Lookup(dir->ino, "ram_mb");
  REQUIRE(ram.ok());
  CHECK(ram->uid == 1000);
  CHECK(ram->mode == (S_IFREG | 0644));
  CHECK(f.tree->Lookup(dir->ino, "state")->mode == (S_IFREG | 0444));
  CHECK(f.tree->Lookup(dir->ino, "ctl")->mode == (S_IFREG | 0200));
  CHECK(f.tree->Mkdir(instances, "web-1", f.user).status().code() == Code::kAlreadyExists);
  CHECK(f.tree->Mkdir(f.Ino("constellation"), "x", f.root).status().code() == Code::kNotPermitted);
  CHECK(f.tree->Mkdir(instances, "bad name", f.user).status().code() == Code::kInvalidArgument);
  CHECK(f.Read("constellation/error").find("must match") != std::string::npos);
}

TEST_CASE("writes go through one path: applied, refused with a reason, always audited") {
  Fixture f;
  uint64_t instances = f.Ino("constellation/instances");
  REQUIRE(f.tree->Mkdir(instances, "web", f.user).ok());
  uint64_t ram = f.Ino("constellation/instances/web/ram_mb");
  CHECK(f.tree->Write(ram, "512\n", f.user).ok());
  CHECK(f.Read("constellation/instances/web/ram_mb") == "512\n");
  Status bad = f.tree->Write(ram, "abc\n", f.user);
  CHECK(bad.code() == Code::kInvalidArgument);
  CHECK(f.Read("constellation/instances/web/error") ==
        "ram_mb: \"abc\" is not an integer (expected 0 or 4..4194304 MiB)\n");
  CHECK(f.Read("constellation/instances/web/ram_mb") == "512\n");
  CHECK(f.tree->Write(f.Ino("constellation/instances/web/state"), "running", f.root).code() ==
        Code::kPermissionDenied);
  CHECK(f.tree->Write(ram, std::string(kMaxControlWriteBytes + 1, '1'), f.user).code() ==
        Code::kTooLarge);
  CHECK(f.tree->Write(f.Ino("constellation/instances/web/ctl"), "kill KILL\n", f.user).ok());
  CHECK(f.tree->Write(f.Ino("constellation/instances/web/ctl"), "kill NOPE", f.user).code() ==
        Code::kInvalidArgument);
  CHECK(f.tree->Write(f.Ino("constellation/ctl"), "log-level debug", f.root).ok());
  CHECK(f.log_level == "debug");
  CHECK(f.tree->Write(f.Ino("constellation/ctl"), "log-level loud", f.root).code() ==
        Code::kInvalidArgument);
  CHECK(f.tree->Write(f.Ino("constellation/nodes/n1/labels"), "zone=a\n", f.root).ok());
  CHECK(f.Read("constellation/nodes/n1/labels") == "zone=a\n");
  // A good write clears the error.
  CHECK(f.tree->Write(ram, "600", f.user).ok());
  CHECK(f.Read("constellation/instances/web/error").empty());
  std::string audit = f.Read("constellation/audit");
  CHECK(audit.find(" 1000 2 n1 instances/web/ram_mb write ok 512\n") != std::string::npos);
  CHECK(audit.find(" 1000 2 n1 instances/web/ram_mb write InvalidArgument abc\n") !=
        std::string::npos);
  CHECK(audit.find(" 0 1 n1 instances/web/state write PermissionDenied running\n") !=
        std::string::npos);
  CHECK(audit.find("instances/web/ctl write ok kill 9\n") != std::string::npos);
  CHECK(audit.find("instances/web/ram_mb write TooLarge ") != std::string::npos);
  CHECK(audit.find(" ctl write ok log-level debug\n") != std::string::npos);
}

TEST_CASE("ctl join: refused without --bind, else handed on; audit never holds the token") {
  Fixture f;
  uint64_t ctl = f.Ino("constellation/ctl");
  CHECK(f.tree->Write(ctl, "join 10.0.0.1:7400 cn1.nobind", f.root).code() ==
        Code::kInvalidArgument);
  CHECK(f.Read("constellation/error").find("without --bind") != std::string::npos);
  CHECK(f.tree->Write(ctl, "join 10.0.0.1:7400", f.root).code() == Code::kInvalidArgument);
  CHECK(f.Read("constellation/error") == "ctl: usage: join HOST:PORT TOKEN\n");
  ControlTreeOptions o;
  o.replica = f.replica.get();
  o.node_name = "n1";
  o.now_ms = [&f] { return f.clock.NowUnixMs(); };
  std::string got;
  o.join = [&got](const std::string& addr, const std::string& token) -> Status {
    got = addr + " " + token;
    if (token != "cn1.good") return Status(Code::kTimedOut, "join: no answer");
    return Status::Ok();
  };
  ControlTree tree(o);
  Result<Attr> dir = tree.Lookup(kRootIno, "constellation");
  REQUIRE(dir.ok());
  Result<Attr> file = tree.Lookup(dir->ino, "ctl");
  REQUIRE(file.ok());
  CHECK(tree.Write(file->ino, "join 10.0.0.1:7400 cn1.bad\n", f.root).code() == Code::kTimedOut);
  CHECK(got == "10.0.0.1:7400 cn1.bad");
  CHECK(tree.Write(file->ino, "join  10.0.0.1:7400\tcn1.good", f.root).ok());
  CHECK(got == "10.0.0.1:7400 cn1.good");
  std::string audit = f.Read("constellation/audit");
  CHECK(audit.find("cn1.") == std::string::npos);
  CHECK(audit.find(" ctl write InvalidArgument join 10.0.0.1:7400 (token not recorded)\n") !=
        std::string::npos);
  CHECK(audit.find(" ctl write InvalidArgument join 10.0.0.1:7400\n") != std::string::npos);
  CHECK(audit.find(" ctl write TimedOut join 10.0.0.1:7400 (token not recorded)\n") !=
        std::string::npos);
  CHECK(audit.find(" ctl write ok join 10.0.0.1:7400 (token not recorded)\n") != std::string::npos);
}

TEST_CASE("rmdir removes the instance and its inodes go stale") {
  Fixture f;
  uint64_t instances = f.Ino("constellation/instances");
  REQUIRE(f.tree->Mkdir(instances, "web", f.user).ok());
  uint64_t ram = f.Ino("constellation/instances/web/ram_mb");
  REQUIRE(f.tree->Rmdir(instances, "web", f.user).ok());
  CHECK(f.tree->GetAttr(ram).status().code() == Code::kNotFound);
  CHECK(f.tree->Rmdir(instances, "web", f.user).code() == Code::kNotFound);
  CHECK(f.tree->Rmdir(f.Ino("constellation/nodes"), "n1", f.root).code() == Code::kNotPermitted);
  CHECK(f.tree->ReadDir(instances)->empty());
}

TEST_CASE("forgotten inodes are dropped, so the table stays bounded") {
  Fixture f;
  uint64_t instances = f.Ino("constellation/instances");
  REQUIRE(f.tree->Mkdir(instances, "web", f.user).ok());
  size_t before = f.tree->inode_count();
  Result<Attr> a = f.tree->Lookup(f.Ino("constellation/instances/web"), "cmd");
  REQUIRE(a.ok());
  // Two lookups of cmd so far (one from Ino, one above) plus the dir's.
  CHECK(f.tree->inode_count() == before + 1);
  f.tree->Forget(a->ino, 2);
  CHECK(f.tree->inode_count() == before);
}

TEST_CASE("status shows the replica's figures") {
  Fixture f;
  std::string s = f.Read("constellation/status");
  CHECK(s.find("node n1\n") != std::string::npos);
  CHECK(s.find("leader n1\n") != std::string::npos);
  CHECK(s.find("term 1\n") != std::string::npos);
  CHECK(s.find("nodes_alive 1\n") != std::string::npos);
  CHECK(s.find("health ok\n") != std::string::npos);
}

}  // namespace constellation
