// Wire and disk encodings of raft values, and their text descriptions.
//
// Message layout (version 1): version u8, type u8, from, to (length-prefixed), term, log_term,
// index, commit (varints), reject u8 (0/1), reject_hint (varint), context (length-prefixed),
// entry count (varint) then each entry as index, term (varints), type u8, data
// (length-prefixed); for kSnapshot only, the snapshot metadata, offset (varint) and chunk
// (length-prefixed); for kSnapshotResp only, offset (varint). Every length is checked against the
// remaining input and a named limit.
#include <algorithm>
#include <sstream>

#include "node/base/coding.h"
#include "node/raft/raft.h"

namespace constellation::raft {
namespace {

Status Malformed(const char* what) { return Status::Corruption(std::string("raft: ") + what); }

bool ValidId(const NodeId& id) { return !id.empty() && id.size() <= kMaxNodeIdBytes; }

bool SortedUnique(const std::vector<NodeId>& ids) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!ValidId(ids[i])) return false;
    if (i > 0 && !(ids[i - 1] < ids[i])) return false;
  }
  return true;
}

bool ValidConfig(const Config& c) {
  if (c.voters.size() + c.learners.size() > kMaxConfigNodes) return false;
  if (!SortedUnique(c.voters) || !SortedUnique(c.learners)) return false;
  for (const NodeId& l : c.learners) {
    if (std::binary_search(c.voters.begin(), c.voters.end(), l)) return false;
  }
  return true;
}

void PutConfig(Writer* w, const Config& c) {
  w->Varint(c.voters.size());
  for (const NodeId& v : c.voters) w->Bytes(v);
  w->Varint(c.learners.size());
  for (const NodeId& l : c.learners) w->Bytes(l);
}

bool GetIds(Reader* r, std::vector<NodeId>* out) {
  uint64_t n;
  if (!r->Varint(&n) || n > kMaxConfigNodes) return false;
  for (uint64_t i = 0; i < n; ++i) {
    NodeId id;
    if (!r->Bytes(&id, kMaxNodeIdBytes)) return false;
    out->push_back(std::move(id));
  }
  return true;
}

bool GetConfig(Reader* r, Config* c) {
  return GetIds(r, &c->voters) && GetIds(r, &c->learners) && ValidConfig(*c);
}

void PutMeta(Writer* w, const SnapshotMeta& m) {
  w->Varint(m.index);
  w->Varint(m.term);
  w->Varint(m.size);
  PutConfig(w, m.config);
}

bool GetMeta(Reader* r, SnapshotMeta* m) {
  return r->Varint(&m->index) && r->Varint(&m->term) && r->Varint(&m->size) &&
         m->size <= kMaxSnapshotBytes && GetConfig(r, &m->config);
}

bool CarriesEntries(MessageType t) {
  return t == MessageType::kAppend || t == MessageType::kPropose;
}

}  // namespace

bool Config::IsVoter(const NodeId& id) const {
  return std::binary_search(voters.begin(), voters.end(), id);
}
bool Config::IsLearner(const NodeId& id) const {
  return std::binary_search(learners.begin(), learners.end(), id);
}

std::string Config::ToString() const {
  std::string s = "voters=(";
  for (size_t i = 0; i < voters.size(); ++i) s += (i ? " " : "") + voters[i];
  s += ")";
  if (!learners.empty()) {
    s += " learners=(";
    for (size_t i = 0; i < learners.size(); ++i) s += (i ? " " : "") + learners[i];
    s += ")";
  }
  return s;
}

Config ApplyConfChange(const Config& config, const ConfChange& cc) {
  Config c = config;
  auto erase = [&](std::vector<NodeId>* v) {
    auto it = std::lower_bound(v->begin(), v->end(), cc.node);
    if (it != v->end() && *it == cc.node) v->erase(it);
  };
  auto insert = [&](std::vector<NodeId>* v) {
    auto it = std::lower_bound(v->begin(), v->end(), cc.node);
    if (it == v->end() || *it != cc.node) v->insert(it, cc.node);
  };
  switch (cc.type) {
    case ConfChangeType::kAddVoter:
      erase(&c.learners);
      insert(&c.voters);
      break;
    case ConfChangeType::kAddLearner:
      if (!c.IsVoter(cc.node)) insert(&c.learners);
      break;
    case ConfChangeType::kRemoveNode:
      erase(&c.voters);
      erase(&c.learners);
      break;
  }
  return c;
}

