// ZeroMQ transport (transport.h).
//
// Threading: ZeroMQ sockets are not thread-safe, but one may be used from several threads when
// every use is serialized by a mutex (a full memory barrier). The I/O thread owns the ROUTER bound
// for inbound messages (and with CURVE the ZAP and monitor sockets); nothing else touches them.
// Each peer has a DEALER for outbound messages, and every use of it — connect, send, ZMQ_EVENTS,
// reset, close — happens under that peer's Peer::mu, on whichever thread holds it.
//
// Send runs on any thread. When the peer has nothing queued and a socket (with the current CURVE
// keys), Send hands the message to ZeroMQ itself, non-blocking: no thread hop, no wakeup.
// Otherwise, or when ZeroMQ says EAGAIN, it appends to the peer's bounded queue, and if the queue
// was empty lists the peer in wakeups_ and wakes the I/O thread through an eventfd. From then until
// the I/O thread finds the queue empty again (under Peer::mu), the queue is the I/O thread's: Send
// only appends, and only the I/O thread sends on the socket or polls its fd — so the I/O thread
// never waits on a ZMQ_FD that another thread is using, and messages leave in queue order, after
// every message handed over directly before them (FIFO per peer). DEALERs use ZMQ_IMMEDIATE, so
// while a peer is unreachable nothing leaves our queue, the queue fills, and Send starts returning
// Unavailable instead of blocking or growing.
//
// Lifetime: peers_ holds shared_ptrs, and Send, SetPeerKey and the I/O thread hold their own
// reference while they use a peer, so erasing it from peers_ (DropPeer, on the I/O thread) never
// frees it under them. DropPeer closes the socket and sets `dropped` under Peer::mu; a Send that
// looked the peer up before finds `dropped` once it holds Peer::mu and looks it up afresh, so
// nothing uses a closed socket, and the last reference frees a Peer that has no socket left.
// Lock order: Peer::mu before mu_; nothing takes a Peer::mu while holding mu_, and nothing holds
// a lock while calling the handler (which may call Send). The destructor stops and joins the I/O
// thread before closing any socket; like any object, the transport must not be destroyed while
// other threads are still calling it (a handler's Send runs on the I/O thread, so it finishes
// before the join returns). Closing the context waits for every socket, and by then peers_ and
// wakeups_ held the last references.
//
// Waiting: the I/O thread blocks in poll(2) on the wake eventfd and the sockets' ZMQ_FDs rather
// than in zmq_poll, which polls twice per wait and asks every socket for ZMQ_EVENTS after every
// wake (each such call costs a getpid and a poll of its own). ZMQ_FD is edge-like: it becomes
// readable when commands reach the socket, and any call on the socket (send, recv, getsockopt)
// processes them and may leave messages ready with the fd quiet. So a socket is only waited on
// after it was drained: the ROUTER, ZAP and monitor sockets after a recv said EAGAIN (that recv
// processed every command), a DEALER after a send said EAGAIN and ZMQ_EVENTS then said it is not
// writable. A socket is called only when its fd fired or it was not drained (a receive batch was
// cut short, so the next poll does not block).

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "node/base/log.h"
#include "node/base/thread_name.h"
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
// A peer whose messages could not be handed over for this long gets a new socket. ZeroMQ gives up
// on a connection for good when the handshake is refused (the peer's ZAP handler said no — e.g. a
// restarting node that does not know its members yet): without this, messages to that peer would
// wait forever. A peer that is merely down just gets a fresh connect attempt.
constexpr int64_t kStuckReconnectMs = 3000;
// ZMTP heartbeats find connections that died silently (peer host gone, no RST), so the messages
// stuck in them stop holding the queue full until TCP gives up.
constexpr int kHeartbeatIvlMs = 2000;
constexpr int kHeartbeatTimeoutMs = 10000;

