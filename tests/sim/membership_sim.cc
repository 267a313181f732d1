#include "tests/sim/membership_sim.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <queue>
#include <set>
#include <sstream>
#include <vector>

#include "node/membership/membership.h"

namespace constellation::sim {
namespace {

using membership::Event;
using membership::Member;
using membership::Membership;
using membership::Options;
using membership::Outgoing;
using membership::Ready;
using membership::State;
using membership::StateName;

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x2545f4914f6cdd1dull + 0x9e3779b97f4a7c15ull) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : Next() % n; }
  int64_t Range(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(Below(hi - lo + 1)); }
  bool Chance(double p) { return p > 0 && static_cast<double>(Next() >> 11) * 0x1.0p-53 < p; }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[Below(v.size())];
  }
  template <typename T>
  void Shuffle(std::vector<T>* v) {
    for (size_t i = v->size(); i > 1; --i) std::swap((*v)[i - 1], (*v)[Below(i)]);
  }

 private:
  uint64_t s_;
};

constexpr int64_t kFormBoundMs = 8000;          // every node joined and known alive everywhere
constexpr int64_t kRejoinBoundMs = 5000;        // a restarted or resumed node alive everywhere
constexpr int64_t kHealBoundMs = 12000;         // every live node alive everywhere after a heal
constexpr int64_t kLeaveBoundMs = 3000;         // a node that left is `left` everywhere
constexpr int64_t kUndisturbedMs = 10000;       // quiet this long: declaring a node dead is a bug
constexpr int64_t kFinalQuietMs = 15000;        // the end of a run: no faults
constexpr size_t kSocketBufferMessages = 4096;  // what waits for a paused node

class MembershipSim {
 public:
  explicit MembershipSim(const MembershipSimOptions& o) : o_(o), rng_(o.seed) {}

  MembershipSimResult Run() {
    Setup();
    for (now_ = 0; now_ <= o_.duration_ms && failure_.empty(); ++now_) {
      RunScheduled();
      Deliver();
      Ticks();
      if (!cut_.empty()) last_partition_ = now_;
      for (Node& n : nodes_) {
        if (n.started && (!n.core || n.paused) && !n.gone) n.disturbed_until = now_;
      }
      MeasureDetection();
    }
    if (failure_.empty()) FinalCheck();
    MembershipSimResult r;
    r.ok = failure_.empty();
    r.false_deaths = false_deaths_;
    r.failure = failure_;
    r.summary = Summary();
    r.detection_ms = detection_ms_;
    r.detection_bound_ms = detection_bound_ms_;
    r.loss = loss_;
    r.false_suspicions = false_suspicions_;
    return r;
  }

 private:
  struct InFlight {
    int64_t at = 0;
    uint64_t seq = 0;
    int from = 0;
    int to = 0;
    std::string bytes;
    bool operator>(const InFlight& o) const { return at != o.at ? at > o.at : seq > o.seq; }
  };

  struct Node {
    std::string name;
    std::string addr;
    std::unique_ptr<Membership> core;  // null while down
    bool started = false;
    bool paused = false;
    bool gone = false;  // left and stopped for good
    bool slow = false;
    int64_t tick_period = 5;
    int64_t next_tick = 0;
    int64_t disturbed_until = 0;  // the last time it was down, paused or (re)started
    int64_t left_at = -1;
    int lives = 0;
    std::vector<InFlight> held;                    // arrived while paused
    std::vector<std::pair<int64_t, int>> healths;  // (since when, health score), every change
  };

  // A crashed or paused node that is not yet dead on every live member.
  struct Detection {
    int x = 0;
    int64_t start = 0;
    int predecessor = 0;  // the live member whose successor probes reach x
    size_t members = 0;   // live members, x included, when it went down
  };

  // ---- Setup.

