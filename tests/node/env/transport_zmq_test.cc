// ZeroMQ transport over loopback. Waits are bounded (kWait) and end in a failed check, never a
// hang; nothing sleeps to synchronize.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "catch2/catch.hpp"
#include "node/env/transport.h"

namespace constellation {
namespace {

constexpr auto kWait = std::chrono::seconds(10);

// Collects what a handler receives; the main thread waits on it.
struct Inbox {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::pair<std::string, std::string>> messages;  // (from, body)

  Transport::Handler Handler() {
    return [this](const std::string& from, std::string body) {
      std::lock_guard<std::mutex> l(mu);
      messages.emplace_back(from, std::move(body));
      cv.notify_all();
    };
  }
  // True once at least n messages arrived; false after kWait.
  bool WaitForCount(size_t n) {
    std::unique_lock<std::mutex> l(mu);
    return cv.wait_for(l, kWait, [&] { return messages.size() >= n; });
  }
  std::vector<std::pair<std::string, std::string>> Snapshot() {
    std::lock_guard<std::mutex> l(mu);
    return messages;
  }
};

// Signalled once, from any thread.
struct Latch {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  void Signal() {
    std::lock_guard<std::mutex> l(mu);
    done = true;
    cv.notify_all();
  }
  bool Wait() {
    std::unique_lock<std::mutex> l(mu);
    return cv.wait_for(l, kWait, [&] { return done; });
  }
};

// True once `pred` holds; false after kWait.
template <typename F>
bool Eventually(F pred) {
  auto deadline = std::chrono::steady_clock::now() + kWait;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::yield();
  }
  return pred();
}

std::unique_ptr<ZmqTransport> Make(ZmqTransportOptions options = {}) {
  if (options.bind_address.empty()) options.bind_address = "tcp://127.0.0.1:*";
  auto t = NewZmqTransport(options);
  INFO(t.status().ToString());
  REQUIRE(t.ok());
  return std::move(t).value();
}

// Destroys `t` on another thread; false if that did not finish within kWait.
bool DestroyPromptly(std::unique_ptr<ZmqTransport> t) {
  auto latch = std::make_shared<Latch>();
  std::thread th([t = std::move(t), latch]() mutable {
    t.reset();
    latch->Signal();
  });
  bool ok = latch->Wait();
  if (ok) {
    th.join();
  } else {
    th.detach();  // the test fails; do not hang it as well
  }
  return ok;
}

// A loopback port that refuses connections: bound (so no one else gets it) but not listening.
class RefusingPort {
 public:
  RefusingPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    socklen_t len = sizeof a;
    REQUIRE(getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    address_ = "127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  }
  ~RefusingPort() { close(fd_); }
  const std::string& address() const { return address_; }

 private:
  int fd_ = -1;
  std::string address_;
};

TEST_CASE("zmq: binds a free port and reports it") {
  auto a = Make();
  std::string bound = a->bound_address();
  REQUIRE(bound.rfind("127.0.0.1:", 0) == 0);
  REQUIRE(bound != "127.0.0.1:0");
  REQUIRE(a->self_address() == bound);

  // "host:port" without the scheme, port 0, and an explicit self address.
  ZmqTransportOptions o;
  o.bind_address = "127.0.0.1:0";
  o.self_address = "node-b.example:7400";
  auto b = Make(o);
  REQUIRE(b->bound_address().rfind("127.0.0.1:", 0) == 0);
  REQUIRE(b->bound_address() != "127.0.0.1:0");
  REQUIRE(b->self_address() == "node-b.example:7400");

  // The port is taken now.
  ZmqTransportOptions again;
  again.bind_address = bound;
  REQUIRE_FALSE(NewZmqTransport(again).ok());
}

TEST_CASE("zmq: rejects bad options and addresses") {
  ZmqTransportOptions o;
  o.bind_address = "tcp://127.0.0.1:*";
  o.curve.public_key = "not-a-key";
  o.curve.secret_key = "not-a-key";
  REQUIRE(NewZmqTransport(o).status().code() == Code::kInvalidArgument);

  for (const char* bind : {"", "127.0.0.1", "127.0.0.1:99999", "::1:7400", "127.0.0.1:7x"}) {
    ZmqTransportOptions b;
    b.bind_address = bind;
    INFO(bind);
    REQUIRE(NewZmqTransport(b).status().code() == Code::kInvalidArgument);
  }

  ZmqTransportOptions q;
  q.bind_address = "tcp://127.0.0.1:*";
  q.send_queue_limit = 0;
  REQUIRE(NewZmqTransport(q).status().code() == Code::kInvalidArgument);

  // A wildcard bind cannot name itself (refused before binding anything).
  for (const char* bind : {"tcp://*:*", "0.0.0.0:0", "[::]:0"}) {
    ZmqTransportOptions w;
    w.bind_address = bind;
    INFO(bind);
    REQUIRE(NewZmqTransport(w).status().code() == Code::kInvalidArgument);
  }

  auto a = Make();
  for (const char* to : {"", "nohost", "host:", "host:0", "host:70000", "*:7400", "a b:1"}) {
    INFO(to);
    REQUIRE(a->Send(to, "x").code() == Code::kInvalidArgument);
  }
  REQUIRE(a->counters().rejected == 7);
}

TEST_CASE("zmq: ping-pong 1000 messages in order") {
  constexpr int kRounds = 1000;
  Inbox b_seen;
  struct {
    std::mutex mu;
    std::vector<std::string> errors;
    std::vector<std::string> froms;
    int next = 0;
  } a_state;
  Latch finished;

  auto a = Make();
  auto b = Make();
  ZmqTransport* a_ptr = a.get();
  ZmqTransport* b_ptr = b.get();

  b->SetHandler([&, b_ptr](const std::string& from, std::string body) {
    b_seen.Handler()(from, body);
    Status s = b_ptr->Send(from, "pong " + body.substr(5));
    if (!s.ok()) {
      std::lock_guard<std::mutex> l(a_state.mu);
      a_state.errors.push_back("b send: " + s.ToString());
    }
  });
  a->SetHandler([&, a_ptr, b_ptr](const std::string& from, std::string body) {
    std::lock_guard<std::mutex> l(a_state.mu);
    a_state.froms.push_back(from);
    std::string want = "pong " + std::to_string(a_state.next);
    if (body != want) a_state.errors.push_back("got \"" + body + "\", want \"" + want + "\"");
    if (++a_state.next == kRounds) {
      finished.Signal();
      return;
    }
    Status s = a_ptr->Send(b_ptr->self_address(), "ping " + std::to_string(a_state.next));
    if (!s.ok()) a_state.errors.push_back("a send: " + s.ToString());
  });

  REQUIRE(a->Send(b->self_address(), "ping 0").ok());
  REQUIRE(finished.Wait());

  std::lock_guard<std::mutex> l(a_state.mu);
  REQUIRE(a_state.errors.empty());
  REQUIRE(a_state.next == kRounds);
  for (const auto& from : a_state.froms) REQUIRE(from == b->self_address());
  auto seen = b_seen.Snapshot();
  REQUIRE(seen.size() == kRounds);
  for (int i = 0; i < kRounds; ++i) {
    REQUIRE(seen[i].first == a->self_address());
    REQUIRE(seen[i].second == "ping " + std::to_string(i));
  }
  REQUIRE(a->counters().sent == kRounds);
  REQUIRE(a->counters().received == kRounds);
  REQUIRE(b->counters().received == kRounds);
  // Not b's `sent`: b counts its last pong after handing it to ZeroMQ, which can be after a has
  // already received it.
  REQUIRE(b->counters().rejected == 0);
  REQUIRE(a->counters().dropped == 0);
  REQUIRE(b->counters().dropped == 0);
}

TEST_CASE("zmq: an 8 MiB message arrives intact") {
  Inbox inbox;
  auto a = Make();
  auto b = Make();
  b->SetHandler(inbox.Handler());

  std::string big(8 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 131 + i / 4099) & 0xff);
  REQUIRE(a->Send(b->self_address(), big).ok());
  REQUIRE(inbox.WaitForCount(1));
  auto got = inbox.Snapshot();
  REQUIRE(got.size() == 1);
  REQUIRE(got[0].first == a->self_address());
  REQUIRE(got[0].second.size() == big.size());
  REQUIRE(got[0].second == big);
}

TEST_CASE("zmq: oversized messages are refused on send and dropped on receipt") {
  Inbox inbox;
  auto a = Make();
  ZmqTransportOptions small;
  small.bind_address = "tcp://127.0.0.1:*";
  small.max_message_size = 1 << 20;
  auto b = Make(small);
  b->SetHandler(inbox.Handler());

  REQUIRE(b->Send(a->self_address(), std::string((1 << 20) + 1, 'x')).code() == Code::kTooLarge);
  REQUIRE(b->counters().rejected == 1);

  // a allows 64 MiB, b only 1 MiB: b drops the big one and still gets the one after it (order
  // on the link means the big one was dealt with first).
  REQUIRE(a->Send(b->self_address(), std::string((3 << 20) / 2, 'y')).ok());
  REQUIRE(a->Send(b->self_address(), "after").ok());
  REQUIRE(inbox.WaitForCount(1));
  auto got = inbox.Snapshot();
  REQUIRE(got.size() == 1);
  REQUIRE(got[0].second == "after");
  REQUIRE(b->counters().dropped == 1);
  REQUIRE(b->counters().received == 1);
}

TEST_CASE("zmq: an unreachable peer fills its queue without blocking or hurting others") {
  RefusingPort dead;
  Inbox inbox;
  ZmqTransportOptions o;
  o.bind_address = "tcp://127.0.0.1:*";
  o.send_queue_limit = 8;
  auto a = Make(o);
  auto b = Make();
  b->SetHandler(inbox.Handler());

  // Nothing leaves the queue while the peer cannot be connected (ZMQ_IMMEDIATE), so exactly
  // send_queue_limit sends fit.
  for (int i = 0; i < 8; ++i) REQUIRE(a->Send(dead.address(), "m" + std::to_string(i)).ok());
  Status full = a->Send(dead.address(), "one too many");
  REQUIRE(full.code() == Code::kUnavailable);
  REQUIRE(a->counters().rejected == 1);

  // Another peer's queue is separate.
  for (int i = 0; i < 8; ++i) REQUIRE(a->Send(b->self_address(), std::to_string(i)).ok());
  REQUIRE(inbox.WaitForCount(8));
  auto got = inbox.Snapshot();
  for (int i = 0; i < 8; ++i) REQUIRE(got[i].second == std::to_string(i));
  REQUIRE(a->Send(dead.address(), "still full").code() == Code::kUnavailable);
}

TEST_CASE("zmq: the peer limit is enforced") {
  ZmqTransportOptions o;
  o.bind_address = "tcp://127.0.0.1:*";
  o.max_peers = 2;
  auto a = Make(o);
  REQUIRE(a->Send("127.0.0.1:1", "x").ok());
  REQUIRE(a->Send("127.0.0.1:2", "x").ok());
  REQUIRE(a->Send("127.0.0.1:1", "y").ok());  // known peer
  REQUIRE(a->Send("127.0.0.1:3", "x").code() == Code::kUnavailable);
}

TEST_CASE("zmq: a node can send to itself") {
  Inbox inbox;
  auto a = Make();
  a->SetHandler(inbox.Handler());
  REQUIRE(a->Send(a->self_address(), "hello me").ok());
  REQUIRE(inbox.WaitForCount(1));
  REQUIRE(inbox.Snapshot()[0] == std::make_pair(a->self_address(), std::string("hello me")));
}

TEST_CASE("zmq: concurrent senders keep each sender's order") {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 500;
  Inbox inbox;
  ZmqTransportOptions o;
  o.bind_address = "tcp://127.0.0.1:*";
  o.send_queue_limit = kThreads * kPerThread;  // never full, so every Send must succeed
  auto a = Make(o);
  auto b = Make();
  b->SetHandler(inbox.Handler());

  std::vector<std::thread> threads;
  std::mutex err_mu;
  std::vector<std::string> errors;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        Status s = a->Send(b->self_address(), std::to_string(t) + ":" + std::to_string(i));
        if (!s.ok()) {
          std::lock_guard<std::mutex> l(err_mu);
          errors.push_back(s.ToString());
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  REQUIRE(errors.empty());
  REQUIRE(inbox.WaitForCount(kThreads * kPerThread));
  std::vector<int> next(kThreads, 0);
  for (const auto& [from, body] : inbox.Snapshot()) {
    size_t colon = body.find(':');
    int t = std::stoi(body.substr(0, colon));
    int i = std::stoi(body.substr(colon + 1));
    REQUIRE(i == next[t]);
    ++next[t];
  }
  for (int t = 0; t < kThreads; ++t) REQUIRE(next[t] == kPerThread);
}

TEST_CASE("zmq: shutdown with pending messages returns promptly") {
  RefusingPort dead;
  Inbox inbox;
  auto b = Make();
  b->SetHandler(inbox.Handler());
  auto a = Make();
  // Queued for a peer that refuses, and a burst for a live one that cannot all have left yet.
  for (int i = 0; i < 100; ++i) REQUIRE(a->Send(dead.address(), "pending").ok());
  std::string chunk(256 << 10, 'z');
  for (int i = 0; i < 200; ++i) REQUIRE(a->Send(b->self_address(), chunk).ok());
  REQUIRE(DestroyPromptly(std::move(a)));
  REQUIRE(DestroyPromptly(std::move(b)));
}

TEST_CASE("zmq: a backlog of several receive batches is delivered without further traffic") {
  // The receiver takes at most one batch (256) per wakeup. Its socket's fd does not fire again
  // for messages already waiting, so after a cut-short batch it must look again before it waits.
  constexpr int kCount = 1000;
  Inbox inbox;
  Latch release;
  auto a = Make();
  auto b = Make();
  auto record = inbox.Handler();
  b->SetHandler([&](const std::string& from, std::string body) {
    if (body == "0") release.Wait();  // hold b's thread while the backlog builds up
    record(from, std::move(body));
  });
  for (int i = 0; i < kCount; ++i) REQUIRE(a->Send(b->self_address(), std::to_string(i)).ok());
  REQUIRE(Eventually([&] { return a->counters().sent == kCount; }));
  release.Signal();
  REQUIRE(inbox.WaitForCount(kCount));
  auto got = inbox.Snapshot();
  for (int i = 0; i < kCount; ++i) REQUIRE(got[i].second == std::to_string(i));
}

TEST_CASE("zmq: a handler may replace itself") {
  Inbox first, second;
  auto a = Make();
  auto b = Make();
  ZmqTransport* b_ptr = b.get();
  auto first_handler = first.Handler();
  b->SetHandler([&, b_ptr, first_handler](const std::string& from, std::string body) {
    first_handler(from, std::move(body));
    b_ptr->SetHandler(second.Handler());
  });
  REQUIRE(a->Send(b->self_address(), "1").ok());
  REQUIRE(a->Send(b->self_address(), "2").ok());
  REQUIRE(a->Send(b->self_address(), "3").ok());
  REQUIRE(second.WaitForCount(2));
  REQUIRE(first.Snapshot().size() == 1);
  REQUIRE(first.Snapshot()[0].second == "1");
  REQUIRE(second.Snapshot()[0].second == "2");
  REQUIRE(second.Snapshot()[1].second == "3");
}

TEST_CASE("zmq: a Send to a connected, idle peer is handed to ZeroMQ before it returns") {
  Inbox inbox;
  auto a = Make();
  auto b = Make();
  b->SetHandler(inbox.Handler());
  // The first one waits for the I/O thread to connect; once it has left, the queue is empty.
  REQUIRE(a->Send(b->self_address(), "first").ok());
  REQUIRE(Eventually([&] { return a->counters().sent == 1; }));
  for (uint64_t i = 0; i < 100; ++i) {
    REQUIRE(a->Send(b->self_address(), "m").ok());
    REQUIRE(a->counters().sent == i + 2);  // counted on this thread, not later by the I/O thread
  }
  REQUIRE(inbox.WaitForCount(101));
}

// Transports that, with `curve`, know each other's server keys and admit every key.
struct Peers {
  bool curve;
  std::vector<std::pair<std::string, std::string>> keys;  // per transport made: (public, secret)

  explicit Peers(bool c) : curve(c) {}
  std::unique_ptr<ZmqTransport> Make(ZmqTransportOptions o = {}) {
    if (o.bind_address.empty()) o.bind_address = "tcp://127.0.0.1:*";
    if (curve) {
      auto kp = NewCurveKeyPair();
      REQUIRE(kp.ok());
      o.curve.public_key = kp->first;
      o.curve.secret_key = kp->second;
      o.authorize = [](const std::string&) { return true; };
      keys.push_back(*kp);
    }
    return constellation::Make(o);
  }
  // Lets `from` send to the transport at `address`, made `index`th by Make.
  void Introduce(ZmqTransport* from, const std::string& address, size_t index) {
    if (curve) from->SetPeerKey(address, keys[index].first);
  }
};

// Checks that `got` holds exactly `per_thread` messages "t:i" from each of `threads` threads, in
// order per thread.
void CheckPerThreadOrder(const std::vector<std::pair<std::string, std::string>>& got, int threads,
                         int per_thread) {
  REQUIRE(got.size() == static_cast<size_t>(threads * per_thread));
  std::vector<int> next(threads, 0);
  for (const auto& [from, body] : got) {
    size_t colon = body.find(':');
    int t = std::stoi(body.substr(0, colon));
    int i = std::stoi(body.substr(colon + 1));
    INFO(body);
    REQUIRE(i == next[t]);
    ++next[t];
  }
}

TEST_CASE("zmq: threads sending to a live peer and to one that comes up later keep their order") {
  const bool curve = GENERATE(false, true);
  INFO("curve " << curve);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 400;  // half before the second peer is up, half after
  Peers net(curve);
  ZmqTransportOptions o;
  o.send_queue_limit = kThreads * kPerThread;  // never full, so every Send must succeed
  auto a = net.Make(o);
  Inbox b_inbox, c_inbox;
  auto b = net.Make();
  b->SetHandler(b_inbox.Handler());
  // c's address refuses connections until c binds it, halfway through.
  std::optional<RefusingPort> c_port;
  c_port.emplace();
  const std::string c_address = c_port->address();
  std::unique_ptr<ZmqTransport> c;
  if (curve) {
    auto kp = NewCurveKeyPair();
    REQUIRE(kp.ok());
    net.keys.push_back(*kp);  // c's keys, index 2, known before c exists
  }
  net.Introduce(a.get(), b->bound_address(), 1);
  net.Introduce(a.get(), c_address, 2);

  std::mutex mu;
  std::condition_variable cv;
  int halfway = 0;
  bool c_up = false;
  std::vector<std::string> errors;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        if (i == kPerThread / 2) {
          std::unique_lock<std::mutex> l(mu);
          ++halfway;
          cv.notify_all();
          cv.wait(l, [&] { return c_up; });
        }
        std::string m = std::to_string(t) + ":" + std::to_string(i);
        for (const std::string& to : {b->bound_address(), c_address}) {
          Status s = a->Send(to, m);
          if (!s.ok()) {
            std::lock_guard<std::mutex> l(mu);
            errors.push_back(s.ToString());
          }
        }
      }
    });
  }
  {
    std::unique_lock<std::mutex> l(mu);
    REQUIRE(cv.wait_for(l, kWait, [&] { return halfway == kThreads; }));
  }
  c_port.reset();
  ZmqTransportOptions co;
  co.bind_address = c_address;
  if (curve) {
    co.curve.public_key = net.keys[2].first;
    co.curve.secret_key = net.keys[2].second;
    co.authorize = [](const std::string&) { return true; };
  }
  c = Make(co);
  c->SetHandler(c_inbox.Handler());
  {
    std::lock_guard<std::mutex> l(mu);
    c_up = true;
    cv.notify_all();
  }
  for (auto& th : threads) th.join();
  REQUIRE(errors.empty());
  REQUIRE(b_inbox.WaitForCount(kThreads * kPerThread));
  REQUIRE(c_inbox.WaitForCount(kThreads * kPerThread));
  CheckPerThreadOrder(b_inbox.Snapshot(), kThreads, kPerThread);
  CheckPerThreadOrder(c_inbox.Snapshot(), kThreads, kPerThread);
  // The I/O thread counts a message it handed over after the handing, which can be after the
  // receiver got it.
  CHECK(Eventually([&] { return a->counters().sent == 2 * kThreads * kPerThread; }));
  CHECK(a->counters().dropped == 0);
  CHECK(a->counters().rejected == 0);
}

