// A state-machine snapshot arrives from the leader in chunks and replaces this node's replicated
// state: its decoder must refuse anything malformed (lengths, local keys, key order) without
// crashing or trusting a length. Stored log entries are decoded at every start. Random bytes are
// also tried behind the current version byte.
#include <cstdint>
#include <string>
#include <string_view>

#include "node/base/log.h"
#include "node/state/raft_storage.h"
#include "node/state/state_machine.h"

namespace {

using namespace constellation;

void Check(std::string_view in) {
  std::string rebuilt(1, static_cast<char>(kStateSnapshotVersion));
  std::string prev;
  Status s = DecodeStateSnapshot(in, [&](std::string_view k, std::string_view v) -> Status {
    CN_CHECK(!keys::IsLocal(k)) << "a local key passed";
    CN_CHECK(prev.empty() || std::string(k) > prev) << "keys out of order passed";
    prev = std::string(k);
    AppendSnapshotPair(&rebuilt, k, v);
    return Status::Ok();
  });
  if (s.ok()) CN_CHECK(rebuilt == in) << "snapshot encoding is not canonical";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  Check(in);
  std::string framed(1, static_cast<char>(kStateSnapshotVersion));
  framed.append(in);
  Check(framed);
  Result<raft::Entry> e = KvRaftStorage::DecodeEntry(7, in);
  if (e.ok()) {
    CN_CHECK(KvRaftStorage::EncodeEntry(*e) == in) << "entry encoding is not a round trip";
  }
  return 0;
}