constexpr std::string_view kTcpPrefix = "tcp://";

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

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
    wakeups_.clear();
    if (monitor_) zmq_socket_monitor(router_->handle(), nullptr, 0);
    monitor_.reset();
    router_.reset();
    zap_.reset();
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
      if (curve()) {
        // The ZAP handler must be bound before the CURVE server accepts anyone.
        zap_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::rep);
        zap_->set(zmq::sockopt::linger, 0);
        zap_->bind("inproc://zeromq.zap.01");
      }
      router_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::router);
      if (curve()) {
        router_->set(zmq::sockopt::curve_server, 1);
        router_->set(zmq::sockopt::curve_secretkey, options_.curve.secret_key);
        router_->set(zmq::sockopt::zap_domain, "constellation");
        std::string monitor_endpoint =
            "inproc://cn-monitor-" + std::to_string(reinterpret_cast<uintptr_t>(this));
        if (zmq_socket_monitor(router_->handle(), monitor_endpoint.c_str(),
                               ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_HANDSHAKE_SUCCEEDED |
                                   ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0) {
          throw zmq::error_t();
        }
        monitor_ = std::make_unique<zmq::socket_t>(ctx_, zmq::socket_type::pair);
        monitor_->set(zmq::sockopt::linger, 0);
        monitor_->connect(monitor_endpoint);
      }
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
    thread_ = std::thread([this] {
      SetThreadName("cn-transport");
      Loop();
    });
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
    for (;;) {
      std::shared_ptr<Peer> peer;
      {
        std::lock_guard<std::mutex> l(mu_);
        auto it = peers_.find(*key);
        if (it == peers_.end()) {
          if (peers_.size() >= options_.max_peers) {
            rejected_.fetch_add(1, std::memory_order_relaxed);
            return Status::Unavailable("send to " + *key + ": already sending to max_peers " +
                                       std::to_string(options_.max_peers) + " peers");
          }
          auto p = std::make_shared<Peer>();
          p->address = *key;
          it = peers_.emplace(*key, std::move(p)).first;
        }
        peer = it->second;
      }
      std::unique_lock<std::mutex> pl(peer->mu);
      if (peer->dropped) continue;  // dropped since it was looked up: look again
      if (curve() && peer->want.server.empty()) {
        rejected_.fetch_add(1, std::memory_order_relaxed);
        return Status::InvalidArgument("send to " + *key + ": no CURVE server key for it");
      }
      if (peer->queue.size() >= options_.send_queue_limit) {
        rejected_.fetch_add(1, std::memory_order_relaxed);
        return Status::Unavailable("send to " + *key + ": queue full (" +
                                   std::to_string(options_.send_queue_limit) + " messages)");
      }
      if (peer->queue.empty() && peer->socket && (!curve() || peer->want == peer->used)) {
        // Nothing queued, so the I/O thread is not using the socket: hand it over here.
        int rc = SendFrames(peer->socket.get(), message);
        if (rc == 0) {
          sent_.fetch_add(1, std::memory_order_relaxed);
          return Status::Ok();
        }
        if (rc != EAGAIN) {
          dropped_.fetch_add(1, std::memory_order_relaxed);
          CN_LOG(Warning) << "transport: dropped message to " << *key << ": " << zmq_strerror(rc);
          return Status::Ok();
        }
        // Not writable: queue it, and the I/O thread waits for the socket.
      }
      {
        std::lock_guard<std::mutex> l(mu_);
        if (queued_bytes_ + message.size() > options_.max_queued_bytes) {
          rejected_.fetch_add(1, std::memory_order_relaxed);
          return Status::Unavailable("send to " + *key + ": max_queued_bytes reached");
        }
        queued_bytes_ += message.size();
        peer->queue.push_back(std::move(message));
        // A peer with messages already queued is in the I/O thread's hands.
        if (peer->queue.size() > 1) return Status::Ok();
        wakeups_.push_back(std::move(peer));
      }
      pl.unlock();
      if (!wake_pending_.exchange(true)) WakeFd();
      return Status::Ok();
    }
  }

  void SetPeerKey(const std::string& address, const std::string& server_key,
                  const std::string& client_public, const std::string& client_secret) override {
    Result<std::string> key = ParseTcpAddress(address, false);
    if (!key.ok()) return;
    Keys keys{server_key, client_public, client_secret};
    for (;;) {
      std::shared_ptr<Peer> peer;
      {
        std::lock_guard<std::mutex> l(mu_);
        auto it = peers_.find(*key);
        if (it == peers_.end()) {
          if (peers_.size() >= options_.max_peers) return;  // Send will say so
          auto p = std::make_shared<Peer>();
          p->address = *key;
          it = peers_.emplace(*key, std::move(p)).first;
        }
        peer = it->second;
      }
      std::unique_lock<std::mutex> pl(peer->mu);
      if (peer->dropped) continue;
      if (peer->want == keys) return;
      peer->want = std::move(keys);
      // Messages held for the old keys go over a new connection; tell the I/O thread now rather
      // than when the old connection next stirs. (Without messages held, the next Send finds
      // want != used and queues, and the I/O thread reconnects then.)
      if (peer->queue.empty()) return;
      {
        std::lock_guard<std::mutex> l(mu_);
        wakeups_.push_back(std::move(peer));
      }
      pl.unlock();
      if (!wake_pending_.exchange(true)) WakeFd();
      return;
    }
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
    c.refused = refused_.load(std::memory_order_relaxed);
    uint64_t accepted = accepted_.load(std::memory_order_relaxed);
    uint64_t done =
        handshaken_.load(std::memory_order_relaxed) + denied_.load(std::memory_order_relaxed);
    c.handshake_failed = accepted > done ? accepted - done : 0;
    return c;
  }

 private:
  struct Keys {
    std::string server;
    std::string client_public;  // empty: this node's own pair
    std::string client_secret;
    bool operator==(const Keys&) const = default;
  };
  struct Peer {
    std::string address;  // "host:port"; immutable
    // Guards the fields below up to the I/O-thread-only ones, and serializes every call on
    // `socket`. Taken before mu_, never while holding it.
    std::mutex mu;
    Keys want;  // the keys to connect with
    Keys used;  // the keys `socket` was made with
    // Only Send appends, and only the I/O thread pops; while it is not empty, only the I/O thread
    // uses `socket`.
    std::deque<std::string> queue;
    bool dropped = false;                   // DropPeer took it out of peers_
    std::unique_ptr<zmq::socket_t> socket;  // made by the I/O thread, for the first message
    // Written only by the I/O thread (under mu), so it reads them without mu.
    int fd = -1;                   // socket's ZMQ_FD
    int64_t blocked_since_ms = 0;  // first refused hand-over, or 0
    bool active = false;           // I/O thread only: in Loop's list of peers with messages
    bool blocked = false;          // I/O thread only: drained and not writable; wait for fd
  };

  enum class FlushResult {
    kEmpty,    // nothing left to send
    kMore,     // the per-call limit was reached and the socket may take more
    kBlocked,  // the socket takes no more: its fd says when that changes
    kDropped,  // the peer was given up (DropPeer)
  };

  void WakeFd() {
    uint64_t one = 1;
    // Can only fail with EAGAIN when the counter is saturated, and then the thread is awake.
    ssize_t n = write(wake_fd_, &one, sizeof one);
    (void)n;
  }

  static int FdOf(zmq::socket_t& s) { return s.get(zmq::sockopt::fd); }

  void Loop() {
    // Peers with queued messages, which this thread drains. A peer joins through wakeups_ when
    // Send queues to its empty queue, and leaves when Flush finds its queue empty.
    std::vector<std::shared_ptr<Peer>> active;
    std::vector<std::shared_ptr<Peer>> woken;
    std::vector<pollfd> fds;
    std::vector<Peer*> polled;  // the DEALERs in fds, from fds[kFirstPeer] on
    // Not known to be drained, so must be called before the next wait (see the top of the file).
    // Start used every socket, so each is called once before the first wait.
    bool router_ready = true;
    bool zap_ready = curve();
    bool monitor_ready = curve();
    const int router_fd = FdOf(*router_);
    const int zap_fd = curve() ? FdOf(*zap_) : -1;
    const int monitor_fd = curve() ? FdOf(*monitor_) : -1;
    constexpr size_t kFirstPeer = 4;  // after the eventfd, router, ZAP and monitor
    while (!stop_.load()) {
      if (router_ready) router_ready = !Receive();
      if (stop_.load()) break;
      if (zap_ready) zap_ready = !AnswerZap();
      if (monitor_ready) monitor_ready = !ReadMonitor();
      {
        std::lock_guard<std::mutex> l(mu_);
        woken.swap(wakeups_);
      }
      for (auto& p : woken) {
        p->blocked = false;  // new messages, or new keys: try it now
        if (!p->active) {
          p->active = true;
          active.push_back(std::move(p));
        }
      }
      woken.clear();

      bool busy = router_ready || zap_ready || monitor_ready;
      int timeout_ms = -1;
      polled.clear();
      for (size_t i = 0; i < active.size();) {
        Peer* p = active[i].get();
        if (p->blocked) {
          // With messages held, try now and then even if the socket stays quiet, so a peer whose
          // connection ZeroMQ gave up on is connected afresh (kStuckReconnectMs).
          int64_t left_ms = p->blocked_since_ms + kStuckReconnectMs - NowMs();
          if (left_ms > 0) {
            timeout_ms = timeout_ms < 0 ? static_cast<int>(left_ms)
                                        : std::min(timeout_ms, static_cast<int>(left_ms));
            polled.push_back(p);
            ++i;
            continue;
          }
        }
        FlushResult r = Flush(p);
        if (r == FlushResult::kEmpty || r == FlushResult::kDropped) {
          p->active = false;
          p->blocked = false;
          active[i] = std::move(active.back());
          active.pop_back();
          continue;
        }
        p->blocked = r == FlushResult::kBlocked;
        if (p->blocked) {
          // Flush reconnects a peer stuck for kStuckReconnectMs, so this is at most that long.
          int64_t left_ms = std::max<int64_t>(p->blocked_since_ms + kStuckReconnectMs - NowMs(), 0);
          timeout_ms = timeout_ms < 0 ? static_cast<int>(left_ms)
                                      : std::min(timeout_ms, static_cast<int>(left_ms));
          polled.push_back(p);
        } else {
          busy = true;
        }
        ++i;
      }

      fds.clear();
      fds.push_back({wake_fd_, POLLIN, 0});
      fds.push_back({router_fd, POLLIN, 0});
      fds.push_back({zap_fd, POLLIN, 0});  // poll ignores negative fds
      fds.push_back({monitor_fd, POLLIN, 0});
      for (Peer* p : polled) fds.push_back({p->fd, POLLIN, 0});
      if (poll(fds.data(), fds.size(), busy ? 0 : timeout_ms) < 0) {
        CN_CHECK(errno == EINTR) << "poll: " << strerror(errno);
        continue;
      }
      if (fds[0].revents != 0) {
        uint64_t value;
        ssize_t n = read(wake_fd_, &value, sizeof value);
        (void)n;  // EAGAIN only if another read emptied it, and no one else reads it
        // Cleared before the next look at wakeups_, so a Send that lists a peer after that look
        // finds the flag clear and writes the eventfd again.
        wake_pending_.store(false);
      }
      if (fds[1].revents != 0) router_ready = true;
      if (fds[2].revents != 0) zap_ready = true;
      if (fds[3].revents != 0) monitor_ready = true;
      for (size_t i = 0; i < polled.size(); ++i) {
        if (fds[kFirstPeer + i].revents != 0) polled[i]->blocked = false;
      }
    }
  }

  bool curve() const { return !options_.curve.secret_key.empty(); }

  // ZAP requests (RFC 27): [version][request id][domain][address][identity][mechanism]
  // [credentials...]; each answered 200 with the key as user id, or 400. Returns whether the
  // socket was drained (see Loop), false when the batch ran out first.
  bool AnswerZap() {
    for (int i = 0; i < kReceiveBatch; ++i) {
      std::vector<zmq::message_t> frames;
      zmq::message_t f;
      if (zmq_msg_recv(f.handle(), zap_->handle(), ZMQ_DONTWAIT) < 0) return errno != EINTR;
      bool more = f.more();
      frames.push_back(std::move(f));
      while (more && frames.size() < 16) {
        zmq::message_t g;
        if (zmq_msg_recv(g.handle(), zap_->handle(), 0) < 0) break;
        more = g.more();
        frames.push_back(std::move(g));
      }
      std::string version = frames.size() > 0 ? frames[0].to_string() : "";
      std::string request_id = frames.size() > 1 ? frames[1].to_string() : "";
      std::string key;
      bool ok = false;
      if (frames.size() >= 7 && version == "1.0" && frames[5].to_string() == "CURVE" &&
          frames[6].size() == 32) {
        char z85[41];
        zmq_z85_encode(z85, static_cast<const uint8_t*>(frames[6].data()), 32);
        key = z85;
        ok = options_.authorize && options_.authorize(key);
      }
      if (!ok) {
        refused_.fetch_add(1, std::memory_order_relaxed);
        CN_LOG(Warning) << "transport: refused a connection"
                        << (frames.size() > 3 ? " from " + frames[3].to_string() : std::string())
                        << (key.empty() ? std::string() : " with key " + key)
                        << ": not admitted to the cluster";
      }
      std::string code = ok ? "200" : "400";
      std::string text = ok ? "OK" : "not admitted";
      const std::string* parts[] = {&version, &request_id, &code, &text, &key};
      for (const std::string* p : parts) {
        zmq::message_t m(p->data(), p->size());
        zmq_msg_send(m.handle(), zap_->handle(), ZMQ_SNDMORE);
      }
      zmq::message_t metadata;
      zmq_msg_send(metadata.handle(), zap_->handle(), 0);
    }
    return false;
  }

  // Monitor events: [event id (2 bytes) + value (4 bytes)][endpoint]. Returns whether the socket
  // was drained, as AnswerZap.
  bool ReadMonitor() {
    for (int i = 0; i < kReceiveBatch; ++i) {
      zmq::message_t event, endpoint;
      if (zmq_msg_recv(event.handle(), monitor_->handle(), ZMQ_DONTWAIT) < 0) return errno != EINTR;
      if (event.more()) zmq_msg_recv(endpoint.handle(), monitor_->handle(), 0);
      if (event.size() < 6) continue;
      uint16_t id;
      memcpy(&id, event.data(), 2);
      // libzmq reports some failed handshakes (bytes that are not ZMTP at all) only as a
      // disconnection, which does not say whether the handshake had completed; so failures are
      // counted as accepted connections that neither completed it nor were refused by ZAP.
      if (id == ZMQ_EVENT_ACCEPTED) accepted_.fetch_add(1, std::memory_order_relaxed);
      if (id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) handshaken_.fetch_add(1, std::memory_order_relaxed);
      if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) denied_.fetch_add(1, std::memory_order_relaxed);
    }
    return false;
  }

  // Hands queued messages for `p` to ZeroMQ until its queue is empty or its socket would block,
  // at most send_queue_limit per call. Takes p->mu per message, so a Send that queues meanwhile
  // waits for one hand-over at most.
  FlushResult Flush(Peer* p) {
    for (size_t i = 0; i < options_.send_queue_limit; ++i) {
      std::lock_guard<std::mutex> l(p->mu);
      if (p->queue.empty()) return FlushResult::kEmpty;  // also when dropped
      if (p->socket && curve() && !(p->want == p->used)) {
        p->socket.reset();
        p->blocked_since_ms = 0;  // a new connection gets its own kStuckReconnectMs
      }
      if (!p->socket) {
        Status s = Connect(p);
        if (!s.ok()) {
          DropPeer(p, s);
          return FlushResult::kDropped;
        }
      }
      int rc = SendFrames(p->socket.get(), p->queue.front());
      if (rc == EAGAIN) {
        // The failed send may have processed the commands that make the socket writable (a
        // connection completing) without the fd firing: ask, as ZMQ_FD's contract requires.
        if (p->socket->get(zmq::sockopt::events) & ZMQ_POLLOUT) continue;
        int64_t now = NowMs();
        if (p->blocked_since_ms == 0) {
          p->blocked_since_ms = now;
        } else if (now - p->blocked_since_ms >= kStuckReconnectMs) {
          CN_LOG(Debug) << "transport: nothing reached " << p->address << " for "
                        << now - p->blocked_since_ms << " ms; connecting afresh";
          p->blocked_since_ms = now;
          p->socket.reset();
          continue;  // connects, and tries the new socket once before waiting on it
        }
        return FlushResult::kBlocked;
      }
      p->blocked_since_ms = 0;
      {
        std::lock_guard<std::mutex> g(mu_);
        queued_bytes_ -= p->queue.front().size();
      }
      p->queue.pop_front();
      if (rc == 0) {
        sent_.fetch_add(1, std::memory_order_relaxed);
      } else {
        dropped_.fetch_add(1, std::memory_order_relaxed);
        CN_LOG(Warning) << "transport: dropped message to " << p->address << ": "
                        << zmq_strerror(rc);
      }
    }
    std::lock_guard<std::mutex> l(p->mu);
    return p->queue.empty() ? FlushResult::kEmpty : FlushResult::kMore;
  }

  // Makes p->socket. Called with p->mu held.
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
      if (curve()) {
        const Keys& keys = p->want;
        if (keys.server.empty()) return Status::InvalidArgument("no CURVE server key");
        s->set(zmq::sockopt::curve_serverkey, keys.server);
        s->set(zmq::sockopt::curve_publickey,
               keys.client_public.empty() ? options_.curve.public_key : keys.client_public);
        s->set(zmq::sockopt::curve_secretkey,
               keys.client_secret.empty() ? options_.curve.secret_key : keys.client_secret);
        p->used = keys;
      }
      s->connect(endpoint);
      p->fd = FdOf(*s);
      p->socket = std::move(s);
    } catch (const zmq::error_t& e) {
      return FromZmq(e, "connect " + endpoint);
    }
    return Status::Ok();
  }

  // Gives up on every message queued for `p` and forgets it; a later Send starts afresh. Called
  // with p->mu held; see "Lifetime" at the top of the file.
  void DropPeer(Peer* p, const Status& why) {
    CN_LOG(Warning) << "transport: dropping messages to " << p->address << ": " << why.ToString();
    p->socket.reset();
    std::lock_guard<std::mutex> l(mu_);
    for (const std::string& m : p->queue) queued_bytes_ -= m.size();
    dropped_.fetch_add(p->queue.size(), std::memory_order_relaxed);
    p->queue.clear();
    p->dropped = true;
    auto it = peers_.find(p->address);
    if (it != peers_.end() && it->second.get() == p) peers_.erase(it);
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

  // Receives up to kReceiveBatch messages. Returns whether the ROUTER was drained (see Loop).
  bool Receive() {
    // Checks stop_ per message: once the destructor asks, at most the handler call under way
    // finishes, however large the backlog.
    for (int i = 0; i < kReceiveBatch && !stop_.load(); ++i) {
      // ROUTER frames: [peer routing id][from][payload]. A multipart message arrives whole, so
      // once the first frame is here the rest are too.
      zmq::message_t id, from, body;
      if (!ReceiveFrame(&id)) return true;
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
      std::string sender = from.to_string();
      if (curve()) {
        // The authenticated key the ZAP handler gave as user id, not the claimed address.
        const char* user = zmq_msg_gets(body.handle(), "User-Id");
        if (user == nullptr || strlen(user) != 40) {
          dropped_.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        sender = user;
      }
      received_.fetch_add(1, std::memory_order_relaxed);
      (*handler)(sender, body.to_string());
    }
    return false;
  }

  const ZmqTransportOptions options_;
  std::string bound_address_;  // set by Start, then immutable
  std::string self_address_;   // set by Start, then immutable
  int wake_fd_ = -1;
  // Declared before the sockets so that it outlives them.
  zmq::context_t ctx_;
  std::unique_ptr<zmq::socket_t> zap_;      // CURVE: the ZAP handler (I/O thread only)
  std::unique_ptr<zmq::socket_t> router_;   // I/O thread only, once started
  std::unique_ptr<zmq::socket_t> monitor_;  // CURVE: the router's handshake events
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> wake_pending_{false};  // an eventfd write is already on its way

  mutable std::mutex mu_;
  // Only DropPeer (I/O thread) and the destructor erase peers; see "Lifetime" at the top.
  std::map<std::string, std::shared_ptr<Peer>> peers_;  // guarded by mu_
  // Peers the I/O thread must look at: their queue went from empty to not, or their keys changed.
  std::vector<std::shared_ptr<Peer>> wakeups_;  // guarded by mu_
  size_t queued_bytes_ = 0;                     // guarded by mu_
  std::shared_ptr<const Handler> handler_;      // guarded by mu_

  std::atomic<uint64_t> sent_{0};
  std::atomic<uint64_t> received_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> rejected_{0};
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> accepted_{0};    // connections accepted by the router
  std::atomic<uint64_t> handshaken_{0};  // ... that completed the CURVE handshake
  std::atomic<uint64_t> denied_{0};      // ... that the ZAP check refused
};

bool IsZ85Key(const std::string& k) {
  if (k.size() != 40) return false;
  uint8_t out[32];
  return zmq_z85_decode(out, k.c_str()) != nullptr;
}

Status ValidateOptions(const ZmqTransportOptions& o) {
  if (!o.curve.public_key.empty() || !o.curve.secret_key.empty()) {
    if (!zmq_has("curve")) {
      return Status::NotSupported("transport: this libzmq was built without CURVE");
    }
    if (!IsZ85Key(o.curve.public_key) || !IsZ85Key(o.curve.secret_key)) {
      return Status::InvalidArgument("transport: CURVE keys must be 40-character Z85 strings");
    }
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

Result<std::pair<std::string, std::string>> NewCurveKeyPair() {
  char pub[41], sec[41];
  if (zmq_curve_keypair(pub, sec) != 0) {
    return Status::NotSupported(std::string("CURVE key pair: ") + zmq_strerror(errno));
  }
  return std::make_pair(std::string(pub), std::string(sec));
}

Result<std::string> CurvePublicKey(const std::string& secret_key) {
  if (!IsZ85Key(secret_key)) return Status::InvalidArgument("not a Z85 CURVE secret key");
  char pub[41];
  if (zmq_curve_public(pub, secret_key.c_str()) != 0) {
    return Status::InvalidArgument(std::string("CURVE public key: ") + zmq_strerror(errno));
  }
  return std::string(pub);
}

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
