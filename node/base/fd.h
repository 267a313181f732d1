// File-descriptor helpers shared by the modules that do their own file I/O (the chunk store, the
// key-value store's log Env). Thread-safety: an Fd is owned by one thread; the functions are
// plain system-call loops.
#ifndef CONSTELLATION_NODE_BASE_FD_H_
#define CONSTELLATION_NODE_BASE_FD_H_

#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>

namespace constellation {

// Closes a file descriptor at scope exit.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = other.fd_;
      other.fd_ = -1;
    }
    return *this;
  }
  int get() const { return fd_; }
  // Closes now, reporting close(2)'s error (a deferred write error on some file systems).
  int Close() {
    int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// A process-wide bound on descriptors kept open for reuse (handles cached across calls), so such
// caches cannot use up the process's descriptor limit between them. Thread-safe.
class FdBudget {
 public:
  explicit constexpr FdBudget(int max) : max_(max) {}
  FdBudget(const FdBudget&) = delete;
  FdBudget& operator=(const FdBudget&) = delete;
  // Takes one slot; false (nothing taken) when all are in use.
  bool Take() {
    if (used_.fetch_add(1, std::memory_order_relaxed) < max_) return true;
    used_.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  // Returns `n` slots taken before.
  void Give(int n = 1) { used_.fetch_sub(n, std::memory_order_relaxed); }
  int used() const { return used_.load(std::memory_order_relaxed); }

 private:
  const int max_;
  std::atomic<int> used_{0};
};

// Reads exactly `size` bytes at `offset`; false (errno set, or 0 for a short file) otherwise.
inline bool PreadAll(int fd, char* buf, size_t size, off_t offset) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, buf + done, size - done, offset + static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) {
      errno = 0;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

// Writes all `size` bytes at `offset`; false (errno set) otherwise.
inline bool PwriteAll(int fd, const char* buf, size_t size, off_t offset) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pwrite(fd, buf + done, size - done, offset + static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace constellation

#endif  // CONSTELLATION_NODE_BASE_FD_H_
