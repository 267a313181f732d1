// A deterministic simulator for Raft clusters (DESIGN.md §7): 3-7 nodes in one process on
// simulated time (1 ms steps; nodes tick every ~10 ms), a seeded RNG for everything, and a
// network that loses, duplicates, delays and reorders messages and can be partitioned (also in
// one direction only). Nodes crash and restart from their durable storage (a crash may hit in the
// middle of a Ready: before persisting, after persisting, after sending), disks refuse writes now
// and then (PersistFailed), membership changes (learners added, promoted, voters removed), and
// logs are compacted into snapshots streamed in small chunks.
//
// Clients run put / get (ReadIndex) / cas against a replicated KV store; the history is checked
// for linearizability at the end. Raft's safety properties are checked continuously: election
// safety, log matching, leader completeness, state machine safety (and equal state digests at
// equal applied indexes). The last stretch of every run heals everything and requires progress.
//
// Every run is a pure function of its seed and options, so a failure replays exactly.
// Thread-safety: RunSimulation is reentrant (no globals).
#ifndef CONSTELLATION_TESTS_SIM_SIM_H_
#define CONSTELLATION_TESTS_SIM_SIM_H_

#include <cstdint>
#include <string>

namespace constellation::sim {

struct SimOptions {
  uint64_t seed = 1;
  int64_t duration_ms = 3000;  // simulated; the last quiet_ms have no faults
  int64_t quiet_ms = 1000;
  bool broken = false;   // raft's unsafe_commit_previous_terms (to prove the checkers can fail)
  bool verbose = false;  // trace events to stdout
};

struct SimResult {
  bool ok = true;
  std::string failure;  // which check failed and how
  std::string summary;  // one line: cluster shape, faults, op counts
  bool lin_gave_up = false;
};

SimResult RunSimulation(const SimOptions& options);

}  // namespace constellation::sim

#endif  // CONSTELLATION_TESTS_SIM_SIM_H_
