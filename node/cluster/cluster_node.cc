#include "node/cluster/cluster_node.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <shared_mutex>
#include <sstream>
#include <thread>

#include "node/base/log.h"
#include "node/base/thread_name.h"
#include "node/cluster/voters.h"
#include "node/cluster/wire.h"
#include "node/env/transport.h"
#include "node/state/records.h"

namespace constellation {
namespace {

constexpr size_t kMaxJoinQueue = 16;
constexpr size_t kMaxSwimQueue = 4096;  // SWIM messages received, not yet stepped
constexpr int64_t kJoinRetryMs = 1000;
constexpr char kJoinMembersKey[] = "j/members";  // the join reply's member list (local key)

Status WriteFileMode(const std::string& path, const std::string& content, mode_t mode) {
  std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return Status::FromErrno(errno, "open " + tmp);
  fchmod(fd, mode);
  ssize_t n = write(fd, content.data(), content.size());
  int err = errno;
  bool ok = n == static_cast<ssize_t>(content.size()) && fsync(fd) == 0;
  close(fd);
  if (!ok) return Status::FromErrno(n < 0 ? err : EIO, "write " + tmp);
  if (rename(tmp.c_str(), path.c_str()) != 0) return Status::FromErrno(errno, "rename " + tmp);
  return Status::Ok();
}

// The node's key pair from `path`, made there if the file does not exist.
Result<std::pair<std::string, std::string>> LoadOrCreateKeys(const std::string& path) {
  if (access(path.c_str(), F_OK) == 0) return ReadKeyFile(path);
  CN_ASSIGN_OR_RETURN(auto kp, NewCurveKeyPair());
  CN_RETURN_IF_ERROR(WriteKeyFile(path, kp.first, kp.second));
  CN_LOG(Info) << "made a new key pair in " << path;
  return kp;
}

std::string EncodeMembers(const std::vector<MemberRecord>& members) {
  JoinReply r;
  r.ok = true;
  r.members = members;
  return EncodeJoinReply(r);
}

}  // namespace

namespace {
// "\"" + s + "\"", built by appending (GCC 12 warns falsely about operator+ on a temporary).
std::string Quoted(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  out.append(s);
  out.push_back('"');
  return out;
}
}  // namespace

Status WriteKeyFile(const std::string& path, const std::string& public_key,
                    const std::string& secret_key) {
  return WriteFileMode(path, "public " + public_key + "\nsecret " + secret_key + "\n", 0600);
}

Result<std::pair<std::string, std::string>> ReadKeyFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return Status::FromErrno(errno, "open " + path);
  std::string line, pub, sec;
  while (std::getline(in, line)) {
    if (line.rfind("public ", 0) == 0) pub = line.substr(7);
    if (line.rfind("secret ", 0) == 0) sec = line.substr(7);
  }
  Result<std::string> derived = CurvePublicKey(sec);
  if (!derived.ok()) {
    return Status::InvalidArgument(path + ": no valid \"secret <Z85 key>\" line");
  }
  if (!pub.empty() && pub != *derived) {
    return Status::InvalidArgument(path + ": the public key does not belong to the secret key");
  }
  return std::make_pair(*derived, sec);
}

struct ClusterNode::Impl {
  ClusterNodeOptions options;
  std::string pub, sec;            // this node's keys
  std::string join_pub, join_sec;  // the join key
  std::string token;
  std::unique_ptr<ZmqTransport> transport;

  std::shared_mutex replica_mu;  // guards `replica` (shared: use it; unique: attach/detach)
  Replica* replica = nullptr;

  mutable std::mutex mu;                             // guards the fields below
  std::map<std::string, MemberRecord> join_members;  // by key: from a join reply or the token
  std::set<std::string> dead;
  std::map<std::string, std::pair<std::string, std::string>> peer_keys;  // addr → (server key)
  std::deque<JoinRequest> join_queue;
  std::condition_variable join_cv;
  bool stopping = false;
  std::string seed_key;  // while joining: the key of the node we join through
  std::optional<JoinReply> join_reply;
  std::condition_variable reply_cv;
  std::thread join_worker;

  // A run-time join (JoinCluster): one at a time; while its replica still holds the old cluster,
  // raft messages (from the cluster it joins) are dropped — raft resends them.
  std::mutex join_op_mu;
  std::atomic<bool> raft_paused{false};

  std::atomic<uint64_t> refused{0};
  std::atomic<uint64_t> malformed{0};
  std::atomic<uint64_t> join_requests{0};

