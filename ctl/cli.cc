// The verb table, the one argument parser and the verbs. Every verb is a few file operations on
// the mounted tree; see docs/cli.md for the user-facing description.
#include "ctl/cli.h"

#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <span>

namespace constellation::ctl {
namespace {

// Largest partial line `events` holds while waiting for its newline; beyond it the bytes are
// passed through as they are, so a stream without newlines cannot grow memory without bound.
constexpr size_t kMaxPendingLineBytes = 1 << 20;

struct FlagSpec {
  const char* name;   // long form, e.g. "--count"; the key in Invocation::flags
  const char* alias;  // short form or nullptr
  bool takes_value;
  bool repeatable;  // otherwise the last occurrence wins
};

// One parsed command line, after global flags (--mount, --help) were taken out.
struct Invocation {
  std::vector<std::string> args;
  std::map<std::string, std::vector<std::string>> flags;

  bool Has(const std::string& flag) const { return flags.count(flag) > 0; }
  const std::string* Last(const std::string& flag) const {
    auto it = flags.find(flag);
    return it == flags.end() || it->second.empty() ? nullptr : &it->second.back();
  }
};

class Cli;
struct Verb;
using Handler = int (*)(Cli& cli, const Verb& verb, const Invocation& inv);

struct Verb {
  const char* name;
  int min_args;
  int max_args;  // -1: no limit
  const char* usage;
  const char* help;  // one line, for the verb list
  Handler handler;
  std::span<const FlagSpec> flags = {};
  const char* details = "";  // more lines for `VERB --help`
  bool needs_mount = true;
};

const Verb* FindVerb(std::string_view name);
void PrintGeneralHelp(std::ostream& out);
void PrintVerbHelp(std::ostream& out, const Verb& verb);

// Helpers shared by the verbs: the resolved mount, path mapping and the error line format.
class Cli {
 public:
  explicit Cli(Context& ctx) : ctx_(ctx) {}

  Context& ctx() { return ctx_; }
  Tree& tree() { return *ctx_.tree; }
  std::ostream& out() { return *ctx_.out; }
  std::ostream& err() { return *ctx_.err; }
  const std::string& root() const { return root_; }

  bool Interrupted() { return ctx_.interrupted && ctx_.interrupted(); }
  void Sleep(int ms) {
    if (ctx_.sleep_ms) ctx_.sleep_ms(ms);
  }
  void WatchInterrupts() {
    if (ctx_.watch_interrupts) ctx_.watch_interrupts();
  }

  // Picks the mount: --mount, else $CONSTELLATION_MOUNT, else the default.
  void SetMount(std::string mount) {
    while (mount.size() > 1 && mount.back() == '/') mount.pop_back();
    mount_ = std::move(mount);
    root_ = (mount_ == "/" ? "" : mount_) + "/constellation";
  }
  const std::string& mount() const { return mount_; }

  int Usage(const Verb* verb, const std::string& message) {
    err() << "constellation: " << message << "\n";
    if (verb != nullptr) {
      err() << "usage: constellation " << verb->usage << "\n";
    } else {
      err() << "usage: constellation [--mount DIR] VERB [ARGS...]  (constellation --help lists the "
               "verbs)\n";
    }
    return kExitUsage;
  }

  int Fail(const std::string& message) {
    err() << "constellation: " << message << "\n";
    return kExitFailure;
  }

  // A failed read, list or open: no error file is consulted (reads do not set it).
  int FailRead(const std::string& path, int errnum) {
    return Fail(path + ": " + std::strerror(errnum));
  }

  // The line for a failed write/mkdir/rmdir, with the reason the daemon left in the object's
  // `error` file. Errnos the kernel decides on its own (permission bits, existence) never reach
  // the daemon, so the error file would only hold a stale, unrelated reason: it is not consulted.
  std::string MutationError(const std::string& path, int errnum) {
    std::string line = path + ": " + std::strerror(errnum);
    if (errnum == EACCES || errnum == ENOENT || errnum == EEXIST || errnum == ENOTDIR ||
        errnum == EISDIR || errnum == EINTR) {
      return line;
    }
    std::string reason;
    if (tree().Read(ErrorFileFor(path), &reason) == 0) {
      reason = FirstLine(reason);
      if (!reason.empty()) line += ": " + reason;
    }
    return line;
  }

  int FailMutation(const std::string& path, int errnum) {
    return Fail(MutationError(path, errnum));
  }

  // A failed write to an open ctl file: the daemon decided every errno but EACCES (the open's
  // permission check) and EINTR, ENOENT included (a start whose command does not exist).
  int FailCtl(const std::string& path, int errnum) {
    std::string line = path + ": " + std::strerror(errnum);
    std::string reason;
    std::string error_file = ErrorFileFor(path);  // constellation/error: the instance is gone
    if (errnum != EACCES && errnum != EINTR && error_file != root_ + "/error" &&
        tree().Read(error_file, &reason) == 0) {
      reason = FirstLine(reason);
      if (!reason.empty()) line += ": " + reason;
    }
    return Fail(line);
  }