  void Setup() {
    const int n = static_cast<int>(rng_.Pick(std::vector<int64_t>{3, 4, 5, 5, 6, 7}));
    loss_ = rng_.Pick(std::vector<double>{0, 0.01, 0.05, 0.1});
    dup_ = rng_.Pick(std::vector<double>{0, 0.01, 0.05});
    max_delay_ = rng_.Pick(std::vector<int64_t>{2, 5, 10});
    const int slow = rng_.Chance(0.5) ? static_cast<int>(rng_.Below(n)) : -1;
    base_.unsafe_no_refute = o_.broken;
    if (o_.probe_interval_ms > 0) base_.probe_interval_ms = o_.probe_interval_ms;
    if (o_.probe_timeout_ms > 0) base_.probe_timeout_ms = o_.probe_timeout_ms;
    for (int i = 0; i < n; ++i) {
      Node node;
      node.name = "n";  // (not "n" + to_string: GCC 12's -Wrestrict misfires on it at -O2)
      node.name += std::to_string(i + 1);
      node.addr = node.name + ":7946";
      node.slow = i == slow;
      node.tick_period = node.slow ? 40 : 5;
      addr_index_[node.addr] = i;
      name_index_[node.name] = i;
      nodes_.push_back(std::move(node));
    }
    At(0, [this] { Start(0, {}); });
    for (int i = 1; i < n; ++i) {
      At(rng_.Range(1, 1000), [this, i] {
        std::vector<std::string> seeds;
        for (const Node& s : nodes_) {
          if (s.started) seeds.push_back(s.addr);
        }
        rng_.Shuffle(&seeds);
        Start(i, seeds);
      });
    }
    At(kFormBoundMs, [this] {
      for (size_t i = 0; i < nodes_.size(); ++i) CheckEverywhere(static_cast<int>(i), "formed");
    });
    ScheduleEpisodes();
    At(o_.duration_ms - kFinalQuietMs, [this] {
      Trace("final quiet period: heal everything");
      cut_.clear();
      for (size_t i = 0; i < nodes_.size(); ++i) {
        if (nodes_[i].paused) Resume(static_cast<int>(i));
      }
    });
  }

  Options OptionsFor(int i) {
    Options o = base_;
    o.name = nodes_[i].name;
    o.addr = nodes_[i].addr;
    o.seed = o_.seed * 1000003 + static_cast<uint64_t>(i) * 101 + nodes_[i].lives;
    return o;
  }

  void Start(int i, const std::vector<std::string>& seeds) {
    Node& n = nodes_[i];
    auto core = Membership::New(OptionsFor(i), now_);
    if (!core.ok()) return Fail("options: " + core.status().ToString());
    n.core = std::move(core).value();
    n.started = true;
    n.paused = false;
    n.held.clear();
    n.next_tick = now_ + static_cast<int64_t>(rng_.Below(n.tick_period));
    n.disturbed_until = now_;
    ++n.lives;
    NoteHealth(i);
    if (!seeds.empty()) {
      Status s = n.core->Join(seeds, now_);
      if (!s.ok()) return Fail("join: " + s.ToString());
    }
    Trace(n.name + (n.lives > 1 ? " restarts" : " starts") +
          (seeds.empty() ? "" : " and joins through " + seeds[0]));
    Collect(i);
  }

  // ---- Episodes.

  enum Episode { kCrash, kPause, kPartition, kLeave, kStable };

  void ScheduleEpisodes() {
    int64_t t = kFormBoundMs + 1000;
    const int64_t end = o_.duration_ms - kFinalQuietMs;
    for (;;) {
      const Episode e = static_cast<Episode>(rng_.Pick(
          std::vector<int64_t>{kCrash, kCrash, kPause, kPause, kPartition, kLeave, kStable}));
      int64_t len = 0;
      switch (e) {
        case kCrash:
          len = 12000;
          break;
        case kPause:
          len = 9000 + kRejoinBoundMs + 1000;
          break;
        case kPartition:
          len = 8000 + kHealBoundMs + 1000;
          break;
        case kLeave:
          len = 5000;
          break;
        case kStable:
          len = 8000;
          break;
      }
      if (t + len > end) break;
      At(t, [this, e] { StartEpisode(e); });
      t += len;
    }
  }