  // ---- Membership (SWIM). The core is owned by swim_thread; the rest is guarded by swim_mu.
  std::unique_ptr<membership::Membership> swim;
  std::thread swim_thread;
  std::mutex swim_mu;
  std::condition_variable swim_cv;
  std::deque<membership::Message> swim_queue;
  bool swim_stop = false;
  bool leave_requested = false;
  bool leave_done = false;
  std::condition_variable leave_cv;
  std::atomic<uint64_t> swim_dropped{0};
  mutable std::mutex view_mu;  // guards `view`: the members as of the last round
  std::map<std::string, membership::State> view;

  // ---- Who is who (any thread).
  std::optional<MemberRecord> MemberByKey(const std::string& key) {
    {
      std::shared_lock<std::shared_mutex> l(replica_mu);
      if (replica != nullptr) {
        for (const MemberRecord& m : replica->state().ListMembers()) {
          if (m.key == key) return m;
        }
      }
    }
    std::lock_guard<std::mutex> l(mu);
    auto it = join_members.find(key);
    if (it != join_members.end()) return it->second;
    return std::nullopt;
  }

  std::optional<MemberRecord> MemberByName(const std::string& name) {
    {
      std::shared_lock<std::shared_mutex> l(replica_mu);
      if (replica != nullptr) {
        std::optional<MemberRecord> m = replica->state().GetMember(name);
        if (m) return m;
      }
    }
    std::lock_guard<std::mutex> l(mu);
    for (const auto& [key, m] : join_members) {
      if (m.name == name) return m;
    }
    return std::nullopt;
  }

  bool Authorize(const std::string& key) {
    if (key == join_pub) return true;
    return MemberByKey(key).has_value();
  }

  // Sends `payload` to addr, telling the transport the peer's key first when it changed.
  void SendTo(const std::string& addr, const std::string& key, std::string payload) {
    {
      std::lock_guard<std::mutex> l(mu);
      auto& known = peer_keys[addr];
      if (known.first != key || !known.second.empty()) {
        transport->SetPeerKey(addr, key);
        known = {key, ""};
      }
    }
    Status s = transport->Send(addr, std::move(payload));
    if (!s.ok()) CN_LOG(Debug) << "send to " << addr << ": " << s.ToString();
  }

  // ---- Raft messages out (the agent thread).
  void SendRaft(const raft::Message& m) {
    std::optional<MemberRecord> to = MemberByName(m.to);
    if (!to) {
      CN_LOG(Debug) << "no address for " << m.to << "; dropped a raft message";
      return;
    }
    SendTo(to->addr, to->key, EncodeRaftWire(m));
  }

  // ---- Messages in (the transport's thread).
  void Receive(const std::string& from_key, std::string body) {
    Result<WireMessage> w = DecodeWire(body);
    if (!w.ok()) {
      malformed.fetch_add(1);
      CN_LOG(Warning) << "dropped a malformed message from key " << from_key << ": "
                      << w.status().ToString();
      return;
    }
    if (from_key == join_pub) {
      // The join key may ask to join, and nothing else.
      if (w->kind != WireKind::kJoinRequest) {
        refused.fetch_add(1);
        return;
      }
      std::lock_guard<std::mutex> l(mu);
      if (join_queue.size() >= kMaxJoinQueue) {
        refused.fetch_add(1);
        return;
      }
      join_queue.push_back(std::move(w->join_request));
      join_cv.notify_one();
      return;
    }
    if (w->kind == WireKind::kJoinReply) {
      std::lock_guard<std::mutex> l(mu);
      if (from_key != seed_key || seed_key.empty()) {
        refused.fetch_add(1);
        return;
      }
      join_reply = std::move(w->join_reply);
      reply_cv.notify_all();
      return;
    }
    if (w->kind == WireKind::kMembership) {
      std::optional<MemberRecord> sender = MemberByKey(from_key);
      if (!sender || sender->name != w->membership.from) {
        refused.fetch_add(1);
        CN_LOG(Warning) << "dropped a membership message claiming to be from " << w->membership.from
                        << " sent with "
                        << (sender ? "the key of " + sender->name : "an unknown key");
        return;
      }
      std::lock_guard<std::mutex> l(swim_mu);
      if (swim_stop || swim_queue.size() >= kMaxSwimQueue) {
        swim_dropped.fetch_add(1);  // SWIM tolerates loss: probes retry, updates are resent
        return;
      }
      swim_queue.push_back(std::move(w->membership));
      swim_cv.notify_one();
      return;
    }
    if (w->kind != WireKind::kRaft) {
      refused.fetch_add(1);
      return;
    }
    std::optional<MemberRecord> sender = MemberByKey(from_key);
    if (!sender || sender->name != w->raft.from || w->raft.to != options.node_name) {
      refused.fetch_add(1);
      CN_LOG(Warning) << "dropped a raft message claiming to be from " << w->raft.from << " to "
                      << w->raft.to << " sent with "
                      << (sender ? "the key of " + sender->name : "an unknown key");
      return;
    }
    if (raft_paused.load()) return;
    std::shared_lock<std::shared_mutex> l(replica_mu);
    if (replica != nullptr) replica->Deliver(std::move(w->raft));
  }

