#include "tests/node/membership/harness.h"

#include <sstream>
#include <stdexcept>

namespace constellation::membership::testing {
namespace {

std::vector<std::string> Words(const std::string& s) {
  std::istringstream is(s);
  std::vector<std::string> out;
  std::string w;
  while (is >> w) out.push_back(w);
  return out;
}

bool ParseState(const std::string& s, State* out) {
  for (State st : {State::kAlive, State::kSuspect, State::kDead, State::kLeft}) {
    if (s == StateName(st)) {
      *out = st;
      return true;
    }
  }
  return false;
}

bool ParseType(const std::string& s, MessageType* out) {
  for (int t = 1; t <= static_cast<int>(MessageType::kPushPullResp); ++t) {
    if (s == MessageTypeName(static_cast<MessageType>(t))) {
      *out = static_cast<MessageType>(t);
      return true;
    }
  }
  return false;
}

// STATE:NODE/INC[:BY]
bool ParseUpdate(const std::string& s, Update* u) {
  size_t c1 = s.find(':'), slash = s.find('/', c1 == std::string::npos ? 0 : c1);
  if (c1 == std::string::npos || slash == std::string::npos) return false;
  if (!ParseState(s.substr(0, c1), &u->state)) return false;
  u->node = s.substr(c1 + 1, slash - c1 - 1);
  size_t c2 = s.find(':', slash);
  u->incarnation = std::stoull(s.substr(slash + 1, c2 == std::string::npos ? s.npos : c2 - slash));
  if (c2 != std::string::npos) u->from = s.substr(c2 + 1);
  if (u->state == State::kAlive) u->addr = u->node;
  if (u->state == State::kLeft && u->from.empty()) u->from = u->node;
  return !u->node.empty();
}

}  // namespace

std::string Harness::StateOf(const std::string& name, const std::string& target) const {
  std::optional<Member> m = nodes_.at(name).core->member(target);
  return m ? StateName(m->state) : "unknown";
}

void Harness::AddNodes(const std::vector<std::string>& names,
                       const std::vector<std::string>& args) {
  Options base;
  for (const std::string& a : args) {
    size_t eq = a.find('=');
    std::string k = a.substr(0, eq), v = eq == std::string::npos ? "" : a.substr(eq + 1);
    if (k == "interval")
      base.probe_interval_ms = std::stoll(v);
    else if (k == "timeout")
      base.probe_timeout_ms = std::stoll(v);
    else if (k == "indirect")
      base.indirect_checks = std::stoi(v);
    else if (k == "suspicion-mult")
      base.suspicion_mult = std::stod(v);
    else if (k == "suspicion-max-mult")
      base.suspicion_max_mult = std::stod(v);
    else if (k == "confirmations")
      base.suspicion_confirmations = std::stoi(v);
    else if (k == "gossip")
      base.gossip_interval_ms = std::stoll(v);
    else if (k == "fanout")
      base.gossip_fanout = std::stoi(v);
    else if (k == "push-pull")
      base.push_pull_interval_ms = std::stoll(v);
    else if (k == "reconnect")
      base.reconnect_interval_ms = std::stoll(v);
    else if (k == "retransmit-mult")
      base.retransmit_mult = std::stoi(v);
    else if (k == "no-refute")
      base.unsafe_no_refute = true;
    else
      throw std::runtime_error("unknown option " + a);
  }
  uint64_t seed = nodes_.size() + 1;
  for (const std::string& name : names) {
    Options o = base;
    o.name = name;
    o.addr = name;
    o.seed = seed++;
    Result<std::unique_ptr<Membership>> m = Membership::New(o, now_ms_);
    if (!m.ok()) throw std::runtime_error(m.status().ToString());
    Node& n = nodes_[name];
    n.core = std::move(m).value();
    n.options = o;
    Collect(name);
  }
}

void Harness::Collect(const std::string& name) {
  Node& n = nodes_.at(name);
  if (!n.core->HasReady()) return;
  Ready rd = n.core->GetReady();
  for (const Event& e : rd.events) {
    Print("[" + std::to_string(now_ms_) + "] " + name + ": " + DescribeEvent(e));
  }
  for (Outgoing& o : rd.messages) {
    mailbox_.push_back(Pending{o.addr, EncodeMessage(o.message), now_ms_ + latency_ms_});
  }
}

bool Harness::Blocked(const std::string& from, const std::string& to) const {
  return cut_.count({from, to}) > 0;
}

void Harness::Deliver(const Pending& p, bool drop, bool print) {
  Result<Message> m = DecodeMessage(p.wire);
  if (!m.ok()) throw std::runtime_error("undecodable message: " + m.status().ToString());
  std::string line = DescribeMessage(*m);
  auto it = nodes_.find(p.addr);
  if (drop || it == nodes_.end() || it->second.crashed || Blocked(m->from, p.addr)) {
    if (print) Print(line + " (dropped)");
    return;
  }
  if (it->second.paused) {
    it->second.held.push_back(p);
    if (print) Print(line + " (held: " + p.addr + " is paused)");
    return;
  }
  if (print) Print(line);
  Status s = it->second.core->Step(*m, now_ms_);
  if (!s.ok()) Print("  " + p.addr + " refused: " + s.ToString());
  Collect(p.addr);
}

void Harness::TickAll() {
  for (auto& [name, n] : nodes_) {
    if (n.crashed || n.paused) continue;
    n.core->Tick(now_ms_);
    Collect(name);
  }
}

std::string Harness::Run(const std::string& line) {
  out_.clear();
  std::vector<std::string> w = Words(line);
  if (w.empty()) return "ok";
  const std::string& cmd = w[0];
  auto arg = [&](size_t i) -> const std::string& {
    if (i >= w.size()) throw std::runtime_error(cmd + ": missing argument");
    return w[i];
  };
  try {
    if (cmd == "add-nodes") {
      std::vector<std::string> names, opts;
      for (size_t i = 1; i < w.size(); ++i) {
        (w[i].find('=') != std::string::npos || w[i] == "no-refute" ? opts : names).push_back(w[i]);
      }
      AddNodes(names, opts);
    } else if (cmd == "join") {
      std::vector<std::string> seeds{arg(2)};
      seeds.insert(seeds.end(), w.begin() + 3, w.end());
      Status s = core(arg(1)).Join(seeds, now_ms_);
      if (!s.ok()) Print(s.ToString());
      Collect(arg(1));
    } else if (cmd == "tick" || cmd == "run") {
      const int64_t ms = std::stoll(arg(1));
      if (cmd == "run") {
        for (size_t i = 2; i < w.size(); ++i) {
          if (w[i].rfind("latency=", 0) == 0) latency_ms_ = std::stoll(w[i].substr(8));
        }
      }
      for (int64_t i = 0; i < ms; ++i) {
        ++now_ms_;
        if (cmd == "run") {
          std::deque<Pending> due;
          while (!mailbox_.empty() && mailbox_.front().deliver_at <= now_ms_) {
            due.push_back(std::move(mailbox_.front()));
            mailbox_.pop_front();
          }
          for (const Pending& p : due) Deliver(p, false, print_messages_);
        }
        TickAll();
      }
    } else if (cmd == "deliver") {
      const bool drop = w.size() > 1 && w[1] == "drop";
      std::deque<Pending> batch;
      batch.swap(mailbox_);
      for (const Pending& p : batch) Deliver(p, drop, true);
    } else if (cmd == "stabilize") {
      for (int round = 0; round < 100 && !mailbox_.empty(); ++round) {
        std::deque<Pending> batch;
        batch.swap(mailbox_);
        for (const Pending& p : batch) Deliver(p, false, true);
      }
      if (!mailbox_.empty()) Print("still moving after 100 rounds");
    } else if (cmd == "members") {
      for (const Member& m : core(arg(1)).members()) {
        Print(m.name + " " + StateName(m.state) + " inc=" + std::to_string(m.incarnation) +
              " addr=" + m.addr);
      }
    } else if (cmd == "health") {
      Print(std::to_string(core(arg(1)).health_score()));
    } else if (cmd == "suspicion") {
      std::optional<int64_t> t = core(arg(1)).suspicion_timeout_ms(arg(2));
      Print(t ? std::to_string(*t) + " ms" : "not suspect");
    } else if (cmd == "crash") {
      node(arg(1)).crashed = true;
      node(arg(1)).held.clear();
    } else if (cmd == "restart") {
      Node& n = node(arg(1));
      Result<std::unique_ptr<Membership>> m = Membership::New(n.options, now_ms_);
      if (!m.ok()) throw std::runtime_error(m.status().ToString());
      n.core = std::move(m).value();
      n.crashed = false;
      n.paused = false;
      n.held.clear();
      Status s = n.core->Join({arg(2)}, now_ms_);
      if (!s.ok()) Print(s.ToString());
      Collect(arg(1));
    } else if (cmd == "pause") {
      node(arg(1)).paused = true;
    } else if (cmd == "resume") {
      Node& n = node(arg(1));
      n.paused = false;
      for (Pending& p : n.held) {
        p.deliver_at = now_ms_;
        mailbox_.push_front(std::move(p));
      }
      n.held.clear();
    } else if (cmd == "leave") {
      Status s = core(arg(1)).Leave(now_ms_);
      if (!s.ok()) Print(s.ToString());
      Collect(arg(1));
    } else if (cmd == "partition") {
      std::set<std::string> side(w.begin() + 1, w.end());
      for (const auto& [a, na] : nodes_) {
        for (const auto& [b, nb] : nodes_) {
          if (side.count(a) != side.count(b)) cut_.insert({a, b});
        }
      }
    } else if (cmd == "cut") {
      cut_.insert({arg(1), arg(2)});
    } else if (cmd == "heal") {
      cut_.clear();
    } else if (cmd == "inject") {
      Message m;
      m.to = arg(1);
      m.from = arg(2);
      m.from_addr = m.from;
      if (!ParseType(arg(3), &m.type)) throw std::runtime_error("unknown type " + arg(3));
      for (size_t i = 4; i < w.size(); ++i) {
        if (w[i].rfind("seq=", 0) == 0) {
          m.seq = std::stoull(w[i].substr(4));
          continue;
        }
        Update u;
        if (!ParseUpdate(w[i], &u)) throw std::runtime_error("bad update " + w[i]);
        m.updates.push_back(u);
      }
      Deliver(Pending{m.to, EncodeMessage(m), now_ms_}, false, true);
    } else if (cmd == "print-messages") {
      print_messages_ = arg(1) == "on";
    } else {
      Print("unknown command " + cmd);
    }
  } catch (const std::exception& e) {
    Print(std::string("error: ") + e.what());
  }
  if (out_.empty()) return "ok\n";
  return out_;
}

}  // namespace constellation::membership::testing
