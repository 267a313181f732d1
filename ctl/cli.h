// The `constellation` command-line tool: thin verbs over the mounted file tree.
//
// The CLI never talks to a daemon: every verb is a handful of reads, writes, mkdirs and rmdirs on
// files under <mount>/constellation/, exactly what a shell user would do by hand. File access goes
// through the Tree interface so the verbs can be tested against an in-memory FakeTree.
//
// Errors are errno values (0 = success) rather than Status: the tree's contract *is* errno, and the
// message the user reads is `constellation: <path>: <strerror>[: <first line of the error file>]`.
//
// Thread-safety: none of these types is thread-safe; the CLI is single-threaded.
#ifndef CONSTELLATION_CTL_CLI_H_
#define CONSTELLATION_CTL_CLI_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace constellation::ctl {

// Largest file the CLI reads whole into memory (control values are at most 64 KiB; `stats`,
// `status` and friends are far smaller). Bigger files are refused with EFBIG by Tree::Read; `get`
// and `logs` stream instead and have no such limit.
inline constexpr size_t kMaxReadBytes = 1 << 20;
// Largest value `set PATH -` accepts from stdin (the tree refuses more than 64 KiB anyway).
inline constexpr size_t kMaxStdinBytes = 1 << 20;
// Chunk size for streaming reads (`get`, `events`, `logs`).
inline constexpr size_t kChunkBytes = 64 * 1024;
// Poll interval of `logs -f` and refresh interval of `top`.
inline constexpr int kFollowPollMs = 250;
inline constexpr int kTopRefreshMs = 2000;

// A sequentially read open file (events stream, log, any file for `get`).
class Stream {
 public:
  virtual ~Stream() = default;
  // Reads up to n bytes into buf, blocking like read(2). Returns the byte count (0 at end of file)
  // or -errno. -EINTR is returned (not retried) so callers can notice an interrupt.
  virtual long Read(char* buf, size_t n) = 0;
};

struct DirEntry {
  std::string name;
  bool is_dir = false;
};

// File access. Paths are absolute (or relative to the process's cwd, for the POSIX tree) and name
// files in the mounted tree, e.g. "/mnt/constellation/constellation/status".
class Tree {
 public:
  virtual ~Tree() = default;
  // Reads the whole file into *out. EFBIG if it is larger than kMaxReadBytes.
  virtual int Read(const std::string& path, std::string* out) = 0;
  // Reads up to max_bytes starting at offset from a freshly opened file (used by `logs -f`, which
  // reopens on every poll so each poll sees the file's current content).
  virtual int ReadAt(const std::string& path, uint64_t offset, size_t max_bytes,
                     std::string* out) = 0;
  // Opens path O_WRONLY|O_TRUNC (never O_CREAT) and writes value with exactly one write(2) call:
  // in the tree one write is one whole value. A short write is reported as EIO.
  virtual int Write(const std::string& path, std::string_view value) = 0;
  virtual int Mkdir(const std::string& path) = 0;
  virtual int Rmdir(const std::string& path) = 0;
  // Entries of dir except "." and "..", sorted by name.
  virtual int List(const std::string& dir, std::vector<DirEntry>* out) = 0;
  virtual int Open(const std::string& path, std::unique_ptr<Stream>* out) = 0;
  virtual bool Exists(const std::string& path) = 0;
  virtual bool IsDir(const std::string& path) = 0;
};

// The real tree: plain POSIX calls.
std::unique_ptr<Tree> NewPosixTree();

// In-memory tree for tests and the fuzz target. Directories and files are keyed by their exact
// path string (no normalisation: "/m/a" and "/m//a" differ). Failures can be injected per path.
class FakeTree : public Tree {
 public:
  enum class Op { kRead, kWrite, kMkdir, kRmdir, kList };
  struct Failure {
    int err = 0;
    std::string error_file;  // when not empty, set to error_text at the moment of failure
    std::string error_text;
  };

  // Creates dir and its missing parents.
  void AddDir(const std::string& dir);
  // Creates or replaces a file (and its missing parent directories).
  void AddFile(const std::string& path, std::string content);
  // Makes every later `op` on path fail with err, and (optionally) sets error_file's content
  // then, as the daemon records the reason of a refused write.
  void Fail(Op op, const std::string& path, int err, std::string error_file = {},
            std::string error_text = {});
  // Makes Open(path) return a stream that yields these chunks one Read() each, then end_err
  // (0 = end of file, else -end_err).
  void SetStream(const std::string& path, std::vector<std::string> chunks, int end_err = 0);
  // Called after a successful Mkdir with the new directory's path (tests use it to populate an
  // instance's control files, as the daemon does).
  std::function<void(const std::string&)> on_mkdir;
  // Called before every ReadAt (tests use it to append to a log while `logs -f` polls).
  std::function<void(const std::string&, uint64_t)> on_read_at;

  // Every successful Write as {path, value}, in order.
  const std::vector<std::pair<std::string, std::string>>& writes() const { return writes_; }
  // Every mutating call (successful or not) as "mkdir PATH", "rmdir PATH", "write PATH", in order.
  const std::vector<std::string>& ops() const { return ops_; }
  std::optional<std::string> Content(const std::string& path) const;

  int Read(const std::string& path, std::string* out) override;
  int ReadAt(const std::string& path, uint64_t offset, size_t max_bytes, std::string* out) override;
  int Write(const std::string& path, std::string_view value) override;
  int Mkdir(const std::string& path) override;
  int Rmdir(const std::string& path) override;
  int List(const std::string& dir, std::vector<DirEntry>* out) override;
  int Open(const std::string& path, std::unique_ptr<Stream>* out) override;
  bool Exists(const std::string& path) override;
  bool IsDir(const std::string& path) override;

 private:
  int Check(Op op, const std::string& path);

  std::set<std::string> dirs_;
  std::map<std::string, std::string> files_;
  std::map<std::pair<Op, std::string>, Failure> failures_;
  std::map<std::string, std::pair<std::vector<std::string>, int>> streams_;
  std::vector<std::pair<std::string, std::string>> writes_;
  std::vector<std::string> ops_;
};

// Everything a verb may touch. Nothing in Run() uses process-global state, so tests can run it.
struct Context {
  Tree* tree = nullptr;
  std::ostream* out = nullptr;
  std::ostream* err = nullptr;
  std::istream* in = nullptr;
  // Value of $CONSTELLATION_MOUNT, if set.
  std::optional<std::string> env_mount;
  // Whether stdout is a terminal (`top` clears the screen between refreshes only then).
  bool terminal = false;
  // Sleeps (interruptibly, in the real CLI).
  std::function<void(int ms)> sleep_ms;
  // True once the user asked to stop (SIGINT/SIGTERM) — polled by the following loops.
  std::function<bool()> interrupted;
  // Called by loops that stop on interrupt (`logs -f`, `top`) before they start, so the real CLI
  // installs its SIGINT handler only for them: `events` keeps the default disposition because a
  // read blocked in a FUSE request is only abandoned by a fatal signal.
  std::function<void()> watch_interrupts;
};

inline constexpr char kDefaultMount[] = "/mnt/constellation";

// Exit codes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

// Parses args (argv without argv[0]), finds the verb and runs it. Returns the exit code.
int Run(const std::vector<std::string>& args, Context& ctx);

// The process entry point: a Context over the POSIX tree, std streams, the environment and signals.
int Main(int argc, char** argv);

}  // namespace constellation::ctl

#endif  // CONSTELLATION_CTL_CLI_H_