  // ---- The join service (its own thread: admitting blocks on a commit).
  void ServeJoins() {
    for (;;) {
      JoinRequest req;
      {
        std::unique_lock<std::mutex> l(mu);
        join_cv.wait(l, [&] { return stopping || !join_queue.empty(); });
        if (stopping) return;
        req = std::move(join_queue.front());
        join_queue.pop_front();
      }
      join_requests.fetch_add(1);
      JoinReply reply;
      Status s = ValidateName(req.name, "node name");
      MemberRecord m;
      m.name = req.name;
      if (s.ok()) s = ParseMemberValue("key=" + req.key + "\naddr=" + req.addr, &m);
      if (s.ok()) {
        Command c;
        c.type = CommandType::kNodeAdmit;
        c.object = req.name;
        c.value = FormatMemberValue(m);
        std::shared_lock<std::shared_mutex> l(replica_mu);
        if (replica == nullptr) return;
        s = replica->Propose(c);
        if (s.ok()) {
          reply.ok = true;
          reply.cluster_id = replica->state().cluster_id();
          reply.members = replica->state().ListMembers();
        }
      }
      if (!s.ok()) {
        reply.error = s.message().substr(0, kMaxJoinErrorBytes);
        CN_LOG(Warning) << "refused to admit " << req.name << " (" << req.addr
                        << "): " << s.ToString();
      } else {
        CN_LOG(Info) << "admitted node " << req.name << " at " << req.addr;
      }
      if (m.key.empty() || m.addr.empty()) continue;  // nowhere to send the answer
      SendTo(m.addr, m.key, EncodeJoinReply(reply));
    }
  }

  std::optional<raft::ConfChange> Plan(const ReplicaOptions::ClusterView& view) {
    VoterPlanInput in;
    in.config = view.config;
    in.progress = view.progress;
    in.last_index = view.last_index;
    {
      std::shared_lock<std::shared_mutex> l(replica_mu);
      if (replica == nullptr) return std::nullopt;
      for (const MemberRecord& m : replica->state().ListMembers()) in.admitted.push_back(m.name);
    }
    {
      std::lock_guard<std::mutex> l(mu);
      in.dead = dead;
    }
    return PlanVoters(in);
  }

  // ---- Membership (swim_thread).
  void SendSwim(const membership::Outgoing& out) {
    std::optional<MemberRecord> to;
    if (!out.message.to.empty()) {
      to = MemberByName(out.message.to);
    } else {
      // A join push-pull names only the seed's address: the key is that member's.
      {
        std::shared_lock<std::shared_mutex> l(replica_mu);
        if (replica != nullptr) {
          for (const MemberRecord& m : replica->state().ListMembers()) {
            if (m.addr == out.addr) to = m;
          }
        }
      }
      std::lock_guard<std::mutex> l(mu);
      for (const auto& [key, m] : join_members) {
        if (!to && m.addr == out.addr && !m.name.empty()) to = m;
      }
    }
    if (!to) {
      CN_LOG(Debug) << "no key for " << out.message.to << " at " << out.addr
                    << "; dropped a membership message";
      return;
    }
    SendTo(to->addr, to->key, EncodeMembershipWire(out.message));
  }

  void HandleSwimEvent(const membership::Event& e, std::map<std::string, membership::State>* seen,
                       EventHub* events) {
    if (e.node == options.node_name) return;
    auto it = seen->find(e.node);
    if (it != seen->end() && it->second == e.state) return;  // an address change only
    bool is_new = it == seen->end();
    (*seen)[e.node] = e.state;
    const char* state = membership::StateName(e.state);
    CN_LOG(Info) << "node " << e.node << " is " << state << " (incarnation " << e.incarnation
                 << ")";
    int64_t now = DefaultEnv()->clock->NowUnixMs();
    std::string line = std::to_string(now) + " ";
    if (is_new && e.state == membership::State::kAlive) {
      line += "node_joined " + e.node + " addr=" + e.addr;
    } else {
      line += std::string("node_") + state + " " + e.node +
              " incarnation=" + std::to_string(e.incarnation);
    }
    if (events != nullptr) events->Publish({line}, now);
    if (e.state == membership::State::kDead || e.state == membership::State::kLeft) {
      SetDead(e.node, true);
    } else if (e.state == membership::State::kAlive) {
      SetDead(e.node, false);
    }
  }

