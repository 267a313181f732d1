#include "tests/sim/linearizability.h"

#include <algorithm>
#include <sstream>
#include <unordered_set>

namespace constellation::sim {
namespace {

struct Event {
  int op;
  bool is_call;
  uint64_t time;
  Event* prev = nullptr;
  Event* next = nullptr;
  Event* match = nullptr;
};

struct CacheKey {
  std::vector<uint64_t> bits;
  std::string state;
  bool operator==(const CacheKey&) const = default;
};

struct CacheHash {
  size_t operator()(const CacheKey& k) const {
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t b : k.bits) h = (h ^ b) * 0x100000001b3ull;
    for (unsigned char c : k.state) h = (h ^ c) * 0x100000001b3ull;
    return static_cast<size_t>(h);
  }
};

// Applies `op` to `state`; false if the op's observed output contradicts it.
bool Step(const LinOp& op, const std::string& state, std::string* next) {
  bool returned = op.ret != kNeverReturned;
  switch (op.kind) {
    case LinOp::kPut:
      *next = op.value;
      return true;
    case LinOp::kGet:
      *next = state;
      return !returned || op.out_value == state;
    case LinOp::kCas:
      if (state == op.expect) {
        *next = op.value;
        return !returned || op.out_ok;
      }
      *next = state;
      return !returned || !op.out_ok;
  }
  return false;
}

void Lift(Event* e) {
  e->prev->next = e->next;
  if (e->next) e->next->prev = e->prev;
  Event* m = e->match;
  m->prev->next = m->next;
  if (m->next) m->next->prev = m->prev;
}

void Unlift(Event* e) {
  Event* m = e->match;
  m->prev->next = m;
  if (m->next) m->next->prev = m;
  e->prev->next = e;
  if (e->next) e->next->prev = e;
}

}  // namespace

std::string DescribeOp(const LinOp& op) {
  std::ostringstream os;
  os << "c" << op.client << " ";
  switch (op.kind) {
    case LinOp::kPut:
      os << "put(" << op.value << ")";
      break;
    case LinOp::kGet:
      os << "get()";
      break;
    case LinOp::kCas:
      os << "cas(" << (op.expect.empty() ? "''" : op.expect) << "->" << op.value << ")";
      break;
  }
  if (op.ret == kNeverReturned) {
    os << " -> ? [" << op.call << ", inf)";
  } else {
    if (op.kind == LinOp::kGet) os << " -> '" << op.out_value << "'";
    if (op.kind == LinOp::kCas) os << " -> " << (op.out_ok ? "ok" : "fail");
    if (op.kind == LinOp::kPut) os << " -> ok";
    os << " [" << op.call << ", " << op.ret << "]";
  }
  return os.str();
}

LinResult CheckRegister(const std::vector<LinOp>& ops, size_t max_states) {
  LinResult result;
  const size_t n = ops.size();
  if (n == 0) return result;
  std::vector<Event> events;
  events.reserve(2 * n + 1);
  events.push_back(Event{-1, false, 0});  // head sentinel
  for (size_t i = 0; i < n; ++i) {
    events.push_back(Event{static_cast<int>(i), true, ops[i].call});
    events.push_back(Event{static_cast<int>(i), false, ops[i].ret});
  }
  std::vector<Event*> order;
  for (size_t i = 1; i < events.size(); ++i) order.push_back(&events[i]);
  // Time order; unknown returns last (by op); a call precedes a return at an equal time.
  std::sort(order.begin(), order.end(), [](const Event* a, const Event* b) {
    if (a->time != b->time) return a->time < b->time;
    if (a->is_call != b->is_call) return a->is_call;
    return a->op < b->op;
  });
  for (size_t i = 0; i < n; ++i) events[1 + 2 * i].match = &events[2 + 2 * i];
  Event* head = &events[0];
  Event* prev = head;
  for (Event* e : order) {
    prev->next = e;
    e->prev = prev;
    prev = e;
  }
  prev->next = nullptr;

  std::vector<uint64_t> bits((n + 63) / 64, 0);
  std::string state;
  std::unordered_set<CacheKey, CacheHash> cache;
  struct Frame {
    Event* call;
    std::string state;
  };
  std::vector<Frame> stack;
  size_t deepest = 0;
  int blocked_at = -1;
  Event* entry = head->next;
  while (head->next) {
    if (entry->is_call) {
      const LinOp& op = ops[entry->op];
      std::string next;
      if (Step(op, state, &next)) {
        std::vector<uint64_t> nb = bits;
        nb[entry->op / 64] |= uint64_t{1} << (entry->op % 64);
        CacheKey key{nb, next};
        if (cache.insert(std::move(key)).second) {
          if (cache.size() > max_states) {
            result.gave_up = true;
            result.explanation = "search exceeded " + std::to_string(max_states) + " states";
            return result;
          }
          stack.push_back(Frame{entry, state});
          state = std::move(next);
          bits = std::move(nb);
          Lift(entry);
          entry = head->next;
          continue;
        }
      }
      entry = entry->next;
    } else {
      if (stack.size() >= deepest) {
        deepest = stack.size();
        blocked_at = entry->op;
      }
      if (stack.empty()) break;
      Frame f = std::move(stack.back());
      stack.pop_back();
      state = std::move(f.state);
      bits[f.call->op / 64] &= ~(uint64_t{1} << (f.call->op % 64));
      Unlift(f.call);
      entry = f.call->next;
    }
  }
  if (!head->next) return result;
  result.ok = false;
  std::ostringstream os;
  os << "not linearizable: after linearizing " << deepest << " of " << n
     << " ops, no order explains " << DescribeOp(ops[blocked_at]) << "\nhistory of the key:";
  std::vector<size_t> idx(n);
  for (size_t i = 0; i < n; ++i) idx[i] = i;
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return ops[a].call < ops[b].call; });
  for (size_t i : idx) os << "\n  " << DescribeOp(ops[i]);
  result.explanation = os.str();
  return result;
}

}  // namespace constellation::sim