  std::vector<int> UpNodes() const {
    std::vector<int> up;
    for (size_t i = 0; i < nodes_.size(); ++i) {
      const Node& n = nodes_[i];
      if (n.core && !n.paused && n.left_at < 0) up.push_back(static_cast<int>(i));
    }
    return up;
  }

  void StartEpisode(Episode e) {
    std::vector<int> up = UpNodes();
    if (up.size() < 3) return;
    const int x = up[rng_.Below(up.size())];
    Node& n = nodes_[x];
    switch (e) {
      case kCrash: {
        ++crashes_;
        Trace("crash " + n.name + Healths());
        n.core.reset();
        n.held.clear();
        StartDetection(x);
        if (rng_.Chance(0.6)) At(now_ + 6000, [this, x] { Restart(x); });
        break;
      }
      case kPause: {
        ++pauses_;
        // Past a typical detection (3 s; 5 s above 5% loss). A resume waits for the detection
        // anyway (ResumeDetected).
        const int64_t len = rng_.Range(loss_ <= 0.05 ? 4000 : 6000, 9000);
        Trace("pause " + n.name + " for " + std::to_string(len) + " ms" + Healths());
        n.paused = true;
        StartDetection(x);
        At(now_ + len, [this, x] { ResumeDetected(x); });
        break;
      }
      case kPartition: {
        ++partitions_;
        const int64_t len = rng_.Range(2000, 8000);
        rng_.Shuffle(&up);
        const size_t g = static_cast<size_t>(rng_.Range(1, static_cast<int64_t>(up.size() / 2)));
        std::set<int> side(up.begin(), up.begin() + static_cast<std::ptrdiff_t>(g));
        const int mode = static_cast<int>(rng_.Below(3));  // both ways, side->rest, rest->side
        std::string desc;
        for (int s : side) desc += " " + nodes_[s].name;
        Trace("partition {" + desc + " } from the rest" +
              (mode == 0   ? ""
               : mode == 1 ? " (one way: they cannot send)"
                           : " (one way: they cannot receive)") +
              " for " + std::to_string(len) + " ms");
        for (size_t a = 0; a < nodes_.size(); ++a) {
          for (size_t b = 0; b < nodes_.size(); ++b) {
            const bool ia = side.count(static_cast<int>(a)), ib = side.count(static_cast<int>(b));
            if (ia == ib) continue;
            if (mode == 0 || (mode == 1 && ia) || (mode == 2 && ib)) {
              cut_.insert({static_cast<int>(a), static_cast<int>(b)});
            }
          }
        }
        At(now_ + len, [this] {
          Trace("heal");
          cut_.clear();
          At(now_ + kHealBoundMs, [this] {
            for (int y : UpNodes()) CheckEverywhere(y, "converged after heal");
          });
        });
        break;
      }
      case kLeave: {
        if (up.size() < 4) return;
        ++leaves_;
        Trace(n.name + " leaves");
        n.left_at = now_;
        Status s = n.core->Leave(now_);
        if (!s.ok()) return Fail("leave: " + s.ToString());
        Collect(x);
        At(now_ + 2000, [this, x] {
          Trace(nodes_[x].name + " stops (" + std::to_string(nodes_[x].core->pending_broadcasts()) +
                " updates unsent)");
          nodes_[x].core.reset();
          nodes_[x].gone = true;
        });
        At(now_ + kLeaveBoundMs, [this, x] { CheckEverywhere(x, "leave"); });
        break;
      }
      case kStable:
        Trace("stable period");
        break;
    }
  }

  // The crashed node comes back only once it was detected (or its detection bound failed): a
  // restart before then would end the measurement.
  void Restart(int x) {
    if (Detecting(x)) return At(now_ + 50, [this, x] { Restart(x); });
    std::vector<std::string> seeds;
    for (int s : UpNodes()) seeds.push_back(nodes_[s].addr);
    rng_.Shuffle(&seeds);
    Start(x, seeds);
    At(now_ + kRejoinBoundMs, [this, x] { CheckEverywhere(x, "restarted node rejoined"); });
  }

