#include "node/env/transport_fake.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "catch2/catch.hpp"

namespace constellation {
namespace {

using Log = std::vector<std::pair<std::string, std::string>>;  // (from, body)

std::unique_ptr<Transport> Endpoint(FakeNetwork& net, const std::string& address, Log* log) {
  auto t = net.NewEndpoint(address);
  REQUIRE(t.ok());
  if (log != nullptr) {
    (*t)->SetHandler([log](const std::string& from, std::string body) {
      log->emplace_back(from, std::move(body));
    });
  }
  return std::move(t).value();
}

TEST_CASE("fake: nothing moves until delivery, then in send order") {
  FakeNetwork net;
  Log a_log, b_log;
  auto a = Endpoint(net, "a:1", &a_log);
  auto b = Endpoint(net, "b:1", &b_log);
  REQUIRE(a->Send("b:1", "one").ok());
  REQUIRE(b->Send("a:1", "two").ok());
  REQUIRE(a->Send("b:1", "three").ok());
  REQUIRE(net.pending() == 3);
  REQUIRE(b_log.empty());

  REQUIRE(net.DeliverOne());
  REQUIRE(b_log == Log{{"a:1", "one"}});
  REQUIRE(net.DeliverAll() == 2);
  REQUIRE(b_log == Log{{"a:1", "one"}, {"a:1", "three"}});
  REQUIRE(a_log == Log{{"b:1", "two"}});
  REQUIRE_FALSE(net.DeliverOne());
  TransportCounters c = net.counters();
  REQUIRE(c.sent == 3);
  REQUIRE(c.received == 3);
  REQUIRE(c.dropped == 0);
}

TEST_CASE("fake: addresses are unique while their endpoint lives") {
  FakeNetwork net;
  auto a = Endpoint(net, "a:1", nullptr);
  REQUIRE(net.NewEndpoint("a:1").status().code() == Code::kAlreadyExists);
  a.reset();
  REQUIRE(net.NewEndpoint("a:1").ok());
}

TEST_CASE("fake: missing endpoints and handlers lose messages; restarts receive in-flight ones") {
  FakeNetwork net;
  Log b_log;
  auto a = Endpoint(net, "a:1", nullptr);
  REQUIRE(a->Send("nobody:1", "lost").ok());
  REQUIRE(a->Send("b:1", "to the restarted b").ok());
  {
    auto no_handler = Endpoint(net, "c:1", nullptr);
    REQUIRE(a->Send("c:1", "unhandled").ok());
  }
  auto b = Endpoint(net, "b:1", &b_log);
  REQUIRE(net.DeliverAll() == 3);
  REQUIRE(b_log == Log{{"a:1", "to the restarted b"}});
  REQUIRE(net.counters().dropped == 2);
}

TEST_CASE("fake: handlers may send during delivery; DeliverAll is bounded") {
  FakeNetwork net;
  auto a_r = net.NewEndpoint("a:1");
  auto b_r = net.NewEndpoint("b:1");
  REQUIRE(a_r.ok());
  REQUIRE(b_r.ok());
  Transport* a = a_r->get();
  Transport* b = b_r->get();
  int a_got = 0, b_got = 0;
  // An endless ping-pong.
  a->SetHandler([&](const std::string& from, std::string body) {
    ++a_got;
    REQUIRE(a->Send(from, body).ok());
  });
  b->SetHandler([&](const std::string& from, std::string body) {
    ++b_got;
    REQUIRE(b->Send(from, body).ok());
  });
  REQUIRE(a->Send("b:1", "ball").ok());
  REQUIRE(net.DeliverAll(101) == 101);
  REQUIRE(b_got == 51);
  REQUIRE(a_got == 50);
  REQUIRE(net.pending() == 1);
}

TEST_CASE("fake: link queues are bounded") {
  FakeNetwork net(1, /*link_queue_limit=*/3);
  auto a = Endpoint(net, "a:1", nullptr);
  for (int i = 0; i < 3; ++i) REQUIRE(a->Send("b:1", "x").ok());
  REQUIRE(a->Send("b:1", "x").code() == Code::kUnavailable);
  REQUIRE(a->Send("c:1", "x").ok());  // another link
  REQUIRE(net.counters().rejected == 1);
  REQUIRE(net.DeliverOne());
  REQUIRE(a->Send("b:1", "x").ok());  // room again
}

TEST_CASE("fake: partition drops both ways, including in-flight messages, until heal") {
  FakeNetwork net;
  Log a_log, b_log, c_log;
  auto a = Endpoint(net, "a:1", &a_log);
  auto b = Endpoint(net, "b:1", &b_log);
  auto c = Endpoint(net, "c:1", &c_log);

  REQUIRE(a->Send("b:1", "in flight").ok());
  net.Partition("b:1", "a:1");
  REQUIRE(a->Send("b:1", "a->b").ok());
  REQUIRE(b->Send("a:1", "b->a").ok());
  REQUIRE(a->Send("c:1", "a->c").ok());
  REQUIRE(c->Send("b:1", "c->b").ok());
  REQUIRE(net.DeliverAll() == 5);
  REQUIRE(a_log.empty());
  REQUIRE(b_log == Log{{"c:1", "c->b"}});
  REQUIRE(c_log == Log{{"a:1", "a->c"}});
  REQUIRE(net.counters().dropped == 3);

  // Sent while partitioned, healed before delivery: gets through.
  REQUIRE(a->Send("b:1", "healed").ok());
  net.Heal();
  REQUIRE(net.DeliverAll() == 1);
  REQUIRE(b_log.back() == std::make_pair(std::string("a:1"), std::string("healed")));
}

TEST_CASE("fake: isolate cuts a node off from everyone until heal") {
  FakeNetwork net;
  Log a_log, b_log, c_log;
  auto a = Endpoint(net, "a:1", &a_log);
  auto b = Endpoint(net, "b:1", &b_log);
  auto c = Endpoint(net, "c:1", &c_log);
  net.Isolate("a:1");
  REQUIRE(a->Send("b:1", "x").ok());
  REQUIRE(c->Send("a:1", "x").ok());
  REQUIRE(a->Send("a:1", "self").ok());
  REQUIRE(b->Send("c:1", "b->c").ok());
  net.DeliverAll();
  REQUIRE(a_log.empty());
  REQUIRE(b_log.empty());
  REQUIRE(c_log == Log{{"b:1", "b->c"}});
  net.Heal();
  REQUIRE(a->Send("b:1", "back").ok());
  net.DeliverAll();
  REQUIRE(b_log == Log{{"a:1", "back"}});
}

// Which of 1000 messages survive a 30% drop rate, for a seed.
std::vector<int> Survivors(uint64_t seed) {
  FakeNetwork net(seed, 2000);
  std::vector<int> got;
  auto a = Endpoint(net, "a:1", nullptr);
  auto b_r = net.NewEndpoint("b:1");
  REQUIRE(b_r.ok());
  (*b_r)->SetHandler([&](const std::string&, std::string body) { got.push_back(std::stoi(body)); });
  net.SetDropRate(300);
  for (int i = 0; i < 1000; ++i) REQUIRE(a->Send("b:1", std::to_string(i)).ok());
  REQUIRE(net.DeliverAll() == 1000);
  REQUIRE(net.counters().dropped + net.counters().received == 1000);
  return got;
}

TEST_CASE("fake: drops are random but determined by the seed") {
  std::vector<int> first = Survivors(42);
  REQUIRE(Survivors(42) == first);
  REQUIRE(Survivors(43) != first);
  // A 30% rate over 1000 messages; bounds far outside chance so only a broken rate fails.
  REQUIRE(first.size() > 550);
  REQUIRE(first.size() < 850);
  // FIFO order keeps survivors in order.
  for (size_t i = 1; i < first.size(); ++i) REQUIRE(first[i - 1] < first[i]);

  FakeNetwork all_lost(7);
  Log log;
  auto a = Endpoint(all_lost, "a:1", nullptr);
  auto b = Endpoint(all_lost, "b:1", &log);
  all_lost.SetDropRate(1000);
  for (int i = 0; i < 10; ++i) REQUIRE(a->Send("b:1", "x").ok());
  all_lost.DeliverAll();
  REQUIRE(log.empty());
  all_lost.SetDropRate(0);
  REQUIRE(a->Send("b:1", "x").ok());
  all_lost.DeliverAll();
  REQUIRE(log.size() == 1);
}

// The delivery order of messages from a and c to b, for a seed and order.
std::vector<std::string> Order(uint64_t seed, FakeNetwork::Order order) {
  FakeNetwork net(seed);
  std::vector<std::string> got;
  auto a = Endpoint(net, "a:1", nullptr);
  auto c = Endpoint(net, "c:1", nullptr);
  auto b_r = net.NewEndpoint("b:1");
  REQUIRE(b_r.ok());
  (*b_r)->SetHandler([&](const std::string&, std::string body) { got.push_back(body); });
  net.SetOrder(order);
  for (int i = 0; i < 20; ++i) {
    REQUIRE(a->Send("b:1", "a" + std::to_string(100 + i)).ok());
    REQUIRE(c->Send("b:1", "c" + std::to_string(100 + i)).ok());
  }
  REQUIRE(net.DeliverAll() == 40);
  return got;
}

TEST_CASE("fake: shuffled orders are seeded; shuffling links keeps each link in order") {
  std::vector<std::string> fifo = Order(1, FakeNetwork::Order::kFifo);
  REQUIRE(fifo.front() == "a100");
  REQUIRE(fifo[1] == "c100");

  std::vector<std::string> links = Order(5, FakeNetwork::Order::kShuffleLinks);
  REQUIRE(links == Order(5, FakeNetwork::Order::kShuffleLinks));
  REQUIRE(links != fifo);
  std::string last_a, last_c;
  for (const std::string& m : links) {
    std::string& last = m[0] == 'a' ? last_a : last_c;
    REQUIRE(m > last);
    last = m;
  }

  std::vector<std::string> all = Order(5, FakeNetwork::Order::kShuffleAll);
  REQUIRE(all == Order(5, FakeNetwork::Order::kShuffleAll));
  bool a_reordered = false;
  last_a.clear();
  for (const std::string& m : all) {
    if (m[0] != 'a') continue;
    if (m < last_a) a_reordered = true;
    last_a = m;
  }
  REQUIRE(a_reordered);
  std::vector<std::string> sorted_all = all, sorted_fifo = fifo;
  std::sort(sorted_all.begin(), sorted_all.end());
  std::sort(sorted_fifo.begin(), sorted_fifo.end());
  REQUIRE(sorted_all == sorted_fifo);
}

TEST_CASE("fake: concurrent senders and a concurrent deliverer") {
  constexpr int kSenders = 4;
  constexpr int kPerSender = 200;
  FakeNetwork net(3, kPerSender);
  std::vector<std::unique_ptr<Transport>> senders;
  for (int t = 0; t < kSenders; ++t)
    senders.push_back(Endpoint(net, "s" + std::to_string(t), nullptr));
  std::vector<std::string> got;  // only the delivering threads touch it, one at a time
  std::mutex got_mu;
  auto sink = Endpoint(net, "sink:1", nullptr);
  sink->SetHandler([&](const std::string& from, std::string body) {
    std::lock_guard<std::mutex> l(got_mu);
    got.push_back(from + "/" + body);
  });

  std::vector<std::thread> threads;
  for (int t = 0; t < kSenders; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerSender; ++i) {
        Status s = senders[t]->Send("sink:1", std::to_string(1000 + i));
        if (!s.ok()) std::abort();  // the link limit equals kPerSender: never full
      }
    });
  }
  std::thread deliverer([&] {
    for (int i = 0; i < kSenders * kPerSender; ++i) net.DeliverOne();
  });
  for (auto& th : threads) th.join();
  deliverer.join();
  net.DeliverAll();

  REQUIRE(got.size() == kSenders * kPerSender);
  std::map<std::string, std::string> last;
  for (const std::string& m : got) {
    std::string from = m.substr(0, m.find('/'));
    REQUIRE(m > last[from]);
    last[from] = m;
  }
  REQUIRE(last.size() == kSenders);
}

TEST_CASE("fake: endpoints may outlive the network") {
  std::unique_ptr<Transport> a;
  {
    FakeNetwork net;
    a = Endpoint(net, "a:1", nullptr);
  }
  REQUIRE(a->Send("b:1", "into the void").ok());
}

}  // namespace
}  // namespace constellation
