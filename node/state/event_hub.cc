#include "node/state/event_hub.h"

namespace constellation {

EventHub::EventHub(size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

void EventHub::Publish(const std::vector<std::string>& lines, int64_t now_ms) {
  if (lines.empty()) return;
  std::function<void()> listener;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const std::string& line : lines) {
      lines_.push_back(line);
      if (lines_.size() > capacity_) {
        lines_.pop_front();
        ++first_seq_;
      }
    }
    last_time_ms_ = now_ms;
    listener = listener_;
  }
  if (listener) listener();
}

uint64_t EventHub::Subscribe() {
  std::lock_guard<std::mutex> l(mu_);
  return first_seq_ + lines_.size();  // the next sequence number to be published
}

bool EventHub::HasNew(uint64_t cursor) {
  std::lock_guard<std::mutex> l(mu_);
  return cursor < first_seq_ + lines_.size();
}

std::string EventHub::Read(uint64_t* cursor, size_t max_bytes) {
  std::lock_guard<std::mutex> l(mu_);
  std::string out;
  if (*cursor < first_seq_) {
    out = std::to_string(last_time_ms_) +
          " events_dropped - count=" + std::to_string(first_seq_ - *cursor) + "\n";
    *cursor = first_seq_;
  }
  uint64_t end = first_seq_ + lines_.size();
  while (*cursor < end) {
    const std::string& line = lines_[*cursor - first_seq_];
    if (!out.empty() && out.size() + line.size() + 1 > max_bytes) break;
    out += line;
    out += '\n';
    ++*cursor;
  }
  return out;
}

void EventHub::SetListener(std::function<void()> listener) {
  std::lock_guard<std::mutex> l(mu_);
  listener_ = std::move(listener);
}

}  // namespace constellation