  // Likewise a paused node resumes once detected; then it must be alive again everywhere, at an
  // incarnation above the one it was declared dead at (which may be below its own: a refutation
  // it sent just before the pause may never have arrived).
  void ResumeDetected(int x) {
    if (!nodes_[x].paused) return;  // the final quiet period resumed it
    if (Detecting(x)) return At(now_ + 50, [this, x] { ResumeDetected(x); });
    const uint64_t inc = dead_incarnation_[x];
    Resume(x);
    At(now_ + kRejoinBoundMs, [this, x, inc] {
      CheckEverywhere(x, "resumed node alive again");
      CheckIncarnationAbove(x, inc, "resumed node alive again");
    });
  }

  void CheckIncarnationAbove(int x, uint64_t inc, const std::string& what) {
    for (int o : UpNodes()) {
      if (o == x || !failure_.empty()) continue;
      std::optional<Member> m = nodes_[o].core->member(nodes_[x].name);
      if (m && m->incarnation <= inc) {
        Fail(what + ": " + nodes_[o].name + " holds " + nodes_[x].name + " at incarnation " +
             std::to_string(m->incarnation) + ", not above " + std::to_string(inc));
      }
    }
  }

  void Resume(int x) {
    Node& n = nodes_[x];
    Trace("resume " + n.name + " (" + std::to_string(n.held.size()) + " messages waiting)");
    n.paused = false;
    for (InFlight& f : n.held) {
      f.at = now_;
      f.seq = ++seq_;
      inflight_.push(std::move(f));
    }
    n.held.clear();
  }

  // What every live member should hold about node x now.
  State Expected(int x) const {
    const Node& n = nodes_[x];
    if (n.left_at >= 0) return State::kLeft;
    return n.core && !n.paused ? State::kAlive : State::kDead;
  }

  // Under loss a live node may be suspect at any instant (and refute a moment later): only
  // dead is wrong for it.
  static bool Matches(State got, State want) {
    return got == want || (want == State::kAlive && got == State::kSuspect);
  }

  // Every live member holds x as Expected(x); a live x holds every live member alive.
  void CheckEverywhere(int x, const std::string& what) {
    if (!failure_.empty()) return;
    const State want = Expected(x);
    for (int o : UpNodes()) {
      if (o == x) continue;
      std::optional<Member> m = nodes_[o].core->member(nodes_[x].name);
      if (!m || !Matches(m->state, want)) {
        return Fail(what + ": " + nodes_[o].name + " holds " + nodes_[x].name + " " +
                    (m ? StateName(m->state) : "unknown") + ", expected " + StateName(want));
      }
      if (want == State::kAlive) {
        std::optional<Member> back = nodes_[x].core->member(nodes_[o].name);
        if (!back || !Matches(back->state, State::kAlive)) {
          return Fail(what + ": " + nodes_[x].name + " holds " + nodes_[o].name + " " +
                      (back ? StateName(back->state) : "unknown") + ", expected alive");
        }
      }
    }
  }

  void FinalCheck() {
    for (size_t x = 0; x < nodes_.size(); ++x) {
      CheckEverywhere(static_cast<int>(x), "final views");
    }
  }

  // ---- Detection: every crash or pause until every live member holds the node dead, checked
  // against its bound and measured for the summary.

  void StartDetection(int x) {
    const std::vector<int> up = UpNodes();  // x is already down
    Detection d;
    d.x = x;
    d.start = now_;
    d.members = up.size() + 1;
    // Its predecessor in name order among the live members: the one whose every other probe goes
    // to x (membership.h).
    d.predecessor = -1;
    for (int o : up) {
      if (nodes_[o].name < nodes_[x].name &&
          (d.predecessor < 0 || nodes_[o].name > nodes_[d.predecessor].name)) {
        d.predecessor = o;
      }
    }
    if (d.predecessor < 0) {
      for (int o : up) {
        if (d.predecessor < 0 || nodes_[o].name > nodes_[d.predecessor].name) d.predecessor = o;
      }
    }
    detections_.push_back(d);
  }