TEST_CASE("zmq: sends racing the destruction of either end") {
  // Threads keep sending from a to b while b is destroyed, then a is destroyed with messages
  // queued and handed over, while its handler (on its I/O thread) is sending to c. Run under
  // ASan, this finds sockets used after they were closed or peers freed under a Send.
  const bool curve = GENERATE(false, true);
  INFO("curve " << curve);
  Peers net(curve);
  ZmqTransportOptions small;
  small.send_queue_limit = 16;
  auto a = net.Make(small);
  auto b = net.Make();
  auto c = net.Make();
  const std::string a_address = a->bound_address();
  const std::string b_address = b->bound_address();
  const std::string c_address = c->bound_address();
  net.Introduce(a.get(), b_address, 1);
  net.Introduce(a.get(), c_address, 2);
  net.Introduce(b.get(), a_address, 0);
  net.Introduce(c.get(), a_address, 0);
  // b echoes to a; a and c ping-pong, so a's handler sends for as long as a lives.
  ZmqTransport* a_ptr = a.get();
  ZmqTransport* b_ptr = b.get();
  ZmqTransport* c_ptr = c.get();
  b->SetHandler([b_ptr, a_address](const std::string&, std::string body) {
    (void)b_ptr->Send(a_address, std::move(body));
  });
  c->SetHandler([c_ptr, a_address](const std::string&, std::string body) {
    (void)c_ptr->Send(a_address, std::move(body));
  });
  a->SetHandler([a_ptr, c_address](const std::string&, std::string body) {
    if (body == "ping") (void)a_ptr->Send(c_address, std::move(body));
  });
  REQUIRE(a->Send(c_address, "ping").ok());

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> attempts{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      while (!stop.load()) {
        (void)a_ptr->Send(b_address, "x");
        attempts.fetch_add(1);
      }
    });
  }
  REQUIRE(Eventually([&] { return b_ptr->counters().received >= 100; }));
  REQUIRE(DestroyPromptly(std::move(b)));
  uint64_t at_destruction = attempts.load();
  REQUIRE(Eventually([&] { return attempts.load() >= at_destruction + 1000; }));
  stop.store(true);
  for (auto& th : threads) th.join();
  REQUIRE(a->counters().received >= 1);  // the ping-pong with c is under way
  REQUIRE(DestroyPromptly(std::move(a)));
  REQUIRE(DestroyPromptly(std::move(c)));
}

}  // namespace
// ---- CURVE and the ZAP check.

