// Names the calling thread, so `top -H`, `ps -L`, perf and gdb tell the daemon's threads apart;
// and puts it back at the process's priority.
// Thread-safety: affects only the calling thread.
#ifndef CONSTELLATION_NODE_BASE_THREAD_NAME_H_
#define CONSTELLATION_NODE_BASE_THREAD_NAME_H_

#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>

namespace constellation {

// `name`: at most 15 bytes (the kernel's limit; longer names are cut).
inline void SetThreadName(const char* name) {
  char cut[16] = {};
  for (int i = 0; i < 15 && name[i] != '\0'; ++i) cut[i] = name[i];
  pthread_setname_np(pthread_self(), cut);
}

// Gives the calling thread the nice value of the process's main thread. A thread inherits its
// creator's: background work started from the raised agent thread (a snapshot's copy, LevelDB's
// compactions) would otherwise compete with the commits it is meant to stay behind. Lowering a
// priority needs no privilege.
inline void TakeProcessNice() {
  errno = 0;
  int nice = getpriority(PRIO_PROCESS, static_cast<id_t>(getpid()));
  if (nice == -1 && errno != 0) return;
  if (getpriority(PRIO_PROCESS, static_cast<id_t>(gettid())) != nice) {
    setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), nice);
  }
}

}  // namespace constellation

#endif  // CONSTELLATION_NODE_BASE_THREAD_NAME_H_
