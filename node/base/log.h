// The daemon's log: one line per message, "2026-11-22T15:00:00.123Z LEVEL file:line message".
// Thread-safety: safe from any thread; each line is written with one write(2).
#ifndef CONSTELLATION_NODE_BASE_LOG_H_
#define CONSTELLATION_NODE_BASE_LOG_H_

#include <sstream>
#include <string>

namespace constellation {

enum class LogLevel { kDebug = 0, kInfo, kWarning, kError, kFatal };

// Sends log lines to `fd` (default 2) and drops those below `min_level`.
void SetLogFd(int fd);
void SetLogLevel(LogLevel min_level);
bool LogEnabled(LogLevel level);

class LogLine {
 public:
  LogLine(LogLevel level, const char* file, int line);
  ~LogLine();  // writes the line; aborts for kFatal
  std::ostream& stream() { return os_; }

 private:
  LogLevel level_;
  std::ostringstream os_;
};

struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace constellation

// `LogVoidify() & stream` lets the macros be expressions (glog's trick), so they are safe in an
// unbraced if/else.
#define CN_LOG(level)                                                                         \
  !::constellation::LogEnabled(::constellation::LogLevel::k##level)                           \
      ? (void)0                                                                               \
      : ::constellation::LogVoidify() &                                                       \
            ::constellation::LogLine(::constellation::LogLevel::k##level, __FILE__, __LINE__) \
                .stream()

// Invariant check, always on (TigerBeetle style): a violated invariant is a bug, so stop loudly.
#define CN_CHECK(cond)                                                                         \
  (cond) ? (void)0                                                                             \
         : ::constellation::LogVoidify() &                                                     \
               ::constellation::LogLine(::constellation::LogLevel::kFatal, __FILE__, __LINE__) \
                       .stream()                                                               \
                   << "check failed: " #cond " "

#endif  // CONSTELLATION_NODE_BASE_LOG_H_