  // instances/<n>/error and nodes/<n>/error while that object exists; constellation/error
  // otherwise (cluster-level files, and objects that a failed mkdir did not create).
  std::string ErrorFileFor(const std::string& path) {
    std::string prefix = root_ + "/";
    if (path.starts_with(prefix)) {
      std::string rel = path.substr(prefix.size());
      size_t a = rel.find('/');
      if (a != std::string::npos) {
        std::string kind = rel.substr(0, a);
        size_t b = rel.find('/', a + 1);
        std::string name = rel.substr(a + 1, b == std::string::npos ? b : b - a - 1);
        std::string object = root_ + "/" + kind + "/" + name;
        if ((kind == "instances" || kind == "nodes") && !name.empty() && tree().IsDir(object)) {
          return object + "/error";
        }
      }
    }
    return root_ + "/error";
  }

  // Maps a user's PATH to a file in the mount: relative to constellation/, or starting with
  // "constellation/", or absolute inside the mount (or under the /constellation link).
  bool ResolvePath(const std::string& user, std::string* abs, std::string* why) {
    std::string rel;
    if (user.starts_with("/")) {
      std::string mount_prefix = mount_ == "/" ? "/" : mount_ + "/";
      if (user.starts_with(mount_prefix)) {
        rel = user.substr(mount_prefix.size());
      } else if (user == "/constellation" || user.starts_with("/constellation/")) {
        rel = user.substr(1);  // constellationd --links points /constellation into the mount
      } else if (user == mount_) {
        rel = "";
      } else {
        *why = user + ": not inside the mount " + mount_;
        return false;
      }
    } else if (user == "constellation" || user.starts_with("constellation/")) {
      rel = user;
    } else {
      rel = "constellation/" + user;
    }
    std::string joined;
    size_t pos = 0;
    while (pos <= rel.size()) {
      size_t slash = rel.find('/', pos);
      if (slash == std::string::npos) slash = rel.size();
      std::string part = rel.substr(pos, slash - pos);
      pos = slash + 1;
      if (part.empty() || part == ".") continue;
      if (part == "..") {
        *why = user + ": '..' is not allowed in tree paths";
        return false;
      }
      joined += "/" + part;
    }
    *abs = (mount_ == "/" ? "" : mount_) + joined;
    if (abs->empty()) *abs = "/";
    return true;
  }

  // Streams a file to stdout.
  int Copy(const std::string& path) {
    std::unique_ptr<Stream> stream;
    if (int rc = tree().Open(path, &stream)) return FailRead(path, rc);
    std::vector<char> buf(kChunkBytes);
    for (;;) {
      long n = stream->Read(buf.data(), buf.size());
      if (n == -EINTR) {
        if (Interrupted()) break;
        continue;
      }
      if (n < 0) {
        out().flush();
        return FailRead(path, static_cast<int>(-n));
      }
      if (n == 0) break;
      out().write(buf.data(), n);
    }
    out().flush();
    return kExitOk;
  }

  // A control value for a table cell: its first line, or "-" when missing or empty.
  std::string Cell(const std::string& path) {
    std::string value;
    if (tree().Read(path, &value) != 0) return "-";
    value = FirstLine(value);
    return value.empty() ? "-" : value;
  }

  // A kind directory as the user named it; "instance" finds "instances".
  std::string ResolveKind(const std::string& kind) {
    if (!tree().IsDir(root_ + "/" + kind) && tree().IsDir(root_ + "/" + kind + "s")) {
      return kind + "s";
    }
    return kind;
  }

  static std::string FirstLine(const std::string& s) {
    std::string line = s.substr(0, s.find('\n'));
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) {
      line.pop_back();
    }
    return line;
  }

  // Object names become one path component: no slashes, no "." or "..", nothing empty.
  static bool ValidName(const std::string& name) {
    return !name.empty() && name != "." && name != ".." &&
           name.find_first_of("/\n") == std::string::npos && name.find('\0') == std::string::npos;
  }

 private:
  Context& ctx_;
  std::string mount_;
  std::string root_;
};

void PrintTable(std::ostream& out, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(width[i] - row[i].size() + 2, ' ');
    }
    out << line << "\n";
  }
}

std::map<std::string, std::string> ParseKeyValueLines(const std::string& text) {
  std::map<std::string, std::string> kv;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    size_t sp = line.find(' ');
    if (sp == std::string::npos || sp == 0) continue;
    kv[line.substr(0, sp)] = Cli::FirstLine(line.substr(sp + 1));
  }
  return kv;
}

bool ParseCount(const std::string& s, uint64_t* value) {
  const char* end = s.data() + s.size();
  auto [ptr, ec] = std::from_chars(s.data(), end, *value);
  return ec == std::errc() && ptr == end && *value > 0;
}

// ---- verbs ----

int CmdHelp(Cli& cli, const Verb&, const Invocation& inv) {
  if (inv.args.empty()) {
    PrintGeneralHelp(cli.out());
    return kExitOk;
  }
  const Verb* v = FindVerb(inv.args[0]);
  if (v == nullptr) return cli.Usage(FindVerb("help"), "unknown verb \"" + inv.args[0] + "\"");
  PrintVerbHelp(cli.out(), *v);
  return kExitOk;
}

int CmdStatus(Cli& cli, const Verb&, const Invocation&) { return cli.Copy(cli.root() + "/status"); }