struct Node {
  std::string pub, sec;
  std::set<std::string> admitted;
  std::mutex mu;
  Inbox inbox;
  std::unique_ptr<ZmqTransport> t;

  Node() {
    auto kp = NewCurveKeyPair();
    REQUIRE(kp.ok());
    pub = kp->first;
    sec = kp->second;
  }
  void Admit(const std::string& key) {
    std::lock_guard<std::mutex> l(mu);
    admitted.insert(key);
  }
  void Start() {
    ZmqTransportOptions o;
    o.bind_address = "tcp://127.0.0.1:*";
    o.curve.public_key = pub;
    o.curve.secret_key = sec;
    o.authorize = [this](const std::string& key) {
      std::lock_guard<std::mutex> l(mu);
      return admitted.count(key) > 0;
    };
    t = Make(o);
    t->SetHandler(inbox.Handler());
  }
};

TEST_CASE("zmq curve: key pairs and public keys") {
  auto kp = NewCurveKeyPair();
  REQUIRE(kp.ok());
  CHECK(kp->first.size() == 40);
  auto pub = CurvePublicKey(kp->second);
  REQUIRE(pub.ok());
  CHECK(*pub == kp->first);
  CHECK(CurvePublicKey("short").status().code() == Code::kInvalidArgument);
}

