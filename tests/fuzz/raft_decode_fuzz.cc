// Raft's decoders see bytes from the network (messages) and from disk (hard state, snapshot
// metadata, configuration entries): they must never crash, never allocate for a length they have
// not seen, and whatever decodes must re-encode to an equal value that decodes again.
//
// Random bytes rarely get past the version byte, so each input is also tried with the current
// version in front, and (structure-aware) used to build a valid message, which must round-trip
// exactly and is then decoded again with one byte of its encoding changed.
#include <cstdint>
#include <string>
#include <string_view>

#include "node/base/log.h"
#include "node/raft/raft.h"

namespace {

using namespace constellation;
using namespace constellation::raft;

void CheckMessage(std::string_view in) {
  Result<Message> m = DecodeMessage(in);
  if (!m.ok()) return;
  std::string wire = EncodeMessage(*m);
  Result<Message> again = DecodeMessage(wire);
  CN_CHECK(again.ok()) << "re-encoded message does not decode: " << again.status().ToString();
  CN_CHECK(*again == *m) << "decode/encode is not a round trip";
  CN_CHECK(EncodeMessage(*again) == wire) << "encoding is not stable";
  (void)DescribeMessage(*m);
}

template <typename T, typename Enc, typename Dec>
void CheckValue(std::string_view in, Enc enc, Dec dec) {
  Result<T> v = dec(in);
  if (!v.ok()) return;
  Result<T> again = dec(enc(*v));
  CN_CHECK(again.ok() && *again == *v) << "decode/encode is not a round trip";
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
  std::string Str(size_t max) {
    size_t n = Byte() % (max + 1);
    std::string s;
    for (size_t i = 0; i < n; ++i) s.push_back(static_cast<char>(Byte()));
    return s;
  }
  std::string Id() {
    std::string s = Str(8);
    return s.empty() ? "n" : s;
  }

 private:
  std::string_view in_;
  size_t pos_ = 0;
};

Message Build(Source& src) {
  Message m;
  m.type = static_cast<MessageType>(1 + src.Byte() % 13);
  m.from = src.Id();
  m.to = src.Id();
  m.term = src.Num();
  m.log_term = src.Num();
  m.index = src.Num();
  m.commit = src.Num();
  m.reject = src.Byte() & 1;
  m.reject_hint = src.Num();
  m.context = src.Str(16);
  if (m.type == MessageType::kAppend || m.type == MessageType::kPropose) {
    int n = src.Byte() % 5;
    for (int i = 0; i < n; ++i) {
      m.entries.push_back(Entry{src.Num(), src.Num(),
                                (src.Byte() & 1) ? EntryType::kConfChange : EntryType::kNormal,
                                src.Str(32)});
    }
  }
  if (m.type == MessageType::kSnapshot) {
    m.snapshot.index = src.Num();
    m.snapshot.term = src.Num();
    m.chunk = src.Str(32);
    m.snapshot.size = m.chunk.size() + src.Num() % 1000;
    m.offset =
        m.snapshot.size - m.chunk.size() - src.Byte() % (m.snapshot.size - m.chunk.size() + 1);
    if (src.Byte() & 1) m.snapshot.config = Config{{"a", "b"}, {"c"}};
  }
  if (m.type == MessageType::kSnapshotResp) m.offset = src.Num();
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  CheckMessage(in);
  std::string versioned(1, static_cast<char>(kProtocolVersion));
  versioned.append(in);
  CheckMessage(versioned);
  CheckValue<ConfChange>(in, EncodeConfChange, DecodeConfChange);
  CheckValue<ConfChange>(versioned, EncodeConfChange, DecodeConfChange);
  CheckValue<HardState>(versioned, EncodeHardState, DecodeHardState);
  CheckValue<SnapshotMeta>(versioned, EncodeSnapshotMeta, DecodeSnapshotMeta);

  Source src(in);
  Message m = Build(src);
  std::string wire = EncodeMessage(m);
  Result<Message> back = DecodeMessage(wire);
  CN_CHECK(back.ok()) << "a valid message does not decode: " << back.status().ToString() << " "
                      << DescribeMessage(m);
  CN_CHECK(*back == m) << "round trip changed " << DescribeMessage(m);
  if (!wire.empty()) {
    uint8_t at = src.Byte(), flip = src.Byte();
    wire[at % wire.size()] = static_cast<char>(wire[at % wire.size()] ^ (flip | 1));
    CheckMessage(wire);
  }
  return 0;
}