  bool Detecting(int x) const {
    return std::any_of(detections_.begin(), detections_.end(),
                       [x](const Detection& d) { return d.x == x; });
  }

  // What SWIM with Lifeguard guarantees for a crashed node, from the configured intervals and the
  // health score its predecessor actually had (which scales that member's probe interval):
  //   - the predecessor probes x at least every other probe, so within two of its intervals a
  //     probe of x starts, and it fails by the end of a third;
  //   - x is then suspect, and every member that holds the suspicion declares x dead when the
  //     suspicion timeout runs out, at most its max (confirmations only shorten it);
  //   - one more probe interval for the suspicion and the death to reach the last member (each
  //     is gossiped at once to three members, piggybacked on every message, and confirmed by
  //     every member's own probe).
  // Plus two of the predecessor's tick periods (a slow node's timers fire on its ticks). The
  // typical detection is far shorter (confirmations cut the timeout to its min; any member's
  // random probe may notice first): the percentiles are in the run's summary.
  int64_t DetectionBoundMs(const Detection& d) const {
    const Options& o = base_;
    const int64_t interval = o.probe_interval_ms;
    const int h = MaxHealth(d.predecessor, HealthSince(d));
    const int64_t notice = 3 * interval * (h + 1) + 2 * nodes_[d.predecessor].tick_period;
    const double scale = std::max(1.0, std::log10(static_cast<double>(d.members)));
    const auto min_ms = static_cast<int64_t>(o.suspicion_mult * scale * interval);
    const auto max_ms = static_cast<int64_t>(o.suspicion_max_mult * static_cast<double>(min_ms));
    return notice + max_ms + interval;
  }

  void MeasureDetection() {
    for (auto it = detections_.begin(); it != detections_.end() && failure_.empty();) {
      const Detection& d = *it;
      const Node& n = nodes_[d.x];
      if (n.core && !n.paused) {  // back before its detection (only the final quiet period)
        it = detections_.erase(it);
        continue;
      }
      std::string holdout;
      uint64_t dead_inc = 0;
      for (int o : UpNodes()) {
        std::optional<Member> m = nodes_[o].core->member(n.name);
        if (!m || m->state != State::kDead) {
          holdout =
              nodes_[o].name + " holds " + n.name + " " + (m ? StateName(m->state) : "unknown");
          break;
        }
        dead_inc = std::max(dead_inc, m->incarnation);
      }
      if (holdout.empty()) {
        dead_incarnation_[d.x] = dead_inc;
        const int64_t t = now_ - d.start;
        detection_ms_.push_back(t);
        detection_bound_ms_.push_back(DetectionBoundMs(d));
        Trace(n.name + " dead everywhere after " + std::to_string(t) + " ms (bound " +
              std::to_string(DetectionBoundMs(d)) + " ms)");
        it = detections_.erase(it);
        continue;
      }
      if (now_ - d.start > DetectionBoundMs(d)) {
        return Fail(std::string(n.paused ? "pause" : "crash") + " detection: " + holdout +
                    " after " + std::to_string(now_ - d.start) + " ms, expected dead within " +
                    std::to_string(DetectionBoundMs(d)) + " ms (predecessor " +
                    nodes_[d.predecessor].name + ", health up to " +
                    std::to_string(MaxHealth(d.predecessor, HealthSince(d))) + ")");
      }
      ++it;
    }
  }

  // The predecessor's last probe before x went down started at most one of its longest
  // intervals earlier, at the interval of the health it had then: the health that counts is the
  // highest since.
  int64_t HealthSince(const Detection& d) const {
    return d.start - base_.probe_interval_ms * base_.awareness_max_multiplier;
  }

  // Records node i's health score when it changed (called after every input to its core).
  void NoteHealth(int i) {
    Node& n = nodes_[i];
    if (!n.core) return;
    const int h = n.core->health_score();
    if (n.healths.empty() || n.healths.back().second != h) n.healths.emplace_back(now_, h);
  }