int LsInstances(Cli& cli, const std::string& dir, const std::vector<DirEntry>& entries) {
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "STATE", "NODE", "CPU%", "RAM_MB", "RESTART"}};
  for (const DirEntry& e : entries) {
    if (!e.is_dir) continue;
    std::string d = dir + "/" + e.name;
    rows.push_back({e.name, cli.Cell(d + "/state"), cli.Cell(d + "/node"),
                    cli.Cell(d + "/cpu_percent"), cli.Cell(d + "/ram_mb"),
                    cli.Cell(d + "/restart")});
  }
  PrintTable(cli.out(), rows);
  return kExitOk;
}

int LsNodes(Cli& cli, const std::string& dir, const std::vector<DirEntry>& entries) {
  std::vector<std::vector<std::string>> rows = {{"NAME", "STATUS", "ADDR", "CPU_CORES", "RAM_MB"}};
  for (const DirEntry& e : entries) {
    if (!e.is_dir) continue;
    std::string d = dir + "/" + e.name;
    rows.push_back({e.name, cli.Cell(d + "/status"), cli.Cell(d + "/addr"),
                    cli.Cell(d + "/cpu_cores"), cli.Cell(d + "/ram_mb")});
  }
  PrintTable(cli.out(), rows);
  return kExitOk;
}

int CmdLs(Cli& cli, const Verb& verb, const Invocation& inv) {
  std::vector<DirEntry> entries;
  if (inv.args.empty()) {
    if (int rc = cli.tree().List(cli.root(), &entries)) return cli.FailRead(cli.root(), rc);
    for (const DirEntry& e : entries) {
      if (e.is_dir) cli.out() << e.name << "\n";
    }
    return kExitOk;
  }
  std::string kind = inv.args[0];
  while (kind.size() > 1 && kind.back() == '/') kind.pop_back();
  if (kind.find('/') == std::string::npos) kind = cli.ResolveKind(kind);
  std::string dir, why;
  if (!cli.ResolvePath(kind, &dir, &why)) return cli.Usage(&verb, why);
  if (int rc = cli.tree().List(dir, &entries)) return cli.FailRead(dir, rc);
  if (dir == cli.root() + "/instances") return LsInstances(cli, dir, entries);
  if (dir == cli.root() + "/nodes") return LsNodes(cli, dir, entries);
  for (const DirEntry& e : entries) cli.out() << e.name << "\n";
  return kExitOk;
}

int CmdGet(Cli& cli, const Verb& verb, const Invocation& inv) {
  std::string path, why;
  if (!cli.ResolvePath(inv.args[0], &path, &why)) return cli.Usage(&verb, why);
  return cli.Copy(path);
}

int CmdSet(Cli& cli, const Verb& verb, const Invocation& inv) {
  std::string path, why;
  if (!cli.ResolvePath(inv.args[0], &path, &why)) return cli.Usage(&verb, why);
  std::string value;
  if (inv.args.size() == 2 && inv.args[1] == "-") {
    std::istream& in = *cli.ctx().in;
    std::vector<char> buf(kChunkBytes);
    while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
      value.append(buf.data(), static_cast<size_t>(in.gcount()));
      if (value.size() > kMaxStdinBytes) return cli.FailRead(path, EFBIG);
    }
    if (in.bad()) return cli.Fail("<stdin>: " + std::string(std::strerror(EIO)));
  } else {
    for (size_t i = 1; i < inv.args.size(); ++i) {
      if (i > 1) value += ' ';
      value += inv.args[i];
    }
    value += '\n';
  }
  if (int rc = cli.tree().Write(path, value)) return cli.FailMutation(path, rc);
  return kExitOk;
}

// Flags of `create instance`, in the order their lines appear in the spec write.
struct SpecField {
  const char* flag;
  const char* key;
};
constexpr SpecField kSpecFields[] = {
    {"--cmd", "cmd"},
    {"--env", "env"},
    {"--cpu-percent", "cpu_percent"},
    {"--ram-mb", "ram_mb"},
    {"--disk-mb", "disk_mb"},
    {"--restart", "restart"},
    {"--node", "node"},
    {"--namespace", "namespace"},
};

constexpr FlagSpec kCreateFlags[] = {
    {"--cmd", nullptr, true, false},         {"--env", nullptr, true, true},
    {"--cpu-percent", nullptr, true, false}, {"--ram-mb", nullptr, true, false},
    {"--disk-mb", nullptr, true, false},     {"--restart", nullptr, true, false},
    {"--node", nullptr, true, false},        {"--namespace", nullptr, true, false},
    {"--start", nullptr, false, false},
};

