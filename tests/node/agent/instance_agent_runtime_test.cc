// The instance agent between a state machine and a real runtime (root: cgroups, namespaces).
// Each case passes with a warning where the runtime cannot run (see CanRunRootTests).
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "catch2/catch.hpp"
#include "node/agent/instance_agent.h"
#include "node/env/env_fake.h"
#include "node/runtime/runtime.h"
#include "node/state/event_hub.h"
#include "node/state/state_machine.h"
#include "tests/node/runtime/test_util.h"

namespace constellation {
namespace {

using runtime::testing::CanRunRootTests;
using runtime::testing::ReadFileOrEmpty;
using runtime::testing::TempDir;

constexpr auto kWait = std::chrono::seconds(20);

Command Cmd(CommandType type, std::string object, std::string field = "", std::string value = "") {
  Command c;
  c.type = type;
  c.time_ms = 1000;
  c.node = "n1";
  c.op = "write";
  c.object = std::move(object);
  c.field = std::move(field);
  c.value = std::move(value);
  return c;
}

// A state machine whose instance changes go to an agent with a runtime, as in the daemon.
struct Node {
  TempDir tmp;
  FakeKvStore kv;
  EventHub events;
  std::unique_ptr<InstanceAgent> agent;
  std::unique_ptr<StateMachine> sm;
  std::unique_ptr<runtime::Runtime> rt;
  runtime::Runtime::Options opts;
  uint64_t index = 0;
  // The event lines published so far (the agent publishes the runtime's transitions).
  std::mutex events_mu;
  std::condition_variable events_cv;
  uint64_t cursor = 0;
  std::string seen;

  Node() : opts(runtime::testing::TestRuntimeOptions(tmp)) {
    agent = std::make_unique<InstanceAgent>(InstanceAgentOptions{.node_name = "n1"});
    StateMachineOptions so;
    so.on_instance_changes = [this](const std::vector<InstanceChange>& changes) {
      agent->OnChanges(changes);
    };
    sm = std::make_unique<StateMachine>(so);
    REQUIRE(sm->Load(&kv).ok());
    cursor = events.Subscribe();
    events.SetListener([this] {
      std::lock_guard<std::mutex> l(events_mu);
      events_cv.notify_all();
    });
    auto r = runtime::Runtime::Open(opts);
    INFO(r.status().ToString());
    REQUIRE(r.ok());
    rt = std::move(*r);
    REQUIRE(agent->Start(sm.get(), rt.get(), &events).ok());
  }
  ~Node() {
    agent->Shutdown();
    rt.reset();
    runtime::testing::KillTestCgroups();
    runtime::testing::RemoveTestCgroups();
  }

  // Applies `commands` as one committed batch (one OnChanges call), as the replica does.
  void Commit(const std::vector<Command>& commands) {
    KvStore::Batch b;
    std::vector<std::string> lines;
    for (const Command& c : commands) {
      Status v = sm->Apply(++index, c, &b, &lines, nullptr);
      INFO(v.ToString());
      REQUIRE(v.ok());
    }
    sm->StageInto(&b);
    REQUIRE(kv.Write(b, false).ok());
    sm->CommitStaged();
  }

  // AfterCommit's verdict.
  Status After(const std::string& name, InstanceAgent::Wait wait) {
    auto p = std::make_shared<std::promise<Status>>();
    std::future<Status> f = p->get_future();
    agent->AfterCommit(name, wait, [p](Status s) { p->set_value(s); });
    REQUIRE(f.wait_for(kWait) == std::future_status::ready);
    return f.get();
  }

  // Waits for an event line containing `what` (fails the test after kWait).
  void WaitEvent(const std::string& what) {
    std::unique_lock<std::mutex> l(events_mu);
    bool ok = events_cv.wait_for(l, kWait, [&] {
      seen += events.Read(&cursor, size_t{1} << 20);
      return seen.find(what) != std::string::npos;
    });
    INFO("waiting for \"" << what << "\"; seen:\n" << seen);
    REQUIRE(ok);
  }

  std::string Memory(const std::string& inst) {
    const runtime::CgroupLayout& l = rt->cgroup_layout();
    return l.version == runtime::CgroupVersion::kV2
               ? ReadFileOrEmpty(l.v2_root + "/" + opts.cgroup_parent + "/n1/" + inst +
                                 "/memory.max")
               : ReadFileOrEmpty(l.v1.at("memory") + "/" + opts.cgroup_parent + "/n1/" + inst +
                                 "/memory.limit_in_bytes");
  }
};

TEST_CASE("agent: a limit change of an instance with no process is handled by the committer") {
  if (!CanRunRootTests()) return;
  Node n;
  n.Commit({Cmd(CommandType::kInstanceCreate, "w"),
            Cmd(CommandType::kInstanceSet, "w", "cmd", "sleep 1000")});
  REQUIRE(n.After("w", InstanceAgent::Wait::kApplied).ok());
  REQUIRE(n.rt->Has("w"));
  CHECK(n.agent->handled_on_commit() == 0);  // making it is a worker's
  // No process: the runtime takes the limit in memory while the commit is applied.
  n.Commit({Cmd(CommandType::kInstanceSet, "w", "ram_mb", "192")});
  CHECK(n.agent->handled_on_commit() == 1);
  CHECK(n.After("w", InstanceAgent::Wait::kApplied).ok());
  // The start (a worker's) runs it with that limit.
  n.Commit({Cmd(CommandType::kInstanceCtl, "w", "", "start")});
  REQUIRE(n.After("w", InstanceAgent::Wait::kStarted).ok());
  CHECK(n.agent->handled_on_commit() == 1);
  CHECK(n.rt->Get("w")->state == "running");
  CHECK(n.Memory("w") == std::to_string(192 << 20) + "\n");
  // Running: the group needs the write, which a worker makes.
  n.Commit({Cmd(CommandType::kInstanceSet, "w", "ram_mb", "160")});
  CHECK(n.After("w", InstanceAgent::Wait::kApplied).ok());
  CHECK(n.agent->handled_on_commit() == 1);
  CHECK(n.Memory("w") == std::to_string(160 << 20) + "\n");
}

TEST_CASE("agent: a verb committed in one batch with a limit change is not lost") {
  if (!CanRunRootTests()) return;
  Node n;
  // Its first run leaves a mark in the working directory and exits; a run that finds the mark
  // stays.
  n.Commit({Cmd(CommandType::kInstanceCreate, "v"),
            Cmd(CommandType::kInstanceSet, "v", "cmd",
                "if [ -e ran ]; then exec sleep 1000; fi; touch ran"),
            Cmd(CommandType::kInstanceCtl, "v", "", "start")});
  REQUIRE(n.After("v", InstanceAgent::Wait::kStarted).ok());
  n.WaitEvent(" instance_exited v ");
  // Desired running already, no process: the limit alone is a quiet change, but the `start`
  // committed beside it must still run the instance again, with the new limit.
  n.Commit({Cmd(CommandType::kInstanceSet, "v", "ram_mb", "176"),
            Cmd(CommandType::kInstanceCtl, "v", "", "start")});
  REQUIRE(n.After("v", InstanceAgent::Wait::kStarted).ok());
  CHECK(n.rt->Get("v")->state == "running");
  CHECK(n.Memory("v") == std::to_string(176 << 20) + "\n");
}

}  // namespace
}  // namespace constellation
