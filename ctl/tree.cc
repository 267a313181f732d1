// Tree implementations: the real one (POSIX calls on the mount) and the in-memory fake.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "ctl/cli.h"

namespace constellation::ctl {
namespace {

class FdStream : public Stream {
 public:
  explicit FdStream(int fd) : fd_(fd) {}
  ~FdStream() override { ::close(fd_); }
  FdStream(const FdStream&) = delete;
  FdStream& operator=(const FdStream&) = delete;

  long Read(char* buf, size_t n) override {
    ssize_t r = ::read(fd_, buf, n);
    return r < 0 ? -errno : static_cast<long>(r);
  }

 private:
  int fd_;
};

int OpenRetry(const std::string& path, int flags) {
  int fd;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

class PosixTree : public Tree {
 public:
  int Read(const std::string& path, std::string* out) override {
    out->clear();
    int fd = OpenRetry(path, O_RDONLY);
    if (fd < 0) return errno;
    int rc = 0;
    char buf[8192];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        rc = errno;
        break;
      }
      if (n == 0) break;
      if (out->size() + static_cast<size_t>(n) > kMaxReadBytes) {
        rc = EFBIG;
        break;
      }
      out->append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    return rc;
  }

  int ReadAt(const std::string& path, uint64_t offset, size_t max_bytes,
             std::string* out) override {
    out->clear();
    int fd = OpenRetry(path, O_RDONLY);
    if (fd < 0) return errno;
    int rc = 0;
    char buf[8192];
    while (out->size() < max_bytes) {
      size_t want = std::min(sizeof buf, max_bytes - out->size());
      ssize_t n = ::pread(fd, buf, want, static_cast<off_t>(offset + out->size()));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        rc = errno;
        break;
      }
      if (n == 0) break;
      out->append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    return rc;
  }

  int Write(const std::string& path, std::string_view value) override {
    int fd = OpenRetry(path, O_WRONLY | O_TRUNC);
    if (fd < 0) return errno;
    ssize_t n;
    do {
      n = ::write(fd, value.data(), value.size());  // one write(2): one whole value
    } while (n < 0 && errno == EINTR);
    int rc = 0;
    if (n < 0) {
      rc = errno;
    } else if (static_cast<size_t>(n) != value.size()) {
      rc = EIO;  // a partial value must not pass as success
    }
    // close() reports errors of the final flush on some file systems; never retry it.
    if (::close(fd) != 0 && rc == 0 && errno != EINTR) rc = errno;
    return rc;
  }

  int Mkdir(const std::string& path) override {
    return ::mkdir(path.c_str(), 0777) == 0 ? 0 : errno;
  }

  int Rmdir(const std::string& path) override { return ::rmdir(path.c_str()) == 0 ? 0 : errno; }

  int List(const std::string& dir, std::vector<DirEntry>* out) override {
    out->clear();
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return errno;
    int rc = 0;
    for (;;) {
      errno = 0;
      struct dirent* e = ::readdir(d);
      if (e == nullptr) {
        rc = errno;
        break;
      }
      if (!std::strcmp(e->d_name, ".") || !std::strcmp(e->d_name, "..")) continue;
      bool is_dir = e->d_type == DT_DIR;
      if (e->d_type == DT_UNKNOWN || e->d_type == DT_LNK) {
        struct stat st;
        is_dir = ::fstatat(::dirfd(d), e->d_name, &st, 0) == 0 && S_ISDIR(st.st_mode);
      }
      out->push_back({e->d_name, is_dir});
    }
    ::closedir(d);
    std::sort(out->begin(), out->end(),
              [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
    return rc;
  }

  int Open(const std::string& path, std::unique_ptr<Stream>* out) override {
    int fd = OpenRetry(path, O_RDONLY);
    if (fd < 0) return errno;
    *out = std::make_unique<FdStream>(fd);
    return 0;
  }

  bool Exists(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0;
  }

  bool IsDir(const std::string& path) override {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  }
};

// Yields scripted chunks, each in as many Read() calls as the caller's buffer needs.
class ChunkStream : public Stream {
 public:
  ChunkStream(std::vector<std::string> chunks, int end_err)
      : chunks_(std::move(chunks)), end_err_(end_err) {}

  long Read(char* buf, size_t n) override {
    while (index_ < chunks_.size() && offset_ == chunks_[index_].size()) {
      ++index_;
      offset_ = 0;
    }
    if (index_ == chunks_.size()) return end_err_ == 0 ? 0 : -end_err_;
    const std::string& c = chunks_[index_];
    size_t k = std::min(n, c.size() - offset_);
    std::memcpy(buf, c.data() + offset_, k);
    offset_ += k;
    return static_cast<long>(k);
  }

 private:
  std::vector<std::string> chunks_;
  int end_err_;
  size_t index_ = 0;
  size_t offset_ = 0;
};

std::string Parent(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

std::unique_ptr<Tree> NewPosixTree() { return std::make_unique<PosixTree>(); }

void FakeTree::AddDir(const std::string& dir) {
  for (size_t p = dir.find('/', 1); p != std::string::npos; p = dir.find('/', p + 1)) {
    dirs_.insert(dir.substr(0, p));
  }
  if (!dir.empty() && dir[0] == '/') dirs_.insert("/");
  dirs_.insert(dir);
}

void FakeTree::AddFile(const std::string& path, std::string content) {
  AddDir(Parent(path));
  files_[path] = std::move(content);
}

void FakeTree::Fail(Op op, const std::string& path, int err, std::string error_file,
                    std::string error_text) {
  failures_[{op, path}] = Failure{err, std::move(error_file), std::move(error_text)};
}

void FakeTree::SetStream(const std::string& path, std::vector<std::string> chunks, int end_err) {
  streams_[path] = {std::move(chunks), end_err};
}

std::optional<std::string> FakeTree::Content(const std::string& path) const {
  auto it = files_.find(path);
  if (it == files_.end()) return std::nullopt;
  return it->second;
}

int FakeTree::Check(Op op, const std::string& path) {
  auto it = failures_.find({op, path});
  if (it == failures_.end()) return 0;
  if (!it->second.error_file.empty()) files_[it->second.error_file] = it->second.error_text;
  return it->second.err;
}

int FakeTree::Read(const std::string& path, std::string* out) {
  out->clear();
  if (int rc = Check(Op::kRead, path)) return rc;
  if (dirs_.count(path)) return EISDIR;
  auto it = files_.find(path);
  if (it == files_.end()) return ENOENT;
  if (it->second.size() > kMaxReadBytes) return EFBIG;
  *out = it->second;
  return 0;
}

int FakeTree::ReadAt(const std::string& path, uint64_t offset, size_t max_bytes, std::string* out) {
  out->clear();
  if (on_read_at) on_read_at(path, offset);
  if (int rc = Check(Op::kRead, path)) return rc;
  if (dirs_.count(path)) return EISDIR;
  auto it = files_.find(path);
  if (it == files_.end()) return ENOENT;
  if (offset < it->second.size()) *out = it->second.substr(offset, max_bytes);
  return 0;
}

int FakeTree::Write(const std::string& path, std::string_view value) {
  ops_.push_back("write " + path);
  if (int rc = Check(Op::kWrite, path)) return rc;
  if (dirs_.count(path)) return EISDIR;
  auto it = files_.find(path);
  if (it == files_.end()) return ENOENT;  // no O_CREAT: control files exist or they don't
  it->second.assign(value);
  writes_.emplace_back(path, std::string(value));
  return 0;
}

int FakeTree::Mkdir(const std::string& path) {
  ops_.push_back("mkdir " + path);
  if (int rc = Check(Op::kMkdir, path)) return rc;
  if (dirs_.count(path) || files_.count(path)) return EEXIST;
  std::string parent = Parent(path);
  if (files_.count(parent)) return ENOTDIR;
  if (!dirs_.count(parent)) return ENOENT;
  dirs_.insert(path);
  if (on_mkdir) on_mkdir(path);
  return 0;
}

int FakeTree::Rmdir(const std::string& path) {
  ops_.push_back("rmdir " + path);
  if (int rc = Check(Op::kRmdir, path)) return rc;
  if (files_.count(path)) return ENOTDIR;
  if (!dirs_.count(path)) return ENOENT;
  // The tree's rmdir removes an object with everything it shows, so take the subtree too.
  std::string prefix = path + "/";
  std::erase_if(dirs_, [&](const std::string& d) { return d == path || d.starts_with(prefix); });
  std::erase_if(files_, [&](const auto& f) { return f.first.starts_with(prefix); });
  return 0;
}

int FakeTree::List(const std::string& dir, std::vector<DirEntry>* out) {
  out->clear();
  if (int rc = Check(Op::kList, dir)) return rc;
  if (files_.count(dir)) return ENOTDIR;
  if (!dirs_.count(dir)) return ENOENT;
  std::string prefix = dir == "/" ? "/" : dir + "/";
  auto direct = [&](const std::string& p) {
    return p.size() > prefix.size() && p.starts_with(prefix) &&
           p.find('/', prefix.size()) == std::string::npos;
  };
  for (const std::string& d : dirs_) {
    if (direct(d)) out->push_back({d.substr(prefix.size()), true});
  }
  for (const auto& [f, content] : files_) {
    if (direct(f)) out->push_back({f.substr(prefix.size()), false});
  }
  std::sort(out->begin(), out->end(),
            [](const DirEntry& a, const DirEntry& b) { return a.name < b.name; });
  return 0;
}

int FakeTree::Open(const std::string& path, std::unique_ptr<Stream>* out) {
  if (int rc = Check(Op::kRead, path)) return rc;
  auto s = streams_.find(path);
  if (s != streams_.end()) {
    *out = std::make_unique<ChunkStream>(s->second.first, s->second.second);
    return 0;
  }
  if (dirs_.count(path)) return EISDIR;
  auto it = files_.find(path);
  if (it == files_.end()) return ENOENT;
  *out = std::make_unique<ChunkStream>(std::vector<std::string>{it->second}, 0);
  return 0;
}

bool FakeTree::Exists(const std::string& path) {
  return dirs_.count(path) || files_.count(path) || streams_.count(path);
}

bool FakeTree::IsDir(const std::string& path) { return dirs_.count(path) > 0; }

}  // namespace constellation::ctl
