// ZeroMQ transport (transport.h).
//
// Threading: ZeroMQ sockets are not thread-safe, so one I/O thread owns every socket: a ROUTER
// bound for inbound messages and one DEALER per peer for outbound ones. Send runs on any thread:
// it appends to the peer's bounded queue under mu_ and wakes the I/O thread through an eventfd
// that the thread polls next to its sockets. The I/O thread moves queued messages into ZeroMQ with
// non-blocking sends; DEALERs use ZMQ_IMMEDIATE, so while a peer is unreachable nothing leaves our
// queue, the queue fills, and Send starts returning Unavailable instead of blocking or growing.

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "node/base/log.h"
#include "node/env/transport.h"

namespace constellation {
namespace {

// Longest address, and so longest `from` frame accepted from the wire.
constexpr size_t kMaxAddressSize = 255;
// Messages received per wakeup before the loop goes back to sending, so neither starves.
constexpr int kReceiveBatch = 256;
// Peers are reconnected with backoff; a connect attempt is abandoned after this long.
constexpr int kReconnectIvlMs = 100;
constexpr int kReconnectIvlMaxMs = 5000;
constexpr int kConnectTimeoutMs = 5000;
// ZMTP heartbeats find connections that died silently (peer host gone, no RST), so the messages
// stuck in them stop holding the queue full until TCP gives up.
constexpr int kHeartbeatIvlMs = 2000;
constexpr int kHeartbeatTimeoutMs = 10000;

constexpr std::string_view kTcpPrefix = "tcp://";

Status FromZmq(const zmq::error_t& e, const std::string& what) {
  // Keep FromErrno's code mapping, but zmq_strerror knows ZeroMQ's own error numbers.
  return Status(Status::FromErrno(e.num(), what).code(), what + ": " + e.what());
}

// Validates "host:port" (after an optional "tcp://") and returns it without the prefix. A bind
// address may use port "*" or 0 and host "*".
Result<std::string> ParseTcpAddress(std::string_view address, bool for_bind) {
  std::string_view a = address;
  if (a.substr(0, kTcpPrefix.size()) == kTcpPrefix) a.remove_prefix(kTcpPrefix.size());
  auto bad = [&](const char* why) {
    return Status::InvalidArgument("address \"" + std::string(address) + "\": " + why);
  };
  if (a.empty()) return bad("empty");
  if (a.size() > kMaxAddressSize) return bad("longer than 255 bytes");
  for (char c : a) {
    if (c <= ' ' || c >= 0x7f) return bad("has a space or non-printable character");
  }
  size_t colon = a.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return bad("expected host:port");
  std::string_view host = a.substr(0, colon);
  std::string_view port = a.substr(colon + 1);
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') return bad("unterminated [IPv6] literal");
  } else if (host.find(':') != std::string_view::npos) {
    return bad("IPv6 literals go in brackets, e.g. [::1]:7400");
  }
  if (host == "*" && !for_bind) return bad("cannot send to a wildcard host");
  if (port == "*" && for_bind) return std::string(a);
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    return bad("port must be a number 0..65535");
  }
  if (value == 0 && !for_bind) return bad("port 0");
  return std::string(a);
}

bool IsWildcardHost(std::string_view host_port) {
  std::string_view host = host_port.substr(0, host_port.rfind(':'));
  return host == "*" || host == "0.0.0.0" || host == "[::]" || host == "[*]";
}

bool IsIpv6(std::string_view host_port) { return !host_port.empty() && host_port[0] == '['; }

class ZmqTransportImpl final : public ZmqTransport {
 public:
  explicit ZmqTransportImpl(const ZmqTransportOptions& options) : options_(options) {}

  ~ZmqTransportImpl() override {
    CN_CHECK(!thread_.joinable() || std::this_thread::get_id() != thread_.get_id())
        << "a ZmqTransport must not be destroyed from its own handler";
    if (thread_.joinable()) {
      stop_.store(true);
      WakeFd();
      thread_.join();
    }
    // The I/O thread is gone, so its sockets may be closed here. Linger is 0 on every socket:
    // pending messages are discarded and terminating the context cannot wait on them.
    peers_.clear();
    router_.reset();
    ctx_.close();
    if (wake_fd_ >= 0) close(wake_fd_);
  }

