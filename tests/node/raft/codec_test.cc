// The versioned binary encodings: round trips, and refusal (never a crash) of anything malformed.
#include "catch2/catch.hpp"
#include "node/base/coding.h"
#include "node/raft/raft.h"

namespace constellation::raft {
namespace {

std::vector<Message> Samples() {
  std::vector<Message> out;
  Message m;
  m.from = "node-a";
  m.to = "node-b";
  m.term = 7;
  for (uint8_t t = 1; t <= static_cast<uint8_t>(MessageType::kReadIndexResp); ++t) {
    m.type = static_cast<MessageType>(t);
    m.index = 41;
    m.log_term = 6;
    m.commit = 40;
    m.reject = t % 2 == 0;
    m.reject_hint = 12;
    m.context = t % 3 == 0 ? std::string("ctx\0x", 5) : "";
    m.entries.clear();
    m.snapshot = {};
    m.offset = 0;
    m.chunk.clear();
    if (m.type == MessageType::kAppend || m.type == MessageType::kPropose) {
      m.entries = {Entry{42, 7, EntryType::kNormal, "hello"},
                   Entry{43, 7, EntryType::kConfChange,
                         EncodeConfChange(ConfChange{ConfChangeType::kAddLearner, "node-c"})},
                   Entry{44, 7, EntryType::kNormal, ""}};
    }
    if (m.type == MessageType::kSnapshot) {
      m.snapshot = SnapshotMeta{100, 5, Config{{"a", "b"}, {"c"}}, 1000};
      m.offset = 996;
      m.chunk = "wxyz";
    }
    if (m.type == MessageType::kSnapshotResp) m.offset = 500;
    out.push_back(m);
  }
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
        if (r.ok()) CHECK(DecodeMessage(EncodeMessage(*r)).ok());
      }
    }
  }
}

TEST_CASE("another protocol version is NotSupported") {
  std::string wire = EncodeMessage(Samples()[0]);
  wire[0] = static_cast<char>(kProtocolVersion + 1);
  CHECK(DecodeMessage(wire).status().code() == Code::kNotSupported);
  CHECK(DecodeMessage("").status().code() == Code::kCorruption);
}

TEST_CASE("lengths and counts are never trusted") {
  Writer w;
  w.U8(kProtocolVersion);
  w.U8(static_cast<uint8_t>(MessageType::kAppend));
  w.Bytes("a");
  w.Bytes("b");
  for (int i = 0; i < 4; ++i) w.Varint(1);
  w.U8(0);
  w.Varint(0);
  w.Bytes("");
  std::string header = w.Take();
  {
    // Claims 60000 entries, holds none: refused without allocating for them.
    Writer e;
    e.Varint(60000);
    CHECK(!DecodeMessage(header + e.Take()).ok());
  }
  {
    Writer e;
    e.Varint(kMaxEntriesPerMessage + 1);
    CHECK(!DecodeMessage(header + e.Take()).ok());
  }
  {
    // An entry whose data length runs past the input.
    Writer e;
    e.Varint(1);
    e.Varint(2);
    e.Varint(1);
    e.U8(0);
    e.Varint(1u << 30);
    CHECK(!DecodeMessage(header + e.Take() + "abc").ok());
  }
  {
    // A node id over the limit.
    Writer e;
    e.U8(kProtocolVersion);
    e.U8(static_cast<uint8_t>(MessageType::kHeartbeat));
    e.Bytes(std::string(kMaxNodeIdBytes + 1, 'x'));
    CHECK(!DecodeMessage(e.Take()).ok());
  }
}

TEST_CASE("structural rules: entries only where they belong, chunks within the snapshot") {
  Message m = Samples()[static_cast<int>(MessageType::kHeartbeat) - 1];
  REQUIRE(m.type == MessageType::kHeartbeat);
  // Entries are not encoded for a heartbeat; hand-craft one with an entry count of 1.
  std::string wire = EncodeMessage(m);
  wire.back() = 1;  // the entry count is the last byte of a heartbeat
  CHECK(!DecodeMessage(wire + std::string("\x01\x01\x00\x00", 4)).ok());

  Message s = Samples()[static_cast<int>(MessageType::kSnapshot) - 1];
  s.offset = 998;  // 998 + 4 > 1000
  CHECK(!DecodeMessage(EncodeMessage(s)).ok());
  s.offset = 0;
  s.snapshot.config = Config{{"b", "a"}, {}};  // unsorted
  CHECK(!DecodeMessage(EncodeMessage(s)).ok());
  s.snapshot.config = Config{{"a", "b"}, {"b"}};  // voter and learner at once
  CHECK(!DecodeMessage(EncodeMessage(s)).ok());
}

TEST_CASE("conf changes, hard states and snapshot metadata round-trip") {
  for (ConfChangeType t :
       {ConfChangeType::kAddVoter, ConfChangeType::kAddLearner, ConfChangeType::kRemoveNode}) {
    ConfChange cc{t, "n7"};
    Result<ConfChange> back = DecodeConfChange(EncodeConfChange(cc));
    REQUIRE(back.ok());
    CHECK(*back == cc);
  }
  CHECK(!DecodeConfChange(EncodeConfChange(ConfChange{ConfChangeType::kAddVoter, ""})).ok());
  std::string bad = EncodeConfChange(ConfChange{ConfChangeType::kAddVoter, "x"});
  bad[1] = 9;
  CHECK(!DecodeConfChange(bad).ok());

  HardState hs{12, "n2", 99};
  Result<HardState> h = DecodeHardState(EncodeHardState(hs));
  REQUIRE(h.ok());
  CHECK(*h == hs);
  CHECK(!DecodeHardState(EncodeHardState(hs) + "!").ok());

  SnapshotMeta meta{5, 2, Config{{"1", "2", "3"}, {"4"}}, 77};
  Result<SnapshotMeta> sm = DecodeSnapshotMeta(EncodeSnapshotMeta(meta));
  REQUIRE(sm.ok());
  CHECK(*sm == meta);
}

TEST_CASE("ApplyConfChange is lenient and keeps lists sorted and disjoint") {
  Config c{{"2", "4"}, {"3"}};
  CHECK(ApplyConfChange(c, {ConfChangeType::kAddVoter, "3"}) == Config{{"2", "3", "4"}, {}});
  CHECK(ApplyConfChange(c, {ConfChangeType::kAddVoter, "1"}) == Config{{"1", "2", "4"}, {"3"}});
  CHECK(ApplyConfChange(c, {ConfChangeType::kAddLearner, "2"}) == c);  // no demotion
  CHECK(ApplyConfChange(c, {ConfChangeType::kAddLearner, "5"}) == Config{{"2", "4"}, {"3", "5"}});
  CHECK(ApplyConfChange(c, {ConfChangeType::kRemoveNode, "4"}) == Config{{"2"}, {"3"}});
  CHECK(ApplyConfChange(c, {ConfChangeType::kRemoveNode, "9"}) == c);
  CHECK(c.ToString() == "voters=(2 4) learners=(3)");
}

}  // namespace
}  // namespace constellation::raft
