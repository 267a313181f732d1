// The membership decoder sees bytes from the network: it must never crash, never allocate for a
// length it has not seen, and whatever decodes must re-encode to the same bytes. A decoded message
// is also handed to a live core (Step), which must refuse or absorb it without breaking an
// invariant (its CN_CHECKs run on every Tick).
//
// Random bytes rarely get past the version byte, so each input is also tried with the current
// version in front, and (structure-aware) used to build a valid message, which must round-trip
// exactly and is then decoded again with one byte of its encoding changed.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "node/base/log.h"
#include "node/membership/membership.h"

namespace {

using namespace constellation;
using namespace constellation::membership;

Membership& Core() {
  static std::unique_ptr<Membership> core = [] {
    Options o;
    o.name = "a";
    o.addr = "a:1";
    o.max_members = 64;
    auto m = Membership::New(o, 0);
    CN_CHECK(m.ok()) << m.status().ToString();
    return std::move(m).value();
  }();
  return *core;
}

int64_t g_now = 0;

void Feed(const Message& m) {
  Membership& core = Core();
  g_now += 7;
  (void)core.Step(m, g_now);
  core.Tick(g_now);
  (void)core.GetReady();
  CN_CHECK(core.members().size() <= 64);
}

void CheckMessage(std::string_view in) {
  Result<Message> m = DecodeMessage(in);
  if (!m.ok()) return;
  std::string wire = EncodeMessage(*m);
  CN_CHECK(wire == in) << "decode/encode is not canonical";
  Result<Message> again = DecodeMessage(wire);
  CN_CHECK(again.ok() && *again == *m) << "decode/encode is not a round trip";
  (void)DescribeMessage(*m);
  Feed(*m);
}

// Reads bytes off the input; zeros once it runs out.
class Source {
 public:
  explicit Source(std::string_view in) : in_(in) {}
  uint8_t Byte() { return pos_ < in_.size() ? static_cast<uint8_t>(in_[pos_++]) : 0; }
  uint64_t Num() {
    uint64_t v = 0;
    int n = Byte() % 9;
    for (int i = 0; i < n; ++i) v = (v << 8) | Byte();
    return v;
  }
  std::string Name() {
    static const char* kNames[] = {"a", "b", "c", "d", "e"};
    return kNames[Byte() % 5];
  }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

Message Build(Source& src) {
  Message m;
  m.type = static_cast<MessageType>(1 + src.Byte() % 7);
  m.from = src.Name();
  m.from_addr = m.from + ":1";
  m.to = src.Byte() % 8 ? "a" : "";
  m.seq = src.Num();
  m.target = src.Name();
  m.target_addr = m.target + ":1";
  m.join = src.Byte() & 1;
  const int n = src.Byte() % 6;
  for (int i = 0; i < n; ++i) {
    Update u;
    u.state = static_cast<State>(src.Byte() % 4);
    u.node = src.Name();
    u.addr = u.state == State::kAlive ? u.node + ":1" : "";
    u.incarnation = src.Num() % 16;
    u.from = src.Name();
    m.updates.push_back(u);
  }
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  CheckMessage(in);
  std::string versioned(1, static_cast<char>(kProtocolVersion));
  versioned.append(in);
  CheckMessage(versioned);

  Source src(in);
  Message m = Build(src);
  std::string wire = EncodeMessage(m);
  Result<Message> back = DecodeMessage(wire);
  CN_CHECK(back.ok()) << "a valid message does not decode: " << back.status().ToString() << " "
                      << DescribeMessage(m);
  CN_CHECK(*back == m) << "round trip changed " << DescribeMessage(m);
  Feed(m);
  if (!wire.empty()) {
    uint8_t at = src.Byte(), flip = src.Byte();
    wire[at % wire.size()] = static_cast<char>(wire[at % wire.size()] ^ (flip | 1));
    CheckMessage(wire);
  }
  return 0;
}