  void SetDead(const std::string& node, bool is_dead) {
    std::lock_guard<std::mutex> l(mu);
    if (is_dead) {
      dead.insert(node);
    } else {
      dead.erase(node);
    }
  }

  void RunSwim(EventHub* events) {
    Clock* clock = DefaultEnv()->clock;
    std::map<std::string, membership::State> seen;
    int64_t leave_deadline = 0;
    std::unique_lock<std::mutex> l(swim_mu);
    while (!swim_stop) {
      std::deque<membership::Message> in;
      in.swap(swim_queue);
      bool start_leave = leave_requested && !swim->left();
      l.unlock();
      int64_t now = clock->MonotonicMs();
      for (const membership::Message& m : in) {
        Status s = swim->Step(m, now);
        if (!s.ok()) CN_LOG(Debug) << "membership: " << s.ToString();
      }
      if (start_leave) {
        Status s = swim->Leave(now);
        if (!s.ok()) CN_LOG(Warning) << "membership leave: " << s.ToString();
        leave_deadline = now + options.leave_timeout_ms;
        CN_LOG(Info) << "leaving: announcing it to the other nodes";
      }
      swim->Tick(now);
      membership::Ready ready = swim->GetReady();
      for (const membership::Outgoing& out : ready.messages) SendSwim(out);
      for (const membership::Event& e : ready.events) HandleSwimEvent(e, &seen, events);
      if (!ready.events.empty() || start_leave) {
        std::map<std::string, membership::State> v;
        for (const membership::Member& m : swim->members()) v[m.name] = m.state;
        std::lock_guard<std::mutex> vl(view_mu);
        view = std::move(v);
      }
      bool left_done = swim->left() && (swim->pending_broadcasts() == 0 || now >= leave_deadline);
      int64_t next = swim->NextTickMs();
      if (swim->left() && !left_done) next = std::min(next, now + 20);
      l.lock();
      if (left_done && !leave_done) {
        leave_done = true;
        leave_cv.notify_all();
      }
      if (swim_stop || !swim_queue.empty() || (leave_requested && !swim->left())) continue;
      int64_t wait_ms = std::max<int64_t>(1, next - clock->MonotonicMs());
      swim_cv.wait_for(l, std::chrono::milliseconds(wait_ms));
    }
  }

  // Starts SWIM (again, after StopSwim), seeded with the other members' addresses: the admitted
  // ones, and those of a join reply while this node catches up.
  Status StartSwim(Replica* r) {
    membership::Options o = options.swim;
    o.name = options.node_name;
    o.addr = options.addr;
    o.seed = std::random_device{}() ^ (uint64_t{std::random_device{}()} << 32);
    std::set<std::string> seeds;
    for (const MemberRecord& m : r->state().ListMembers()) {
      if (m.name != options.node_name && !m.addr.empty()) seeds.insert(m.addr);
    }
    {
      std::lock_guard<std::mutex> l(mu);
      for (const auto& [key, m] : join_members) {
        if (!m.name.empty() && m.name != options.node_name && !m.addr.empty()) {
          seeds.insert(m.addr);
        }
      }
    }
    CN_ASSIGN_OR_RETURN(std::unique_ptr<membership::Membership> core,
                        membership::Membership::New(o, DefaultEnv()->clock->MonotonicMs()));
    if (!seeds.empty()) {
      CN_RETURN_IF_ERROR(core->Join(std::vector<std::string>(seeds.begin(), seeds.end()),
                                    DefaultEnv()->clock->MonotonicMs()));
    }
    {
      std::lock_guard<std::mutex> vl(view_mu);
      view.clear();
      for (const membership::Member& m : core->members()) view[m.name] = m.state;
    }
    std::lock_guard<std::mutex> l(swim_mu);
    swim = std::move(core);
    swim_queue.clear();
    swim_stop = false;
    leave_requested = false;
    leave_done = false;
    swim_thread = std::thread([this, events = r->events()] {
      SetThreadName("cn-swim");
      RunSwim(events);
    });
    return Status::Ok();
  }

