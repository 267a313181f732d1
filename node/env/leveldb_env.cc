#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>

#include "node/base/fd.h"
#include "node/base/log.h"
#include "node/base/thread_name.h"
#include "node/env/leveldb_env_internal.h"

namespace constellation {
namespace {

// leveldb's log format (db/log_format.h): 32 KiB blocks of physical records, each a 7-byte header
// (masked CRC32C of type and payload, little-endian; payload length, 2 bytes little-endian; type)
// and its payload. A block's last < 7 bytes are zero padding.
constexpr uint64_t kBlockBytes = 32768;
constexpr uint64_t kHeaderBytes = 7;
constexpr uint8_t kFirstRecordType = 1;  // kFullType
constexpr uint8_t kLastRecordType = 4;   // kLastType
constexpr size_t kWriteBufferBytes = 64 << 10;

std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix.data(), suffix.size()) == 0;
}

leveldb::Status IoError(const std::string& what, int err) {
  return leveldb::Status::IOError(what, std::strerror(err));
}

class PreallocatedLogFile;

// The open log files, so that SyncLevelDbLogs can sync them from another thread.
struct OpenLogs {
  std::mutex mu;  // held across a sync, so a file is not closed under it
  std::set<PreallocatedLogFile*> files;
};

OpenLogs& Registry() {
  static OpenLogs* const logs = new OpenLogs();
  return *logs;
}

// A log file written in place: bytes go to [0, offset_), and the space up to allocated_ has been
// written with zeros beforehand, so a sync after an overwrite commits no size or extent change.
// Not thread-safe (leveldb writes a log from one writer at a time).
class PreallocatedLogFile : public leveldb::WritableFile {
 public:
  PreallocatedLogFile(std::string name, int fd) : name_(std::move(name)), fd_(fd) {
    std::lock_guard<std::mutex> l(Registry().mu);
    Registry().files.insert(this);
  }
  ~PreallocatedLogFile() override { (void)Close(); }

  const std::string& name() const { return name_; }

  // For SyncLevelDbLogs, with Registry().mu held (so the file stays open).
  leveldb::Status SyncWritten() {
    if (!unsynced_.exchange(false)) return leveldb::Status::OK();
    if (::fdatasync(fd_) != 0) {
      unsynced_ = true;
      return IoError(name_, errno);
    }
    return leveldb::Status::OK();
  }

  leveldb::Status Append(const leveldb::Slice& data) override {
    buf_.append(data.data(), data.size());
    if (buf_.size() >= kWriteBufferBytes) return FlushBuffer();
    return leveldb::Status::OK();
  }

  leveldb::Status Close() override {
    if (fd_ < 0) return leveldb::Status::OK();
    leveldb::Status s = FlushBuffer();
    // A log leveldb closes still holds the records of its immutable memtable until that is written
    // to a table; what SyncLevelDbLogs reported durable must stay so.
    if (s.ok() && unsynced_ && ::fdatasync(fd_) != 0) s = IoError(name_, errno);
    {
      std::lock_guard<std::mutex> l(Registry().mu);
      Registry().files.erase(this);
    }
    // The zeros past the end are no longer needed: a closed log is complete.
    if (s.ok() && ::ftruncate(fd_, static_cast<off_t>(offset_)) != 0) s = IoError(name_, errno);
    if (::close(fd_) != 0 && s.ok()) s = IoError(name_, errno);
    fd_ = -1;
    return s;
  }

  leveldb::Status Flush() override { return FlushBuffer(); }

  leveldb::Status Sync() override {
    leveldb::Status s = FlushBuffer();
    if (!s.ok()) return s;
    unsynced_ = false;
    if (::fdatasync(fd_) != 0) {
      unsynced_ = true;
      return IoError(name_, errno);
    }
    return leveldb::Status::OK();
  }

 private:
  leveldb::Status FlushBuffer() {
    if (buf_.empty()) return leveldb::Status::OK();
    if (fd_ < 0) return leveldb::Status::IOError(name_, "write after close");
    uint64_t end = offset_ + buf_.size();
    if (end > allocated_) {
      // Zero-fill whole steps past the end; the next sync commits the new size once.
      uint64_t target = (end + kLogExtendBytes - 1) / kLogExtendBytes * kLogExtendBytes;
      static const std::string* const kZeros = new std::string(kWriteBufferBytes, '\0');
      for (uint64_t at = allocated_; at < target;) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(kZeros->size(), target - at));
        if (!PwriteAll(fd_, kZeros->data(), n, static_cast<off_t>(at)))
          return IoError(name_, errno);
        at += n;
      }
      allocated_ = target;
    }
    if (!PwriteAll(fd_, buf_.data(), buf_.size(), static_cast<off_t>(offset_)))
      return IoError(name_, errno);
    unsynced_ = true;
    offset_ = end;
    buf_.clear();
    return leveldb::Status::OK();
  }

  const std::string name_;
  int fd_;
  std::string buf_;
  uint64_t offset_ = 0;                // bytes of the log written
  uint64_t allocated_ = 0;             // bytes of the file, zeros past offset_
  std::atomic<bool> unsynced_{false};  // written since the last fdatasync began
};