int CmdCreate(Cli& cli, const Verb& verb, const Invocation& inv) {
  if (inv.args[0] != "instance" && inv.args[0] != "instances") {
    return cli.Usage(&verb, "cannot create \"" + inv.args[0] + "\" (only instances)");
  }
  const std::string& name = inv.args[1];
  if (!Cli::ValidName(name)) return cli.Usage(&verb, "bad instance name \"" + name + "\"");
  std::string spec;
  for (const SpecField& f : kSpecFields) {
    auto it = inv.flags.find(f.flag);
    if (it == inv.flags.end()) continue;
    for (const std::string& v : it->second) {
      if (v.find('\n') != std::string::npos) {
        return cli.Usage(&verb, std::string(f.flag) + " value must not contain a newline");
      }
      spec += std::string(f.key) + "=" + v + "\n";
    }
  }
  std::string dir = cli.root() + "/instances/" + name;
  if (int rc = cli.tree().Mkdir(dir)) return cli.FailMutation(dir, rc);
  if (!spec.empty()) {
    std::string spec_path = dir + "/spec";
    if (int rc = cli.tree().Write(spec_path, spec)) {
      // The reason lives in the instance's error file, which the rmdir below takes away.
      std::string message = cli.MutationError(spec_path, rc);
      int rm = cli.tree().Rmdir(dir);  // never leave a half-specified instance behind
      cli.Fail(message);
      if (rm != 0) cli.FailMutation(dir, rm);
      return kExitFailure;
    }
  }
  if (inv.Has("--start")) {
    std::string ctl = dir + "/ctl";
    if (int rc = cli.tree().Write(ctl, "start\n")) return cli.FailMutation(ctl, rc);
  }
  return kExitOk;
}

int CmdRm(Cli& cli, const Verb& verb, const Invocation& inv) {
  std::vector<std::pair<std::string, std::string>> targets;  // {kind as typed, name}
  if (inv.args[0].find('/') == std::string::npos) {
    if (inv.args.size() < 2) return cli.Usage(&verb, "no names given");
    for (size_t i = 1; i < inv.args.size(); ++i) targets.emplace_back(inv.args[0], inv.args[i]);
  } else {
    for (const std::string& a : inv.args) {
      std::string s = a;
      while (s.size() > 1 && s.back() == '/') s.pop_back();
      size_t slash = s.find('/');
      if (slash == std::string::npos || slash == 0) {
        return cli.Usage(&verb, "\"" + a + "\" is not KIND/NAME");
      }
      targets.emplace_back(s.substr(0, slash), s.substr(slash + 1));
    }
  }
  for (const auto& [kind, name] : targets) {
    if (!Cli::ValidName(kind) || !Cli::ValidName(name)) {
      return cli.Usage(&verb, "bad object \"" + kind + "/" + name + "\"");
    }
  }
  int result = kExitOk;
  for (const auto& [kind, name] : targets) {
    std::string dir = cli.root() + "/" + cli.ResolveKind(kind) + "/" + name;
    if (int rc = cli.tree().Rmdir(dir)) result = cli.FailMutation(dir, rc);
  }
  return result;
}

int WriteCtl(Cli& cli, const std::string& name, const std::string& command) {
  std::string ctl = cli.root() + "/instances/" + name + "/ctl";
  if (int rc = cli.tree().Write(ctl, command + "\n")) return cli.FailCtl(ctl, rc);
  return kExitOk;
}

// One word of a command line as the runtime reads `cmd`: plain words as they are, anything else
// single-quoted (which makes the runtime hand the line to /bin/sh -c, giving the same argv).
std::string ShellWord(const std::string& w) {
  bool plain = !w.empty();
  for (char c : w) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              std::strchr("_./:,+@%^-", c) != nullptr;
    plain = plain && ok;
  }
  if (plain) return w;
  std::string out = "'";
  for (char c : w) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

constexpr FlagSpec kRunFlags[] = {
    {"--env", nullptr, true, true},        {"--cpu-percent", nullptr, true, false},
    {"--ram-mb", nullptr, true, false},    {"--disk-mb", nullptr, true, false},
    {"--pids-max", nullptr, true, false},  {"--network", nullptr, true, false},
    {"--restart", nullptr, true, false},   {"--node", nullptr, true, false},
    {"--namespace", nullptr, true, false},
};
constexpr SpecField kRunFields[] = {
    {"--env", "env"},
    {"--cpu-percent", "cpu_percent"},
    {"--ram-mb", "ram_mb"},
    {"--disk-mb", "disk_mb"},
    {"--pids-max", "pids_max"},
    {"--network", "network"},
    {"--restart", "restart"},
    {"--node", "node"},
    {"--namespace", "namespace"},
};

// run NAME [flags] -- CMD [ARGS...]: mkdir, one spec write, start; the instance stays (in its
// failed state) when the start fails, and is removed again when the spec is refused.
int CmdRun(Cli& cli, const Verb& verb, const Invocation& inv) {
  const std::string& name = inv.args[0];
  if (!Cli::ValidName(name)) return cli.Usage(&verb, "bad instance name \"" + name + "\"");
  std::string cmd;
  for (size_t i = 1; i < inv.args.size(); ++i) {
    if (inv.args[i].find('\n') != std::string::npos) {
      return cli.Usage(&verb, "the command must not contain a newline");
    }
    if (i > 1) cmd += ' ';
    cmd += ShellWord(inv.args[i]);
  }
  std::string spec = "cmd=" + cmd + "\n";
  for (const SpecField& f : kRunFields) {
    auto it = inv.flags.find(f.flag);
    if (it == inv.flags.end()) continue;
    for (const std::string& v : it->second) {
      if (v.find('\n') != std::string::npos) {
        return cli.Usage(&verb, std::string(f.flag) + " value must not contain a newline");
      }
      spec += std::string(f.key) + "=" + v + "\n";
    }
  }
  std::string dir = cli.root() + "/instances/" + name;
  if (int rc = cli.tree().Mkdir(dir)) return cli.FailMutation(dir, rc);
  std::string spec_path = dir + "/spec";
  if (int rc = cli.tree().Write(spec_path, spec)) {
    std::string message = cli.MutationError(spec_path, rc);
    int rm = cli.tree().Rmdir(dir);
    cli.Fail(message);
    if (rm != 0) cli.FailMutation(dir, rm);
    return kExitFailure;
  }
  return WriteCtl(cli, name, "start");
}

