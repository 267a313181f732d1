// Names the calling thread, so `top -H`, `ps -L`, perf and gdb tell the daemon's threads apart.
// Thread-safety: affects only the calling thread.
#ifndef CONSTELLATION_NODE_BASE_THREAD_NAME_H_
#define CONSTELLATION_NODE_BASE_THREAD_NAME_H_

#include <pthread.h>

namespace constellation {

// `name`: at most 15 bytes (the kernel's limit; longer names are cut).
inline void SetThreadName(const char* name) {
  char cut[16] = {};
  for (int i = 0; i < 15 && name[i] != '\0'; ++i) cut[i] = name[i];
  pthread_setname_np(pthread_self(), cut);
}

}  // namespace constellation

#endif  // CONSTELLATION_NODE_BASE_THREAD_NAME_H_
