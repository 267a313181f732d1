// Wire encoding of membership messages and their text descriptions (layout in membership.h).
// Every length is checked against the remaining input and a named limit before anything is
// allocated for it.
#include <algorithm>
#include <sstream>

#include "node/base/coding.h"
#include "node/membership/membership.h"

namespace constellation::membership {
namespace {

Status Malformed(const char* what) {
  return Status::Corruption(std::string("membership: ") + what);
}

constexpr uint8_t kFlagJoin = 1;

void PutUpdate(Writer* w, const Update& u) {
  w->U8(static_cast<uint8_t>(u.state));
  w->Bytes(u.node);
  w->Bytes(u.addr);
  w->Varint(u.incarnation);
  w->Bytes(u.from);
}

bool GetUpdate(Reader* r, Update* u) {
  uint8_t state;
  if (!r->U8(&state) || state > static_cast<uint8_t>(State::kLeft)) return false;
  u->state = static_cast<State>(state);
  return r->Bytes(&u->node, kMaxNameBytes) && !u->node.empty() &&
         r->Bytes(&u->addr, kMaxAddrBytes) && r->Varint(&u->incarnation) &&
         r->Bytes(&u->from, kMaxNameBytes);
}

size_t VarintBytes(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

}  // namespace

const char* StateName(State state) {
  switch (state) {
    case State::kAlive:
      return "alive";
    case State::kSuspect:
      return "suspect";
    case State::kDead:
      return "dead";
    case State::kLeft:
      return "left";
  }
  return "unknown";
}

const char* MessageTypeName(MessageType type) {
  switch (type) {
    case MessageType::kPing:
      return "ping";
    case MessageType::kPingReq:
      return "ping-req";
    case MessageType::kAck:
      return "ack";
    case MessageType::kNack:
      return "nack";
    case MessageType::kGossip:
      return "gossip";
    case MessageType::kPushPull:
      return "push-pull";
    case MessageType::kPushPullResp:
      return "push-pull-resp";
  }
  return "unknown";
}

size_t EncodedUpdateBytes(const Update& u) {
  return 1 + VarintBytes(u.node.size()) + u.node.size() + VarintBytes(u.addr.size()) +
         u.addr.size() + VarintBytes(u.incarnation) + VarintBytes(u.from.size()) + u.from.size();
}

std::string EncodeMessage(const Message& m) {
  Writer w;
  w.U8(kProtocolVersion);
  w.U8(static_cast<uint8_t>(m.type));
  w.Bytes(m.from);
  w.Bytes(m.from_addr);
  w.Bytes(m.to);
  w.Varint(m.seq);
  w.Bytes(m.target);
  w.Bytes(m.target_addr);
  w.U8(m.join ? kFlagJoin : 0);
  w.Varint(m.updates.size());
  for (const Update& u : m.updates) PutUpdate(&w, u);
  return w.Take();
}

Result<Message> DecodeMessage(std::string_view in) {
  if (in.size() > kMaxMessageBytes) return Malformed("message too large");
  Reader r(in);
  uint8_t version, type, flags;
  if (!r.U8(&version)) return Malformed("empty message");
  if (version != kProtocolVersion) {
    return Status::NotSupported("membership: protocol version " + std::to_string(version) +
                                " (this node speaks " + std::to_string(kProtocolVersion) + ")");
  }
  Message m;
  if (!r.U8(&type) || type < static_cast<uint8_t>(MessageType::kPing) ||
      type > static_cast<uint8_t>(MessageType::kPushPullResp)) {
    return Malformed("unknown message type");
  }
  m.type = static_cast<MessageType>(type);
  if (!r.Bytes(&m.from, kMaxNameBytes) || !r.Bytes(&m.from_addr, kMaxAddrBytes) ||
      !r.Bytes(&m.to, kMaxNameBytes) || !r.Varint(&m.seq) || !r.Bytes(&m.target, kMaxNameBytes) ||
      !r.Bytes(&m.target_addr, kMaxAddrBytes) || !r.U8(&flags)) {
    return Malformed("truncated or oversized header");
  }
  if (m.from.empty()) return Malformed("no sender");
  if ((flags & ~kFlagJoin) != 0) return Malformed("unknown flags");
  m.join = (flags & kFlagJoin) != 0;
  const bool full_state = m.type == MessageType::kPushPull || m.type == MessageType::kPushPullResp;
  uint64_t n;
  if (!r.Varint(&n) || n > (full_state ? kMaxMembers : kMaxPiggyback)) {
    return Malformed("too many updates");
  }
  // Each update takes at least 5 bytes: never reserve more than the input could hold.
  m.updates.reserve(std::min<uint64_t>(n, r.remaining() / 5));
  for (uint64_t i = 0; i < n; ++i) {
    Update u;
    if (!GetUpdate(&r, &u)) return Malformed("bad update");
    m.updates.push_back(std::move(u));
  }
  if (!r.done()) return Malformed("trailing bytes");
  return m;
}

std::string DescribeUpdate(const Update& u) {
  std::ostringstream os;
  os << StateName(u.state) << ' ' << u.node << '/' << u.incarnation;
  if (!u.from.empty() && u.from != u.node) os << " by " << u.from;
  return os.str();
}

std::string DescribeMessage(const Message& m) {
  std::ostringstream os;
  os << m.from << "->" << (m.to.empty() ? "*" : m.to) << ' ' << MessageTypeName(m.type);
  if (m.type != MessageType::kGossip && m.type != MessageType::kPushPull &&
      m.type != MessageType::kPushPullResp) {
    os << " seq=" << m.seq;
  }
  if (m.type == MessageType::kPingReq) os << " target=" << m.target;
  if (m.join) os << " join";
  if (!m.updates.empty()) {
    os << " [";
    for (size_t i = 0; i < m.updates.size(); ++i) {
      os << (i ? ", " : "") << DescribeUpdate(m.updates[i]);
    }
    os << ']';
  }
  return os.str();
}

std::string DescribeEvent(const Event& e) {
  std::ostringstream os;
  os << e.node << ' ' << StateName(e.state) << " inc=" << e.incarnation;
  if (e.is_new) os << " new";
  return os.str();
}

}  // namespace constellation::membership
