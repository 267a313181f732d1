// Binary encoding helpers shared by every wire and disk format (commands, raft and membership
// messages). Little-endian fixed ints, LEB128 varints, length-prefixed strings.
//
// Decoder never trusts a length: every read is bounds-checked against the remaining input and an
// explicit limit; a failed read leaves the Reader in a failed state that stays failed.
// Thread-safety: Writer and Reader are single-threaded values.
#ifndef CONSTELLATION_NODE_BASE_CODING_H_
#define CONSTELLATION_NODE_BASE_CODING_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace constellation {

class Writer {
 public:
  void U8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void Fixed16(uint16_t v) { Raw(&v, 2); }
  void Fixed32(uint32_t v) { Raw(&v, 4); }
  void Fixed64(uint64_t v) { Raw(&v, 8); }
  void Varint(uint64_t v) {
    while (v >= 0x80) {
      U8(static_cast<uint8_t>(v | 0x80));
      v >>= 7;
    }
    U8(static_cast<uint8_t>(v));
  }
  void Bytes(std::string_view s) {
    Varint(s.size());
    out_.append(s);
  }
  std::string& out() { return out_; }
  std::string Take() { return std::move(out_); }

 private:
  void Raw(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}

  bool U8(uint8_t* v) {
    if (!Need(1)) return false;
    *v = static_cast<uint8_t>(in_[0]);
    in_.remove_prefix(1);
    return true;
  }
  bool Fixed16(uint16_t* v) { return Raw(v, 2); }
  bool Fixed32(uint32_t* v) { return Raw(v, 4); }
  bool Fixed64(uint64_t* v) { return Raw(v, 8); }
  bool Varint(uint64_t* v) {
    uint64_t result = 0;
    for (int shift = 0; shift <= 63; shift += 7) {
      uint8_t byte;
      if (!U8(&byte)) return false;
      if (shift == 63 && byte > 1) return Fail();
      result |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) {
        // Only the shortest encoding is valid, so every value has exactly one encoding.
        if (byte == 0 && shift > 0) return Fail();
        *v = result;
        return true;
      }
    }
    return Fail();
  }
  // A length-prefixed byte string of at most `limit` bytes.
  bool Bytes(std::string* s, size_t limit) {
    uint64_t n;
    if (!Varint(&n)) return false;
    if (n > limit || !Need(n)) return Fail();
    s->assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  bool done() const { return ok_ && in_.empty(); }
  bool ok() const { return ok_; }
  size_t remaining() const { return in_.size(); }

 private:
  bool Need(size_t n) {
    if (!ok_ || in_.size() < n) return Fail();
    return true;
  }
  bool Fail() {
    ok_ = false;
    return false;
  }
  bool Raw(void* p, size_t n) {
    if (!Need(n)) return false;
    std::memcpy(p, in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  std::string_view in_;
  bool ok_ = true;
};

// Big-endian 64-bit key suffix, so leveldb's byte order is numeric order.
inline std::string BigEndian64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 7; i >= 0; --i) {
    s[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  return s;
}
inline uint64_t FromBigEndian64(std::string_view s) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8 && i < s.size(); ++i) v = (v << 8) | static_cast<uint8_t>(s[i]);
  return v;
}

}  // namespace constellation

#endif  // CONSTELLATION_NODE_BASE_CODING_H_