  // Binds and starts the I/O thread. Called once, before the object is shared.
  Status Start() {
    CN_ASSIGN_OR_RETURN(std::string bind, ParseTcpAddress(options_.bind_address, true));
    if (options_.self_address.empty() && IsWildcardHost(bind)) {
      return Status::InvalidArgument("bind address " + bind +
                                     " is a wildcard: self_address must say how peers reach us");
    }
    std::string endpoint = std::string(kTcpPrefix) + bind;
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) return Status::FromErrno(errno, "eventfd");
    try {
      ctx_.set(zmq::ctxopt::blocky, 0);
      router_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::router);
      router_->set(zmq::sockopt::linger, 0);
      router_->set(zmq::sockopt::rcvhwm, static_cast<int>(options_.send_queue_limit));
      router_->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(options_.max_message_size) * 2);
      if (IsIpv6(bind)) router_->set(zmq::sockopt::ipv6, 1);
      router_->bind(endpoint);
      std::string last = router_->get(zmq::sockopt::last_endpoint);
      if (last.substr(0, kTcpPrefix.size()) == kTcpPrefix) last.erase(0, kTcpPrefix.size());
      bound_address_ = last;
    } catch (const zmq::error_t& e) {
      return FromZmq(e, "bind " + endpoint);
    }
    if (options_.self_address.empty()) {
      self_address_ = bound_address_;
    } else {
      CN_ASSIGN_OR_RETURN(self_address_, ParseTcpAddress(options_.self_address, false));
    }
    thread_ = std::thread([this] { Loop(); });
    return Status::Ok();
  }

  Status Send(const std::string& to, std::string message) override {
    if (message.size() > options_.max_message_size) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      return Status::TooLarge("message of " + std::to_string(message.size()) +
                              " bytes is over max_message_size " +
                              std::to_string(options_.max_message_size));
    }
    Result<std::string> key = ParseTcpAddress(to, false);
    if (!key.ok()) {
      rejected_.fetch_add(1, std::memory_order_relaxed);
      return key.status();
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      auto it = peers_.find(*key);
      if (it == peers_.end()) {
        if (peers_.size() >= options_.max_peers) {
          rejected_.fetch_add(1, std::memory_order_relaxed);
          return Status::Unavailable("send to " + *key + ": already sending to max_peers " +
                                     std::to_string(options_.max_peers) + " peers");
        }
        auto peer = std::make_unique<Peer>();
        peer->address = *key;
        it = peers_.emplace(*key, std::move(peer)).first;
      }
      Peer* peer = it->second.get();
      if (peer->queue.size() >= options_.send_queue_limit) {
        rejected_.fetch_add(1, std::memory_order_relaxed);
        return Status::Unavailable("send to " + *key + ": queue full (" +
                                   std::to_string(options_.send_queue_limit) + " messages)");
      }
      if (queued_bytes_ + message.size() > options_.max_queued_bytes) {
        rejected_.fetch_add(1, std::memory_order_relaxed);
        return Status::Unavailable("send to " + *key + ": max_queued_bytes reached");
      }
      queued_bytes_ += message.size();
      peer->queue.push_back(std::move(message));
    }
    if (!wake_pending_.exchange(true)) WakeFd();
    return Status::Ok();
  }

  void SetHandler(Handler handler) override {
    auto h = handler ? std::make_shared<const Handler>(std::move(handler)) : nullptr;
    std::lock_guard<std::mutex> l(mu_);
    handler_ = std::move(h);
  }

  std::string bound_address() const override { return bound_address_; }
  std::string self_address() const override { return self_address_; }
  TransportCounters counters() const override {
    TransportCounters c;
    c.sent = sent_.load(std::memory_order_relaxed);
    c.received = received_.load(std::memory_order_relaxed);
    c.dropped = dropped_.load(std::memory_order_relaxed);
    c.rejected = rejected_.load(std::memory_order_relaxed);
    return c;
  }

 private:
  struct Peer {
    std::string address;  // "host:port"; immutable
    // Guarded by mu_. Only Send appends and only the I/O thread pops, so the I/O thread may read
    // front() without the lock (deque appends do not move existing elements).
    std::deque<std::string> queue;
    std::unique_ptr<zmq::socket_t> socket;  // I/O thread only; created on first message
  };

  void WakeFd() {
    uint64_t one = 1;
    // Can only fail with EAGAIN when the counter is saturated, and then the thread is awake.
    ssize_t n = write(wake_fd_, &one, sizeof one);
    (void)n;
  }

  void Loop() {
    std::vector<Peer*> pending;
    std::vector<zmq_pollitem_t> items;
    while (!stop_.load()) {
      // Peers whose messages could not all be handed to ZeroMQ: poll them for writability.
      pending.clear();
      for (Peer* p : PeersWithMessages()) {
        if (Flush(p)) pending.push_back(p);
      }
      items.clear();
      items.push_back({nullptr, wake_fd_, ZMQ_POLLIN, 0});
      items.push_back({router_->handle(), 0, ZMQ_POLLIN, 0});
      for (Peer* p : pending) items.push_back({p->socket->handle(), 0, ZMQ_POLLOUT, 0});
      if (zmq_poll(items.data(), static_cast<int>(items.size()), -1) < 0) {
        CN_CHECK(errno == EINTR) << "zmq_poll: " << zmq_strerror(errno);
        continue;
      }
      if (items[0].revents & ZMQ_POLLIN) {
        uint64_t value;
        ssize_t n = read(wake_fd_, &value, sizeof value);
        (void)n;  // EAGAIN only if another read emptied it, and no one else reads it
        // Cleared before the next Flush pass looks at the queues, so a Send that queues after that
        // look finds the flag clear and writes the eventfd again.
        wake_pending_.store(false);
      }
      if (items[1].revents & ZMQ_POLLIN) Receive();
    }
  }

  std::vector<Peer*> PeersWithMessages() {
    std::vector<Peer*> out;
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [address, peer] : peers_) {
      if (!peer->queue.empty()) out.push_back(peer.get());
    }
    return out;
  }

  // Hands queued messages for `p` to ZeroMQ until its queue is empty or its socket would block,
  // at most send_queue_limit per call. Returns whether messages remain. May erase `p`.
  bool Flush(Peer* p) {
    for (size_t i = 0; i < options_.send_queue_limit; ++i) {
      const std::string* message;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (p->queue.empty()) return false;
        message = &p->queue.front();
      }
      if (!p->socket) {
        Status s = Connect(p);
        if (!s.ok()) {
          DropPeer(p, s);
          return false;
        }
      }
      int rc = SendFrames(p->socket.get(), *message);
      if (rc == EAGAIN) return true;
      {
        std::lock_guard<std::mutex> l(mu_);
        queued_bytes_ -= p->queue.front().size();
        p->queue.pop_front();
      }
      if (rc == 0) {
        sent_.fetch_add(1, std::memory_order_relaxed);
      } else {
        dropped_.fetch_add(1, std::memory_order_relaxed);
        CN_LOG(Warning) << "transport: dropped message to " << p->address << ": "
                        << zmq_strerror(rc);
      }
    }
    std::lock_guard<std::mutex> l(mu_);
    return !p->queue.empty();
  }

  Status Connect(Peer* p) {
    std::string endpoint = std::string(kTcpPrefix) + p->address;
    try {
      auto s = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::dealer);
      s->set(zmq::sockopt::linger, 0);
      s->set(zmq::sockopt::immediate, 1);
      s->set(zmq::sockopt::sndhwm, static_cast<int>(options_.send_queue_limit));
      s->set(zmq::sockopt::reconnect_ivl, kReconnectIvlMs);
      s->set(zmq::sockopt::reconnect_ivl_max, kReconnectIvlMaxMs);
      s->set(zmq::sockopt::connect_timeout, kConnectTimeoutMs);
      s->set(zmq::sockopt::heartbeat_ivl, kHeartbeatIvlMs);
      s->set(zmq::sockopt::heartbeat_timeout, kHeartbeatTimeoutMs);
      if (IsIpv6(p->address)) s->set(zmq::sockopt::ipv6, 1);
      s->connect(endpoint);
      p->socket = std::move(s);
    } catch (const zmq::error_t& e) {
      return FromZmq(e, "connect " + endpoint);
    }
    return Status::Ok();
  }

  // Gives up on every message queued for `p` and forgets it; a later Send starts afresh.
  void DropPeer(Peer* p, const Status& why) {
    CN_LOG(Warning) << "transport: dropping messages to " << p->address << ": " << why.ToString();
    std::lock_guard<std::mutex> l(mu_);
    for (const std::string& m : p->queue) queued_bytes_ -= m.size();
    dropped_.fetch_add(p->queue.size(), std::memory_order_relaxed);
    peers_.erase(p->address);
  }

  // Sends [self_address][message] without blocking. Returns 0, EAGAIN (nothing was sent), or
  // another errno (the message cannot be sent).
  int SendFrames(zmq::socket_t* s, const std::string& message) {
    zmq::message_t from(self_address_.data(), self_address_.size());
    while (zmq_msg_send(from.handle(), s->handle(), ZMQ_DONTWAIT | ZMQ_SNDMORE) < 0) {
      if (errno != EINTR) return errno;
    }
    // Once the first frame is accepted ZeroMQ accepts the rest of the message (the high-water
    // mark counts whole messages), so this cannot fail with EAGAIN.
    zmq::message_t body(message.data(), message.size());
    while (zmq_msg_send(body.handle(), s->handle(), ZMQ_DONTWAIT) < 0) {
      if (errno != EINTR) return errno == EAGAIN ? EIO : errno;
    }
    return 0;
  }

  // Reads one frame without blocking; false when none is ready.
  bool ReceiveFrame(zmq::message_t* m) {
    while (zmq_msg_recv(m->handle(), router_->handle(), ZMQ_DONTWAIT) < 0) {
      if (errno == EAGAIN) return false;
      CN_CHECK(errno == EINTR) << "zmq_msg_recv: " << zmq_strerror(errno);
    }
    return true;
  }

  void Receive() {
    // Checks stop_ per message: once the destructor asks, at most the handler call under way
    // finishes, however large the backlog.
    for (int i = 0; i < kReceiveBatch && !stop_.load(); ++i) {
      // ROUTER frames: [peer routing id][from][payload]. A multipart message arrives whole, so
      // once the first frame is here the rest are too.
      zmq::message_t id, from, body;
      if (!ReceiveFrame(&id)) return;
      bool ok = id.more() && ReceiveFrame(&from) && from.more() && ReceiveFrame(&body);
      if (ok && body.more()) {
        ok = false;
        zmq::message_t extra;
        while (ReceiveFrame(&extra) && extra.more()) {
        }
      }
      ok = ok && from.size() > 0 && from.size() <= kMaxAddressSize &&
           body.size() <= options_.max_message_size;
      std::shared_ptr<const Handler> handler;
      if (ok) {
        std::lock_guard<std::mutex> l(mu_);
        handler = handler_;
      }
      if (!handler) {
        dropped_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      received_.fetch_add(1, std::memory_order_relaxed);
      (*handler)(from.to_string(), body.to_string());
    }
  }

  const ZmqTransportOptions options_;
  std::string bound_address_;  // set by Start, then immutable
  std::string self_address_;   // set by Start, then immutable
  int wake_fd_ = -1;
  // Declared before the sockets so that it outlives them.
  zmq::context_t ctx_;
  std::unique_ptr<zmq::socket_t> router_;  // I/O thread only, once started
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> wake_pending_{false};  // an eventfd write is already on its way

  mutable std::mutex mu_;
  // Peers never leave the map while the I/O thread holds a pointer, except through DropPeer,
  // which the I/O thread itself calls.
  std::map<std::string, std::unique_ptr<Peer>> peers_;  // guarded by mu_
  size_t queued_bytes_ = 0;                             // guarded by mu_
  std::shared_ptr<const Handler> handler_;              // guarded by mu_

  std::atomic<uint64_t> sent_{0};
  std::atomic<uint64_t> received_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> rejected_{0};
};