// start, stop, restart: the verb's own name is what goes into ctl.
int CmdLifecycle(Cli& cli, const Verb& verb, const Invocation& inv) {
  for (const std::string& name : inv.args) {
    if (!Cli::ValidName(name)) return cli.Usage(&verb, "bad instance name \"" + name + "\"");
  }
  int result = kExitOk;
  for (const std::string& name : inv.args) {
    if (WriteCtl(cli, name, verb.name) != kExitOk) result = kExitFailure;
  }
  return result;
}

int CmdKill(Cli& cli, const Verb& verb, const Invocation& inv) {
  const std::string& name = inv.args[0];
  if (!Cli::ValidName(name)) return cli.Usage(&verb, "bad instance name \"" + name + "\"");
  std::string command = "kill";
  if (inv.args.size() == 2) {
    if (inv.args[1].empty() || inv.args[1].find_first_of(" \t\n") != std::string::npos) {
      return cli.Usage(&verb, "bad signal \"" + inv.args[1] + "\"");
    }
    command += " " + inv.args[1];
  }
  return WriteCtl(cli, name, command);
}

constexpr FlagSpec kEventsFlags[] = {{"--count", "-n", true, false}};

int CmdEvents(Cli& cli, const Verb& verb, const Invocation& inv) {
  uint64_t count = 0;  // 0: until interrupted or the stream ends
  if (const std::string* c = inv.Last("--count")) {
    if (!ParseCount(*c, &count)) return cli.Usage(&verb, "--count needs a positive integer");
  }
  std::string path = cli.root() + "/events";
  std::unique_ptr<Stream> stream;
  if (int rc = cli.tree().Open(path, &stream)) return cli.FailRead(path, rc);
  std::vector<char> buf(kChunkBytes);
  std::string pending;
  uint64_t lines = 0;
  for (;;) {
    long n = stream->Read(buf.data(), buf.size());
    if (n == -EINTR) {
      if (cli.Interrupted()) break;
      continue;
    }
    if (n < 0) {
      cli.out().flush();
      return cli.FailRead(path, static_cast<int>(-n));
    }
    if (n == 0) break;
    pending.append(buf.data(), static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      cli.out().write(pending.data() + start, static_cast<std::streamsize>(nl + 1 - start));
      cli.out().flush();  // a reader downstream (grep, a script) must see each event at once
      if (count != 0 && ++lines == count) return kExitOk;
    }
    pending.erase(0, start);
    if (pending.size() > kMaxPendingLineBytes) {
      cli.out() << pending;
      cli.out().flush();
      pending.clear();
    }
  }
  if (!pending.empty()) cli.out() << pending << "\n";
  cli.out().flush();
  return kExitOk;
}

constexpr FlagSpec kLogsFlags[] = {{"--follow", "-f", false, false}};

int CmdLogs(Cli& cli, const Verb& verb, const Invocation& inv) {
  const std::string& name = inv.args[0];
  if (!Cli::ValidName(name)) return cli.Usage(&verb, "bad instance name \"" + name + "\"");
  std::string path = cli.root() + "/instances/" + name + "/log";
  if (!inv.Has("--follow")) return cli.Copy(path);
  // Follow like tail -f: every poll opens the log afresh and reads from where the last one
  // stopped, because a control file's open handle may serve a snapshot taken at its first read.
  cli.WatchInterrupts();
  uint64_t offset = 0;
  while (!cli.Interrupted()) {
    std::string chunk;
    int rc = cli.tree().ReadAt(path, offset, kMaxReadBytes, &chunk);
    if (rc == EINTR) continue;
    if (rc != 0) {
      cli.out().flush();
      return cli.FailRead(path, rc);
    }
    if (chunk.empty()) {
      cli.out().flush();
      cli.Sleep(kFollowPollMs);
      continue;
    }
    cli.out() << chunk;
    offset += chunk.size();
  }
  cli.out().flush();
  return kExitOk;
}

constexpr FlagSpec kTopFlags[] = {{"--once", nullptr, false, false}};

