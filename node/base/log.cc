#include "node/base/log.h"

#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace constellation {
namespace {
std::atomic<int> g_fd{2};
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
const char* kNames[] = {"DEBUG", "INFO", "WARN", "ERROR", "FATAL"};
}  // namespace

void SetLogFd(int fd) { g_fd = fd; }
void SetLogLevel(LogLevel min_level) { g_level = static_cast<int>(min_level); }
bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_level.load(); }

LogLine::LogLine(LogLevel level, const char* file, int line) : level_(level) {
  timeval tv;
  gettimeofday(&tv, nullptr);
  tm t;
  gmtime_r(&tv.tv_sec, &t);
  char ts[96];
  std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", t.tm_year + 1900,
                t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                static_cast<long>(tv.tv_usec / 1000));
  const char* base = std::strrchr(file, '/');
  os_ << ts << ' ' << kNames[static_cast<int>(level)] << ' ' << (base ? base + 1 : file) << ':'
      << line << ' ';
}

LogLine::~LogLine() {
  os_ << '\n';
  std::string s = os_.str();
  ssize_t n = ::write(g_fd.load(), s.data(), s.size());
  (void)n;
  if (level_ == LogLevel::kFatal) std::abort();
}

}  // namespace constellation
