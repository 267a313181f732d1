#include "node/state/command.h"

#include "catch2/catch.hpp"

namespace constellation {

TEST_CASE("command round-trips through the codec") {
  Command c;
  c.type = CommandType::kInstanceSet;
  c.time_ms = 1763900000123;
  c.uid = 1000;
  c.gid = 100;
  c.pid = 4242;
  c.request_id = 77;
  c.node = "node-a";
  c.op = "write";
  c.path = "instances/web-1/ram_mb";
  c.object = "web-1";
  c.field = "ram_mb";
  c.value = "512";
  Result<Command> d = DecodeCommand(EncodeCommand(c));
  REQUIRE(d.ok());
  CHECK(*d == c);
}

TEST_CASE("command decoder refuses truncation, newer versions and unknown types") {
  Command c;
  c.type = CommandType::kInstanceCreate;
  c.object = "x";
  std::string data = EncodeCommand(c);
  for (size_t n = 0; n < data.size(); ++n) {
    CHECK_FALSE(DecodeCommand(data.substr(0, n)).ok());
  }
  CHECK(DecodeCommand(data + "x").status().code() == Code::kCorruption);
  std::string newer = data;
  newer[0] = 2;
  CHECK(DecodeCommand(newer).status().code() == Code::kNotSupported);
  std::string unknown = data;
  unknown[2] = 99;
  CHECK(DecodeCommand(unknown).status().code() == Code::kNotSupported);
}

TEST_CASE("command decoder bounds the value") {
  Command c;
  c.value.assign(kMaxCommandValueBytes + 1, 'x');
  CHECK(DecodeCommand(EncodeCommand(c)).status().code() == Code::kCorruption);
  c.value.resize(kMaxCommandValueBytes);
  CHECK(DecodeCommand(EncodeCommand(c)).ok());
}

}  // namespace constellation