  void StopSwim() {
    std::thread t;
    {
      std::lock_guard<std::mutex> l(swim_mu);
      swim_stop = true;
      leave_done = true;
      t = std::move(swim_thread);
    }
    swim_cv.notify_all();
    leave_cv.notify_all();
    if (t.joinable()) t.join();
  }

  // Asks the node at `seed` that issued `t` to admit this node, until it answers or `deadline`.
  // On success the reply's members are known (join_members) and may connect.
  // `cancelled` (optional) is polled too: the caller gives up (shutting down).
  Result<JoinReply> RequestJoin(const std::string& seed, const JoinToken& t, int64_t deadline,
                                const std::function<bool()>& cancelled = {}) {
    CN_ASSIGN_OR_RETURN(std::string seed_join_pub, CurvePublicKey(t.join_secret));
    {
      std::lock_guard<std::mutex> l(mu);
      seed_key = t.server_key;
      join_members[t.server_key] = MemberRecord{"", t.server_key, seed};
      join_reply.reset();
      peer_keys[seed] = {t.server_key, seed_join_pub};
    }
    transport->SetPeerKey(seed, t.server_key, seed_join_pub, t.join_secret);
    JoinRequest req{options.node_name, options.addr, pub};
    std::optional<JoinReply> reply;
    bool gave_up = false;
    while (!reply && DefaultEnv()->clock->MonotonicMs() < deadline) {
      Status s = transport->Send(seed, EncodeJoinRequest(req));
      if (!s.ok()) CN_LOG(Debug) << "join request: " << s.ToString();
      std::unique_lock<std::mutex> l(mu);
      reply_cv.wait_for(l, std::chrono::milliseconds(kJoinRetryMs),
                        [&] { return join_reply.has_value() || stopping; });
      reply = join_reply;
      gave_up = stopping || (cancelled && cancelled());
      if (gave_up) break;
    }
    {
      std::lock_guard<std::mutex> l(mu);
      seed_key.clear();
      join_members.clear();
      peer_keys.erase(seed);
    }
    if (!reply && gave_up) return Status::Unavailable("stopped while joining");
    if (!reply) {
      return Status(Code::kTimedOut,
                    "no answer to the join request from " + seed + " within " +
                        std::to_string((options.join_timeout_ms + 999) / 1000) +
                        " s (is the address right, and the token the one it printed?)");
    }
    if (!reply->ok)
      return Status::PermissionDenied("join refused by " + seed + ": " + reply->error);
    std::lock_guard<std::mutex> l(mu);
    for (const MemberRecord& m : reply->members) join_members[m.key] = m;
    return *reply;
  }

  // Waits until this node has applied its own admission: then it has caught up with the log as
  // it was when it was admitted.
  Status CatchUp(Replica* r, int64_t deadline, const std::function<bool()>& cancelled = {}) {
    while (!r->state().GetMember(options.node_name)) {
      if (cancelled && cancelled()) {
        return Status::Unavailable("stopped while catching up; it goes on at the next start");
      }
      if (DefaultEnv()->clock->MonotonicMs() >= deadline) {
        return Status(Code::kTimedOut,
                      "admitted, but not caught up with the cluster's log within " +
                          std::to_string((options.join_timeout_ms + 999) / 1000) +
                          " s; it keeps trying in the background");
      }
      std::unique_lock<std::mutex> l(mu);
      reply_cv.wait_for(l, std::chrono::milliseconds(50), [&] { return stopping; });
      if (stopping) return Status::Unavailable("stopped while joining");
    }
    return Status::Ok();
  }

  Status Join(Replica* r) {
    CN_ASSIGN_OR_RETURN(JoinToken t, ParseJoinToken(options.token));
    int64_t deadline = DefaultEnv()->clock->MonotonicMs() + options.join_timeout_ms;
    CN_ASSIGN_OR_RETURN(JoinReply reply, RequestJoin(options.join, t, deadline));
    KvStore::Batch b;
    b.Put(kJoinMembersKey, EncodeMembers(reply.members));
    CN_RETURN_IF_ERROR(r->store()->Write(b, /*sync=*/true));
    CN_LOG(Info) << "admitted to cluster " << reply.cluster_id << " by " << options.join << " ("
                 << reply.members.size() << " members); catching up";
    return CatchUp(r, deadline);
  }
};

