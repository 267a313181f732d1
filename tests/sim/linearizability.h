// A linearizability checker for one register (one key of the KV store) with put, get and
// compare-and-swap: Wing & Gong's search with Lowe's memoization (as in Porcupine/Knossos'
// WGL). Histories of a whole store are checked key by key (each key is an independent register,
// so the store is linearizable iff every key's history is).
// Thread-safety: pure functions.
#ifndef CONSTELLATION_TESTS_SIM_LINEARIZABILITY_H_
#define CONSTELLATION_TESTS_SIM_LINEARIZABILITY_H_

#include <cstdint>
#include <string>
#include <vector>

namespace constellation::sim {

inline constexpr uint64_t kNeverReturned = UINT64_MAX;

struct LinOp {
  enum Kind { kPut, kGet, kCas };
  Kind kind = kPut;
  uint64_t call = 0;              // invocation time (unique across the history)
  uint64_t ret = kNeverReturned;  // response time; kNeverReturned: outcome unknown (it may or
                                  // may not have taken effect, at any time after `call`)
  std::string value;              // put: written; cas: new value
  std::string expect;             // cas: expected
  // Observed output, when the op returned: get's value, cas' success.
  std::string out_value;
  bool out_ok = false;
  int client = 0;  // for messages only
};

struct LinResult {
  bool ok = true;
  bool gave_up = false;  // the search exceeded max_states; no verdict
  std::string explanation;
};

// The register starts as "" (absent). Ops that never returned have no constraint on output.
LinResult CheckRegister(const std::vector<LinOp>& ops, size_t max_states = 2'000'000);

std::string DescribeOp(const LinOp& op);

}  // namespace constellation::sim

#endif  // CONSTELLATION_TESTS_SIM_LINEARIZABILITY_H_
