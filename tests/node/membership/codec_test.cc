// The versioned binary encoding: round trips, and refusal (never a crash) of anything malformed.
#include <string>
#include <vector>

#include "catch2/catch.hpp"
#include "node/base/coding.h"
#include "node/membership/membership.h"

namespace constellation::membership {
namespace {

std::vector<Message> Samples() {
  std::vector<Message> out;
  for (uint8_t t = 1; t <= static_cast<uint8_t>(MessageType::kPushPullResp); ++t) {
    Message m;
    m.type = static_cast<MessageType>(t);
    m.from = "node-a";
    m.from_addr = "10.0.0.1:7946";
    m.to = m.type == MessageType::kPushPull ? "" : "node-b";
    m.join = m.type == MessageType::kPushPull;
    m.seq = 300 + t;
    if (m.type == MessageType::kPingReq) {
      m.target = "node-c";
      m.target_addr = "10.0.0.3:7946";
    }
    m.updates = {Update{State::kAlive, "node-c", "10.0.0.3:7946", 7, ""},
                 Update{State::kSuspect, "node-d", "", 1ull << 40, "node-a"},
                 Update{State::kDead, "node-e", "", 0, "node-b"},
                 Update{State::kLeft, "node-f", "", 3, "node-f"}};
    out.push_back(m);
  }
  Message empty;
  empty.from = "x";
  empty.from_addr = "y";
  out.push_back(empty);
  return out;
}

TEST_CASE("messages round-trip through the encoding") {
  for (const Message& m : Samples()) {
    INFO(DescribeMessage(m));
    std::string wire = EncodeMessage(m);
    CHECK(static_cast<uint8_t>(wire[0]) == kProtocolVersion);
    Result<Message> back = DecodeMessage(wire);
    REQUIRE(back.ok());
    CHECK(*back == m);
    CHECK(EncodeMessage(*back) == wire);
    size_t update_bytes = 0;
    for (const Update& u : m.updates) update_bytes += EncodedUpdateBytes(u);
    Message bare = m;
    bare.updates.clear();
    CHECK(EncodeMessage(bare).size() + update_bytes == wire.size());
  }
}

TEST_CASE("every truncation and every single-byte corruption is refused or decodes cleanly") {
  for (const Message& m : Samples()) {
    std::string wire = EncodeMessage(m);
    for (size_t n = 0; n < wire.size(); ++n) {
      CHECK(!DecodeMessage(wire.substr(0, n)).ok());
    }
    CHECK(!DecodeMessage(wire + "x").ok());  // trailing bytes
    for (size_t i = 0; i < wire.size(); ++i) {
      for (int bit = 0; bit < 8; ++bit) {
        std::string bad = wire;
        bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
        Result<Message> r = DecodeMessage(bad);
        if (r.ok()) CHECK(EncodeMessage(*r) == bad);  // canonical: it is what it says
      }
    }
  }
}

TEST_CASE("versions, types, flags, limits and lengths are checked") {
  std::string wire = EncodeMessage(Samples()[0]);
  std::string v2 = wire;
  v2[0] = 2;
  CHECK(DecodeMessage(v2).status().code() == Code::kNotSupported);
  CHECK(DecodeMessage("").status().code() == Code::kCorruption);
  std::string bad_type = wire;
  bad_type[1] = 0;
  CHECK(!DecodeMessage(bad_type).ok());
  bad_type[1] = 8;
  CHECK(!DecodeMessage(bad_type).ok());

  // A length larger than the input, or a huge update count, is refused without allocating.
  Writer w;
  w.U8(kProtocolVersion);
  w.U8(static_cast<uint8_t>(MessageType::kGossip));
  w.Varint(uint64_t{1} << 62);
  CHECK(!DecodeMessage(w.Take()).ok());
  Message g;
  g.type = MessageType::kGossip;
  g.from = "a";
  g.from_addr = "a";
  std::string head = EncodeMessage(g);
  head.pop_back();  // the update count
  Writer c;
  c.Varint(kMaxPiggyback + 1);
  CHECK(!DecodeMessage(head + c.Take()).ok());
  Writer d;
  d.Varint(1000000000);
  CHECK(!DecodeMessage(head + d.Take()).ok());

  // Piggyback limits are per type: a push-pull may carry a whole table.
  Message pp;
  pp.type = MessageType::kPushPull;
  pp.from = "a";
  pp.from_addr = "a";
  for (size_t i = 0; i < kMaxPiggyback + 1; ++i) {
    pp.updates.push_back(Update{State::kAlive, "n" + std::to_string(i), "addr", 0, ""});
  }
  CHECK(DecodeMessage(EncodeMessage(pp)).ok());
  pp.type = MessageType::kGossip;
  CHECK(!DecodeMessage(EncodeMessage(pp)).ok());

  // Unknown flags, unknown states, empty names.
  Message f = g;
  std::string fw = EncodeMessage(f);
  fw[fw.size() - 2] = 2;  // flags
  CHECK(!DecodeMessage(fw).ok());
  Message s = g;
  s.updates = {Update{State::kAlive, "n", "a", 0, ""}};
  std::string sw = EncodeMessage(s);
  const size_t state_at = sw.size() - EncodedUpdateBytes(s.updates[0]);
  sw[state_at] = 4;
  CHECK(!DecodeMessage(sw).ok());
  s.updates[0].node = "";
  CHECK(!DecodeMessage(EncodeMessage(s)).ok());
  Message nf = g;
  nf.from = "";
  CHECK(!DecodeMessage(EncodeMessage(nf)).ok());
  // Oversized names and addresses.
  Message big = g;
  big.from = std::string(kMaxNameBytes + 1, 'n');
  CHECK(!DecodeMessage(EncodeMessage(big)).ok());
  big = g;
  big.updates = {Update{State::kAlive, "n", std::string(kMaxAddrBytes + 1, 'a'), 0, ""}};
  CHECK(!DecodeMessage(EncodeMessage(big)).ok());
  CHECK(!DecodeMessage(std::string(kMaxMessageBytes + 1, '\1')).ok());
}

TEST_CASE("descriptions") {
  Message m = Samples()[0];
  CHECK(DescribeMessage(m) ==
        "node-a->node-b ping seq=301 [alive node-c/7, suspect node-d/1099511627776 by node-a, "
        "dead node-e/0 by node-b, left node-f/3]");
  CHECK(DescribeEvent(Event{"b", "b", State::kSuspect, 2, false, 0}) == "b suspect inc=2");
  CHECK(std::string(StateName(State::kLeft)) == "left");
}

}  // namespace
}  // namespace constellation::membership