const char* MessageTypeName(MessageType type) {
  switch (type) {
    case MessageType::kPreVote:
      return "MsgPreVote";
    case MessageType::kPreVoteResp:
      return "MsgPreVoteResp";
    case MessageType::kVote:
      return "MsgVote";
    case MessageType::kVoteResp:
      return "MsgVoteResp";
    case MessageType::kAppend:
      return "MsgApp";
    case MessageType::kAppendResp:
      return "MsgAppResp";
    case MessageType::kHeartbeat:
      return "MsgHeartbeat";
    case MessageType::kHeartbeatResp:
      return "MsgHeartbeatResp";
    case MessageType::kSnapshot:
      return "MsgSnap";
    case MessageType::kSnapshotResp:
      return "MsgSnapResp";
    case MessageType::kPropose:
      return "MsgProp";
    case MessageType::kReadIndex:
      return "MsgReadIndex";
    case MessageType::kReadIndexResp:
      return "MsgReadIndexResp";
  }
  return "MsgUnknown";
}

std::string EncodeMessage(const Message& m) {
  Writer w;
  w.U8(kProtocolVersion);
  w.U8(static_cast<uint8_t>(m.type));
  w.Bytes(m.from);
  w.Bytes(m.to);
  w.Varint(m.term);
  w.Varint(m.log_term);
  w.Varint(m.index);
  w.Varint(m.commit);
  w.U8(m.reject ? 1 : 0);
  w.Varint(m.reject_hint);
  w.Bytes(m.context);
  w.Varint(CarriesEntries(m.type) ? m.entries.size() : 0);
  if (CarriesEntries(m.type)) {
    for (const Entry& e : m.entries) {
      w.Varint(e.index);
      w.Varint(e.term);
      w.U8(static_cast<uint8_t>(e.type));
      w.Bytes(e.data);
    }
  }
  if (m.type == MessageType::kSnapshot) {
    PutMeta(&w, m.snapshot);
    w.Varint(m.offset);
    w.Bytes(m.chunk);
  } else if (m.type == MessageType::kSnapshotResp) {
    w.Varint(m.offset);
  }
  return w.Take();
}

Result<Message> DecodeMessage(std::string_view in) {
  Reader r(in);
  uint8_t version, type, reject;
  if (!r.U8(&version)) return Malformed("empty message");
  if (version != kProtocolVersion) {
    return Status::NotSupported("raft: protocol version " + std::to_string(version) +
                                " (this node speaks " + std::to_string(kProtocolVersion) + ")");
  }
  Message m;
  if (!r.U8(&type) || type < static_cast<uint8_t>(MessageType::kPreVote) ||
      type > static_cast<uint8_t>(MessageType::kReadIndexResp)) {
    return Malformed("unknown message type");
  }
  m.type = static_cast<MessageType>(type);
  if (!r.Bytes(&m.from, kMaxNodeIdBytes) || !r.Bytes(&m.to, kMaxNodeIdBytes) ||
      !r.Varint(&m.term) || !r.Varint(&m.log_term) || !r.Varint(&m.index) || !r.Varint(&m.commit) ||
      !r.U8(&reject) || reject > 1 || !r.Varint(&m.reject_hint) ||
      !r.Bytes(&m.context, kMaxContextBytes)) {
    return Malformed("truncated or oversized header");
  }
  m.reject = reject == 1;
  uint64_t n;
  if (!r.Varint(&n) || n > kMaxEntriesPerMessage) return Malformed("too many entries");
  if (n > 0 && !CarriesEntries(m.type)) return Malformed("entries in a message that has none");
  // Each entry takes at least 4 bytes: never reserve more than the input could hold.
  m.entries.reserve(std::min<uint64_t>(n, r.remaining() / 4));
  for (uint64_t i = 0; i < n; ++i) {
    Entry e;
    uint8_t et;
    if (!r.Varint(&e.index) || !r.Varint(&e.term) || !r.U8(&et) || et > 1 ||
        !r.Bytes(&e.data, kMaxEntryBytes)) {
      return Malformed("bad entry");
    }
    e.type = static_cast<EntryType>(et);
    m.entries.push_back(std::move(e));
  }
  if (m.type == MessageType::kSnapshot) {
    if (!GetMeta(&r, &m.snapshot) || !r.Varint(&m.offset) || !r.Bytes(&m.chunk, kMaxChunkBytes)) {
      return Malformed("bad snapshot chunk");
    }
    if (m.offset > m.snapshot.size || m.chunk.size() > m.snapshot.size - m.offset) {
      return Malformed("snapshot chunk beyond the snapshot's size");
    }
  } else if (m.type == MessageType::kSnapshotResp) {
    if (!r.Varint(&m.offset)) return Malformed("bad snapshot response");
  }
  if (!r.done()) return Malformed("trailing bytes");
  return m;
}

std::string EncodeConfChange(const ConfChange& cc) {
  Writer w;
  w.U8(kProtocolVersion);
  w.U8(static_cast<uint8_t>(cc.type));
  w.Bytes(cc.node);
  PutConfig(&w, cc.config);
  return w.Take();
}