TEST_CASE("zmq curve: admitted peers talk, and `from` is the sender's authenticated key") {
  Node a, b;
  a.Admit(b.pub);
  b.Admit(a.pub);
  a.Start();
  b.Start();
  // Without the server key a send is refused at once.
  CHECK(a.t->Send(b.t->bound_address(), "x").code() == Code::kInvalidArgument);
  a.t->SetPeerKey(b.t->bound_address(), b.pub);
  b.t->SetPeerKey(a.t->bound_address(), a.pub);
  REQUIRE(a.t->Send(b.t->bound_address(), "hello").ok());
  REQUIRE(b.inbox.WaitForCount(1));
  CHECK(b.inbox.Snapshot()[0] == std::make_pair(a.pub, std::string("hello")));
  REQUIRE(b.t->Send(a.t->bound_address(), "back").ok());
  REQUIRE(a.inbox.WaitForCount(1));
  CHECK(a.inbox.Snapshot()[0].first == b.pub);
  CHECK(a.t->counters().refused == 0);
  CHECK(b.t->counters().refused == 0);
}

TEST_CASE("zmq curve: a key that was not admitted is refused and counted; others are unaffected") {
  Node server, stranger, friend_;
  server.Admit(friend_.pub);
  server.Start();
  stranger.Start();
  friend_.Start();
  stranger.t->SetPeerKey(server.t->bound_address(), server.pub);
  friend_.t->SetPeerKey(server.t->bound_address(), server.pub);
  REQUIRE(stranger.t->Send(server.t->bound_address(), "let me in").ok());
  REQUIRE(Eventually([&] { return server.t->counters().refused >= 1; }));
  REQUIRE(friend_.t->Send(server.t->bound_address(), "hi").ok());
  REQUIRE(server.inbox.WaitForCount(1));
  auto got = server.inbox.Snapshot();
  REQUIRE(got.size() == 1);
  CHECK(got[0] == std::make_pair(friend_.pub, std::string("hi")));

  // A client presenting another key pair (a joining node's join key) is judged by that key.
  Node joiner;
  joiner.Start();
  auto join_key = NewCurveKeyPair();
  REQUIRE(join_key.ok());
  server.Admit(join_key->first);
  joiner.t->SetPeerKey(server.t->bound_address(), server.pub, join_key->first, join_key->second);
  REQUIRE(joiner.t->Send(server.t->bound_address(), "join").ok());
  REQUIRE(server.inbox.WaitForCount(2));
  CHECK(server.inbox.Snapshot()[1] == std::make_pair(join_key->first, std::string("join")));
}