int PrintTop(Cli& cli) {
  std::string dir = cli.root() + "/instances";
  std::vector<DirEntry> entries;
  if (int rc = cli.tree().List(dir, &entries)) return cli.FailRead(dir, rc);
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "STATE", "CPU%", "RAM_MB", "RAM_PEAK_MB", "RESTARTS", "UPTIME_S"}};
  for (const DirEntry& e : entries) {
    if (!e.is_dir) continue;
    std::string d = dir + "/" + e.name;
    std::string text;
    std::map<std::string, std::string> stats;
    if (cli.tree().Read(d + "/stats", &text) == 0) stats = ParseKeyValueLines(text);
    auto stat = [&](const char* key) {
      auto it = stats.find(key);
      return it == stats.end() || it->second.empty() ? std::string("-") : it->second;
    };
    rows.push_back({e.name, cli.Cell(d + "/state"), stat("cpu_percent"), stat("ram_mb"),
                    stat("ram_peak_mb"), stat("restarts"), stat("uptime_s")});
  }
  PrintTable(cli.out(), rows);
  cli.out().flush();
  return kExitOk;
}

int CmdTop(Cli& cli, const Verb&, const Invocation& inv) {
  if (inv.Has("--once")) return PrintTop(cli);
  cli.WatchInterrupts();
  for (bool first = true; !cli.Interrupted(); first = false) {
    if (cli.ctx().terminal) {
      cli.out() << "\033[H\033[2J";  // home + clear: redraw in place
    } else if (!first) {
      cli.out() << "\n";
    }
    if (int rc = PrintTop(cli)) return rc;
    cli.Sleep(kTopRefreshMs);
  }
  return kExitOk;
}

// `join HOST:PORT TOKEN`: this mount's node joins the cluster of the node at HOST:PORT (the
// `join` verb of constellation/ctl; the daemon checks both words and that its cluster is fresh).
int CmdJoin(Cli& cli, const Verb& verb, const Invocation& inv) {
  for (const std::string& a : inv.args) {
    if (a.empty() || a.find_first_of(" \t\n") != std::string::npos) {
      return cli.Usage(&verb, "bad argument \"" + a + "\"");
    }
  }
  std::string path = cli.root() + "/ctl";
  if (int rc = cli.tree().Write(path, "join " + inv.args[0] + " " + inv.args[1] + "\n")) {
    return cli.FailMutation(path, rc);
  }
  return kExitOk;
}

// `keygen [FILE]`: a node's CURVE key pair, for constellationd --key FILE. The only verb that
// does not go through the mount; the key pair comes from libzmq (its CURVE implementation).
int CmdKeygen(Cli& cli, const Verb&, const Invocation& inv) {
  char pub[41], sec[41];
  if (zmq_curve_keypair(pub, sec) != 0) {
    cli.err() << "constellation: keygen: this libzmq has no CURVE support\n";
    return kExitFailure;
  }
  std::string content = std::string("public ") + pub + "\nsecret " + sec + "\n";
  if (inv.args.empty()) {
    cli.out() << content;
    return kExitOk;
  }
  const std::string& path = inv.args[0];
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    cli.err() << "constellation: keygen: " << path << ": " << strerror(errno)
              << (errno == EEXIST ? " (a key file is never overwritten)" : "") << "\n";
    return kExitFailure;
  }
  bool ok = write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()) &&
            fsync(fd) == 0;
  int err = errno;
  close(fd);
  if (!ok) {
    cli.err() << "constellation: keygen: " << path << ": " << strerror(err) << "\n";
    unlink(path.c_str());
    return kExitFailure;
  }
  cli.out() << pub << "\n";
  return kExitOk;
}

// ---- the table ----

