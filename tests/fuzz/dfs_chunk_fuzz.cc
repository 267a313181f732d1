// Extent lists (node/dfs/chunk.h) arrive in metadata commands from disk and the network: the
// decoder must never crash and whatever it accepts must re-encode to the same bytes. The input is
// also read as a script of list operations (overwrite, punch, truncate, map) run from an empty
// list: each must keep the list valid and normalized, MapRange must tile its range, and the
// result must survive an encode/decode round trip and a decode of a corrupted encoding.
#include <cstdint>
#include <string>

#include "node/base/log.h"
#include "node/dfs/chunk.h"

namespace {

using namespace constellation;

// Reads little values off the input; returns 0 once it runs out.
class Script {
 public:
  Script(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool more() const { return pos_ < size_; }
  uint64_t Next(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes && pos_ < size_; ++i) v = (v << 8) | data_[pos_++];
    return v;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

uint64_t Offset(Script* s) {
  // Mostly small offsets (so operations interact), sometimes near the largest file offset.
  uint64_t v = s->Next(2);
  return (s->Next(1) == 0xff) ? kMaxFileBytes - v : v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  Result<ExtentList> decoded = DecodeExtents(in, 4096);
  if (decoded.ok()) {
    CN_CHECK(EncodeExtents(*decoded) == in) << "decode/encode is not a round trip";
    CN_CHECK(ValidateExtents(*decoded).ok()) << "decoder accepted an invalid list";
  }

  const ChunkRef chunks[3] = {
      {HashChunk("a"), 1}, {HashChunk("b"), 300}, {HashChunk("c"), kMaxChunkBytes}};
  Script s(data, size);
  ExtentList list;
  for (int op = 0; op < 64 && s.more(); ++op) {
    ExtentList before = list;
    Status st;
    switch (s.Next(1) % 4) {
      case 0: {
        Extent e;
        e.chunk = chunks[s.Next(1) % 3];
        e.chunk_offset = static_cast<uint32_t>(s.Next(3));
        e.length = s.Next(3);
        e.file_offset = Offset(&s);
        st = OverwriteExtent(&list, e);
        break;
      }
      case 1: {
        uint64_t off = Offset(&s);
        st = PunchHole(&list, off, s.Next(1) == 0xff ? UINT64_MAX : s.Next(2));
        break;
      }
      case 2:
        st = TruncateExtents(&list, Offset(&s));
        break;
      default: {
        uint64_t off = Offset(&s);
        uint64_t len = s.Next(2);
        Result<std::vector<ReadPiece>> pieces = MapRange(list, off, len);
        if (pieces.ok()) {
          uint64_t cursor = off;
          for (const ReadPiece& p : *pieces) {
            CN_CHECK(p.file_offset == cursor && p.length > 0) << "MapRange pieces do not tile";
            cursor += p.length;
          }
          CN_CHECK(cursor == off + len) << "MapRange does not cover its range";
        }
        break;
      }
    }
    if (!st.ok()) CN_CHECK(list == before) << "a refused operation changed the list";
    CN_CHECK(IsNormalized(list)) << "operation left an invalid or unnormalized list";
  }
  std::string enc = EncodeExtents(list);
  Result<ExtentList> back = DecodeExtents(enc);
  CN_CHECK(back.ok() && *back == list) << "encoded list does not decode to itself";
  if (!enc.empty()) {
    enc[s.Next(2) % enc.size()] ^= static_cast<char>(s.Next(1) | 1);
    Result<ExtentList> bent = DecodeExtents(enc);
    if (bent.ok()) CN_CHECK(EncodeExtents(*bent) == enc) << "decode/encode is not a round trip";
  }
  return 0;
}
