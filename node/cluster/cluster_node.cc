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
#include <set>
#include <shared_mutex>
#include <sstream>
#include <thread>

#include "node/base/log.h"
#include "node/cluster/voters.h"
#include "node/cluster/wire.h"
#include "node/env/transport.h"
#include "node/state/records.h"

namespace constellation {
namespace {

constexpr size_t kMaxJoinQueue = 16;
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

  std::atomic<uint64_t> refused{0};
  std::atomic<uint64_t> malformed{0};
  std::atomic<uint64_t> join_requests{0};

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

  Status Join(Replica* r) {
    CN_ASSIGN_OR_RETURN(JoinToken t, ParseJoinToken(options.token));
    CN_ASSIGN_OR_RETURN(std::string seed_join_pub, CurvePublicKey(t.join_secret));
    {
      std::lock_guard<std::mutex> l(mu);
      seed_key = t.server_key;
      join_members[t.server_key] = MemberRecord{"", t.server_key, options.join};
      join_reply.reset();
      peer_keys[options.join] = {t.server_key, seed_join_pub};
    }
    transport->SetPeerKey(options.join, t.server_key, seed_join_pub, t.join_secret);
    JoinRequest req{options.node_name, options.addr, pub};
    int64_t deadline = DefaultEnv()->clock->MonotonicMs() + options.join_timeout_ms;
    std::optional<JoinReply> reply;
    while (!reply && DefaultEnv()->clock->MonotonicMs() < deadline) {
      Status s = transport->Send(options.join, EncodeJoinRequest(req));
      if (!s.ok()) CN_LOG(Debug) << "join request: " << s.ToString();
      std::unique_lock<std::mutex> l(mu);
      reply_cv.wait_for(l, std::chrono::milliseconds(kJoinRetryMs),
                        [&] { return join_reply.has_value() || stopping; });
      reply = join_reply;
      if (stopping) break;
    }
    {
      std::lock_guard<std::mutex> l(mu);
      seed_key.clear();
      join_members.clear();
      peer_keys.erase(options.join);
    }
    if (!reply) {
      return Status::Unavailable("no answer to the join request from " + options.join + " within " +
                                 std::to_string(options.join_timeout_ms / 1000) +
                                 " s (is the address right, and the token the one it printed?)");
    }
    if (!reply->ok)
      return Status::PermissionDenied("join refused by " + options.join + ": " + reply->error);
    {
      std::lock_guard<std::mutex> l(mu);
      for (const MemberRecord& m : reply->members) join_members[m.key] = m;
    }
    KvStore::Batch b;
    b.Put(kJoinMembersKey, EncodeMembers(reply->members));
    CN_RETURN_IF_ERROR(r->store()->Write(b, /*sync=*/true));
    CN_LOG(Info) << "admitted to cluster " << reply->cluster_id << " by " << options.join << " ("
                 << reply->members.size() << " members); catching up";
    // Caught up once this node has applied its own admission.
    while (!r->state().GetMember(options.node_name)) {
      if (DefaultEnv()->clock->MonotonicMs() >= deadline) {
        return Status::Unavailable("admitted, but not caught up with the cluster's log within " +
                                   std::to_string(options.join_timeout_ms / 1000) +
                                   " s; it keeps trying in the background");
      }
      std::unique_lock<std::mutex> l(mu);
      reply_cv.wait_for(l, std::chrono::milliseconds(50), [&] { return stopping; });
      if (stopping) return Status::Unavailable("stopped while joining");
    }
    return Status::Ok();
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
  if (replica->store()->Get(kJoinMembersKey, &v).ok()) {
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
  m.join_worker = std::thread([p = impl_.get()] { p->ServeJoins(); });
  ReplicaStatus st = replica->GetStatus();
  bool member = !st.voters.empty() || !st.learners.empty();
  if (!member) {
    if (m.options.join.empty()) {
      return Status::InvalidArgument("this data dir was made to join a cluster; start with --join");
    }
    CN_RETURN_IF_ERROR(m.Join(replica));
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
  return Status::Ok();
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
  std::unique_lock<std::shared_mutex> l(m.replica_mu);
  m.replica = nullptr;
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

void ClusterNode::SetNodeDead(const std::string& node, bool dead) {
  std::lock_guard<std::mutex> l(impl_->mu);
  if (dead) {
    impl_->dead.insert(node);
  } else {
    impl_->dead.erase(node);
  }
}

}  // namespace constellation
