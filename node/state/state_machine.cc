#include "node/state/state_machine.h"

#include <mutex>

#include "node/base/coding.h"

namespace constellation {
namespace {

std::string Escape(std::string_view v) {
  if (v.empty()) return "-";
  std::string out;
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string Field(const std::string& s) { return s.empty() ? "-" : s; }

bool IsZ85Key(std::string_view k) {
  if (k.size() != 40) return false;
  static constexpr std::string_view kAlphabet =
      "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";
  for (char c : k) {
    if (kAlphabet.find(c) == std::string_view::npos) return false;
  }
  return true;
}

std::string EncodeMember(const MemberRecord& m) {
  Writer w;
  w.U8(1);
  w.Bytes(m.name);
  w.Bytes(m.key);
  w.Bytes(m.addr);
  return w.Take();
}

Result<MemberRecord> DecodeMember(std::string_view d) {
  Reader r(d);
  uint8_t version = 0;
  MemberRecord m;
  if (!r.U8(&version) || version != 1 || !r.Bytes(&m.name, 255) || !r.Bytes(&m.key, 40) ||
      !r.Bytes(&m.addr, 300) || !r.done()) {
    return Status::Corruption("member record: malformed");
  }
  return m;
}

}  // namespace

namespace keys {
bool IsLocal(std::string_view key) {
  return key == kFormat || key == kLogFirst || key.substr(0, 2) == kLogPrefix ||
         key.substr(0, 2) == kRaftPrefix || key.substr(0, 2) == kLocalPrefix;
}
}  // namespace keys

Status ParseMemberValue(std::string_view value, MemberRecord* out) {
  bool have_key = false, have_addr = false;
  for (const std::string& line : SplitLines(value)) {
    size_t eq = line.find('=');
    std::string k = line.substr(0, eq);
    std::string v = eq == std::string::npos ? "" : line.substr(eq + 1);
    if (k == "key") {
      if (!IsZ85Key(v)) return Status::InvalidArgument("admit: key is not a Z85 public key");
      out->key = v;
      have_key = true;
    } else if (k == "addr") {
      size_t colon = v.rfind(':');
      if (v.empty() || v.size() > 255 || colon == std::string::npos || colon == 0 ||
          colon + 1 == v.size() || v.find_first_of(" \t") != std::string::npos) {
        return Status::InvalidArgument("admit: addr \"" + v + "\" is not host:port");
      }
      out->addr = v;
      have_addr = true;
    } else {
      return Status::InvalidArgument("admit: unknown key " + k);
    }
  }
  if (!have_key || !have_addr) return Status::InvalidArgument("admit: needs key= and addr=");
  return Status::Ok();
}

std::string FormatMemberValue(const MemberRecord& m) {
  return "key=" + m.key + "\naddr=" + m.addr + "\n";
}

std::string FormatAuditLine(const Command& c, const Status& verdict) {
  return std::to_string(c.time_ms) + " " + std::to_string(c.uid) + " " + std::to_string(c.pid) +
         " " + Field(c.node) + " " + Field(c.path) + " " + Field(c.op) + " " +
         (verdict.ok() ? std::string("ok") : std::string(CodeName(verdict.code()))) + " " +
         Escape(c.value);
}

StateMachine::StateMachine(StateMachineOptions options) : options_(options) {}

Status StateMachine::Load(KvStore* kv) {
  std::string v;
  Status s = kv->Get(keys::kFormat, &v);
  if (s.code() == Code::kNotFound) {
    bool empty = true;
    CN_RETURN_IF_ERROR(kv->Scan("", "", [&](std::string_view, std::string_view) {
      empty = false;
      return false;
    }));
    if (!empty) return Status::Corruption("state store has data but no format version");
    KvStore::Batch b;
    b.Put(keys::kFormat, std::to_string(kStateFormatVersion));
    CN_RETURN_IF_ERROR(kv->Write(b, /*sync=*/true));
  } else if (!s.ok()) {
    return s;
  } else if (v != std::to_string(kStateFormatVersion)) {
    return Status::NotSupported("data was written by state format version " + v +
                                "; this daemon reads version " +
                                std::to_string(kStateFormatVersion));
  }
  fs_ = std::make_unique<KvOverlay>(kv);
  std::unique_lock<std::shared_mutex> l(mu_);
  instances_.clear();
  nodes_.clear();
  staged_ = Staged{};
  Status decode;
  CN_RETURN_IF_ERROR(
      kv->Scan(keys::kInstancePrefix, "i0", [&](std::string_view, std::string_view d) {
        Result<InstanceRecord> r = DecodeInstance(d);
        if (!r.ok()) {
          decode = r.status();
          return false;
        }
        instances_[r->name] = std::move(*r);
        return true;
      }));
  CN_RETURN_IF_ERROR(decode);
  CN_RETURN_IF_ERROR(kv->Scan(keys::kNodePrefix, "n0", [&](std::string_view, std::string_view d) {
    Result<NodeRecord> r = DecodeNode(d);
    if (!r.ok()) {
      decode = r.status();
      return false;
    }
    nodes_[r->name] = std::move(*r);
    return true;
  }));
  CN_RETURN_IF_ERROR(decode);
  members_.clear();
  CN_RETURN_IF_ERROR(kv->Scan(keys::kMemberPrefix, "k0", [&](std::string_view, std::string_view d) {
    Result<MemberRecord> r = DecodeMember(d);
    if (!r.ok()) {
      decode = r.status();
      return false;
    }
    members_[r->name] = std::move(*r);
    return true;
  }));
  CN_RETURN_IF_ERROR(decode);
  requests_.clear();
  CN_RETURN_IF_ERROR(
      kv->Scan(keys::kRequestPrefix, "q0", [&](std::string_view k, std::string_view d) {
        requests_[std::string(k.substr(2))] = FromBigEndian64(d);
        return true;
      }));
  applied_ = 0;
  audit_seq_ = 0;
  cluster_id_.clear();
  if (kv->Get(keys::kApplied, &v).ok()) applied_ = FromBigEndian64(v);
  if (kv->Get(keys::kAuditSeq, &v).ok()) audit_seq_ = FromBigEndian64(v);
  if (kv->Get(keys::kCluster, &v).ok()) cluster_id_ = v;
  return Status::Ok();
}

std::optional<InstanceRecord> StateMachine::StagedInstance(const std::string& name) const {
  auto st = staged_.instances.find(name);
  if (st != staged_.instances.end()) return st->second;
  std::shared_lock<std::shared_mutex> l(mu_);
  auto it = instances_.find(name);
  if (it == instances_.end()) return std::nullopt;
  return it->second;
}

std::optional<NodeRecord> StateMachine::StagedNode(const std::string& name) const {
  auto st = staged_.nodes.find(name);
  if (st != staged_.nodes.end()) return st->second;
  std::shared_lock<std::shared_mutex> l(mu_);
  auto it = nodes_.find(name);
  if (it == nodes_.end()) return std::nullopt;
  return it->second;
}

void StateMachine::PutInstance(const InstanceRecord& r, KvStore::Batch* batch) {
  batch->Put(keys::kInstancePrefix + r.name, EncodeInstance(r));
  staged_.instances[r.name] = r;
}

void StateMachine::PutNode(const NodeRecord& r, KvStore::Batch* batch) {
  batch->Put(keys::kNodePrefix + r.name, EncodeNode(r));
  staged_.nodes[r.name] = r;
}

void StateMachine::Audit(const Command& c, const Status& verdict, KvStore::Batch* batch) {
  uint64_t seq;
  if (staged_.audit_seq) {
    seq = *staged_.audit_seq + 1;
  } else {
    std::shared_lock<std::shared_mutex> l(mu_);
    seq = audit_seq_ + 1;
  }
  staged_.audit_seq = seq;  // stored once per batch (StageInto)
  batch->Put(keys::kAuditPrefix + BigEndian64(seq), FormatAuditLine(c, verdict));
  if (seq > options_.audit_keep) {
    batch->Delete(keys::kAuditPrefix + BigEndian64(seq - options_.audit_keep));
  }
}

Status StateMachine::Apply(uint64_t index, const Command& c, KvStore::Batch* batch,
                           std::vector<std::string>* events, std::string* result) {
  Status verdict;
  if (c.request_id != 0 && !c.node.empty()) {
    if (c.request_id <= StagedLastRequest(c.node)) {
      // A retried proposal whose first copy (or a later command of its node) was applied already.
      staged_.applied = index;
      return Status::Unavailable(
          "the write was overtaken by a later one from this node after a leader change; retry");
    }
    staged_.requests[c.node] = c.request_id;
  }
  if (c.type == CommandType::kFs) {
    Result<FsOp> op = DecodeFsOp(c.value);
    FsResult r;
    verdict = op.ok() ? FsMeta::Apply(index, *op, fs_.get(), &r) : op.status();
    if (verdict.ok() && result != nullptr) *result = EncodeFsResult(r);
    if (verdict.ok() && options_.on_fs_changes) {
      staged_.fs_changes.push_back(FsChange{c.node, std::move(op).value(), std::move(r)});
    }
  } else {
    verdict = ApplyCommand(c, batch, events);
  }
  if (!c.op.empty()) Audit(c, verdict, batch);
  staged_.applied = index;
  return verdict;
}

Status StateMachine::ApplyCommand(const Command& c, KvStore::Batch* batch,
                                  std::vector<std::string>* events) {
  const std::string t = std::to_string(c.time_ms) + " ";
  switch (c.type) {
    case CommandType::kNoop:
    case CommandType::kFs:  // handled by Apply
      return Status::Ok();
    case CommandType::kAuditOnly:
      return Status(c.result.empty() ? Code::kInvalidArgument : CodeFromName(c.result),
                    "refused before commit");
    case CommandType::kBootstrap: {
      std::string current = staged_.cluster_id ? *staged_.cluster_id : cluster_id();
      if (!current.empty()) return Status::Ok();
      staged_.cluster_id = c.value;
      batch->Put(keys::kCluster, c.value);
      events->push_back(t + "cluster_created " + c.value + " node=" + Field(c.node));
      return Status::Ok();
    }
    case CommandType::kNodeUpdate: {
      CN_RETURN_IF_ERROR(ValidateName(c.object, "node name"));
      std::optional<NodeRecord> old = StagedNode(c.object);
      NodeRecord r = old.value_or(NodeRecord{});
      r.name = c.object;
      for (const std::string& line : SplitLines(c.value)) {
        size_t eq = line.find('=');
        std::string k = line.substr(0, eq);
        std::string v = eq == std::string::npos ? "" : line.substr(eq + 1);
        if (k == "addr") {
          r.addr = v;
        } else if (k == "cpu_cores") {
          r.cpu_cores = std::atoll(v.c_str());
        } else if (k == "ram_mb") {
          r.ram_mb = std::atoll(v.c_str());
        } else if (k == "version") {
          r.version = v;
        } else {
          return Status::InvalidArgument("node update: unknown key " + k);
        }
      }
      PutNode(r, batch);
      events->push_back(t + (old ? "node_updated " : "node_joined ") + r.name +
                        " addr=" + Field(r.addr));
      return Status::Ok();
    }
    case CommandType::kNodeAdmit: {
      CN_RETURN_IF_ERROR(ValidateName(c.object, "node name"));
      MemberRecord m;
      m.name = c.object;
      CN_RETURN_IF_ERROR(ParseMemberValue(c.value, &m));
      std::optional<MemberRecord> old = StagedMember(c.object);
      if (old && old->key != m.key) {
        return Status::AlreadyExists("node name " + c.object +
                                     " is already admitted with another key");
      }
      for (const MemberRecord& other : ListMembers()) {
        if (other.name != m.name && other.key == m.key) {
          return Status::AlreadyExists("key already admitted as node " + other.name);
        }
      }
      if (old && *old == m) return Status::Ok();
      batch->Put(keys::kMemberPrefix + m.name, EncodeMember(m));
      staged_.members[m.name] = m;
      events->push_back(t + (old ? "node_readmitted " : "node_admitted ") + m.name +
                        " addr=" + m.addr);
      return Status::Ok();
    }
    case CommandType::kNodeSetLabels: {
      std::optional<NodeRecord> r = StagedNode(c.object);
      if (!r) return Status::NotFound("node " + c.object + " does not exist");
      CN_RETURN_IF_ERROR(ParseLabels(c.value, &r->labels));
      PutNode(*r, batch);
      events->push_back(t + "node_updated " + r->name + " fields=labels");
      return Status::Ok();
    }
    case CommandType::kInstanceCreate: {
      CN_RETURN_IF_ERROR(ValidateName(c.object, "instance name"));
      if (StagedInstance(c.object)) {
        return Status::AlreadyExists("instance " + c.object + " already exists");
      }
      InstanceRecord r;
      r.name = c.object;
      r.uid = c.uid;
      r.gid = c.gid;
      r.created_ms = c.time_ms;
      // Until a scheduler places instances, a new one runs on the node where it was made: every
      // replica records the same node, so exactly one node's agent runs it.
      r.node = c.node;
      PutInstance(r, batch);
      staged_.changes.push_back({r.name, "", false, {}});
      events->push_back(t + "instance_created " + r.name + " uid=" + std::to_string(c.uid));
      return Status::Ok();
    }
    case CommandType::kInstanceRemove: {
      if (!StagedInstance(c.object)) {
        return Status::NotFound("instance " + c.object + " does not exist");
      }
      batch->Delete(keys::kInstancePrefix + c.object);
      staged_.instances[c.object] = std::nullopt;
      staged_.changes.push_back({c.object, "", false, {}});
      events->push_back(t + "instance_removed " + c.object);
      return Status::Ok();
    }
    case CommandType::kInstanceSet:
    case CommandType::kInstanceSpec: {
      std::optional<InstanceRecord> r = StagedInstance(c.object);
      if (!r) return Status::NotFound("instance " + c.object + " does not exist");
      std::string fields;
      if (c.type == CommandType::kInstanceSet) {
        if (!IsInstanceConfigField(c.field)) {
          return Status::InvalidArgument(c.field + ": not a configuration field");
        }
        CN_RETURN_IF_ERROR(SetInstanceField(&*r, c.field, c.value));
        fields = c.field;
      } else {
        CN_RETURN_IF_ERROR(ApplyInstanceSpec(&*r, c.value));
        fields = "spec";
      }
      PutInstance(*r, batch);
      staged_.changes.push_back({r->name, "", false, {}});
      events->push_back(t + "instance_updated " + r->name + " fields=" + fields);
      return Status::Ok();
    }
    case CommandType::kInstanceCtl: {
      std::optional<InstanceRecord> r = StagedInstance(c.object);
      if (!r) return Status::NotFound("instance " + c.object + " does not exist");
      std::string verb = c.value.substr(0, c.value.find(' '));
      if (verb == "start" || verb == "restart") {
        r->desired = "running";
      } else if (verb == "stop") {
        r->desired = "stopped";
      } else if (verb != "kill") {
        return Status::InvalidArgument("ctl: unknown verb " + verb);
      }
      PutInstance(*r, batch);
      staged_.changes.push_back({r->name, c.value, false, {}});
      events->push_back(t + "instance_ctl " + r->name + " verb=" + verb);
      return Status::Ok();
    }
  }
  return Status::InvalidArgument("unknown command type");
}

void StateMachine::CommitStaged() {
  std::vector<InstanceChange> changes;
  std::vector<FsChange> fs_changes;
  {
    std::unique_lock<std::shared_mutex> l(mu_);
    CommitStagedLocked();
    changes.swap(staged_.changes);
    for (InstanceChange& c : changes) {
      auto it = instances_.find(c.name);
      c.exists = it != instances_.end();
      if (c.exists) c.node = it->second.node;
    }
    fs_changes.swap(staged_.fs_changes);
    staged_ = Staged{};
  }
  if (!changes.empty() && options_.on_instance_changes) options_.on_instance_changes(changes);
  if (!fs_changes.empty()) options_.on_fs_changes(fs_changes, false);
}

void StateMachine::CommitStagedLocked() {
  for (auto& [name, r] : staged_.instances) {
    if (r) {
      instances_[name] = std::move(*r);
    } else {
      instances_.erase(name);
    }
  }
  for (auto& [name, r] : staged_.nodes) {
    if (r) {
      nodes_[name] = std::move(*r);
    } else {
      nodes_.erase(name);
    }
  }
  for (auto& [name, m] : staged_.members) members_[name] = std::move(m);
  for (auto& [node, id] : staged_.requests) requests_[node] = id;
  if (staged_.cluster_id) cluster_id_ = *staged_.cluster_id;
  if (staged_.applied) applied_ = *staged_.applied;
  if (staged_.audit_seq) audit_seq_ = *staged_.audit_seq;
}

void StateMachine::StageInto(KvStore::Batch* batch) {
  if (fs_) fs_->Flush(batch);
  // Once per batch rather than per command: each is a memtable insert, and a batch of 64
  // commands wrote the applied index 64 times.
  if (staged_.applied) batch->Put(keys::kApplied, BigEndian64(*staged_.applied));
  for (const auto& [node, id] : staged_.requests) {
    batch->Put(keys::kRequestPrefix + node, BigEndian64(id));
  }
  if (staged_.audit_seq) batch->Put(keys::kAuditSeq, BigEndian64(*staged_.audit_seq));
}

void StateMachine::DropStaged() {
  staged_ = Staged{};
  if (fs_) fs_->Drop();
}

uint64_t StateMachine::applied_index() const {
  std::shared_lock<std::shared_mutex> l(mu_);
  return applied_;
}

std::string StateMachine::cluster_id() const {
  std::shared_lock<std::shared_mutex> l(mu_);
  return cluster_id_;
}

std::optional<InstanceRecord> StateMachine::GetInstance(const std::string& name) const {
  std::shared_lock<std::shared_mutex> l(mu_);
  auto it = instances_.find(name);
  if (it == instances_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> StateMachine::ListInstances() const {
  std::shared_lock<std::shared_mutex> l(mu_);
  std::vector<std::string> out;
  for (const auto& [name, r] : instances_) out.push_back(name);
  return out;
}

std::optional<NodeRecord> StateMachine::GetNode(const std::string& name) const {
  std::shared_lock<std::shared_mutex> l(mu_);
  auto it = nodes_.find(name);
  if (it == nodes_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::string> StateMachine::ListNodes() const {
  std::shared_lock<std::shared_mutex> l(mu_);
  std::vector<std::string> out;
  for (const auto& [name, r] : nodes_) out.push_back(name);
  return out;
}

std::optional<MemberRecord> StateMachine::GetMember(const std::string& name) const {
  std::shared_lock<std::shared_mutex> l(mu_);
  auto it = members_.find(name);
  if (it == members_.end()) return std::nullopt;
  return it->second;
}

std::vector<MemberRecord> StateMachine::ListMembers() const {
  std::shared_lock<std::shared_mutex> l(mu_);
  std::vector<MemberRecord> out;
  for (const auto& [name, m] : members_) out.push_back(m);
  return out;
}

uint64_t StateMachine::LastRequest(const std::string& node) const {
  std::shared_lock<std::shared_mutex> l(mu_);
  auto it = requests_.find(node);
  return it == requests_.end() ? 0 : it->second;
}

std::optional<MemberRecord> StateMachine::StagedMember(const std::string& name) const {
  auto st = staged_.members.find(name);
  if (st != staged_.members.end()) return st->second;
  return GetMember(name);
}

uint64_t StateMachine::StagedLastRequest(const std::string& node) const {
  auto st = staged_.requests.find(node);
  if (st != staged_.requests.end()) return st->second;
  return LastRequest(node);
}

Status StateMachine::ReadAudit(KvStore* kv, std::string* out) const {
  return kv->Scan(keys::kAuditPrefix, "a0", [&](std::string_view, std::string_view line) {
    out->append(line);
    out->push_back('\n');
    return true;
  });
}

}  // namespace constellation