Status ValidateOptions(const ZmqTransportOptions& o) {
  if (!o.curve.public_key.empty() || !o.curve.secret_key.empty()) {
    return Status::NotSupported("transport: CURVE security is not implemented yet");
  }
  if (o.send_queue_limit < 1 || o.send_queue_limit > 1'000'000) {
    return Status::InvalidArgument("transport: send_queue_limit must be 1..1000000");
  }
  if (o.max_message_size < 1 || o.max_message_size > (size_t{1} << 30)) {
    return Status::InvalidArgument("transport: max_message_size must be 1..1GiB");
  }
  if (o.max_queued_bytes < o.max_message_size) {
    return Status::InvalidArgument("transport: max_queued_bytes must be >= max_message_size");
  }
  // ZeroMQ's default socket limit is 1023 per context; the ROUTER takes one.
  if (o.max_peers < 1 || o.max_peers > 1000) {
    return Status::InvalidArgument("transport: max_peers must be 1..1000");
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<ZmqTransport>> NewZmqTransport(const ZmqTransportOptions& options) {
  CN_RETURN_IF_ERROR(ValidateOptions(options));
  std::unique_ptr<ZmqTransportImpl> t;
  try {
    t = std::make_unique<ZmqTransportImpl>(options);
  } catch (const zmq::error_t& e) {
    return FromZmq(e, "transport: zmq context");
  }
  CN_RETURN_IF_ERROR(t->Start());
  return std::unique_ptr<ZmqTransport>(std::move(t));
}

}  // namespace constellation
