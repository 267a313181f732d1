#include "node/cluster/cluster_node.h"

#include "catch2/catch.hpp"
#include "node/cluster/wire.h"
#include "node/env/env_fake.h"
#include "tests/temp_dir.h"

namespace constellation {

// A node stopped after its admission (by --join or a `join` verb) and before it caught up finds
// the join reply's member list in its store: it resumes catching up without --join, rather than
// bootstrapping a cluster of its own or refusing to start.
TEST_CASE("ClusterNode: a node admitted but not caught up resumes catching up without --join") {
  TempDir dir("cn_cluster_node");
  FakeKvStore kv;
  Env env = *DefaultEnv();
  env.open_kv = [&kv](const std::string&) -> Result<std::unique_ptr<KvStore>> {
    return kv.Share();
  };
  ReplicaOptions ro;
  ro.data_dir = dir.path();
  ro.node_name = "n2";
  ro.env = &env;
  {
    // Admitted: a store opened to join, holding the reply's members, no configuration yet.
    ReplicaOptions joining = ro;
    joining.join = true;
    Result<std::unique_ptr<Replica>> r = Replica::Open(joining);
    REQUIRE(r.ok());
    JoinReply reply;
    reply.ok = true;
    reply.members = {MemberRecord{"n1", "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7", "127.0.0.1:1"}};
    KvStore::Batch b;
    b.Put("j/members", EncodeJoinReply(reply));
    REQUIRE((*r)->store()->Write(b, /*sync=*/true).ok());
  }
  ClusterNodeOptions co;
  co.data_dir = dir.path();
  co.node_name = "n2";
  co.bind = "127.0.0.1:0";
  co.join_timeout_ms = 300;  // n1 is not there: catching up cannot finish
  Result<std::unique_ptr<ClusterNode>> node = ClusterNode::Start(co);
  REQUIRE(node.ok());
  (*node)->Configure(&ro);
  CHECK_FALSE(ro.join);  // no --join
  Result<std::unique_ptr<Replica>> r = Replica::Open(ro);
  REQUIRE(r.ok());
  CHECK((*r)->GetStatus().cluster_id.empty());  // no cluster of its own was bootstrapped
  CHECK((*r)->GetStatus().voters.empty());
  Status s = (*node)->Attach(r->get());
  CHECK(s.code() == Code::kTimedOut);
  CHECK(s.message().find("admitted, but not caught up") != std::string::npos);
  (*node)->Detach();
}

}  // namespace constellation
