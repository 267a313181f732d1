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

TEST_CASE("ValidateHostPort: HOST:PORT with a port 1..65535") {
  for (const char* good : {"127.0.0.1:7400", "node-1.example:1", "[::1]:65535", "h:080"}) {
    CHECK(ValidateHostPort(good).ok());
  }
  for (const char* bad : {"", "127.0.0.1", ":7400", "h:", "h:0", "h:65536", "h:12a", "h:-1",
                          "a b:1", "h:123456", "h/x:1"}) {
    Status s = ValidateHostPort(bad);
    CHECK(s.code() == Code::kInvalidArgument);
    CHECK(s.message().find("is not HOST:PORT") != std::string::npos);
  }
}

}  // namespace constellation
