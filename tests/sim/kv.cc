#include "tests/sim/kv.h"

#include "node/base/coding.h"

namespace constellation::sim {
namespace {

std::string Padding(uint64_t index, size_t n) {
  std::string s(n, '\0');
  uint64_t x = index * 0x9e3779b97f4a7c15ull + 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s[i] = static_cast<char>(x);
  }
  return s;
}

uint64_t Mix(uint64_t h, std::string_view s) {
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return (h ^ 0xff) * 0x100000001b3ull;
}

}  // namespace

std::string EncodeOp(const KvOp& op) {
  Writer w;
  w.U8(op.kind);
  w.Varint(op.client);
  w.Varint(op.op_id);
  w.Bytes(op.key);
  w.Bytes(op.value);
  w.Bytes(op.expect);
  return w.Take();
}

std::optional<KvOp> DecodeOp(std::string_view in) {
  Reader r(in);
  KvOp op;
  uint8_t kind;
  uint64_t client;
  if (!r.U8(&kind) || (kind != KvOp::kPut && kind != KvOp::kCas) || !r.Varint(&client) ||
      client > UINT32_MAX || !r.Varint(&op.op_id) || !r.Bytes(&op.key, 1024) ||
      !r.Bytes(&op.value, 1024) || !r.Bytes(&op.expect, 1024) || !r.done()) {
    return std::nullopt;
  }
  op.kind = static_cast<KvOp::Kind>(kind);
  op.client = static_cast<uint32_t>(client);
  return op;
}

KvState::Applied KvState::Apply(const KvOp& op) {
  Applied a;
  uint64_t& last = last_op_[op.client];
  if (op.op_id <= last) {
    a.duplicate = true;
    return a;
  }
  last = op.op_id;
  if (op.kind == KvOp::kPut) {
    data_[op.key] = op.value;
  } else if (Get(op.key) == op.expect) {
    data_[op.key] = op.value;
  } else {
    a.ok = false;
  }
  return a;
}

std::string KvState::Get(const std::string& key) const {
  auto it = data_.find(key);
  return it == data_.end() ? std::string() : it->second;
}

uint64_t KvState::Hash() const {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const auto& [k, v] : data_) h = Mix(Mix(h, k), v);
  for (const auto& [c, o] : last_op_) h = Mix(h, std::to_string(c) + ":" + std::to_string(o));
  return h;
}

std::string KvState::Encode(uint64_t index, size_t padding_bytes) const {
  Writer w;
  w.Varint(data_.size());
  for (const auto& [k, v] : data_) {
    w.Bytes(k);
    w.Bytes(v);
  }
  w.Varint(last_op_.size());
  for (const auto& [c, o] : last_op_) {
    w.Varint(c);
    w.Varint(o);
  }
  w.Bytes(Padding(index, padding_bytes));
  return w.Take();
}

bool KvState::Decode(std::string_view data, uint64_t index, size_t padding_bytes) {
  Reader r(data);
  KvState s;
  uint64_t n;
  if (!r.Varint(&n) || n > 1000) return false;
  for (uint64_t i = 0; i < n; ++i) {
    std::string k, v;
    if (!r.Bytes(&k, 1024) || !r.Bytes(&v, 1024)) return false;
    s.data_[k] = v;
  }
  if (!r.Varint(&n) || n > 1000) return false;
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t c, o;
    if (!r.Varint(&c) || !r.Varint(&o)) return false;
    s.last_op_[static_cast<uint32_t>(c)] = o;
  }
  std::string pad;
  if (!r.Bytes(&pad, 1 << 20) || !r.done() || pad != Padding(index, padding_bytes)) return false;
  *this = std::move(s);
  return true;
}

}  // namespace constellation::sim