class Env : public leveldb::EnvWrapper {
 public:
  Env() : leveldb::EnvWrapper(leveldb::Env::Default()) {}

  leveldb::Status NewWritableFile(const std::string& f, leveldb::WritableFile** r) override {
    if (!EndsWith(f, ".log")) return target()->NewWritableFile(f, r);
    int fd = ::open(f.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
      *r = nullptr;
      return IoError(f, errno);
    }
    *r = new PreallocatedLogFile(f, fd);
    return leveldb::Status::OK();
  }

  leveldb::Status NewSequentialFile(const std::string& f, leveldb::SequentialFile** r) override {
    if (EndsWith(f, ".log")) {
      Result<LogTailRepair> rep = RepairLogTail(f);
      if (!rep.ok()) {
        *r = nullptr;
        return leveldb::Status::IOError(f, rep.status().ToString());
      }
      if (rep->size_after != rep->size_before) {
        CN_LOG(Info) << "log " << f << ": cut " << (rep->size_before - rep->size_after)
                     << " bytes after its last intact record ("
                     << (rep->torn ? "a torn record and unwritten space" : "unwritten space")
                     << ")";
      }
    }
    return target()->NewSequentialFile(f, r);
  }

  // LevelDB starts its one background thread from whichever thread first schedules a compaction,
  // often the raised agent thread; each piece of background work runs at the process's priority.
  void Schedule(void (*fn)(void*), void* arg) override {
    auto* job = new Job{fn, arg};
    target()->Schedule(
        [](void* p) {
          std::unique_ptr<Job> j(static_cast<Job*>(p));
          TakeProcessNice();
          j->fn(j->arg);
        },
        job);
  }

 private:
  struct Job {
    void (*fn)(void*);
    void* arg;
  };
};

}  // namespace

uint32_t MaskedCrc32c(std::string_view data) {
  static const std::array<uint32_t, 256> kTable = MakeCrcTable();
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : data) c = kTable[(c ^ b) & 0xFF] ^ (c >> 8);
  c ^= 0xFFFFFFFFu;
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

Result<LogTailRepair> RepairLogTail(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (fd.get() < 0) return Status::FromErrno(errno, "open " + path);
  LogTailRepair rep;
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
  rep.size_before = static_cast<uint64_t>(st.st_size);
  std::string data(rep.size_before, '\0');
  if (!PreadAll(fd.get(), data.data(), data.size(), 0)) {
    return Status::FromErrno(errno != 0 ? errno : EIO, "read " + path);
  }
  uint64_t good_end = 0;
  for (uint64_t pos = 0; pos < data.size();) {
    uint64_t left = kBlockBytes - pos % kBlockBytes;
    if (left < kHeaderBytes || pos + kHeaderBytes > data.size()) {
      pos += left;
      continue;
    }
    const auto* h = reinterpret_cast<const unsigned char*>(data.data() + pos);
    uint64_t length = h[4] | (uint64_t{h[5]} << 8);
    uint8_t type = h[6];
    uint32_t crc = h[0] | (uint32_t{h[1]} << 8) | (uint32_t{h[2]} << 16) | (uint32_t{h[3]} << 24);
    bool intact = type >= kFirstRecordType && type <= kLastRecordType &&
                  kHeaderBytes + length <= left && pos + kHeaderBytes + length <= data.size() &&
                  MaskedCrc32c(std::string_view(data.data() + pos + 6, 1 + length)) == crc;
    if (!intact) {
      // leveldb drops the rest of a block after a bad header; so do we.
      pos += left;
      continue;
    }
    pos += kHeaderBytes + length;
    good_end = pos;
    ++rep.records;
  }
  rep.size_after = good_end;
  for (uint64_t i = good_end; i < data.size() && !rep.torn; ++i) rep.torn = data[i] != '\0';
  if (good_end != rep.size_before && ::ftruncate(fd.get(), static_cast<off_t>(good_end)) != 0) {
    return Status::FromErrno(errno, "truncate " + path);
  }
  return rep;
}

Status SyncLevelDbLogs(const std::string& dir) {
  std::string prefix = dir + "/";
  std::lock_guard<std::mutex> l(Registry().mu);
  for (PreallocatedLogFile* f : Registry().files) {
    if (f->name().compare(0, prefix.size(), prefix) != 0) continue;
    leveldb::Status s = f->SyncWritten();
    if (!s.ok()) {
      std::string m = s.ToString();
      return m.find("No space left") != std::string::npos ? Status::NoSpace(m) : Status::IoError(m);
    }
  }
  return Status::Ok();
}

leveldb::Env* PreallocatingLogEnv() {
  static Env* const env = new Env();
  return env;
}

}  // namespace constellation