Result<std::unique_ptr<ClusterNode>> ClusterNode::Start(const ClusterNodeOptions& o) {
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.options = o;
  if (m.options.addr.empty()) m.options.addr = o.bind;
  if (m.options.key_file.empty()) m.options.key_file = o.data_dir + "/node.key";
  CN_ASSIGN_OR_RETURN(auto keys, LoadOrCreateKeys(m.options.key_file));
  m.pub = keys.first;
  m.sec = keys.second;
  CN_ASSIGN_OR_RETURN(auto join_keys, LoadOrCreateKeys(o.data_dir + "/join.key"));
  m.join_pub = join_keys.first;
  m.join_sec = join_keys.second;
  m.token = FormatJoinToken(JoinToken{m.pub, m.join_sec});
  CN_RETURN_IF_ERROR(WriteFileMode(o.data_dir + "/join_token", m.token + "\n", 0600));
  if (!o.join.empty()) CN_RETURN_IF_ERROR(ParseJoinToken(o.token).status());
  {
    membership::Options so = o.swim;
    so.name = o.node_name;
    so.addr = m.options.addr;
    Status s = so.Validate();
    if (!s.ok()) return Status::InvalidArgument("--swim: " + s.message());
  }
  ZmqTransportOptions to;
  to.bind_address = o.bind;
  // A bind to port 0 (any free port) announces the port it got.
  bool any_port = m.options.addr.ends_with(":0") || m.options.addr.ends_with(":*");
  to.self_address = any_port ? "" : m.options.addr;
  to.curve.public_key = m.pub;
  to.curve.secret_key = m.sec;
  Impl* p = impl.get();
  to.authorize = [p](const std::string& key) { return p->Authorize(key); };
  CN_ASSIGN_OR_RETURN(m.transport, NewZmqTransport(to));
  if (any_port) m.options.addr = m.transport->bound_address();
  m.transport->SetHandler(
      [p](const std::string& from, std::string body) { p->Receive(from, std::move(body)); });
  CN_LOG(Info) << "listening on " << m.transport->bound_address() << " as " << m.options.addr
               << " (key " << m.pub << ")";
  return std::unique_ptr<ClusterNode>(new ClusterNode(std::move(impl)));
}

ClusterNode::ClusterNode(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ClusterNode::~ClusterNode() {
  Detach();
  impl_->transport.reset();
}

void ClusterNode::Configure(ReplicaOptions* ro) {
  Impl* p = impl_.get();
  ro->join = !p->options.join.empty();
  ro->send = [p](const raft::Message& m) { p->SendRaft(m); };
  ro->plan_membership = [p](const ReplicaOptions::ClusterView& v) { return p->Plan(v); };
}

Status ClusterNode::Attach(Replica* replica) {
  Impl& m = *impl_;
  // Members a join reply listed, kept until this node has caught up.
  std::string v;
  bool admitted = replica->store()->Get(kJoinMembersKey, &v).ok();
  if (admitted) {
    Result<WireMessage> w = DecodeWire(v);
    if (w.ok() && w->kind == WireKind::kJoinReply) {
      std::lock_guard<std::mutex> l(m.mu);
      for (const MemberRecord& r : w->join_reply.members) m.join_members[r.key] = r;
    }
  }
  {
    std::unique_lock<std::shared_mutex> l(m.replica_mu);
    m.replica = replica;
  }
  m.join_worker = std::thread([p = impl_.get()] {
    SetThreadName("cn-join");
    p->ServeJoins();
  });
  ReplicaStatus st = replica->GetStatus();
  bool member = !st.voters.empty() || !st.learners.empty();
  if (!member) {
    if (!m.options.join.empty()) {
      CN_RETURN_IF_ERROR(m.Join(replica));
    } else if (admitted) {
      // Admitted (by --join or a `join` verb) before it stopped: it only has to catch up.
      CN_LOG(Info) << "admitted to a cluster before; catching up";
      CN_RETURN_IF_ERROR(
          m.CatchUp(replica, DefaultEnv()->clock->MonotonicMs() + m.options.join_timeout_ms));
    } else {
      return Status::InvalidArgument("this data dir was made to join a cluster; start with --join");
    }
  } else {
    if (!m.options.join.empty()) {
      CN_LOG(Info) << "already a member of cluster " << st.cluster_id << "; --join ignored";
    }
    // A member that was down catches up (from a snapshot if it is far behind) before it serves.
    Status s = replica->ReadBarrier(m.options.join_timeout_ms);
    if (!s.ok()) return Status(s.code(), "cannot catch up with the cluster: " + s.message());
  }
  // Admit this node (first start of a cluster), or record a new address or key.
  std::optional<MemberRecord> self = replica->state().GetMember(m.options.node_name);
  if (!self || self->key != m.pub || self->addr != m.options.addr) {
    Command c;
    c.type = CommandType::kNodeAdmit;
    c.object = m.options.node_name;
    c.value = FormatMemberValue(MemberRecord{m.options.node_name, m.pub, m.options.addr});
    Status s = replica->Propose(c);
    if (!s.ok()) return Status(s.code(), "cannot admit this node's key: " + s.message());
  }
  return m.StartSwim(replica);
}

void ClusterNode::Detach() {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> l(m.mu);
    m.stopping = true;
  }
  m.join_cv.notify_all();
  m.reply_cv.notify_all();
  if (m.join_worker.joinable()) m.join_worker.join();
  { std::lock_guard<std::mutex> op(m.join_op_mu); }  // a JoinCluster gives up (stopping) and ends
  m.StopSwim();
  std::unique_lock<std::shared_mutex> l(m.replica_mu);
  m.replica = nullptr;
}

