// Parsing of `ctl` files (Plan 9 style): a line is a verb and its arguments separated by blanks.
// Each ctl file has a static table of verbs with their argument counts; parsing is one path for
// all of them: split → look up the verb → check the count. What a verb does is the caller's switch.
// Thread-safety: pure functions.
#ifndef CONSTELLATION_FSD_CTL_PARSE_H_
#define CONSTELLATION_FSD_CTL_PARSE_H_

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "node/base/status.h"

namespace constellation {

struct VerbSpec {
  const char* word;
  int min_args;
  int max_args;
  const char* usage;  // "kill [SIGNAL]"
};

struct ParsedCtl {
  size_t verb = 0;  // index into the table
  std::vector<std::string> args;
};

inline constexpr size_t kMaxCtlLineBytes = 4096;
inline constexpr size_t kMaxCtlArgs = 16;

// `line` without its trailing newline. InvalidArgument names the verbs the file accepts.
Result<ParsedCtl> ParseCtl(std::string_view line, std::span<const VerbSpec> verbs);

// A signal given as a name (TERM, SIGTERM) or a number (1..64).
Result<int> ParseSignal(std::string_view text);

}  // namespace constellation

#endif  // CONSTELLATION_FSD_CTL_PARSE_H_
