#include "catch2/catch.hpp"
#include "node/cluster/cluster_node.h"

namespace constellation {

TEST_CASE("ParseSwimFlag: settings, ranges and unknown names") {
  ClusterNodeOptions o;
  REQUIRE(ParseSwimFlag("probe_interval_ms=250", &o).ok());
  CHECK(o.swim.probe_interval_ms == 250);
  REQUIRE(ParseSwimFlag("suspicion_mult=1.5", &o).ok());
  CHECK(o.swim.suspicion_mult == 1.5);
  REQUIRE(ParseSwimFlag("leave_timeout_ms=0", &o).ok());
  CHECK(o.leave_timeout_ms == 0);
  REQUIRE(ParseSwimFlag("push_pull_interval_ms=0", &o).ok());
  CHECK(o.swim.push_pull_interval_ms == 0);

  ClusterNodeOptions before = o;
  for (const char* bad : {"probe_interval_ms", "probe_interval_ms=", "probe_interval_ms=abc",
                          "probe_interval_ms=5", "probe_interval_ms=1.5", "indirect_checks=-1",
                          "suspicion_mult=0", "gossip_fanout=1e9", "nonsense=1"}) {
    INFO(bad);
    Status s = ParseSwimFlag(bad, &o);
    CHECK(s.code() == Code::kInvalidArgument);
    CHECK_FALSE(s.message().empty());
  }
  CHECK(o.swim.probe_interval_ms == before.swim.probe_interval_ms);
  CHECK(o.swim.suspicion_mult == before.swim.suspicion_mult);
}

}  // namespace constellation
