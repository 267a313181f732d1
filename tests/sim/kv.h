// The simulator's replicated state machine: a string key-value map with put, get and
// compare-and-swap, plus per-client de-duplication (a proposal delivered twice, e.g. by a
// duplicated forward, takes effect once), and its snapshot encoding.
// Thread-safety: values; single-threaded.
#ifndef CONSTELLATION_TESTS_SIM_KV_H_
#define CONSTELLATION_TESTS_SIM_KV_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace constellation::sim {

struct KvOp {
  enum Kind : uint8_t { kPut = 1, kCas = 2 };
  Kind kind = kPut;
  uint32_t client = 0;
  uint64_t op_id = 0;
  std::string key;
  std::string value;   // put: the value; cas: the new value
  std::string expect;  // cas: the value it must find
};

std::string EncodeOp(const KvOp& op);
std::optional<KvOp> DecodeOp(std::string_view in);

class KvState {
 public:
  struct Applied {
    bool duplicate = false;  // an op this client already had applied: no effect
    bool ok = true;          // cas: whether it swapped
  };
  Applied Apply(const KvOp& op);
  std::string Get(const std::string& key) const;  // "" when absent
  // A digest of the whole state (values and de-duplication table).
  uint64_t Hash() const;
  // The snapshot data: the state plus `padding_bytes` of filler derived from `index` (so that
  // snapshots span several chunks and reassembly errors show).
  std::string Encode(uint64_t index, size_t padding_bytes) const;
  // False if `data` is not exactly what Encode(index, padding_bytes) would produce for some state.
  bool Decode(std::string_view data, uint64_t index, size_t padding_bytes);

 private:
  std::map<std::string, std::string> data_;
  std::map<uint32_t, uint64_t> last_op_;
};

}  // namespace constellation::sim

#endif  // CONSTELLATION_TESTS_SIM_KV_H_