Result<ConfChange> DecodeConfChange(std::string_view in) {
  Reader r(in);
  uint8_t version, type;
  ConfChange cc;
  if (!r.U8(&version) || version != kProtocolVersion) return Malformed("conf change version");
  if (!r.U8(&type) || type > 2 || !r.Bytes(&cc.node, kMaxNodeIdBytes) ||
      !GetConfig(&r, &cc.config) || !r.done() || !ValidId(cc.node)) {
    return Malformed("bad conf change");
  }
  cc.type = static_cast<ConfChangeType>(type);
  return cc;
}

std::string EncodeSnapshotMeta(const SnapshotMeta& meta) {
  Writer w;
  w.U8(kProtocolVersion);
  PutMeta(&w, meta);
  return w.Take();
}

Result<SnapshotMeta> DecodeSnapshotMeta(std::string_view in) {
  Reader r(in);
  uint8_t version;
  SnapshotMeta m;
  if (!r.U8(&version) || version != kProtocolVersion) return Malformed("snapshot meta version");
  if (!GetMeta(&r, &m) || !r.done()) return Malformed("bad snapshot meta");
  return m;
}

std::string EncodeHardState(const HardState& hs) {
  Writer w;
  w.U8(kProtocolVersion);
  w.Varint(hs.term);
  w.Bytes(hs.vote);
  w.Varint(hs.commit);
  return w.Take();
}

Result<HardState> DecodeHardState(std::string_view in) {
  Reader r(in);
  uint8_t version;
  HardState hs;
  if (!r.U8(&version) || version != kProtocolVersion) return Malformed("hard state version");
  if (!r.Varint(&hs.term) || !r.Bytes(&hs.vote, kMaxNodeIdBytes) || !r.Varint(&hs.commit) ||
      !r.done()) {
    return Malformed("bad hard state");
  }
  return hs;
}

namespace {

void Quote(std::ostringstream& os, std::string_view s) {
  os << '"';
  size_t n = std::min<size_t>(s.size(), 32);
  for (size_t i = 0; i < n; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      os << static_cast<char>(c);
    } else {
      static const char* kHex = "0123456789abcdef";
      os << "\\x" << kHex[c >> 4] << kHex[c & 15];
    }
  }
  if (s.size() > n) os << "...(" << s.size() << " bytes)";
  os << '"';
}

}  // namespace

std::string DescribeEntry(const Entry& e) {
  std::ostringstream os;
  os << e.term << '/' << e.index << ' ';
  if (e.type == EntryType::kConfChange) {
    Result<ConfChange> cc = DecodeConfChange(e.data);
    if (!cc.ok()) {
      os << "EntryConfChange <malformed>";
    } else {
      static const char* kNames[] = {"add-voter", "add-learner", "remove"};
      os << "EntryConfChange " << kNames[static_cast<int>(cc->type)] << ' ' << cc->node << " -> "
         << cc->config.ToString();
    }
  } else {
    os << "EntryNormal ";
    Quote(os, e.data);
  }
  return os.str();
}

std::string DescribeMessage(const Message& m) {
  std::ostringstream os;
  os << m.from << "->" << m.to << ' ' << MessageTypeName(m.type) << " Term:" << m.term;
  switch (m.type) {
    case MessageType::kPreVote:
    case MessageType::kVote:
    case MessageType::kAppend:
      os << " Log:" << m.log_term << '/' << m.index;
      break;
    case MessageType::kAppendResp:
    case MessageType::kReadIndexResp:
      os << " Index:" << m.index;
      break;
    case MessageType::kSnapshotResp:
      os << " Attempt:" << m.index;
      break;
    default:
      break;
  }
  if (m.type == MessageType::kAppend || m.type == MessageType::kHeartbeat) {
    os << " Commit:" << m.commit;
  }
  if (m.reject) {
    os << " Rejected";
    if (m.type == MessageType::kAppendResp) {
      os << " (Hint: " << m.reject_hint;
      if (m.log_term) os << " term " << m.log_term;
      os << ")";
    }
  }
  if (!m.context.empty()) {
    os << " Context:";
    Quote(os, m.context);
  }
  if (!m.entries.empty()) {
    os << " Entries:[";
    for (size_t i = 0; i < m.entries.size(); ++i) {
      os << (i ? ", " : "") << DescribeEntry(m.entries[i]);
    }
    os << ']';
  }
  if (m.type == MessageType::kSnapshot) {
    os << " Attempt:" << m.index << " Snapshot:" << m.snapshot.term << '/' << m.snapshot.index
       << " (" << m.snapshot.config.ToString() << ") Chunk:" << m.offset << '+' << m.chunk.size()
       << '/' << m.snapshot.size;
  }
  if (m.type == MessageType::kSnapshotResp) os << " Offset:" << m.offset;
  return os.str();
}

}  // namespace constellation::raft
