// The pure parts of the instance agent: how a record becomes the runtime's spec, and how a
// transition becomes an event line. The agent end to end (real processes through a mount) is in
// tests/integration/instances*.sh.
#include "node/agent/instance_agent.h"

#include "catch2/catch.hpp"

namespace constellation {
namespace {

TEST_CASE("a record becomes the runtime's spec", "[agent]") {
  InstanceRecord r;
  r.name = "web-1";
  r.uid = 1000;
  r.gid = 100;
  r.cmd = "python3 -m http.server";
  r.env = {"A=1"};
  r.cpu_percent = 25;
  r.ram_mb = 128;
  r.disk_mb = 10;
  r.pids_max = 64;
  r.network = "isolated";
  r.restart = "on-failure";
  r.desired = "running";
  runtime::InstanceSpec s = SpecFromRecord(r);
  CHECK(s.name == "web-1");
  CHECK(s.cmd == r.cmd);
  CHECK(s.env == r.env);
  CHECK(s.cpu_percent == 25);
  CHECK(s.ram_mb == 128);
  CHECK(s.disk_mb == 10);
  CHECK(s.pids_max == 64);
  CHECK(s.isolate_network);
  CHECK(s.restart == runtime::RestartPolicy::kOnFailure);
  CHECK(s.uid == 1000);
  CHECK(s.gid == 100);
  CHECK(s.desired == runtime::Desired::kRunning);
  CHECK(runtime::ValidateSpec(s).ok());
  r.desired = "stopped";
  r.network = "host";
  CHECK(SpecFromRecord(r).desired == runtime::Desired::kStopped);
  CHECK_FALSE(SpecFromRecord(r).isolate_network);
  r.desired = "";
  CHECK(SpecFromRecord(r).desired == runtime::Desired::kNone);
}

TEST_CASE("a transition becomes one event line, values with spaces quoted", "[agent]") {
  runtime::Transition t;
  t.instance = "web-1";
  t.event = "instance_exited";
  t.state = "exited 3";
  t.detail = {{"code", "3"}, {"reason", "exec: a \"b\": No such file"}};
  t.unix_ms = 1700000000123;
  CHECK(FormatTransition(t) ==
        "1700000000123 instance_exited web-1 state=\"exited 3\" code=3 "
        "reason=\"exec: a \\\"b\\\": No such file\"");
  t.event = "instance_started";
  t.state = "running";
  t.detail = {{"pid", "42"}};
  CHECK(FormatTransition(t) == "1700000000123 instance_started web-1 state=running pid=42");
}

TEST_CASE("whether a record runs here", "[agent]") {
  InstanceAgentOptions o;
  o.node_name = "node-a";
  InstanceAgent agent(o);
  InstanceRecord r;
  CHECK(agent.Ours(r));  // unplaced: where it was made, until the scheduler places it
  r.node = "node-a";
  CHECK(agent.Ours(r));
  r.node = "node-b";
  CHECK_FALSE(agent.Ours(r));
  // Before Start, a writer is answered at once.
  bool called = false;
  agent.AfterCommit("x", InstanceAgent::Wait::kSettled, [&](Status s) {
    called = true;
    CHECK(s.ok());
  });
  CHECK(called);
}

}  // namespace
}  // namespace constellation
