// The command decoder and the record parsers see bytes from disk and (later) from the network:
// they must never crash, and whatever decodes must re-encode to the same bytes. Spec and field
// parsers see user input: they must never crash and never half-apply.
#include <cstdint>
#include <string>

#include "node/base/log.h"
#include "node/state/command.h"
#include "node/state/records.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace constellation;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  Result<Command> c = DecodeCommand(in);
  if (c.ok()) CN_CHECK(EncodeCommand(*c) == in) << "decode/encode is not a round trip";
  (void)DecodeInstance(in);
  (void)DecodeNode(in);
  InstanceRecord r;
  InstanceRecord before = r;
  if (!ApplyInstanceSpec(&r, in).ok()) CN_CHECK(r == before) << "a refused spec changed the record";
  if (size > 0) {
    const std::string& field = InstanceConfigFields()[data[0] % InstanceConfigFields().size()];
    InstanceRecord f;
    if (!SetInstanceField(&f, field, in.substr(1)).ok()) CN_CHECK(f == InstanceRecord{});
  }
  std::vector<std::string> labels;
  (void)ParseLabels(in, &labels);
  return 0;
}