const Verb kVerbs[] = {
    {.name = "help",
     .min_args = 0,
     .max_args = 1,
     .usage = "help [VERB]",
     .help = "list the verbs, or print the usage of one",
     .handler = CmdHelp,
     .needs_mount = false},
    {.name = "keygen",
     .min_args = 0,
     .max_args = 1,
     .usage = "keygen [FILE]",
     .help = "make a node key pair (for constellationd --key FILE)",
     .handler = CmdKeygen,
     .details =
         "Writes \"public <key>\\nsecret <key>\\n\" (CURVE, Z85) to FILE, created with mode\n"
         "0600 (an existing FILE is never overwritten), and prints the public key; without\n"
         "FILE prints both lines. A node without --key makes DATA/node.key itself.",
     .needs_mount = false},
    {.name = "join",
     .min_args = 2,
     .max_args = 2,
     .usage = "join HOST:PORT TOKEN",
     .help = "join this node to the cluster of the node at HOST:PORT",
     .handler = CmdJoin,
     .details = "Writes `join HOST:PORT TOKEN` to constellation/ctl: the node (started with\n"
                "--bind, its own cluster still empty) gives up its cluster and joins the other;\n"
                "returns once it is admitted and caught up. TOKEN is what the other node printed\n"
                "(also in its DATA/join_token). Errors as for the ctl verb (docs/tree.md)."},
    {.name = "status",
     .min_args = 0,
     .max_args = 0,
     .usage = "status",
     .help = "print the cluster status (constellation/status)",
     .handler = CmdStatus},
    {.name = "ls",
     .min_args = 0,
     .max_args = 1,
     .usage = "ls [KIND|PATH]",
     .help = "list the kinds, or the objects of one kind",
     .handler = CmdLs,
     .details = "Without KIND lists the kinds (the directories under constellation/).\n"
                "`ls instances` (NAME STATE NODE CPU% RAM_MB RESTART) and `ls nodes`\n"
                "(NAME STATUS ADDR CPU_CORES RAM_MB) print tables; the singular works too.\n"
                "Any other kind or path lists the names it holds."},
    {.name = "get",
     .min_args = 1,
     .max_args = 1,
     .usage = "get PATH",
     .help = "print a file of the tree",
     .handler = CmdGet,
     .details = "PATH is relative to constellation/ (instances/web-1/ram_mb), or starts with\n"
                "constellation/, or is absolute inside the mount."},
    {.name = "set",
     .min_args = 2,
     .max_args = -1,
     .usage = "set PATH VALUE...|-",
     .help = "write a value to a file of the tree",
     .handler = CmdSet,
     .details = "Writes the VALUE words joined by spaces, plus a newline, with one write(2);\n"
                "`-` writes all of stdin instead. Put `--` before values that start with `--`."},
    {.name = "create",
     .min_args = 2,
     .max_args = 2,
     .usage = "create instance NAME [--cmd CMD] [--env K=V]... [--cpu-percent N] [--ram-mb N] "
              "[--disk-mb N] [--restart P] [--node N] [--namespace NS] [--start]",
     .help = "create an instance, set its spec, optionally start it",
     .handler = CmdCreate,
     .flags = kCreateFlags,
     .details = "mkdir instances/NAME, then one write of the given fields to its spec (the\n"
                "instance is removed again if that write fails), then `start` to its ctl."},
    {.name = "run",
     .min_args = 2,
     .max_args = -1,
     .usage = "run NAME [--env K=V]... [--cpu-percent N] [--ram-mb N] [--disk-mb N] "
              "[--pids-max N] [--network host|isolated] [--restart P] [--node N] "
              "[--namespace NS] -- CMD [ARGS...]",
     .help = "create an instance running CMD and start it",
     .handler = CmdRun,
     .flags = kRunFlags,
     .details = "mkdir instances/NAME, one write of cmd and the given fields to its spec (the\n"
                "instance is removed again if it is refused), then `start` to its ctl, which\n"
                "returns once CMD runs (or with the reason it cannot). Words of CMD that are\n"
                "not plain are single-quoted, so the instance sees the same arguments."},
    {.name = "rm",
     .min_args = 1,
     .max_args = -1,
     .usage = "rm instance NAME... | rm instances/NAME...",
     .help = "remove objects (rmdir)",
     .handler = CmdRm,
     .details = "The daemon stops a running instance before removing it."},
    {.name = "start",
     .min_args = 1,
     .max_args = -1,
     .usage = "start NAME...",
     .help = "start instances (writes `start` to instances/NAME/ctl)",
     .handler = CmdLifecycle},
    {.name = "stop",
     .min_args = 1,
     .max_args = -1,
     .usage = "stop NAME...",
     .help = "stop instances (writes `stop` to instances/NAME/ctl)",
     .handler = CmdLifecycle},
    {.name = "restart",
     .min_args = 1,
     .max_args = -1,
     .usage = "restart NAME...",
     .help = "restart instances (writes `restart` to instances/NAME/ctl)",
     .handler = CmdLifecycle},
    {.name = "kill",
     .min_args = 1,
     .max_args = 2,
     .usage = "kill NAME [SIGNAL]",
     .help = "signal an instance (writes `kill [SIGNAL]` to its ctl)",
     .handler = CmdKill,
     .details = "SIGNAL is a name like TERM or SIGKILL, or a number 1..64."},
    {.name = "events",
     .min_args = 0,
     .max_args = 0,
     .usage = "events [--count N]",
     .help = "follow the event stream",
     .handler = CmdEvents,
     .flags = kEventsFlags,
     .details = "Copies constellation/events to stdout, one flushed line per event, until\n"
                "interrupted, or until N lines with --count N (-n N)."},
    {.name = "logs",
     .min_args = 1,
     .max_args = 1,
     .usage = "logs NAME [-f]",
     .help = "print an instance's log",
     .handler = CmdLogs,
     .flags = kLogsFlags,
     .details = "-f (--follow) keeps printing new output until interrupted, like tail -f."},
    {.name = "top",
     .min_args = 0,
     .max_args = 0,
     .usage = "top [--once]",
     .help = "show the instances' stats",
     .handler = CmdTop,
     .flags = kTopFlags,
     .details = "NAME STATE CPU% RAM_MB RAM_PEAK_MB RESTARTS UPTIME_S from instances/*/stats,\n"
                "refreshed every 2 s until interrupted; --once prints one table."},
};

const Verb* FindVerb(std::string_view name) {
  for (const Verb& v : kVerbs) {
    if (name == v.name) return &v;
  }
  return nullptr;
}

void PrintGeneralHelp(std::ostream& out) {
  out << "usage: constellation [--mount DIR] VERB [ARGS...]\n\n"
         "Drives Constellation through its mounted file tree. The mount is --mount DIR, else\n"
         "$CONSTELLATION_MOUNT, else "
      << kDefaultMount << ".\n\nverbs:\n";
  for (const Verb& v : kVerbs) {
    out << "  " << v.name << std::string(10 - std::strlen(v.name), ' ') << v.help << "\n";
  }
  out << "\n'constellation VERB --help' prints the usage of one verb.\n"
         "Exit status: 0 success, 1 failure, 2 usage error.\n";
}