  // The highest health score node i had from `since` until now.
  int MaxHealth(int i, int64_t since) const {
    int h = 0;
    for (auto it = nodes_[i].healths.rbegin(); it != nodes_[i].healths.rend(); ++it) {
      h = std::max(h, it->second);
      if (it->first <= since) break;  // the score in effect at `since`
    }
    return h;
  }

  // ---- The world.

  void At(int64_t t, std::function<void()> fn) { schedule_.emplace(t, std::move(fn)); }

  void RunScheduled() {
    while (!schedule_.empty() && schedule_.begin()->first <= now_ && failure_.empty()) {
      auto fn = std::move(schedule_.begin()->second);
      schedule_.erase(schedule_.begin());
      fn();
    }
  }

  void Ticks() {
    for (size_t i = 0; i < nodes_.size(); ++i) {
      Node& n = nodes_[i];
      if (!n.core || n.paused || now_ < n.next_tick) continue;
      n.core->Tick(now_);
      n.next_tick = now_ + n.tick_period;
      NoteHealth(static_cast<int>(i));
      Collect(static_cast<int>(i));
    }
  }

  void Deliver() {
    while (!inflight_.empty() && inflight_.top().at <= now_ && failure_.empty()) {
      InFlight f = inflight_.top();
      inflight_.pop();
      Node& n = nodes_[f.to];
      if (cut_.count({f.from, f.to}) || !n.core) continue;
      if (n.paused) {
        if (n.held.size() < kSocketBufferMessages) n.held.push_back(std::move(f));
        continue;
      }
      Result<membership::Message> m = membership::DecodeMessage(f.bytes);
      if (!m.ok()) return Fail("a message does not decode: " + m.status().ToString());
      ++delivered_;
      Status s = n.core->Step(*m, now_);
      if (!s.ok()) return Fail(n.name + " refused " + DescribeMessage(*m) + ": " + s.ToString());
      NoteHealth(f.to);
      Collect(f.to);
    }
  }

  void Collect(int i) {
    Node& n = nodes_[i];
    if (!n.core || !n.core->HasReady()) return;
    Ready rd = n.core->GetReady();
    for (const Event& e : rd.events) OnEvent(i, e);
    for (Outgoing& out : rd.messages) Send(i, out);
  }

  void Send(int from, const Outgoing& out) {
    ++sent_;
    auto it = addr_index_.find(out.addr);
    if (it == addr_index_.end()) return Fail("message to unknown address " + out.addr);
    const int to = it->second;
    if (o_.verbose && std::getenv("SIM_TRACE_MESSAGES")) {
      std::printf("%6lld     %s\n", static_cast<long long>(now_),
                  membership::DescribeMessage(out.message).c_str());
    }
    const std::string bytes = membership::EncodeMessage(out.message);
    const int copies = rng_.Chance(dup_) ? 2 : 1;
    for (int c = 0; c < copies; ++c) {
      if (rng_.Chance(loss_)) continue;
      int64_t delay = rng_.Range(1, max_delay_);
      if (nodes_[from].slow || nodes_[to].slow) delay += rng_.Range(20, 150);
      inflight_.push(InFlight{now_ + delay, ++seq_, from, to, bytes});
    }
  }

  bool Undisturbed(int i) const {
    const Node& n = nodes_[i];
    return n.core && !n.paused && n.left_at < 0 && now_ - n.disturbed_until > kUndisturbedMs;
  }

