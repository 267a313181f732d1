#include "tests/node/raft/harness.h"

#include <algorithm>
#include <sstream>

#include "node/base/log.h"

namespace constellation::raft::testing {
namespace {

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

std::vector<std::string> Words(const std::string& s) {
  std::istringstream is(s);
  std::vector<std::string> out;
  std::string w;
  while (is >> w) out.push_back(w);
  return out;
}

const char* LevelName(LogLevel l) {
  switch (l) {
    case LogLevel::kDebug:
      return "DEBUG";
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarning:
      return "WARN";
    default:
      return "ERROR";
  }
}

std::string StateData(const std::vector<std::string>& applied) {
  std::string s;
  for (const std::string& a : applied) s += a + "\n";
  return s;
}

std::vector<std::string> ParseStateData(const std::string& data) { return Split(data, '\n'); }

}  // namespace

Harness::Harness() = default;

std::vector<std::string> Harness::ids() const {
  std::vector<std::string> out;
  for (const auto& [id, n] : nodes_) out.push_back(id);
  // Numeric ids sort numerically ("10" after "9").
  std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() < b.size() : a < b;
  });
  return out;
}

void Harness::Print(const std::string& line) { out_ += line + "\n"; }

void Harness::AddNodes(int n, const std::vector<std::string>& args) {
  std::vector<std::string> new_ids;
  for (int i = 0; i < n; ++i) new_ids.push_back(std::to_string(next_id_++));
  Config initial;
  initial.voters = new_ids;
  bool join = false;
  RaftOptions base;
  base.min_log_level = LogLevel::kDebug;
  for (const std::string& a : args) {
    size_t eq = a.find('=');
    std::string k = a.substr(0, eq), v = eq == std::string::npos ? "" : a.substr(eq + 1);
    if (k == "voters") {
      initial.voters = Split(v, ',');
    } else if (k == "learners") {
      initial.learners = Split(v, ',');
    } else if (k == "join") {
      join = true;
    } else if (k == "election") {
      base.election_ticks = std::stoi(v);
    } else if (k == "heartbeat") {
      base.heartbeat_ticks = std::stoi(v);
    } else if (k == "prevote") {
      base.pre_vote = v != "false";
    } else if (k == "checkquorum") {
      base.check_quorum = v != "false";
    } else if (k == "max-append-bytes") {
      base.max_append_bytes = std::stoul(v);
    } else if (k == "inflight") {
      base.max_inflight_appends = std::stoul(v);
    } else if (k == "chunk-bytes") {
      base.max_snapshot_chunk_bytes = std::stoul(v);
    } else if (k == "chunk-window") {
      base.max_inflight_snapshot_chunks = std::stoul(v);
    } else if (k == "max-uncommitted-bytes") {
      base.max_uncommitted_bytes = std::stoul(v);
      base.max_entry_bytes = std::min(base.max_entry_bytes, base.max_uncommitted_bytes);
    } else if (k == "unsafe-commit") {
      base.unsafe_commit_previous_terms = true;
    } else {
      Print("unknown option " + a);
    }
  }
  auto sorted = [](std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  initial.voters = sorted(initial.voters);
  initial.learners = sorted(initial.learners);
  for (const std::string& id : new_ids) {
    Node& node = nodes_[id];
    node.storage = std::make_unique<MemoryStorage>(join ? Config{} : initial);
    node.options = base;
    node.options.id = id;
    node.options.storage = node.storage.get();
    node.options.seed = std::stoul(id);
    node.options.logger = [this](LogLevel l, const std::string& line) {
      if (verbose_ && l >= level_) Print(std::string(LevelName(l)) + " " + line);
    };
    Result<std::unique_ptr<Raft>> r = Raft::New(node.options);
    if (!r.ok()) {
      Print("add-nodes: " + r.status().ToString());
      nodes_.erase(id);
      continue;
    }
    node.raft = std::move(*r);
  }
}

void Harness::Restart(const std::string& id) {
  Node& node = nodes_.at(id);
  node.raft.reset();
  // The state machine is volatile: it restarts from the snapshot; raft hands out the rest.
  node.applied = ParseStateData(node.storage->snapshot().data);
  node.reads.clear();
  node.fail_next_persist = false;
  RaftOptions o = node.options;
  o.applied = 0;
  Result<std::unique_ptr<Raft>> r = Raft::New(o);
  if (!r.ok()) {
    Print("restart: " + r.status().ToString());
    return;
  }
  node.raft = std::move(*r);
}

std::string Harness::DescribeReady(const Ready& rd) const {
  std::ostringstream os;
  os << "Ready:";
  if (rd.hard_state) {
    os << "\nHardState Term:" << rd.hard_state->term
       << " Vote:" << (rd.hard_state->vote.empty() ? "-" : rd.hard_state->vote)
       << " Commit:" << rd.hard_state->commit;
  }
  if (rd.snapshot) {
    os << "\nSnapshot " << rd.snapshot->meta.term << '/' << rd.snapshot->meta.index << ' '
       << rd.snapshot->meta.config.ToString() << " size " << rd.snapshot->meta.size;
  }
  if (!rd.entries.empty()) {
    os << "\nEntries:";
    for (const Entry& e : rd.entries) os << "\n" << DescribeEntry(e);
  }
  if (!rd.messages.empty()) {
    os << "\nMessages:";
    for (const Message& m : rd.messages) os << "\n" << DescribeMessage(m);
  }
  if (!rd.committed_entries.empty()) {
    os << "\nCommittedEntries:";
    for (const Entry& e : rd.committed_entries) os << "\n" << DescribeEntry(e);
  }
  for (const ReadState& r : rd.read_states) {
    os << "\nReadState Index:" << r.index << " Context:" << r.context;
  }
  return os.str();
}

Ready Harness::ProcessReady(const std::string& id) {
  Node& node = nodes_.at(id);
  if (!node.raft->HasReady()) return {};
  Ready rd = node.raft->GetReady();
  Ready copy = rd;
  if (verbose_) {
    Print("> " + id + " handling Ready");
    Print(DescribeReady(rd));
  }
  if (node.fail_next_persist && (rd.snapshot || !rd.entries.empty() || rd.hard_state)) {
    node.fail_next_persist = false;
    if (verbose_) Print("> " + id + " persisting failed");
    for (const Entry& e : rd.committed_entries) {
      if (e.type == EntryType::kNormal && !e.data.empty()) node.applied.push_back(e.data);
    }
    node.raft->PersistFailed();
    return copy;
  }
  // 1. persist; 2. send; 3. apply; 4. reads; 5. advance.
  if (rd.snapshot) node.storage->ApplySnapshot(*rd.snapshot);
  node.storage->Append(rd.entries);
  if (rd.hard_state) node.storage->SetHardState(*rd.hard_state);
  for (Message& m : rd.messages) mailbox_[m.to].push_back(std::move(m));
  if (rd.snapshot) node.applied = ParseStateData(rd.snapshot->data);
  for (const Entry& e : rd.committed_entries) {
    if (e.type == EntryType::kNormal && !e.data.empty()) node.applied.push_back(e.data);
  }
  for (const ReadState& r : rd.read_states) node.reads.push_back(r);
  node.raft->Advance();
  return copy;
}

bool Harness::Blocked(const std::string& from, const std::string& to) const {
  return cut_.count({from, to}) > 0;
}

void Harness::DeliverMsgs(const std::string& id, bool drop) {
  auto it = mailbox_.find(id);
  if (it == mailbox_.end() || it->second.empty()) return;
  std::vector<Message> msgs = std::move(it->second);
  it->second.clear();
  if (verbose_)
    Print(std::string("> ") + id + (drop ? " dropping messages" : " receiving messages"));
  for (const Message& m : msgs) {
    bool blocked = Blocked(m.from, m.to) || !nodes_.count(id);
    if (verbose_) {
      Print(std::string(drop ? "  dropped: " : blocked ? "  blocked: " : "") + DescribeMessage(m));
    }
    if (drop || blocked) continue;
    std::string wire = EncodeMessage(m);
    Result<Message> back = DecodeMessage(wire);
    if (!back.ok() || !(*back == m)) {
      Print("CODEC MISMATCH for " + DescribeMessage(m));
      continue;
    }
    Status s = nodes_.at(id).raft->Step(*back);
    if (!s.ok() && verbose_) Print("  step: " + s.ToString());
  }
}

size_t Harness::queued() const {
  size_t n = 0;
  for (const auto& [id, q] : mailbox_) n += q.size();
  return n;
}

void Harness::Stabilize(const std::vector<std::string>& only) {
  std::vector<std::string> targets = only.empty() ? ids() : only;
  for (int round = 0; round < 1000; ++round) {
    bool moved = false;
    for (const std::string& id : targets) {
      if (nodes_.count(id) && nodes_.at(id).raft->HasReady()) {
        (void)ProcessReady(id);
        moved = true;
      }
    }
    for (const std::string& id : targets) {
      auto it = mailbox_.find(id);
      if (it != mailbox_.end() && !it->second.empty()) {
        DeliverMsgs(id);
        moved = true;
      }
    }
    if (!moved) return;
  }
  Print("stabilize: still moving after 1000 rounds");
}

std::string Harness::leader() const {
  std::string best;
  uint64_t term = 0;
  for (const auto& [id, n] : nodes_) {
    if (n.raft->role() == Role::kLeader && n.raft->term() >= term) {
      best = id;
      term = n.raft->term();
    }
  }
  return best;
}

std::string Harness::StatusOf(const std::string& id) {
  Node& n = nodes_.at(id);
  const Raft& r = *n.raft;
  std::ostringstream os;
  os << id << ": " << RoleName(r.role()) << " term " << r.term() << " lead "
     << (r.leader().empty() ? "-" : r.leader()) << " vote "
     << (r.hard_state().vote.empty() ? "-" : r.hard_state().vote) << " log " << r.first_index()
     << ".." << r.last_index() << " commit " << r.commit_index() << " applied " << r.applied_index()
     << " " << r.config().ToString();
  for (const PeerProgress& p : r.progress()) {
    os << "\n  " << p.id << ": " << p.state << " match " << p.match << " next " << p.next
       << (p.learner ? " learner" : "") << (p.inflight ? " inflight " : "")
       << (p.inflight ? std::to_string(p.inflight) : "");
  }
  os << "\n  applied: [";
  for (size_t i = 0; i < n.applied.size(); ++i) os << (i ? " " : "") << n.applied[i];
  os << "]";
  return os.str();
}

std::string Harness::Run(const std::string& line) {
  out_.clear();
  std::vector<std::string> w = Words(line);
  if (w.empty()) return "ok\n";
  const std::string& cmd = w[0];
  auto need = [&](size_t n) {
    if (w.size() < n + 1) {
      Print(cmd + ": needs " + std::to_string(n) + " arguments");
      return false;
    }
    return true;
  };
  auto known = [&](const std::string& id) {
    if (nodes_.count(id)) return true;
    Print("no node " + id);
    return false;
  };
  auto rest = [&](size_t from) {
    return std::vector<std::string>(w.begin() + std::min(from, w.size()), w.end());
  };
  auto status_line = [&](const Status& s) {
    if (!s.ok()) Print(s.ToString());
  };
  if (cmd == "add-nodes") {
    if (need(1)) AddNodes(std::stoi(w[1]), rest(2));
  } else if (cmd == "campaign") {
    if (need(1) && known(w[1])) status_line(node(w[1]).raft->Campaign());
  } else if (cmd == "propose") {
    if (need(2) && known(w[1])) status_line(node(w[1]).raft->Propose(w[2]));
  } else if (cmd == "propose-conf-change") {
    if (need(3) && known(w[1])) {
      ConfChange cc;
      cc.node = w[3];
      if (w[2] == "add-voter") {
        cc.type = ConfChangeType::kAddVoter;
      } else if (w[2] == "add-learner") {
        cc.type = ConfChangeType::kAddLearner;
      } else {
        cc.type = ConfChangeType::kRemoveNode;
      }
      status_line(node(w[1]).raft->ProposeConfChange(cc));
    }
  } else if (cmd == "read-index") {
    if (need(2) && known(w[1])) status_line(node(w[1]).raft->ReadIndex(w[2]));
  } else if (cmd == "tick") {
    if (need(1) && known(w[1])) {
      int n = w.size() > 2 ? std::stoi(w[2]) : 1;
      for (int i = 0; i < n; ++i) node(w[1]).raft->Tick();
    }
  } else if (cmd == "process-ready") {
    for (const std::string& id : rest(1)) {
      if (known(id)) (void)ProcessReady(id);
    }
  } else if (cmd == "deliver-msgs") {
    std::vector<std::string> targets;
    bool drop = false;
    for (const std::string& a : rest(1)) {
      if (a == "drop") {
        drop = true;
      } else {
        targets.push_back(a);
      }
    }
    if (targets.empty()) targets = ids();
    for (const std::string& id : targets) DeliverMsgs(id, drop);
  } else if (cmd == "stabilize") {
    Stabilize(rest(1));
  } else if (cmd == "partition") {
    std::set<std::string> side(w.begin() + 1, w.end());
    for (const std::string& a : ids()) {
      for (const std::string& b : ids()) {
        if (side.count(a) != side.count(b)) cut_.insert({a, b});
      }
    }
  } else if (cmd == "isolate") {
    if (need(1)) {
      for (const std::string& a : ids()) {
        if (a == w[1]) continue;
        cut_.insert({a, w[1]});
        cut_.insert({w[1], a});
      }
    }
  } else if (cmd == "cut") {
    if (need(2)) cut_.insert({w[1], w[2]});
  } else if (cmd == "heal") {
    cut_.clear();
  } else if (cmd == "status") {
    for (const std::string& id : w.size() > 1 ? rest(1) : ids()) {
      if (known(id)) Print(StatusOf(id));
    }
  } else if (cmd == "raft-state") {
    for (const std::string& id : ids()) {
      const Raft& r = *node(id).raft;
      Print(id + ": " + RoleName(r.role()) + " term " + std::to_string(r.term()) + " lead " +
            (r.leader().empty() ? "-" : r.leader()) + " commit " +
            std::to_string(r.commit_index()));
    }
  } else if (cmd == "raft-log") {
    if (need(1) && known(w[1])) {
      const Raft& r = *node(w[1]).raft;
      std::vector<Entry> ents;
      Status s = r.Entries(r.first_index(), r.last_index() + 1, &ents);
      status_line(s);
      if (ents.empty()) Print("log is empty (first index " + std::to_string(r.first_index()) + ")");
      for (const Entry& e : ents) Print(DescribeEntry(e));
    }
  } else if (cmd == "compact") {
    if (need(1) && known(w[1])) {
      Node& n = node(w[1]);
      uint64_t keep = 0;
      for (const std::string& a : rest(2)) {
        if (a.rfind("keep=", 0) == 0) keep = std::stoull(a.substr(5));
      }
      status_line(n.storage->CreateSnapshot(n.raft->applied_index(), n.raft->applied_config(),
                                            StateData(n.applied), keep));
    }
  } else if (cmd == "restart") {
    if (need(1) && known(w[1])) Restart(w[1]);
  } else if (cmd == "fail-persist") {
    if (need(1) && known(w[1])) node(w[1]).fail_next_persist = true;
  } else if (cmd == "log-level") {
    if (need(1)) {
      verbose_ = w[1] != "none";
      level_ = w[1] == "debug" ? LogLevel::kDebug : LogLevel::kInfo;
    }
  } else {
    Print("unknown command " + cmd);
  }
  if (out_.empty()) return "ok\n";
  return out_;
}

}  // namespace constellation::raft::testing
