#include "node/cluster/wire.h"

#include "catch2/catch.hpp"
#include "node/env/transport.h"

namespace constellation {

TEST_CASE("wire: every kind round-trips") {
  raft::Message m;
  m.type = raft::MessageType::kAppend;
  m.from = "n1";
  m.to = "n2";
  m.term = 3;
  m.index = 7;
  m.log_term = 2;
  m.entries.push_back(raft::Entry{8, 3, raft::EntryType::kNormal, "data"});
  auto w = DecodeWire(EncodeRaftWire(m));
  REQUIRE(w.ok());
  CHECK(w->kind == WireKind::kRaft);
  CHECK(w->raft == m);

  JoinRequest req{"n4", "10.0.0.4:7400", std::string(40, 'a')};
  w = DecodeWire(EncodeJoinRequest(req));
  REQUIRE(w.ok());
  CHECK(w->kind == WireKind::kJoinRequest);
  CHECK(w->join_request == req);

  JoinReply rep;
  rep.ok = true;
  rep.cluster_id = "abc";
  rep.members = {MemberRecord{"n1", std::string(40, 'b'), "10.0.0.1:7400"}};
  w = DecodeWire(EncodeJoinReply(rep));
  REQUIRE(w.ok());
  CHECK(w->join_reply == rep);

  membership::Message sm;
  sm.type = membership::MessageType::kPing;
  sm.from = "n1";
  sm.from_addr = "10.0.0.1:7400";
  sm.to = "n2";
  sm.seq = 9;
  sm.updates.push_back(membership::Update{membership::State::kSuspect, "n3", "", 2, "n1"});
  w = DecodeWire(EncodeMembershipWire(sm));
  REQUIRE(w.ok());
  CHECK(w->kind == WireKind::kMembership);
  CHECK(w->membership == sm);
  std::string enc = EncodeMembershipWire(sm);
  for (size_t n = 0; n < enc.size(); ++n) CHECK_FALSE(DecodeWire(enc.substr(0, n)).ok());
}

TEST_CASE("wire: malformed, truncated, trailing and other versions are refused") {
  CHECK(DecodeWire("").status().code() == Code::kCorruption);
  CHECK(DecodeWire(std::string("\x01", 1)).status().code() == Code::kCorruption);
  CHECK(DecodeWire(std::string("\x02\x02", 2)).status().code() == Code::kNotSupported);
  CHECK(DecodeWire(std::string("\x01\x09", 2)).status().code() == Code::kCorruption);
  std::string req = EncodeJoinRequest(JoinRequest{"n4", "h:1", std::string(40, 'a')});
  for (size_t n = 0; n < req.size(); ++n) CHECK_FALSE(DecodeWire(req.substr(0, n)).ok());
  CHECK_FALSE(DecodeWire(req + "x").ok());
  // A key longer than 40 characters.
  CHECK_FALSE(DecodeWire(EncodeJoinRequest(JoinRequest{"n4", "h:1", std::string(41, 'a')})).ok());
  // A member count that lies.
  std::string rep = EncodeJoinReply(JoinReply{true, "", "c", {}});
  rep.back() = '\x05';
  CHECK_FALSE(DecodeWire(rep).ok());
}

TEST_CASE("wire: join tokens") {
  auto kp = NewCurveKeyPair();
  auto jk = NewCurveKeyPair();
  REQUIRE(kp.ok());
  REQUIRE(jk.ok());
  std::string t = FormatJoinToken(JoinToken{kp->first, jk->second});
  CHECK(t.size() == 132);
  CHECK(t.find_first_not_of("cn1.0123456789abcdef") == std::string::npos);
  auto p = ParseJoinToken(t + "\n");
  REQUIRE(p.ok());
  CHECK(p->server_key == kp->first);
  CHECK(p->join_secret == jk->second);
  CHECK(ParseJoinToken("cn2." + t.substr(4)).status().code() == Code::kInvalidArgument);
  CHECK(ParseJoinToken(t.substr(0, 100)).status().code() == Code::kInvalidArgument);
  std::string upper = t;
  upper[10] = 'G';
  CHECK(ParseJoinToken(upper).status().code() == Code::kInvalidArgument);
}

}  // namespace constellation
