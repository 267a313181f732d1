#include "node/state/state_machine.h"

#include "catch2/catch.hpp"
#include "node/env/env_fake.h"

namespace constellation {
namespace {

struct Harness {
  FakeKvStore kv;
  StateMachine sm;
  uint64_t index = 0;
  std::vector<std::string> events;

  Harness() { REQUIRE(sm.Load(&kv).ok()); }

  Status Apply(Command c) {
    KvStore::Batch b;
    Status verdict = sm.Apply(++index, c, &b, &events, nullptr);
    sm.StageInto(&b);
    REQUIRE(kv.Write(b, false).ok());
    sm.CommitStaged();
    return verdict;
  }
};

Command Cmd(CommandType type, std::string object, std::string field = "", std::string value = "") {
  Command c;
  c.type = type;
  c.time_ms = 1000;
  c.uid = 1000;
  c.gid = 1000;
  c.node = "n1";
  c.op = "write";
  c.path = "instances/" + object + (field.empty() ? "" : "/" + field);
  c.object = std::move(object);
  c.field = std::move(field);
  c.value = std::move(value);
  return c;
}

}  // namespace

TEST_CASE("instances are created, updated, refused and removed") {
  Harness h;
  CHECK(h.Apply(Cmd(CommandType::kInstanceCreate, "web-1")).ok());
  CHECK(h.Apply(Cmd(CommandType::kInstanceCreate, "web-1")).code() == Code::kAlreadyExists);
  CHECK(h.Apply(Cmd(CommandType::kInstanceCreate, "bad/name")).code() == Code::kInvalidArgument);
  CHECK(h.Apply(Cmd(CommandType::kInstanceSet, "web-1", "ram_mb", "512")).ok());
  CHECK(h.Apply(Cmd(CommandType::kInstanceSet, "web-1", "ram_mb", "abc")).code() ==
        Code::kInvalidArgument);
  CHECK(h.Apply(Cmd(CommandType::kInstanceSet, "nope", "ram_mb", "5")).code() == Code::kNotFound);
  CHECK(h.Apply(Cmd(CommandType::kInstanceSet, "web-1", "state", "running")).code() ==
        Code::kInvalidArgument);
  REQUIRE(h.sm.GetInstance("web-1"));
  CHECK(h.sm.GetInstance("web-1")->ram_mb == 512);
  CHECK(h.sm.GetInstance("web-1")->uid == 1000);
  CHECK(h.Apply(Cmd(CommandType::kInstanceCtl, "web-1", "", "start")).ok());
  CHECK(h.sm.GetInstance("web-1")->desired == "running");
  CHECK(h.Apply(Cmd(CommandType::kInstanceRemove, "web-1")).ok());
  CHECK_FALSE(h.sm.GetInstance("web-1"));
  CHECK(h.Apply(Cmd(CommandType::kInstanceRemove, "web-1")).code() == Code::kNotFound);
  CHECK(h.events == std::vector<std::string>{"1000 instance_created web-1 uid=1000",
                                             "1000 instance_updated web-1 fields=ram_mb",
                                             "1000 instance_ctl web-1 verb=start",
                                             "1000 instance_removed web-1"});
}

TEST_CASE("every audited command leaves one audit line, refused ones too") {
  Harness h;
  (void)h.Apply(Cmd(CommandType::kInstanceCreate, "a"));
  (void)h.Apply(Cmd(CommandType::kInstanceSet, "a", "env", "A=1\nB=2"));
  (void)h.Apply(Cmd(CommandType::kInstanceSet, "a", "ram_mb", "abc"));
  Command refused = Cmd(CommandType::kAuditOnly, "a", "state", "x");
  refused.result = "PermissionDenied";
  CHECK(h.Apply(refused).code() == Code::kPermissionDenied);
  std::string audit;
  REQUIRE(h.sm.ReadAudit(&h.kv, &audit).ok());
  CHECK(audit ==
        "1000 1000 0 n1 instances/a write ok -\n"
        "1000 1000 0 n1 instances/a/env write ok A=1\\nB=2\n"
        "1000 1000 0 n1 instances/a/ram_mb write InvalidArgument abc\n"
        "1000 1000 0 n1 instances/a/state write PermissionDenied x\n");
}

TEST_CASE("committed instance changes reach the observer, refused ones do not") {
  FakeKvStore kv;
  std::vector<InstanceChange> seen;
  StateMachineOptions o;
  o.on_instance_changes = [&](const std::vector<InstanceChange>& c) {
    seen.insert(seen.end(), c.begin(), c.end());
  };
  StateMachine sm(o);
  REQUIRE(sm.Load(&kv).ok());
  std::vector<std::string> events;
  uint64_t index = 0;
  auto apply = [&](Command c) {
    KvStore::Batch b;
    Status s = sm.Apply(++index, c, &b, &events, nullptr);
    sm.StageInto(&b);
    REQUIRE(kv.Write(b, false).ok());
    return s;
  };
  CHECK(apply(Cmd(CommandType::kInstanceCreate, "a")).ok());
  CHECK(apply(Cmd(CommandType::kInstanceSet, "a", "ram_mb", "64")).ok());
  CHECK_FALSE(apply(Cmd(CommandType::kInstanceSet, "a", "ram_mb", "abc")).ok());
  CHECK(apply(Cmd(CommandType::kInstanceCtl, "a", "", "kill 9")).ok());
  CHECK(seen.empty());  // nothing before the commit
  sm.CommitStaged();
  REQUIRE(seen.size() == 3);
  CHECK(seen[0].name == "a");
  CHECK(seen[0].verb.empty());
  CHECK(seen[2].verb == "kill 9");
  for (const InstanceChange& c : seen) {
    CHECK(c.exists);
    CHECK(c.node == "n1");  // placed on the node that made it
  }
  seen.clear();
  CHECK(apply(Cmd(CommandType::kInstanceRemove, "a")).ok());
  sm.DropStaged();  // a batch that failed to write changes nothing
  CHECK(apply(Cmd(CommandType::kNoop, "")).ok());
  sm.CommitStaged();
  CHECK(seen.empty());
  // A change and a removal in one batch: both say the record is gone once the batch is applied.
  CHECK(apply(Cmd(CommandType::kInstanceSet, "a", "ram_mb", "128")).ok());
  CHECK(apply(Cmd(CommandType::kInstanceRemove, "a")).ok());
  sm.CommitStaged();
  REQUIRE(seen.size() == 2);
  CHECK_FALSE(seen[0].exists);
  CHECK_FALSE(seen[1].exists);
  CHECK(seen[1].node.empty());
}

TEST_CASE("audit keeps only the newest lines") {
  FakeKvStore kv;
  StateMachineOptions o;
  o.audit_keep = 3;
  StateMachine sm(o);
  REQUIRE(sm.Load(&kv).ok());
  std::vector<std::string> events;
  for (int i = 0; i < 5; ++i) {
    KvStore::Batch b;
    (void)sm.Apply(i + 1, Cmd(CommandType::kNoop, std::to_string(i)), &b, &events, nullptr);
    sm.StageInto(&b);
    REQUIRE(kv.Write(b, false).ok());
    sm.CommitStaged();
  }
  std::string audit;
  REQUIRE(sm.ReadAudit(&kv, &audit).ok());
  CHECK(audit.find("instances/2 ") != std::string::npos);
  CHECK(audit.find("instances/1 ") == std::string::npos);
}

TEST_CASE("staged changes are invisible until committed and vanish when dropped") {
  Harness h;
  KvStore::Batch b;
  (void)h.sm.Apply(1, Cmd(CommandType::kInstanceCreate, "x"), &b, &h.events, nullptr);
  // A later command in the same batch sees the earlier one.
  CHECK(h.sm.Apply(2, Cmd(CommandType::kInstanceSet, "x", "ram_mb", "64"), &b, &h.events, nullptr)
            .ok());
  CHECK_FALSE(h.sm.GetInstance("x"));
  h.sm.DropStaged();
  CHECK_FALSE(h.sm.GetInstance("x"));
  CHECK(h.sm.applied_index() == 0);
}

TEST_CASE("state reloads from the store, and another format version is refused") {
  Harness h;
  (void)h.Apply(Cmd(CommandType::kInstanceCreate, "x"));
  (void)h.Apply(Cmd(CommandType::kInstanceSet, "x", "cpu_percent", "250"));
  StateMachine again;
  REQUIRE(again.Load(&h.kv).ok());
  CHECK(again.applied_index() == 2);
  REQUIRE(again.GetInstance("x"));
  CHECK(again.GetInstance("x")->cpu_percent == 250);
  KvStore::Batch b;
  b.Put(keys::kFormat, "99");
  REQUIRE(h.kv.Write(b, true).ok());
  StateMachine newer;
  Status s = newer.Load(&h.kv);
  CHECK(s.code() == Code::kNotSupported);
  CHECK(s.message().find("version 99") != std::string::npos);
}

}  // namespace constellation
