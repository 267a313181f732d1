// ctl lines come straight from users' writes: parsing must never crash, and a parse that succeeds
// names a verb from the table with an argument count inside its bounds.
#include <cstdint>
#include <string>

#include "fsd/ctl_parse.h"
#include "node/base/log.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace constellation;
  static constexpr VerbSpec kVerbs[] = {{"start", 0, 0, "start"},
                                        {"stop", 0, 0, "stop"},
                                        {"kill", 0, 1, "kill [SIGNAL]"},
                                        {"log-level", 1, 1, "log-level L"}};
  std::string_view in(reinterpret_cast<const char*>(data), size);
  Result<ParsedCtl> p = ParseCtl(in, kVerbs);
  if (p.ok()) {
    CN_CHECK(p->verb < std::size(kVerbs));
    int argc = static_cast<int>(p->args.size());
    CN_CHECK(argc >= kVerbs[p->verb].min_args && argc <= kVerbs[p->verb].max_args);
  }
  (void)ParseSignal(in);
  return 0;
}
