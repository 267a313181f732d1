#include "node/cluster/wire.h"

#include <zmq.h>

#include "node/base/coding.h"

namespace constellation {
namespace {

constexpr size_t kMaxName = 255;
constexpr size_t kMaxAddr = 255;
constexpr size_t kKeyChars = 40;
constexpr std::string_view kTokenPrefix = "cn1.";

std::string Header(WireKind kind) {
  std::string out;
  out.push_back(static_cast<char>(kWireVersion));
  out.push_back(static_cast<char>(kind));
  return out;
}

std::string ToHex(const uint8_t* p, size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kDigits[p[i] >> 4]);
    out.push_back(kDigits[p[i] & 15]);
  }
  return out;
}

bool FromHex(std::string_view hex, uint8_t* out) {
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < hex.size() / 2; ++i) {
    int hi = digit(hex[2 * i]), lo = digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

}  // namespace

std::string EncodeRaftWire(const raft::Message& m) {
  return Header(WireKind::kRaft) + raft::EncodeMessage(m);
}

std::string EncodeMembershipWire(const membership::Message& m) {
  return Header(WireKind::kMembership) + membership::EncodeMessage(m);
}

std::string EncodeJoinRequest(const JoinRequest& r) {
  Writer w;
  w.out() = Header(WireKind::kJoinRequest);
  w.Bytes(r.name);
  w.Bytes(r.addr);
  w.Bytes(r.key);
  return w.Take();
}

std::string EncodeJoinReply(const JoinReply& r) {
  Writer w;
  w.out() = Header(WireKind::kJoinReply);
  w.U8(r.ok ? 1 : 0);
  w.Bytes(r.error);
  w.Bytes(r.cluster_id);
  w.Varint(r.members.size());
  for (const MemberRecord& m : r.members) {
    w.Bytes(m.name);
    w.Bytes(m.key);
    w.Bytes(m.addr);
  }
  return w.Take();
}

Result<WireMessage> DecodeWire(std::string_view in) {
  if (in.size() < 2) return Status::Corruption("wire: truncated header");
  if (static_cast<uint8_t>(in[0]) != kWireVersion) {
    return Status::NotSupported("wire: protocol version " +
                                std::to_string(static_cast<uint8_t>(in[0])) +
                                ", this node speaks " + std::to_string(kWireVersion));
  }
  WireMessage out;
  uint8_t kind = static_cast<uint8_t>(in[1]);
  Reader r(in.substr(2));
  switch (kind) {
    case static_cast<uint8_t>(WireKind::kRaft): {
      out.kind = WireKind::kRaft;
      CN_ASSIGN_OR_RETURN(out.raft, raft::DecodeMessage(in.substr(2)));
      return out;
    }
    case static_cast<uint8_t>(WireKind::kMembership): {
      out.kind = WireKind::kMembership;
      CN_ASSIGN_OR_RETURN(out.membership, membership::DecodeMessage(in.substr(2)));
      return out;
    }
    case static_cast<uint8_t>(WireKind::kJoinRequest): {
      out.kind = WireKind::kJoinRequest;
      JoinRequest& j = out.join_request;
      if (!r.Bytes(&j.name, kMaxName) || !r.Bytes(&j.addr, kMaxAddr) ||
          !r.Bytes(&j.key, kKeyChars) || !r.done()) {
        return Status::Corruption("wire: malformed join request");
      }
      return out;
    }
    case static_cast<uint8_t>(WireKind::kJoinReply): {
      out.kind = WireKind::kJoinReply;
      JoinReply& j = out.join_reply;
      uint8_t ok = 0;
      uint64_t n = 0;
      if (!r.U8(&ok) || ok > 1 || !r.Bytes(&j.error, kMaxJoinErrorBytes) ||
          !r.Bytes(&j.cluster_id, kMaxName) || !r.Varint(&n) || n > kMaxJoinMembers) {
        return Status::Corruption("wire: malformed join reply");
      }
      j.ok = ok == 1;
      for (uint64_t i = 0; i < n; ++i) {
        MemberRecord m;
        if (!r.Bytes(&m.name, kMaxName) || !r.Bytes(&m.key, kKeyChars) ||
            !r.Bytes(&m.addr, kMaxAddr)) {
          return Status::Corruption("wire: malformed join reply member");
        }
        j.members.push_back(std::move(m));
      }
      if (!r.done()) return Status::Corruption("wire: trailing bytes in join reply");
      return out;
    }
    default:
      return Status::Corruption("wire: unknown message kind " + std::to_string(kind));
  }
}

std::string FormatJoinToken(const JoinToken& t) {
  uint8_t server[32], secret[32];
  if (t.server_key.size() != kKeyChars || t.join_secret.size() != kKeyChars ||
      zmq_z85_decode(server, t.server_key.c_str()) == nullptr ||
      zmq_z85_decode(secret, t.join_secret.c_str()) == nullptr) {
    return "";
  }
  return std::string(kTokenPrefix) + ToHex(server, 32) + ToHex(secret, 32);
}

Result<JoinToken> ParseJoinToken(std::string_view token) {
  while (!token.empty() && (token.back() == '\n' || token.back() == ' ')) token.remove_suffix(1);
  if (token.substr(0, kTokenPrefix.size()) != kTokenPrefix) {
    return Status::InvalidArgument("join token: does not start with \"cn1.\"");
  }
  token.remove_prefix(kTokenPrefix.size());
  if (token.size() != 128) {
    return Status::InvalidArgument("join token: expected 128 hex digits after \"cn1.\", got " +
                                   std::to_string(token.size()) + " characters");
  }
  uint8_t server[32], secret[32];
  if (!FromHex(token.substr(0, 64), server) || !FromHex(token.substr(64), secret)) {
    return Status::InvalidArgument("join token: not lower-case hex");
  }
  char z[41];
  JoinToken t;
  zmq_z85_encode(z, server, 32);
  t.server_key = z;
  zmq_z85_encode(z, secret, 32);
  t.join_secret = z;
  return t;
}

}  // namespace constellation