void PrintVerbHelp(std::ostream& out, const Verb& verb) {
  out << "usage: constellation " << verb.usage << "\n" << verb.help << "\n";
  if (*verb.details != '\0') out << verb.details << "\n";
}

const FlagSpec* FindFlag(const Verb& verb, const std::string& name) {
  for (const FlagSpec& f : verb.flags) {
    if (name == f.name || (f.alias != nullptr && name == f.alias)) return &f;
  }
  return nullptr;
}

}  // namespace

int Run(const std::vector<std::string>& args, Context& ctx) {
  Cli cli(ctx);
  std::optional<std::string> mount_flag;
  bool help = false;
  bool literal = false;  // after "--" every argument is positional
  const Verb* verb = nullptr;
  Invocation inv;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (!literal) {
      if (a == "--") {
        literal = true;
        continue;
      }
      if (a == "--mount") {
        if (i + 1 >= args.size()) return cli.Usage(verb, "--mount needs a directory");
        mount_flag = args[++i];
        continue;
      }
      if (a.starts_with("--mount=")) {
        mount_flag = a.substr(8);
        continue;
      }
      // `-h` after a verb without flags is a value (`set instances/x/cmd df -h`).
      if (a == "--help" || (a == "-h" && (verb == nullptr || !verb->flags.empty()))) {
        help = true;
        continue;
      }
    }
    if (verb == nullptr) {
      if (!literal && a.size() > 1 && a[0] == '-') return cli.Usage(nullptr, "unknown option " + a);
      verb = FindVerb(a);
      if (verb == nullptr) return cli.Usage(nullptr, "unknown verb \"" + a + "\"");
      continue;
    }
    // Verbs without flags (set, get, kill ...) take dash-words as values: `set cmd ls -l`.
    if (!literal && a.size() > 1 && a[0] == '-' && !verb->flags.empty()) {
      std::string name = a;
      std::string value;
      bool inline_value = false;
      size_t eq = a.find('=');
      if (a.starts_with("--") && eq != std::string::npos) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
        inline_value = true;
      }
      const FlagSpec* flag = FindFlag(*verb, name);
      if (flag == nullptr) return cli.Usage(verb, "unknown option " + name);
      if (flag->takes_value && !inline_value) {
        if (i + 1 >= args.size()) return cli.Usage(verb, name + " needs a value");
        value = args[++i];
      } else if (!flag->takes_value && inline_value) {
        return cli.Usage(verb, name + " takes no value");
      }
      std::vector<std::string>& values = inv.flags[flag->name];
      if (!flag->repeatable) values.clear();
      values.push_back(std::move(value));
      continue;
    }
    inv.args.push_back(a);
  }
  if (verb == nullptr) {
    if (help) {
      PrintGeneralHelp(*ctx.out);
      return kExitOk;
    }
    return cli.Usage(nullptr, "no verb given");
  }
  if (help) {
    PrintVerbHelp(*ctx.out, *verb);
    return kExitOk;
  }
  int n = static_cast<int>(inv.args.size());
  if (n < verb->min_args)
    return cli.Usage(verb, std::string("too few arguments for ") + verb->name);
  if (verb->max_args >= 0 && n > verb->max_args) {
    return cli.Usage(verb, std::string("too many arguments for ") + verb->name);
  }
  if (verb->needs_mount) {
    std::string mount = mount_flag                                 ? *mount_flag
                        : ctx.env_mount && !ctx.env_mount->empty() ? *ctx.env_mount
                                                                   : kDefaultMount;
    if (mount.empty()) return cli.Usage(verb, "--mount needs a directory");
    cli.SetMount(mount);
    if (!ctx.tree->IsDir(cli.root())) {
      return cli.Fail("no Constellation mount at " + cli.mount() +
                      " (start one with tools/up, or pass --mount)");
    }
  }
  return verb->handler(cli, *verb, inv);
}

namespace {
volatile std::sig_atomic_t g_stop = 0;
void OnStop(int) { g_stop = 1; }
}  // namespace

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + (argc > 0 ? 1 : 0), argv + argc);
  std::unique_ptr<Tree> tree = NewPosixTree();
  Context ctx;
  ctx.tree = tree.get();
  ctx.out = &std::cout;
  ctx.err = &std::cerr;
  ctx.in = &std::cin;
  if (const char* m = std::getenv("CONSTELLATION_MOUNT")) ctx.env_mount = m;
  ctx.terminal = ::isatty(STDOUT_FILENO) == 1;
  ctx.sleep_ms = [](int ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    ::nanosleep(&ts, nullptr);  // a signal ends it early; the caller checks interrupted()
  };
  ctx.interrupted = [] { return g_stop != 0; };
  ctx.watch_interrupts = [] {
    struct sigaction sa = {};
    sa.sa_handler = OnStop;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: a blocked read or sleep returns so the loop can stop
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);
  };
  int rc = Run(args, ctx);
  if (!std::cout.flush()) {
    std::cerr << "constellation: <stdout>: " << std::strerror(errno) << "\n";
    return kExitFailure;
  }
  return rc;
}

}  // namespace constellation::ctl
