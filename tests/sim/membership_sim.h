// A deterministic simulator for the membership core (node/membership), separate from the Raft
// simulator (sim.h): membership is a different protocol with different properties, and a run
// needs tens of seconds of simulated time rather than three.
//
// 3-7 nodes run in one process on simulated time (1 ms steps; each node ticks every 5 ms, a slow
// node every 40 ms). The network loses (0-10% per seed), duplicates, delays (1-10 ms, a slow node's
// messages up to 150 ms more) and so reorders messages. After the cluster forms, episodes follow
// one another, each with its own checks:
//
//   crash      a node stops; every live member must hold it dead within the detection bound,
//              and after an optional restart (new core, incarnation 0, joining through a random
//              member; not before it was detected) alive again within 5 s
//   pause      a node stops ticking and reading (SIGSTOP) for 4-9 s, its messages waiting: dead
//              everywhere within the detection bound (it resumes only once detected), alive again
//              (a higher incarnation) within 5 s of resuming
//   partition  two sides cut apart, both ways or one way only, for 2-8 s: after the heal every
//              live member holds every live member alive within 12 s
//   leave      a node leaves gracefully and stops 2 s later: `left` everywhere within 3 s, never
//              dead
//   stable     nothing but the network's loss and the slow node
//
// The detection bound is what SWIM with Lifeguard guarantees, computed for each crash from the
// configured intervals and the health score the down node's predecessor actually had (its every
// other probe goes to the down node, at an interval scaled by that score): three of its probe
// intervals to notice, the maximum suspicion timeout, one probe interval to spread the death.
// Typical detections are far shorter; the run's summary gives their percentiles.
//
// Checked continuously: no member ever declares a node dead while both have been undisturbed
// (up, not paused, no partition anywhere) for 10 s. On a network without loss that is a failure
// (local health awareness keeps a slow node from being accused); under loss SWIM's accuracy is
// probabilistic, and what it guarantees is the refutation: the node falsely declared dead must
// be alive again everywhere, at a higher incarnation, within 5 s. Nobody may hold a left node
// dead. At the end every fault heals and every member's view must be exact. A run is a pure
// function of its seed and options, so a failure replays exactly.
// Thread-safety: RunMembershipSimulation is reentrant (no globals).
#ifndef CONSTELLATION_TESTS_SIM_MEMBERSHIP_SIM_H_
#define CONSTELLATION_TESTS_SIM_MEMBERSHIP_SIM_H_

#include <cstdint>
#include <string>
#include <vector>

namespace constellation::sim {

struct MembershipSimOptions {
  uint64_t seed = 1;
  int64_t duration_ms = 60000;    // simulated; the last 15 s have no faults
  bool broken = false;            // members never refute (to prove the checkers can fail)
  bool verbose = false;           // trace faults and membership events to stdout
  int64_t probe_interval_ms = 0;  // 0: the library's defaults (to explore other settings)
  int64_t probe_timeout_ms = 0;
};

struct MembershipSimResult {
  bool ok = true;
  std::string failure;                      // which check failed and how
  std::string summary;                      // one line: cluster shape, faults, detection times
  std::vector<int64_t> detection_ms;        // each crash or pause until every member held it dead
  std::vector<int64_t> detection_bound_ms;  // the bound each of those was checked against
  double loss = 0;                          // the seed's message loss
  uint64_t false_suspicions = 0;            // healthy nodes suspected (then refuted)
  uint64_t false_deaths = 0;                // healthy nodes declared dead under loss (then refuted)
};

MembershipSimResult RunMembershipSimulation(const MembershipSimOptions& options);

}  // namespace constellation::sim

#endif  // CONSTELLATION_TESTS_SIM_MEMBERSHIP_SIM_H_
