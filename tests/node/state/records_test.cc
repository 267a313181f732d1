#include "node/state/records.h"

#include "catch2/catch.hpp"

namespace constellation {

TEST_CASE("instance names") {
  CHECK(ValidateName("web-1", "name").ok());
  CHECK(ValidateName("a", "name").ok());
  CHECK(ValidateName(std::string(63, 'a'), "name").ok());
  CHECK_FALSE(ValidateName(std::string(64, 'a'), "name").ok());
  CHECK_FALSE(ValidateName("", "name").ok());
  CHECK_FALSE(ValidateName("-x", "name").ok());
  CHECK_FALSE(ValidateName("a/b", "name").ok());
  CHECK_FALSE(ValidateName("a b", "name").ok());
  CHECK_FALSE(ValidateName(".", "name").ok());
}

TEST_CASE("field validation refuses bad values and changes nothing") {
  InstanceRecord r;
  InstanceRecord before = r;
  struct Bad {
    const char* field;
    const char* value;
  };
  for (Bad b : {Bad{"ram_mb", "abc"},
                Bad{"ram_mb", "3"},
                Bad{"ram_mb", "-1"},
                Bad{"ram_mb", "4194305"},
                Bad{"ram_mb", "12 "},
                Bad{"ram_mb", ""},
                Bad{"cpu_percent", "100001"},
                Bad{"cpu_percent", "1.5"},
                Bad{"disk_mb", "x"},
                Bad{"restart", "sometimes"},
                Bad{"node", "bad name"},
                Bad{"node", ""},
                Bad{"namespace", ""},
                Bad{"env", "NOEQUALS"},
                Bad{"env", "1X=2"},
                Bad{"placement", "strategy=best"},
                Bad{"placement", "constraint=nokv"},
                Bad{"secrets", "a b"},
                Bad{"cmd", "two\nlines"},
                Bad{"state", "running"}}) {
    INFO(b.field << "=" << b.value);
    Status s = SetInstanceField(&r, b.field, b.value);
    CHECK(s.code() == Code::kInvalidArgument);
    CHECK(s.message().rfind(b.field, 0) == 0);
    CHECK(r == before);
  }
  CHECK(SetInstanceField(&r, "ram_mb", "abc").message() ==
        "ram_mb: \"abc\" is not an integer (expected 0 or 4..4194304 MiB)");
}

TEST_CASE("fields read back as newline-terminated files") {
  InstanceRecord r;
  CHECK(GetInstanceField(r, "ram_mb") == "256\n");
  CHECK(GetInstanceField(r, "cpu_percent") == "100\n");
  CHECK(GetInstanceField(r, "restart") == "never\n");
  CHECK(GetInstanceField(r, "namespace") == "default\n");
  CHECK(GetInstanceField(r, "cmd") == "");
  REQUIRE(SetInstanceField(&r, "ram_mb", "0").ok());
  CHECK(GetInstanceField(r, "ram_mb") == "0\n");
  REQUIRE(SetInstanceField(&r, "env", "A=1\n\nB=x=y\r\n").ok());
  CHECK(GetInstanceField(r, "env") == "A=1\nB=x=y\n");
  REQUIRE(SetInstanceField(&r, "cmd", "sleep 100").ok());
  CHECK(GetInstanceField(r, "cmd") == "sleep 100\n");
}

TEST_CASE("spec applies atomically with patch semantics") {
  InstanceRecord r;
  REQUIRE(SetInstanceField(&r, "cmd", "old").ok());
  REQUIRE(ApplyInstanceSpec(&r, "ram_mb=512\ncpu_percent=50\nenv=PORT=8080\nenv=MODE=prod\n").ok());
  CHECK(r.ram_mb == 512);
  CHECK(r.cpu_percent == 50);
  CHECK(r.cmd == "old");
  CHECK(r.env == std::vector<std::string>{"PORT=8080", "MODE=prod"});
  InstanceRecord before = r;
  Status s = ApplyInstanceSpec(&r, "ram_mb=1024\ncpu_percent=lots\n");
  CHECK(s.code() == Code::kInvalidArgument);
  CHECK(s.message().rfind("spec: cpu_percent:", 0) == 0);
  CHECK(r == before);
  CHECK(ApplyInstanceSpec(&r, "bogus=1").code() == Code::kInvalidArgument);
  CHECK(ApplyInstanceSpec(&r, "no equals").code() == Code::kInvalidArgument);
  CHECK(r == before);
  InstanceRecord copy;
  REQUIRE(ApplyInstanceSpec(&copy, FormatInstanceSpec(r)).ok());
  CHECK(FormatInstanceSpec(copy) == FormatInstanceSpec(r));
}

TEST_CASE("labels") {
  std::vector<std::string> labels;
  REQUIRE(ParseLabels("zone=a\nrack=r1\nk8s.io/role=x\n", &labels).ok());
  CHECK(labels.size() == 3);
  CHECK_FALSE(ParseLabels("novalue", &labels).ok());
  CHECK_FALSE(ParseLabels("=v", &labels).ok());
  CHECK_FALSE(ParseLabels("a b=c", &labels).ok());
  CHECK(labels.size() == 3);
}

TEST_CASE("network and pids_max") {
  InstanceRecord r;
  CHECK(GetInstanceField(r, "network") == "host\n");
  CHECK(GetInstanceField(r, "pids_max") == "0\n");
  CHECK(SetInstanceField(&r, "network", "isolated").ok());
  CHECK(r.network == "isolated");
  CHECK_FALSE(SetInstanceField(&r, "network", "bridge").ok());
  CHECK(r.network == "isolated");
  CHECK(SetInstanceField(&r, "pids_max", "100").ok());
  CHECK(r.pids_max == 100);
  CHECK_FALSE(SetInstanceField(&r, "pids_max", "-1").ok());
  CHECK_FALSE(SetInstanceField(&r, "pids_max", "4194305").ok());
  CHECK(r.pids_max == 100);
  CHECK(ApplyInstanceSpec(&r, "network=host\npids_max=0\n").ok());
  CHECK(r.network == "host");
  CHECK(FormatInstanceSpec(r).find("\npids_max=0\nnetwork=host\n") != std::string::npos);
}

TEST_CASE("records round-trip and reject garbage") {
  InstanceRecord r;
  r.name = "web-1";
  r.uid = 1000;
  r.env = {"A=1"};
  r.placement = {"strategy=spread"};
  r.desired = "running";
  r.network = "isolated";
  r.pids_max = 64;
  Result<InstanceRecord> d = DecodeInstance(EncodeInstance(r));
  REQUIRE(d.ok());
  CHECK(*d == r);
  CHECK_FALSE(DecodeInstance("junk").ok());
  // A version 1 record (before network and pids_max) reads with their defaults.
  std::string v2 = EncodeInstance(r);
  std::string v1 = v2.substr(0, v2.size() - (1 + 8 + 8));  // Bytes("isolated") + Fixed64
  v1[0] = 1;
  Result<InstanceRecord> old = DecodeInstance(v1);
  REQUIRE(old.ok());
  CHECK(old->network == "host");
  CHECK(old->pids_max == 0);
  CHECK(old->cmd == r.cmd);
  // A version 2 record with a bad network value is corrupt.
  InstanceRecord bad = r;
  bad.network = "bridge";
  CHECK_FALSE(DecodeInstance(EncodeInstance(bad)).ok());
  NodeRecord n;
  n.name = "a";
  n.labels = {"zone=1"};
  Result<NodeRecord> dn = DecodeNode(EncodeNode(n));
  REQUIRE(dn.ok());
  CHECK(*dn == n);
}

}  // namespace constellation