Status ClusterNode::JoinCluster(const std::string& addr, const std::string& token,
                                const std::function<bool()>& cancelled) {
  Impl& m = *impl_;
  CN_RETURN_IF_ERROR(ValidateHostPort(addr));
  CN_ASSIGN_OR_RETURN(JoinToken t, ParseJoinToken(token));
  if (t.server_key == m.pub) {
    return Status::InvalidArgument(
        "join: that is this node's own token (use the token of a node "
        "in the cluster to join, from its DATA/join_token)");
  }
  std::unique_lock<std::mutex> op(m.join_op_mu, std::try_to_lock);
  if (!op.owns_lock()) return Status::Busy("a join is already in progress on this node");
  Replica* r;
  {
    std::shared_lock<std::shared_mutex> l(m.replica_mu);
    r = m.replica;
  }
  {
    std::lock_guard<std::mutex> l(m.mu);
    if (r == nullptr || m.stopping) return Status::Unavailable("this node is not serving");
  }
  // The replica lives until Detach, which waits for this call (join_op_mu).
  std::string old_cluster = r->GetStatus().cluster_id;
  CN_RETURN_IF_ERROR(r->PrepareJoin());
  // From here until the switch, this node must not gossip or take raft messages as a member of
  // the old cluster with the new cluster's members.
  m.StopSwim();
  m.raft_paused = true;
  int64_t deadline = DefaultEnv()->clock->MonotonicMs() + m.options.join_timeout_ms;
  CN_LOG(Info) << "joining the cluster of " << addr << " (leaving cluster " << old_cluster << ")";
  Result<JoinReply> reply = m.RequestJoin(addr, t, deadline, cancelled);
  Status s = reply.status();
  if (s.ok()) {
    s = r->ResetForJoin({{kJoinMembersKey, EncodeMembers(reply->members)}});
    if (!s.ok()) {
      CN_LOG(Error) << "admitted by " << addr << " but could not leave cluster " << old_cluster
                    << " (it stays there; the other cluster holds this node as a member that "
                       "never comes): "
                    << s.ToString();
    }
  }
  m.raft_paused = false;
  if (!s.ok()) {
    {
      std::lock_guard<std::mutex> l(m.mu);
      m.join_members.clear();
    }
    r->CancelJoin();
    Status sw = m.StartSwim(r);
    if (!sw.ok()) CN_LOG(Error) << "membership did not restart: " << sw.ToString();
    CN_LOG(Warning) << "join through " << addr << " failed; still in cluster " << old_cluster
                    << ": " << s.ToString();
    return s;
  }
  CN_LOG(Info) << "admitted to cluster " << reply->cluster_id << " by " << addr << " ("
               << reply->members.size() << " members); catching up";
  s = m.CatchUp(r, deadline, cancelled);
  Status sw = m.StartSwim(r);
  if (!sw.ok()) CN_LOG(Error) << "membership did not start: " << sw.ToString();
  if (s.ok()) CN_LOG(Info) << "joined cluster " << reply->cluster_id;
  return s;
}

const std::string& ClusterNode::join_token() const { return impl_->token; }
std::string ClusterNode::token_path() const { return impl_->options.data_dir + "/join_token"; }
std::string ClusterNode::address() const { return impl_->options.addr; }

ClusterCounters ClusterNode::counters() const {
  TransportCounters t = impl_->transport->counters();
  ClusterCounters c;
  c.refused = t.refused + impl_->refused.load();
  c.handshake_failed = t.handshake_failed;
  c.malformed = impl_->malformed.load();
  c.join_requests = impl_->join_requests.load();
  return c;
}

void ClusterNode::SetNodeDead(const std::string& node, bool dead) { impl_->SetDead(node, dead); }

