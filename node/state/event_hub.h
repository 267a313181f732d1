// EventHub: the in-memory stream behind constellation/events. The state machine publishes one line
// per applied change; each reader holds a cursor and reads lines published after it subscribed.
//
// Bounded: the hub keeps the newest `capacity` lines. A reader that falls further behind loses the
// oldest lines and is told how many, once, with an `events_dropped` line, so a slow reader never
// holds memory or blocks the publisher.
// Thread-safety: all methods are safe from any thread. Listeners are called after Publish returns
// its lock, on the publishing thread; they must not block.
#ifndef CONSTELLATION_NODE_STATE_EVENT_HUB_H_
#define CONSTELLATION_NODE_STATE_EVENT_HUB_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

namespace constellation {

class EventHub {
 public:
  explicit EventHub(size_t capacity = 4096);

  // Appends lines (each without its newline) and then calls the listener.
  void Publish(const std::vector<std::string>& lines, int64_t now_ms);
  // The cursor of a reader that wants only lines published from now on.
  uint64_t Subscribe();
  // Newline-terminated lines after `*cursor`, at most `max_bytes` (but at least one line), and
  // advances the cursor. Empty when nothing new.
  std::string Read(uint64_t* cursor, size_t max_bytes);
  bool HasNew(uint64_t cursor);
  void SetListener(std::function<void()> listener);

 private:
  const size_t capacity_;
  std::mutex mu_;
  std::deque<std::string> lines_;  // lines_[i] has sequence number first_seq_ + i
  uint64_t first_seq_ = 1;
  int64_t last_time_ms_ = 0;
  std::function<void()> listener_;
};

}  // namespace constellation

#endif  // CONSTELLATION_NODE_STATE_EVENT_HUB_H_