TEST_CASE("zmq curve: messages refused while the server did not know the key arrive once it does") {
  // A restarting node answers handshakes before it has loaded its members, refusing them;
  // ZeroMQ never retries a refused handshake, so the sender must connect afresh by itself.
  Node server, client;
  server.Start();
  client.Start();
  client.t->SetPeerKey(server.t->bound_address(), server.pub);
  REQUIRE(client.t->Send(server.t->bound_address(), "early").ok());
  REQUIRE(Eventually([&] { return server.t->counters().refused >= 1; }));
  server.Admit(client.pub);
  REQUIRE(client.t->Send(server.t->bound_address(), "later").ok());
  REQUIRE(server.inbox.WaitForCount(2));
  auto got = server.inbox.Snapshot();
  CHECK(got[0] == std::make_pair(client.pub, std::string("early")));
  CHECK(got[1] == std::make_pair(client.pub, std::string("later")));
}

TEST_CASE("zmq curve: a wrong server key and garbage bytes fail the handshake and are counted") {
  Node server, client;
  server.Admit(client.pub);
  server.Start();
  client.Start();
  auto wrong = NewCurveKeyPair();
  REQUIRE(wrong.ok());
  client.t->SetPeerKey(server.t->bound_address(), wrong->first);
  REQUIRE(client.t->Send(server.t->bound_address(), "x").ok());
  REQUIRE(Eventually([&] { return server.t->counters().handshake_failed >= 1; }));

  // Raw garbage on the port.
  std::string addr = server.t->bound_address();
  int port = std::stoi(addr.substr(addr.rfind(':') + 1));
  uint64_t before = server.t->counters().handshake_failed;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(static_cast<uint16_t>(port));
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  std::string junk(4096, '\0');
  for (size_t i = 0; i < junk.size(); ++i) junk[i] = static_cast<char>((i * 7919) ^ 0x5a);
  junk[0] = static_cast<char>(0xff);  // looks like a ZMTP 3 greeting, then is not
  REQUIRE(write(fd, junk.data(), junk.size()) > 0);
  REQUIRE(Eventually([&] { return server.t->counters().handshake_failed > before; }));
  close(fd);
  CHECK(server.inbox.Snapshot().empty());

  // The server still serves an admitted client with the right key; the message queued while the
  // handshake failed goes first, over the new connection.
  client.t->SetPeerKey(server.t->bound_address(), server.pub);
  REQUIRE(client.t->Send(server.t->bound_address(), "ok now").ok());
  REQUIRE(server.inbox.WaitForCount(2));
  auto got = server.inbox.Snapshot();
  CHECK(got[0].second == "x");
  CHECK(got[1].second == "ok now");
}

}  // namespace constellation