std::string ClusterNode::NodeState(const std::string& node) const {
  std::lock_guard<std::mutex> l(impl_->view_mu);
  auto it = impl_->view.find(node);
  return it == impl_->view.end() ? "" : membership::StateName(it->second);
}

size_t ClusterNode::NodesAlive() const {
  std::lock_guard<std::mutex> l(impl_->view_mu);
  size_t n = 0;
  for (const auto& [name, state] : impl_->view) n += state == membership::State::kAlive ? 1 : 0;
  return n;
}

void ClusterNode::Leave() {
  Impl& m = *impl_;
  std::unique_lock<std::mutex> l(m.swim_mu);
  if (!m.swim_thread.joinable() || m.swim_stop) return;
  m.leave_requested = true;
  m.swim_cv.notify_all();
  // The thread ends the wait by leave_timeout_ms; the margin covers a slow round.
  m.leave_cv.wait_for(l, std::chrono::milliseconds(m.options.leave_timeout_ms + 1000),
                      [&] { return m.leave_done; });
}

Status ValidateHostPort(std::string_view addr) {
  size_t colon = addr.rfind(':');
  std::string_view host = colon == std::string_view::npos ? "" : addr.substr(0, colon);
  std::string_view port = colon == std::string_view::npos ? "" : addr.substr(colon + 1);
  bool port_ok = !port.empty() && port.size() <= 5 &&
                 port.find_first_not_of("0123456789") == std::string_view::npos &&
                 std::stoi(std::string(port)) >= 1 && std::stoi(std::string(port)) <= 65535;
  if (host.empty() || host.size() > 253 || !port_ok ||
      host.find_first_of(" \t/") != std::string_view::npos) {
    return Status::InvalidArgument(
        Quoted(addr.substr(0, 64)) +
        " is not HOST:PORT (a host name or address, and a port 1..65535)");
  }
  return Status::Ok();
}

Status ParseSwimFlag(std::string_view name_value, ClusterNodeOptions* o) {
  size_t eq = name_value.find('=');
  if (eq == std::string_view::npos) {
    return Status::InvalidArgument(Quoted(name_value) + " is not NAME=VALUE");
  }
  std::string name(name_value.substr(0, eq));
  std::string value(name_value.substr(eq + 1));
  char* end = nullptr;
  double v = strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0' || !(v >= 0) || v > 86400000) {
    return Status::InvalidArgument(name + ": " + Quoted(value) + " is not a number 0..86400000");
  }
  auto whole = [&](int64_t lo, int64_t hi, auto* field) -> Status {
    if (v != static_cast<double>(static_cast<int64_t>(v)) || v < lo || v > hi) {
      return Status::InvalidArgument(name + ": " + Quoted(value) + " is not an integer " +
                                     std::to_string(lo) + ".." + std::to_string(hi));
    }
    *field = static_cast<std::remove_reference_t<decltype(*field)>>(v);
    return Status::Ok();
  };
  membership::Options& s = o->swim;
  if (name == "probe_interval_ms") return whole(10, 600000, &s.probe_interval_ms);
  if (name == "probe_timeout_ms") return whole(1, 600000, &s.probe_timeout_ms);
  if (name == "indirect_checks") return whole(0, 16, &s.indirect_checks);
  if (name == "gossip_interval_ms") return whole(10, 600000, &s.gossip_interval_ms);
  if (name == "gossip_fanout") return whole(1, 64, &s.gossip_fanout);
  if (name == "push_pull_interval_ms") return whole(0, 86400000, &s.push_pull_interval_ms);
  if (name == "reconnect_interval_ms") return whole(0, 86400000, &s.reconnect_interval_ms);
  if (name == "leave_timeout_ms") return whole(0, 60000, &o->leave_timeout_ms);
  if (name == "suspicion_mult" || name == "suspicion_max_mult") {
    if (v < 0.1 || v > 1000) {
      return Status::InvalidArgument(name + ": " + Quoted(value) + " is not 0.1..1000");
    }
    (name == "suspicion_mult" ? s.suspicion_mult : s.suspicion_max_mult) = v;
    return Status::Ok();
  }
  return Status::InvalidArgument(
      "unknown setting " + Quoted(name) +
      " (probe_interval_ms, probe_timeout_ms, indirect_checks, suspicion_mult, "
      "suspicion_max_mult, gossip_interval_ms, gossip_fanout, push_pull_interval_ms, "
      "reconnect_interval_ms, leave_timeout_ms)");
}

}  // namespace constellation