  void OnEvent(int observer, const Event& e) {
    if (o_.verbose) {
      std::printf("%6lld %s: %s\n", static_cast<long long>(now_), nodes_[observer].name.c_str(),
                  membership::DescribeEvent(e).c_str());
    }
    auto it = name_index_.find(e.node);
    if (it == name_index_.end()) return Fail("event about an unknown node " + e.node);
    const int x = it->second;
    if (x == observer) return;
    const bool healthy =
        Undisturbed(x) && Undisturbed(observer) && now_ - last_partition_ > kUndisturbedMs;
    if (e.state == State::kSuspect && healthy) ++false_suspicions_;
    if (e.state == State::kDead) {
      if (nodes_[x].left_at >= 0) {
        return Fail(nodes_[observer].name + " declared " + e.node + " dead after it left");
      }
      if (healthy && loss_ == 0) {
        return Fail("false positive: " + nodes_[observer].name + " declared " + e.node +
                    " dead although both have been up, running and connected for " +
                    std::to_string(kUndisturbedMs) + " ms, on a network without loss");
      }
      if (healthy) {
        // Under loss SWIM's accuracy is probabilistic (a refutation can be lost until the
        // suspicion runs out); what it guarantees is that the node hears of its death (the dead
        // news is gossiped to it too) and refutes it: alive everywhere again, at a higher
        // incarnation, within the rejoin bound.
        ++false_deaths_;
        Trace("false death (loss " + std::to_string(loss_) + "): " + nodes_[observer].name +
              " declared " + e.node + " dead; it must refute within " +
              std::to_string(kRejoinBoundMs) + " ms");
        const uint64_t inc = e.incarnation;
        At(now_ + kRejoinBoundMs, [this, x, inc] {
          if (Expected(x) != State::kAlive || !cut_.empty()) return;  // a fault came since
          CheckEverywhere(x, "falsely declared dead node refuted");
          CheckIncarnationAbove(x, inc, "falsely declared dead node refuted");
        });
      }
    }
  }

  std::string Healths() const {
    std::string s = " (health";
    for (const Node& n : nodes_) {
      if (n.core) s += " " + n.name + "=" + std::to_string(n.core->health_score());
    }
    return s + ")";
  }

  void Fail(const std::string& why) {
    if (failure_.empty()) failure_ = "at " + std::to_string(now_) + " ms: " + why;
  }

  void Trace(const std::string& what) {
    if (o_.verbose) std::printf("%6lld --- %s\n", static_cast<long long>(now_), what.c_str());
  }

  std::string Summary() const {
    std::ostringstream os;
    os << nodes_.size() << " nodes, loss " << loss_ * 100 << "%, dup " << dup_ * 100
       << "%, delay 1-" << max_delay_ << " ms";
    for (const Node& n : nodes_) {
      if (n.slow) os << ", " << n.name << " slow (+20-150 ms, ticks every 40 ms)";
    }
    os << "; " << crashes_ << " crashes, " << pauses_ << " pauses, " << partitions_
       << " partitions, " << leaves_ << " leaves; detected in";
    for (int64_t d : detection_ms_) os << " " << d;
    os << " ms; " << false_suspicions_ << " healthy nodes suspected, " << false_deaths_
       << " declared dead (refuted); " << sent_ << " messages";
    return os.str();
  }

  const MembershipSimOptions o_;
  Rng rng_;
  Options base_;
  int64_t now_ = 0;
  std::vector<Node> nodes_;
  std::map<std::string, int> addr_index_;
  std::map<std::string, int> name_index_;
  std::priority_queue<InFlight, std::vector<InFlight>, std::greater<InFlight>> inflight_;
  std::set<std::pair<int, int>> cut_;  // blocked (from, to)
  std::multimap<int64_t, std::function<void()>> schedule_;
  uint64_t seq_ = 0;
  double loss_ = 0;
  double dup_ = 0;
  int64_t max_delay_ = 1;
  int64_t last_partition_ = -kUndisturbedMs - 1;
  std::vector<Detection> detections_;
  std::map<int, uint64_t> dead_incarnation_;  // the incarnation each detected node was dead at
  uint64_t false_deaths_ = 0;
  std::vector<int64_t> detection_ms_;
  std::vector<int64_t> detection_bound_ms_;
  uint64_t false_suspicions_ = 0;
  uint64_t sent_ = 0;
  uint64_t delivered_ = 0;
  int crashes_ = 0, pauses_ = 0, partitions_ = 0, leaves_ = 0;
  std::string failure_;
};

}  // namespace

MembershipSimResult RunMembershipSimulation(const MembershipSimOptions& options) {
  return MembershipSim(options).Run();
}

}  // namespace constellation::sim
