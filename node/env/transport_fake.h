// An in-memory network of Transport endpoints for tests and simulation.
//
// Nothing moves on its own: Send only queues, and messages reach handlers when the test calls
// DeliverOne() or DeliverAll(), on the calling thread. Which message goes next is deterministic
// for a given seed and sequence of calls. Faults (partitions, isolation, random loss) are judged
// when a message is delivered, not when it is sent, so a partition also catches messages already
// in flight, and healing in time lets them through.
//
// Like the ZeroMQ transport, the network keeps messages between one sender and one receiver in
// order (unless Order::kShuffleAll asks otherwise), bounds each such queue (Send returns
// Unavailable when full) and loses messages to addresses with no endpoint.
//
// Thread-safety: every method is safe from any thread (one mutex). Handlers run without the lock,
// so they may Send, deliver further messages, or reconfigure faults. The network's state is
// shared with its endpoints, so the two may be destroyed in either order. Destroying an endpoint
// while another thread is delivering to it is the caller's race.
#ifndef CONSTELLATION_NODE_ENV_TRANSPORT_FAKE_H_
#define CONSTELLATION_NODE_ENV_TRANSPORT_FAKE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "node/base/status.h"
#include "node/env/env.h"
#include "node/env/transport.h"

namespace constellation {

class FakeNetwork {
 public:
  enum class Order {
    kFifo,          // global send order
    kShuffleLinks,  // a random sender->receiver link goes next; each link stays in order (TCP-like)
    kShuffleAll,    // any queued message may go next
  };

  // `seed` drives drops and shuffling. `link_queue_limit` bounds the messages queued from one
  // address to another (at least 1).
  explicit FakeNetwork(uint64_t seed = 1, size_t link_queue_limit = 1024);
  ~FakeNetwork();
  FakeNetwork(const FakeNetwork&) = delete;
  FakeNetwork& operator=(const FakeNetwork&) = delete;

  // A Transport whose Send comes `from` address. AlreadyExists if a live endpoint has it. When
  // the endpoint is destroyed the address is free again; messages still queued to it then reach
  // the next endpoint with that address (a restarted node), if one exists by delivery time.
  Result<std::unique_ptr<Transport>> NewEndpoint(const std::string& address);

  // Takes the next queued message and delivers it, or drops it if a fault or a missing endpoint
  // or handler says so. False when nothing was queued.
  bool DeliverOne();
  // DeliverOne until the queue is empty, including messages handlers send meanwhile, but at most
  // `max_messages` (so a ping-pong that never ends still returns). Returns how many were taken.
  size_t DeliverAll(size_t max_messages = 1'000'000);

  // Messages between a and b (both directions) are dropped until Heal().
  void Partition(const std::string& a, const std::string& b);
  // Messages from or to `address` are dropped until Heal().
  void Isolate(const std::string& address);
  // Removes every partition and isolation (not the drop rate).
  void Heal();
  // Each message otherwise deliverable is dropped with probability permille/1000 (0..1000).
  void SetDropRate(int permille);
  void SetOrder(Order order);

  size_t pending() const;
  // sent: accepted by Send; received: given to a handler; dropped: lost to a fault, a missing
  // endpoint or handler; rejected: Sends refused because the link queue was full.
  TransportCounters counters() const;

  struct State;  // shared with the endpoints; defined in transport_fake.cc

 private:
  std::shared_ptr<State> state_;
};

}  // namespace constellation

#endif  // CONSTELLATION_NODE_ENV_TRANSPORT_FAKE_H_
