#include "node/runtime/sysfile.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>

namespace constellation::runtime {

Result<std::string> ReadSmallFile(const std::string& path, size_t limit) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  std::string out;
  char buf[4096];
  while (true) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      return Status::FromErrno(err, "read " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > limit) {
      close(fd);
      return Status::TooLarge(path + " is larger than " + std::to_string(limit) + " bytes");
    }
  }
  close(fd);
  return out;
}

Status WriteSysFile(const std::string& path, std::string_view value) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  ssize_t n;
  do {
    n = write(fd, value.data(), value.size());
  } while (n < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (n < 0) return Status::FromErrno(err, "write '" + std::string(value) + "' to " + path);
  if (static_cast<size_t>(n) != value.size()) return Status::IoError("short write to " + path);
  return Status::Ok();
}

Status WriteFileAtomic(const std::string& path, std::string_view content) {
  std::string tmp = path + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "create " + tmp);
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = write(fd, content.data() + off, content.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      close(fd);
      unlink(tmp.c_str());
      return Status::FromErrno(err, "write " + tmp);
    }
    off += static_cast<size_t>(n);
  }
  close(fd);
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return Status::FromErrno(err, "rename " + tmp);
  }
  return Status::Ok();
}

Status WriteFileInPlace(const std::string& path, std::string_view content) {
  constexpr size_t kPage = 4096;
  constexpr size_t kGrain = 256;
  int fd = content.size() <= kPage ? open(path.c_str(), O_WRONLY | O_CLOEXEC) : -1;
  struct stat st;
  if (fd >= 0 && fstat(fd, &st) == 0 && static_cast<size_t>(st.st_size) <= kPage &&
      static_cast<size_t>(st.st_size) >= content.size()) {
    std::string padded(content);
    padded.resize(static_cast<size_t>(st.st_size), '\n');
    ssize_t n;
    do {
      n = pwrite(fd, padded.data(), padded.size(), 0);
    } while (n < 0 && errno == EINTR);
    int err = errno;
    close(fd);
    if (n < 0) return Status::FromErrno(err, "write " + path);
    if (static_cast<size_t>(n) != padded.size()) return Status::IoError("short write to " + path);
    return Status::Ok();
  }
  if (fd >= 0) close(fd);
  std::string padded(content);
  padded.resize((content.size() + kGrain) / kGrain * kGrain, '\n');
  return WriteFileAtomic(path, padded);
}

Status MakeDirs(const std::string& path, unsigned mode) {
  if (path.empty()) return Status::InvalidArgument("empty path");
  // The common cases first: it exists, or only its last component is missing.
  if (mkdir(path.c_str(), mode) != 0) {
    if (errno == ENOENT) {
      size_t slash = path.find_last_of('/');
      if (slash != std::string::npos && slash > 0) {
        CN_RETURN_IF_ERROR(MakeDirs(path.substr(0, slash), mode));
      }
      if (mkdir(path.c_str(), mode) != 0 && errno != EEXIST)
        return Status::FromErrno(errno, "mkdir " + path);
    } else if (errno != EEXIST) {
      return Status::FromErrno(errno, "mkdir " + path);
    }
  }
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
  if (!S_ISDIR(st.st_mode)) return Status(Code::kNotDirectory, path + " is not a directory");
  return Status::Ok();
}

bool PathExists(const std::string& path) {
  struct stat st;
  return lstat(path.c_str(), &st) == 0;
}

Result<uint64_t> TrimLogHead(const std::string& path, uint64_t max_bytes) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return uint64_t{0};
    return Status::FromErrno(errno, "stat " + path);
  }
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size <= max_bytes) return uint64_t{0};
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  uint64_t block = st.st_blksize > 0 ? static_cast<uint64_t>(st.st_blksize) : 4096;
  uint64_t drop = (size - max_bytes / 2) / block * block;
  uint64_t dropped = 0;
  if (drop > 0 && fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, static_cast<off_t>(drop)) == 0) {
    dropped = drop;
  } else if (ftruncate(fd, 0) == 0) {
    dropped = size;
  } else {
    int err = errno;
    close(fd);
    return Status::FromErrno(err, "truncate " + path);
  }
  close(fd);
  return dropped;
}

Result<uint64_t> ParseU64(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ' || text.back() == '\t'))
    text.remove_suffix(1);
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || p != text.data() + text.size())
    return Status::InvalidArgument("not a number: '" + std::string(text) + "'");
  return v;
}

Result<uint64_t> FlatKey(std::string_view text, std::string_view key) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    if (line.size() > key.size() && line.substr(0, key.size()) == key &&
        (line[key.size()] == ' ' || line[key.size()] == '=')) {
      return ParseU64(line.substr(key.size() + 1));
    }
    pos = end + 1;
  }
  return Status::NotFound("no key " + std::string(key));
}

}  // namespace constellation::runtime
