#include "node/env/transport_fake.h"

#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

#include "node/base/log.h"
#include "node/env/env_fake.h"

namespace constellation {

struct FakeNetwork::State {
  struct Message {
    std::string from;
    std::string to;
    std::string body;
  };
  using Link = std::pair<std::string, std::string>;  // (from, to)

  State(uint64_t seed, size_t limit) : random(seed), link_queue_limit(limit) {}

  // Position in `queue` of the message to deliver next; `queue` is not empty.
  size_t PickLocked() {
    switch (order) {
      case Order::kFifo:
        return 0;
      case Order::kShuffleAll:
        return static_cast<size_t>(random.Next() % queue.size());
      case Order::kShuffleLinks: {
        std::vector<size_t> heads;
        std::set<std::pair<std::string_view, std::string_view>> seen;
        for (size_t i = 0; i < queue.size(); ++i) {
          if (seen.insert({queue[i].from, queue[i].to}).second) heads.push_back(i);
        }
        return heads[random.Next() % heads.size()];
      }
    }
    return 0;
  }

  bool CutLocked(const std::string& from, const std::string& to) const {
    if (isolated.count(from) || isolated.count(to)) return true;
    return partitions.count(from < to ? Link{from, to} : Link{to, from}) > 0;
  }

  std::mutex mu;
  FakeRandom random;
  const size_t link_queue_limit;
  std::deque<Message> queue;           // guarded by mu
  std::map<Link, size_t> link_counts;  // guarded by mu; messages queued per link
  // Live endpoints by address; the handler is null until SetHandler.
  std::map<std::string, std::shared_ptr<const Transport::Handler>> endpoints;  // guarded by mu
  std::set<Link> partitions;       // guarded by mu; (smaller, larger) address
  std::set<std::string> isolated;  // guarded by mu
  int drop_permille = 0;           // guarded by mu
  Order order = Order::kFifo;      // guarded by mu
  TransportCounters counters;      // guarded by mu
};

namespace {

class FakeEndpoint final : public Transport {
 public:
  FakeEndpoint(std::shared_ptr<FakeNetwork::State> state, std::string address)
      : state_(std::move(state)), address_(std::move(address)) {}

  ~FakeEndpoint() override {
    std::lock_guard<std::mutex> l(state_->mu);
    state_->endpoints.erase(address_);
  }

  Status Send(const std::string& to, std::string message) override {
    std::lock_guard<std::mutex> l(state_->mu);
    size_t& count = state_->link_counts[{address_, to}];
    if (count >= state_->link_queue_limit) {
      ++state_->counters.rejected;
      return Status::Unavailable("fake send " + address_ + " -> " + to + ": queue full");
    }
    ++count;
    ++state_->counters.sent;
    state_->queue.push_back({address_, to, std::move(message)});
    return Status::Ok();
  }

  void SetHandler(Handler handler) override {
    auto h = handler ? std::make_shared<const Handler>(std::move(handler)) : nullptr;
    std::lock_guard<std::mutex> l(state_->mu);
    state_->endpoints[address_] = std::move(h);
  }

 private:
  const std::shared_ptr<FakeNetwork::State> state_;
  const std::string address_;
};

}  // namespace

FakeNetwork::FakeNetwork(uint64_t seed, size_t link_queue_limit)
    : state_(std::make_shared<State>(seed, link_queue_limit)) {
  CN_CHECK(link_queue_limit >= 1) << "link_queue_limit must be at least 1";
}

FakeNetwork::~FakeNetwork() = default;

Result<std::unique_ptr<Transport>> FakeNetwork::NewEndpoint(const std::string& address) {
  std::lock_guard<std::mutex> l(state_->mu);
  if (!state_->endpoints.emplace(address, nullptr).second) {
    return Status::AlreadyExists("fake network: endpoint " + address + " exists");
  }
  return std::unique_ptr<Transport>(new FakeEndpoint(state_, address));
}

bool FakeNetwork::DeliverOne() {
  std::shared_ptr<const Transport::Handler> handler;
  State::Message m;
  {
    std::lock_guard<std::mutex> l(state_->mu);
    State& s = *state_;
    if (s.queue.empty()) return false;
    size_t index = s.PickLocked();
    m = std::move(s.queue[index]);
    s.queue.erase(s.queue.begin() + static_cast<std::ptrdiff_t>(index));
    auto link = s.link_counts.find({m.from, m.to});
    if (--link->second == 0) s.link_counts.erase(link);

    bool drop = s.CutLocked(m.from, m.to);
    // The loss draw does not depend on which endpoints exist, so the random sequence (and with it
    // the whole run) is the same for a seed however tests create and destroy endpoints.
    if (!drop && s.drop_permille > 0) {
      drop = static_cast<int>(s.random.Next() % 1000) < s.drop_permille;
    }
    if (!drop) {
      auto it = s.endpoints.find(m.to);
      if (it != s.endpoints.end()) handler = it->second;
    }
    if (!handler) {
      ++s.counters.dropped;
      return true;
    }
    ++s.counters.received;
  }
  (*handler)(m.from, std::move(m.body));
  return true;
}

size_t FakeNetwork::DeliverAll(size_t max_messages) {
  size_t n = 0;
  while (n < max_messages && DeliverOne()) ++n;
  return n;
}

void FakeNetwork::Partition(const std::string& a, const std::string& b) {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->partitions.insert(a < b ? State::Link{a, b} : State::Link{b, a});
}

void FakeNetwork::Isolate(const std::string& address) {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->isolated.insert(address);
}

void FakeNetwork::Heal() {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->partitions.clear();
  state_->isolated.clear();
}

void FakeNetwork::SetDropRate(int permille) {
  CN_CHECK(permille >= 0 && permille <= 1000) << "drop rate " << permille << " not in 0..1000";
  std::lock_guard<std::mutex> l(state_->mu);
  state_->drop_permille = permille;
}

void FakeNetwork::SetOrder(Order order) {
  std::lock_guard<std::mutex> l(state_->mu);
  state_->order = order;
}

size_t FakeNetwork::pending() const {
  std::lock_guard<std::mutex> l(state_->mu);
  return state_->queue.size();
}

TransportCounters FakeNetwork::counters() const {
  std::lock_guard<std::mutex> l(state_->mu);
  return state_->counters;
}

}  // namespace constellation
