// Tests for the `constellation` CLI: every verb against the in-memory FakeTree, plus the POSIX
// tree on a temporary directory.
#include "ctl/cli.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <streambuf>

#include "catch2/catch.hpp"

namespace constellation::ctl {
namespace {

const std::string kRoot = "/m/constellation";

// Records the buffer's content at every flush, to prove `events` flushes line by line.
class FlushRecordingBuf : public std::stringbuf {
 public:
  std::vector<std::string> snapshots;

 protected:
  int sync() override {
    snapshots.push_back(str());
    return 0;
  }
};

struct Cli {
  FakeTree tree;
  FlushRecordingBuf out_buf;
  std::ostream out{&out_buf};
  std::ostringstream err;
  std::istringstream in;
  Context ctx;
  std::vector<int> sleeps;
  int interrupt_after_sleeps = 1000;  // `interrupted()` turns true after this many sleeps
  bool watched = false;

  Cli() {
    tree.AddFile(kRoot + "/status", "cluster c1\nnode node-a\nleader node-a\nhealth ok\n");
    tree.AddFile(kRoot + "/error", "");
    tree.AddFile(kRoot + "/ctl", "");
    tree.AddDir(kRoot + "/instances");
    tree.AddDir(kRoot + "/nodes");
    // As the daemon does: a new instance shows its control files at once.
    tree.on_mkdir = [this](const std::string& dir) {
      if (dir.rfind(kRoot + "/instances/", 0) != 0) return;
      for (const char* f : {"spec", "ctl", "error", "cmd", "ram_mb", "log"}) {
        tree.AddFile(dir + "/" + f, "");
      }
      tree.AddFile(dir + "/state", "created\n");
    };
    ctx.tree = &tree;
    ctx.out = &out;
    ctx.err = &err;
    ctx.in = &in;
    ctx.env_mount = "/m";
    ctx.sleep_ms = [this](int ms) { sleeps.push_back(ms); };
    ctx.interrupted = [this] { return static_cast<int>(sleeps.size()) >= interrupt_after_sleeps; };
    ctx.watch_interrupts = [this] { watched = true; };
  }

  void AddInstance(const std::string& name, const std::string& state, const std::string& node,
                   const std::string& cpu, const std::string& ram, const std::string& restart) {
    std::string d = kRoot + "/instances/" + name;
    tree.AddDir(d);
    tree.AddFile(d + "/state", state + "\n");
    tree.AddFile(d + "/node", node.empty() ? "" : node + "\n");
    tree.AddFile(d + "/cpu_percent", cpu + "\n");
    tree.AddFile(d + "/ram_mb", ram + "\n");
    tree.AddFile(d + "/restart", restart + "\n");
    tree.AddFile(d + "/ctl", "");
    tree.AddFile(d + "/error", "");
    tree.AddFile(d + "/log", "");
    tree.AddFile(d + "/cmd", "");
  }

  int Run(std::vector<std::string> args) { return ctl::Run(args, ctx); }
  std::string Out() const { return out_buf.str(); }
  std::string Err() const { return err.str(); }
};

const std::vector<std::string> kAllVerbs = {"help", "status", "ls",    "get",  "set",  "create",
                                            "run",  "rm",     "start", "stop", "join", "restart",
                                            "kill", "events", "logs",  "top"};

// ---- help and usage ----

TEST_CASE("--help lists every verb and needs no mount", "[ctl]") {
  Cli c;
  c.ctx.env_mount = "/nowhere";
  REQUIRE(c.Run({"--help"}) == kExitOk);
  for (const std::string& v : kAllVerbs) {
    INFO(v);
    CHECK(c.Out().find("\n  " + v + " ") != std::string::npos);
  }
  CHECK(c.Err().empty());
}

TEST_CASE("VERB --help prints that verb's usage", "[ctl]") {
  for (const std::string& v : kAllVerbs) {
    Cli c;
    INFO(v);
    REQUIRE(c.Run({v, "--help"}) == kExitOk);
    CHECK(c.Out().rfind("usage: constellation " + v, 0) == 0);
  }
  Cli c;
  REQUIRE(c.Run({"help", "create"}) == kExitOk);
  CHECK(c.Out().find("usage: constellation create instance NAME [--cmd CMD]") == 0);
  Cli d;
  CHECK(d.Run({"help", "nope"}) == kExitUsage);
}

TEST_CASE("no verb, unknown verb and unknown global option are usage errors", "[ctl]") {
  for (const auto& args : std::vector<std::vector<std::string>>{{}, {"frobnicate"}, {"--bogus"}}) {
    Cli c;
    CHECK(c.Run(args) == kExitUsage);
    CHECK(c.Err().find("usage: constellation [--mount DIR] VERB") != std::string::npos);
    CHECK(c.Out().empty());
  }
  Cli c;
  c.Run({"frobnicate"});
  CHECK(c.Err().rfind("constellation: unknown verb \"frobnicate\"\n", 0) == 0);
}

TEST_CASE("wrong argument counts and bad options exit 2 with the verb's usage", "[ctl]") {
  struct Case {
    std::vector<std::string> args;
    std::string usage;
  };
  const std::vector<Case> cases = {
      {{"get"}, "get PATH"},
      {{"get", "a", "b"}, "get PATH"},
      {{"status", "x"}, "status"},
      {{"set", "a"}, "set PATH"},
      {{"ls", "a", "b"}, "ls [KIND|PATH]"},
      {{"kill", "a", "b", "c"}, "kill NAME [SIGNAL]"},
      {{"kill", "a", "two words"}, "kill NAME [SIGNAL]"},
      {{"start"}, "start NAME..."},
      {{"logs"}, "logs NAME [-f]"},
      {{"logs", "a", "--tail"}, "logs NAME [-f]"},
      {{"events", "--count", "0"}, "events [--count N]"},
      {{"events", "--count", "x"}, "events [--count N]"},
      {{"events", "--count"}, "events [--count N]"},
      {{"events", "extra"}, "events [--count N]"},
      {{"top", "--once=1"}, "top [--once]"},
      {{"create", "instance"}, "create instance NAME"},
      {{"create", "deployment", "x"}, "create instance NAME"},
      {{"create", "instance", "a/b"}, "create instance NAME"},
      {{"create", "instance", ".."}, "create instance NAME"},
      {{"create", "instance", "x", "--cmd"}, "create instance NAME"},
      {{"create", "instance", "x", "--cpu"}, "create instance NAME"},
      {{"create", "instance", "x", "--cmd", "a\nb"}, "create instance NAME"},
      {{"rm", "instance"}, "rm instance NAME..."},
      {{"rm", "/abs"}, "rm instance NAME..."},
      {{"start", "../x"}, "start NAME..."},
      {{"get", "../etc/passwd"}, "get PATH"},
      {{"get", "/etc/passwd"}, "get PATH"},
      {{"status", "--mount"}, "status"},
  };
  for (const Case& k : cases) {
    Cli c;
    std::string joined;
    for (const auto& a : k.args) joined += a + " ";
    INFO(joined);
    CHECK(c.Run(k.args) == kExitUsage);
    CHECK(c.Err().rfind("constellation: ", 0) == 0);
    CHECK(c.Err().find("\nusage: constellation " + k.usage) != std::string::npos);
    CHECK(c.tree.ops().empty());  // a usage error never touches the tree
  }
}

// ---- mount discovery ----

TEST_CASE("mount discovery: --mount beats $CONSTELLATION_MOUNT beats the default", "[ctl]") {
  Cli c;
  c.tree.AddFile("/flag/constellation/status", "from flag\n");
  c.tree.AddFile("/env/constellation/status", "from env\n");
  c.tree.AddFile("/mnt/constellation/constellation/status", "from default\n");

  SECTION("flag before the verb") {
    c.ctx.env_mount = "/env";
    REQUIRE(c.Run({"--mount", "/flag", "status"}) == kExitOk);
    CHECK(c.Out() == "from flag\n");
  }
  SECTION("flag after the verb, = form, trailing slash") {
    c.ctx.env_mount = "/env";
    REQUIRE(c.Run({"status", "--mount=/flag/"}) == kExitOk);
    CHECK(c.Out() == "from flag\n");
  }
  SECTION("environment") {
    c.ctx.env_mount = "/env";
    REQUIRE(c.Run({"status"}) == kExitOk);
    CHECK(c.Out() == "from env\n");
  }
  SECTION("default when the variable is unset or empty") {
    c.ctx.env_mount = std::nullopt;
    REQUIRE(c.Run({"status"}) == kExitOk);
    CHECK(c.Out() == "from default\n");
    Cli d;
    d.tree.AddFile("/mnt/constellation/constellation/status", "from default\n");
    d.ctx.env_mount = "";
    REQUIRE(d.Run({"status"}) == kExitOk);
    CHECK(d.Out() == "from default\n");
  }
}

TEST_CASE("a missing mount gives a clear message", "[ctl]") {
  Cli c;
  CHECK(c.Run({"--mount", "/nothing/here", "ls"}) == kExitFailure);
  CHECK(c.Err() ==
        "constellation: no Constellation mount at /nothing/here (start one with tools/up, or pass "
        "--mount)\n");
  CHECK(c.Out().empty());
}

// ---- status, ls, get ----

TEST_CASE("status prints constellation/status", "[ctl]") {
  Cli c;
  REQUIRE(c.Run({"status"}) == kExitOk);
  CHECK(c.Out() == "cluster c1\nnode node-a\nleader node-a\nhealth ok\n");
  c.tree.Fail(FakeTree::Op::kRead, kRoot + "/status", EIO);
  CHECK(c.Run({"status"}) == kExitFailure);
  CHECK(c.Err() == "constellation: /m/constellation/status: Input/output error\n");
}

TEST_CASE("ls without a kind lists the kind directories only", "[ctl]") {
  Cli c;
  c.tree.AddDir(kRoot + "/deployments");
  REQUIRE(c.Run({"ls"}) == kExitOk);
  CHECK(c.Out() == "deployments\ninstances\nnodes\n");
}

TEST_CASE("ls instances prints a table from each instance's files", "[ctl]") {
  Cli c;
  c.AddInstance("web-1", "running", "node-a", "100", "512", "always");
  c.AddInstance("db", "failed oom", "", "2000", "4096", "on-failure");
  std::string expected =
      "NAME   STATE       NODE    CPU%  RAM_MB  RESTART\n"
      "db     failed oom  -       2000  4096    on-failure\n"
      "web-1  running     node-a  100   512     always\n";
  REQUIRE(c.Run({"ls", "instances"}) == kExitOk);
  CHECK(c.Out() == expected);

  Cli s;  // singular works too
  s.AddInstance("web-1", "running", "node-a", "100", "512", "always");
  s.AddInstance("db", "failed oom", "", "2000", "4096", "on-failure");
  REQUIRE(s.Run({"ls", "instance"}) == kExitOk);
  CHECK(s.Out() == expected);
}

TEST_CASE("ls instances shows - for unreadable files and only a header when empty", "[ctl]") {
  Cli c;
  REQUIRE(c.Run({"ls", "instances"}) == kExitOk);
  CHECK(c.Out() == "NAME  STATE  NODE  CPU%  RAM_MB  RESTART\n");
  Cli d;
  d.tree.AddDir(kRoot + "/instances/bare");
  REQUIRE(d.Run({"ls", "instances"}) == kExitOk);
  CHECK(d.Out() ==
        "NAME  STATE  NODE  CPU%  RAM_MB  RESTART\n"
        "bare  -      -     -     -       -\n");
}

TEST_CASE("ls nodes prints a table", "[ctl]") {
  Cli c;
  std::string n = kRoot + "/nodes/node-a";
  c.tree.AddFile(n + "/status", "alive\n");
  c.tree.AddFile(n + "/addr", "127.0.0.1:7400\n");
  c.tree.AddFile(n + "/cpu_cores", "8\n");
  c.tree.AddFile(n + "/ram_mb", "16000\n");
  REQUIRE(c.Run({"ls", "node"}) == kExitOk);
  CHECK(c.Out() ==
        "NAME    STATUS  ADDR            CPU_CORES  RAM_MB\n"
        "node-a  alive   127.0.0.1:7400  8          16000\n");
}

TEST_CASE("ls of another kind or a path lists names; unknown kinds fail", "[ctl]") {
  Cli c;
  c.tree.AddDir(kRoot + "/services/api");
  c.tree.AddDir(kRoot + "/services/web");
  REQUIRE(c.Run({"ls", "services"}) == kExitOk);
  CHECK(c.Out() == "api\nweb\n");

  Cli d;
  d.AddInstance("web-1", "running", "", "100", "256", "never");
  REQUIRE(d.Run({"ls", "instances/web-1"}) == kExitOk);
  CHECK(d.Out() == "cmd\ncpu_percent\nctl\nerror\nlog\nnode\nram_mb\nrestart\nstate\n");

  Cli e;
  CHECK(e.Run({"ls", "widgets"}) == kExitFailure);
  CHECK(e.Err() == "constellation: /m/constellation/widgets: No such file or directory\n");
}

TEST_CASE("get accepts relative, constellation/-prefixed and absolute paths", "[ctl]") {
  for (const char* p : {"instances/web-1/ram_mb", "constellation/instances/web-1/ram_mb",
                        "/m/constellation/instances/web-1/ram_mb",
                        "/constellation/instances/web-1/ram_mb", "instances//web-1/./ram_mb"}) {
    Cli c;
    c.AddInstance("web-1", "running", "", "100", "512", "never");
    INFO(p);
    REQUIRE(c.Run({"get", p}) == kExitOk);
    CHECK(c.Out() == "512\n");
  }
}

TEST_CASE("get of a missing file reports path and strerror", "[ctl]") {
  Cli c;
  CHECK(c.Run({"get", "instances/nope/ram_mb"}) == kExitFailure);
  CHECK(c.Err() ==
        "constellation: /m/constellation/instances/nope/ram_mb: No such file or directory\n");
  CHECK(c.Out().empty());
}

// ---- set and the error format ----

TEST_CASE("set writes the joined value plus a newline in one write", "[ctl]") {
  Cli c;
  c.AddInstance("web-1", "created", "", "100", "256", "never");
  REQUIRE(c.Run({"set", "instances/web-1/ram_mb", "512"}) == kExitOk);
  REQUIRE(c.Run({"set", "instances/web-1/cmd", "python3", "-m", "http.server", "-h"}) == kExitOk);
  REQUIRE(c.Run({"set", "instances/web-1/cmd", "--", "--weird", "--help"}) == kExitOk);
  REQUIRE(c.Run({"set", "instances/web-1/node", ""}) == kExitOk);
  using W = std::pair<std::string, std::string>;
  CHECK(c.tree.writes() == std::vector<W>{
                               {kRoot + "/instances/web-1/ram_mb", "512\n"},
                               {kRoot + "/instances/web-1/cmd", "python3 -m http.server -h\n"},
                               {kRoot + "/instances/web-1/cmd", "--weird --help\n"},
                               {kRoot + "/instances/web-1/node", "\n"},
                           });
  CHECK(c.Out().empty());
  CHECK(c.Err().empty());
}

TEST_CASE("set PATH - writes all of stdin in one write", "[ctl]") {
  Cli c;
  c.AddInstance("web-1", "created", "", "100", "256", "never");
  c.tree.AddFile(kRoot + "/instances/web-1/spec", "");
  std::string spec = "ram_mb=512\ncpu_percent=50\nenv=PORT=8080\n";
  c.in.str(spec);
  REQUIRE(c.Run({"set", "instances/web-1/spec", "-"}) == kExitOk);
  REQUIRE(c.tree.writes().size() == 1);
  CHECK(c.tree.writes()[0].second == spec);

  Cli big;
  big.AddInstance("web-1", "created", "", "100", "256", "never");
  big.in.str(std::string(kMaxStdinBytes + 1, 'x'));
  CHECK(big.Run({"set", "instances/web-1/cmd", "-"}) == kExitFailure);
  CHECK(big.Err() == "constellation: /m/constellation/instances/web-1/cmd: File too large\n");
  CHECK(big.tree.writes().empty());
}

TEST_CASE("a refused write shows strerror and the object's error file", "[ctl]") {
  Cli c;
  c.AddInstance("web-1", "created", "", "100", "256", "never");
  std::string path = kRoot + "/instances/web-1/ram_mb";
  c.tree.Fail(FakeTree::Op::kWrite, path, EINVAL, kRoot + "/instances/web-1/error",
              "ram_mb: \"abc\" is not an integer (expected 0 or 4..4194304 MiB)\nsecond line\n");
  CHECK(c.Run({"set", "instances/web-1/ram_mb", "abc"}) == kExitFailure);
  CHECK(c.Err() ==
        "constellation: /m/constellation/instances/web-1/ram_mb: Invalid argument: ram_mb: "
        "\"abc\" is not an integer (expected 0 or 4..4194304 MiB)\n");
  CHECK(c.Out().empty());
}

TEST_CASE("join writes the ctl verb; the daemon's refusal is shown with its reason", "[ctl]") {
  Cli c;
  REQUIRE(c.Run({"join", "10.0.0.1:7400", "cn1.abc"}) == kExitOk);
  using W = std::pair<std::string, std::string>;
  CHECK(c.tree.writes() == std::vector<W>{{kRoot + "/ctl", "join 10.0.0.1:7400 cn1.abc\n"}});
  CHECK(c.Run({"join", "a b", "t"}) == kExitUsage);
  CHECK(c.Run({"join", "10.0.0.1:7400"}) == kExitUsage);
  CHECK(c.tree.writes().size() == 1);
  Cli d;
  d.tree.Fail(FakeTree::Op::kWrite, kRoot + "/ctl", EBUSY, kRoot + "/error",
              "join: this node's cluster has state (1 instances, e.g. web); join needs a fresh "
              "node\n");
  CHECK(d.Run({"join", "10.0.0.1:7400", "cn1.abc"}) == kExitFailure);
  CHECK(d.Err().find("Device or resource busy: join: this node's cluster has state") !=
        std::string::npos);
}

TEST_CASE("the error file is per object: nodes, and constellation/error for the rest", "[ctl]") {
  Cli c;
  c.tree.AddFile(kRoot + "/nodes/node-a/labels", "");
  c.tree.AddFile(kRoot + "/nodes/node-a/error", "");
  c.tree.Fail(FakeTree::Op::kWrite, kRoot + "/nodes/node-a/labels", EINVAL,
              kRoot + "/nodes/node-a/error", "labels: bad key \"!\"\n");
  CHECK(c.Run({"set", "nodes/node-a/labels", "!=1"}) == kExitFailure);
  CHECK(c.Err() ==
        "constellation: /m/constellation/nodes/node-a/labels: Invalid argument: labels: bad key "
        "\"!\"\n");

  Cli d;
  d.tree.Fail(FakeTree::Op::kWrite, kRoot + "/ctl", EINVAL, kRoot + "/error",
              "ctl: unknown verb \"frob\"\n");
  CHECK(d.Run({"set", "ctl", "frob"}) == kExitFailure);
  CHECK(d.Err() ==
        "constellation: /m/constellation/ctl: Invalid argument: ctl: unknown verb "
        "\"frob\"\n");
}

TEST_CASE("no suffix when the error file is empty or the kernel refused", "[ctl]") {
  Cli c;
  c.AddInstance("web-1", "created", "", "100", "256", "never");
  c.tree.Fail(FakeTree::Op::kWrite, kRoot + "/instances/web-1/ram_mb", EAGAIN);
  CHECK(c.Run({"set", "instances/web-1/ram_mb", "5"}) == kExitFailure);
  CHECK(c.Err() ==
        "constellation: /m/constellation/instances/web-1/ram_mb: Resource temporarily "
        "unavailable\n");

  // EACCES comes from the kernel's permission check: the error file holds an older, unrelated
  // reason that must not be shown.
  Cli d;
  d.AddInstance("web-1", "created", "", "100", "256", "never");
  d.tree.AddFile(kRoot + "/instances/web-1/error", "ram_mb: stale reason\n");
  d.tree.Fail(FakeTree::Op::kWrite, kRoot + "/instances/web-1/ram_mb", EACCES);
  CHECK(d.Run({"set", "instances/web-1/ram_mb", "5"}) == kExitFailure);
  CHECK(d.Err() == "constellation: /m/constellation/instances/web-1/ram_mb: Permission denied\n");

  Cli e;  // a file that does not exist: ENOENT, no suffix
  e.tree.AddFile(kRoot + "/error", "something old\n");
  CHECK(e.Run({"set", "instances/ghost/ram_mb", "5"}) == kExitFailure);
  CHECK(e.Err() ==
        "constellation: /m/constellation/instances/ghost/ram_mb: No such file or directory\n");
}

// ---- create ----

TEST_CASE("create instance without fields only makes the directory", "[ctl]") {
  Cli c;
  REQUIRE(c.Run({"create", "instance", "web-1"}) == kExitOk);
  CHECK(c.tree.ops() == std::vector<std::string>{"mkdir " + kRoot + "/instances/web-1"});
  CHECK(c.tree.IsDir(kRoot + "/instances/web-1"));
  CHECK(c.Out().empty());
  CHECK(c.Err().empty());
}

TEST_CASE("create instance with flags writes the exact spec in one write, then starts", "[ctl]") {
  Cli c;
  REQUIRE(c.Run({"create",
                 "instance",
                 "web-1",
                 "--ram-mb",
                 "64",
                 "--env",
                 "PORT=8080",
                 "--cmd",
                 "python3 -m http.server",
                 "--start",
                 "--cpu-percent=50",
                 "--env",
                 "MODE=prod",
                 "--disk-mb",
                 "10",
                 "--restart",
                 "on-failure",
                 "--node",
                 "node-a",
                 "--namespace",
                 "team",
                 "--ram-mb",
                 "128"}) == kExitOk);
  std::string d = kRoot + "/instances/web-1";
  CHECK(c.tree.ops() ==
        std::vector<std::string>{"mkdir " + d, "write " + d + "/spec", "write " + d + "/ctl"});
  REQUIRE(c.tree.writes().size() == 2);
  CHECK(c.tree.writes()[0].second ==
        "cmd=python3 -m http.server\n"
        "env=PORT=8080\n"
        "env=MODE=prod\n"
        "cpu_percent=50\n"
        "ram_mb=128\n"
        "disk_mb=10\n"
        "restart=on-failure\n"
        "node=node-a\n"
        "namespace=team\n");
  CHECK(c.tree.writes()[1] == std::pair<std::string, std::string>{d + "/ctl", "start\n"});
}

TEST_CASE("create removes the instance again when the spec write fails", "[ctl]") {
  Cli c;
  std::string d = kRoot + "/instances/web-1";
  c.tree.Fail(FakeTree::Op::kWrite, d + "/spec", EINVAL, d + "/error",
              "ram_mb: \"lots\" is not an integer (expected 0 or 4..4194304 MiB)\n");
  CHECK(c.Run({"create", "instance", "web-1", "--ram-mb", "lots", "--start"}) == kExitFailure);
  CHECK(c.tree.ops() ==
        std::vector<std::string>{"mkdir " + d, "write " + d + "/spec", "rmdir " + d});
  CHECK_FALSE(c.tree.Exists(d));
  CHECK(c.Err() ==
        "constellation: /m/constellation/instances/web-1/spec: Invalid argument: ram_mb: "
        "\"lots\" is not an integer (expected 0 or 4..4194304 MiB)\n");
}

TEST_CASE("create reports a refused mkdir, with constellation/error as the reason", "[ctl]") {
  Cli c;
  std::string d = kRoot + "/instances/Bad_Name!";
  c.tree.Fail(FakeTree::Op::kMkdir, d, EINVAL, kRoot + "/error",
              "instance name \"Bad_Name!\" is invalid\n");
  CHECK(c.Run({"create", "instance", "Bad_Name!", "--ram-mb", "64"}) == kExitFailure);
  CHECK(c.Err() ==
        "constellation: " + d + ": Invalid argument: instance name \"Bad_Name!\" is invalid\n");
  CHECK(c.tree.ops() == std::vector<std::string>{"mkdir " + d});

  Cli e;
  e.AddInstance("web-1", "created", "", "100", "256", "never");
  e.tree.AddFile(kRoot + "/instances/web-1/error", "old\n");
  CHECK(e.Run({"create", "instance", "web-1", "--ram-mb", "64"}) == kExitFailure);
  CHECK(e.Err() == "constellation: /m/constellation/instances/web-1: File exists\n");
  CHECK(e.tree.writes().empty());
}

TEST_CASE("create keeps the instance when only the start fails", "[ctl]") {
  Cli c;
  std::string d = kRoot + "/instances/web-1";
  c.tree.Fail(FakeTree::Op::kWrite, d + "/ctl", EPERM, d + "/error", "ctl: quota exceeded\n");
  CHECK(c.Run({"create", "instances", "web-1", "--start"}) == kExitFailure);
  CHECK(c.tree.IsDir(d));
  CHECK(c.Err() == "constellation: " + d + "/ctl: Operation not permitted: ctl: quota exceeded\n");
}

// ---- run ----

TEST_CASE("run makes, specifies and starts an instance; plain words stay, others are quoted",
          "[ctl]") {
  Cli c;
  REQUIRE(c.Run({"run",
                 "web-1",
                 "--ram-mb",
                 "128",
                 "--env",
                 "A=1",
                 "--cpu-percent=25",
                 "--env",
                 "B=x y",
                 "--restart",
                 "on-failure",
                 "--network",
                 "isolated",
                 "--",
                 "python3",
                 "-m",
                 "http.server",
                 "8080",
                 "--bind",
                 "it's here",
                 ""}) == kExitOk);
  std::string d = kRoot + "/instances/web-1";
  CHECK(c.tree.ops() ==
        std::vector<std::string>{"mkdir " + d, "write " + d + "/spec", "write " + d + "/ctl"});
  REQUIRE(c.tree.writes().size() == 2);
  CHECK(c.tree.writes()[0].second ==
        "cmd=python3 -m http.server 8080 --bind 'it'\\''s here' ''\n"
        "env=A=1\n"
        "env=B=x y\n"
        "cpu_percent=25\n"
        "ram_mb=128\n"
        "network=isolated\n"
        "restart=on-failure\n");
  CHECK(c.tree.writes()[1].second == "start\n");
}

TEST_CASE("run reports a start that fails with the instance's reason, and keeps it", "[ctl]") {
  Cli c;
  std::string d = kRoot + "/instances/x";
  c.tree.Fail(FakeTree::Op::kWrite, d + "/ctl", ENOENT, d + "/error",
              "start failed: exec: nosuch: No such file or directory\n");
  CHECK(c.Run({"run", "x", "--", "nosuch"}) == kExitFailure);
  CHECK(c.Err() == "constellation: " + d +
                       "/ctl: No such file or directory: start failed: exec: nosuch: No such file "
                       "or directory\n");
  CHECK(c.tree.IsDir(d));
}

TEST_CASE("run removes the instance when its spec is refused; usage errors touch nothing",
          "[ctl]") {
  Cli c;
  std::string d = kRoot + "/instances/x";
  c.tree.Fail(FakeTree::Op::kWrite, d + "/spec", EINVAL, d + "/error", "ram_mb: bad\n");
  CHECK(c.Run({"run", "x", "--ram-mb", "lots", "--", "true"}) == kExitFailure);
  CHECK_FALSE(c.tree.Exists(d));
  for (const auto& args :
       std::vector<std::vector<std::string>>{{"run", "x"},
                                             {"run", "x", "--bogus", "1", "--", "true"},
                                             {"run", "a/b", "--", "true"},
                                             {"run", "x", "--", "a\nb"}}) {
    Cli u;
    CHECK(u.Run(args) == kExitUsage);
    CHECK(u.tree.ops().empty());
  }
}

// ---- rm ----

TEST_CASE("rm removes instances by kind and names or by kind/name", "[ctl]") {
  Cli c;
  for (const char* n : {"a", "b", "c", "d"}) c.AddInstance(n, "created", "", "1", "4", "never");
  REQUIRE(c.Run({"rm", "instance", "a", "b"}) == kExitOk);
  REQUIRE(c.Run({"rm", "instances/c", "instance/d/"}) == kExitOk);
  CHECK(c.tree.ops() == std::vector<std::string>{
                            "rmdir " + kRoot + "/instances/a", "rmdir " + kRoot + "/instances/b",
                            "rmdir " + kRoot + "/instances/c", "rmdir " + kRoot + "/instances/d"});
  std::vector<DirEntry> left;
  REQUIRE(c.tree.List(kRoot + "/instances", &left) == 0);
  CHECK(left.empty());
}

TEST_CASE("rm goes on after a failure and exits 1", "[ctl]") {
  Cli c;
  c.AddInstance("a", "created", "", "1", "4", "never");
  c.AddInstance("b", "created", "", "1", "4", "never");
  c.tree.Fail(FakeTree::Op::kRmdir, kRoot + "/instances/a", EPERM, kRoot + "/instances/a/error",
              "instance is protected\n");
  CHECK(c.Run({"rm", "instance", "a", "ghost", "b"}) == kExitFailure);
  CHECK(c.Err() ==
        "constellation: /m/constellation/instances/a: Operation not permitted: instance is "
        "protected\n"
        "constellation: /m/constellation/instances/ghost: No such file or directory\n");
  CHECK_FALSE(c.tree.Exists(kRoot + "/instances/b"));
  CHECK(c.tree.Exists(kRoot + "/instances/a"));
}

// ---- lifecycle verbs ----

TEST_CASE("start, stop, restart and kill write the verb to ctl", "[ctl]") {
  Cli c;
  c.AddInstance("a", "created", "", "1", "4", "never");
  c.AddInstance("b", "created", "", "1", "4", "never");
  REQUIRE(c.Run({"start", "a", "b"}) == kExitOk);
  REQUIRE(c.Run({"stop", "a"}) == kExitOk);
  REQUIRE(c.Run({"restart", "b"}) == kExitOk);
  REQUIRE(c.Run({"kill", "a"}) == kExitOk);
  REQUIRE(c.Run({"kill", "a", "KILL"}) == kExitOk);
  REQUIRE(c.Run({"kill", "b", "-9"}) == kExitOk);  // passed through; the daemon judges it
  std::string a = kRoot + "/instances/a/ctl", b = kRoot + "/instances/b/ctl";
  using W = std::pair<std::string, std::string>;
  CHECK(c.tree.writes() == std::vector<W>{{a, "start\n"},
                                          {b, "start\n"},
                                          {a, "stop\n"},
                                          {b, "restart\n"},
                                          {a, "kill\n"},
                                          {a, "kill KILL\n"},
                                          {b, "kill -9\n"}});
}

TEST_CASE("a refused ctl write is reported with the instance's reason", "[ctl]") {
  Cli c;
  c.AddInstance("a", "created", "", "1", "4", "never");
  c.tree.Fail(FakeTree::Op::kWrite, kRoot + "/instances/a/ctl", EINVAL,
              kRoot + "/instances/a/error", "ctl: unknown signal \"FOO\"\n");
  CHECK(c.Run({"kill", "a", "FOO"}) == kExitFailure);
  CHECK(c.Err() ==
        "constellation: /m/constellation/instances/a/ctl: Invalid argument: ctl: "
        "unknown signal \"FOO\"\n");
  Cli d;
  CHECK(d.Run({"start", "ghost"}) == kExitFailure);
  CHECK(d.Err() ==
        "constellation: /m/constellation/instances/ghost/ctl: No such file or "
        "directory\n");
}

// ---- events ----

TEST_CASE("events copies whole lines and flushes each one", "[ctl]") {
  Cli c;
  c.tree.SetStream(kRoot + "/events",
                   {"1 instance_created web-1 uid=0\n1 instance_up", "dated web-1 fields=ram_mb\n",
                    "2 instance_removed web-1\n"});
  REQUIRE(c.Run({"events"}) == kExitOk);
  std::string all =
      "1 instance_created web-1 uid=0\n1 instance_updated web-1 fields=ram_mb\n"
      "2 instance_removed web-1\n";
  CHECK(c.Out() == all);
  // Every line was visible downstream before the next one was read.
  std::vector<std::string>& s = c.out_buf.snapshots;
  CHECK(std::find(s.begin(), s.end(), "1 instance_created web-1 uid=0\n") != s.end());
  CHECK(std::find(s.begin(), s.end(),
                  "1 instance_created web-1 uid=0\n1 instance_updated web-1 fields=ram_mb\n") !=
        s.end());
  for (const std::string& snap : s) CHECK((snap.empty() || snap.back() == '\n'));
}

TEST_CASE("events --count stops after N lines", "[ctl]") {
  Cli c;
  c.tree.SetStream(kRoot + "/events", {"a\nb\nc\n", "d\n"}, EIO);
  REQUIRE(c.Run({"events", "--count", "2"}) == kExitOk);
  CHECK(c.Out() == "a\nb\n");
  Cli d;
  d.tree.SetStream(kRoot + "/events", {"a\nb\nc\n"});
  REQUIRE(d.Run({"events", "-n", "3"}) == kExitOk);
  CHECK(d.Out() == "a\nb\nc\n");
}

TEST_CASE("events reports a failing stream and a failing open", "[ctl]") {
  Cli c;
  c.tree.SetStream(kRoot + "/events", {"a\npartial"}, EIO);
  CHECK(c.Run({"events"}) == kExitFailure);
  CHECK(c.Out() == "a\n");
  CHECK(c.Err() == "constellation: /m/constellation/events: Input/output error\n");

  Cli d;
  d.tree.Fail(FakeTree::Op::kRead, kRoot + "/events", EACCES);
  CHECK(d.Run({"events"}) == kExitFailure);
  CHECK(d.Err() == "constellation: /m/constellation/events: Permission denied\n");
}

TEST_CASE("events stops on an interrupted read once asked to", "[ctl]") {
  Cli c;
  c.interrupt_after_sleeps = 0;
  c.tree.SetStream(kRoot + "/events", {"a\n", "half"}, EINTR);
  REQUIRE(c.Run({"events"}) == kExitOk);
  CHECK(c.Out() == "a\nhalf\n");
}

// ---- logs ----

TEST_CASE("logs prints the log", "[ctl]") {
  Cli c;
  c.AddInstance("web-1", "running", "", "100", "256", "never");
  c.tree.AddFile(kRoot + "/instances/web-1/log", "line 1\nline 2\n");
  REQUIRE(c.Run({"logs", "web-1"}) == kExitOk);
  CHECK(c.Out() == "line 1\nline 2\n");
  CHECK_FALSE(c.watched);
  Cli d;
  CHECK(d.Run({"logs", "ghost"}) == kExitFailure);
  CHECK(d.Err() ==
        "constellation: /m/constellation/instances/ghost/log: No such file or directory\n");
}

TEST_CASE("logs -f follows new output until interrupted", "[ctl]") {
  Cli c;
  c.AddInstance("web-1", "running", "", "100", "256", "never");
  std::string log = kRoot + "/instances/web-1/log";
  c.tree.AddFile(log, "one\n");
  // The instance writes more while the CLI sleeps between polls.
  const std::vector<std::string> more = {"two\n", "", "three\nfour\n"};
  size_t appended = 0;
  std::vector<uint64_t> offsets;
  c.tree.on_read_at = [&](const std::string& path, uint64_t offset) {
    offsets.push_back(offset);
    if (appended < c.sleeps.size() && appended < more.size()) {
      c.tree.AddFile(path, *c.tree.Content(path) + more[appended++]);
    }
  };
  c.interrupt_after_sleeps = 5;
  REQUIRE(c.Run({"logs", "web-1", "-f"}) == kExitOk);
  CHECK(c.Out() == "one\ntwo\nthree\nfour\n");
  CHECK(c.watched);
  CHECK(c.sleeps.size() == 5);
  for (int ms : c.sleeps) CHECK(ms == kFollowPollMs);
  CHECK(offsets.front() == 0);
  CHECK(offsets.back() == std::string("one\ntwo\nthree\nfour\n").size());
}

TEST_CASE("logs -f reports a log that goes away", "[ctl]") {
  Cli c;
  c.AddInstance("web-1", "running", "", "100", "256", "never");
  std::string log = kRoot + "/instances/web-1/log";
  c.tree.AddFile(log, "bye\n");
  c.tree.on_read_at = [&](const std::string&, uint64_t offset) {
    if (offset > 0) c.tree.Fail(FakeTree::Op::kRead, log, ENOENT);
  };
  CHECK(c.Run({"logs", "--follow", "web-1"}) == kExitFailure);
  CHECK(c.Out() == "bye\n");
  CHECK(c.Err() == "constellation: " + log + ": No such file or directory\n");
}

// ---- top ----

void AddStats(Cli& c, const std::string& name, const std::string& state, const std::string& stats) {
  c.AddInstance(name, state, "", "100", "256", "never");
  c.tree.AddFile(kRoot + "/instances/" + name + "/stats", stats);
}

TEST_CASE("top --once prints one table of stats", "[ctl]") {
  Cli c;
  AddStats(c, "web-1", "running",
           "cpu_percent 12.5\nram_mb 40\nram_peak_mb 52\ndisk_mb 1\nrestarts 2\nuptime_s 3600\n"
           "oom_kills 0\n");
  c.AddInstance("new", "created", "", "100", "256", "never");  // no stats file
  REQUIRE(c.Run({"top", "--once"}) == kExitOk);
  CHECK(c.Out() ==
        "NAME   STATE    CPU%  RAM_MB  RAM_PEAK_MB  RESTARTS  UPTIME_S\n"
        "new    created  -     -       -            -         -\n"
        "web-1  running  12.5  40      52           2         3600\n");
  CHECK_FALSE(c.watched);
  CHECK(c.sleeps.empty());
}

TEST_CASE("top refreshes every 2 s until interrupted", "[ctl]") {
  Cli c;
  AddStats(c, "a", "running", "cpu_percent 1\n");
  c.interrupt_after_sleeps = 2;
  REQUIRE(c.Run({"top"}) == kExitOk);
  std::string table =
      "NAME  STATE    CPU%  RAM_MB  RAM_PEAK_MB  RESTARTS  UPTIME_S\n"
      "a     running  1     -       -            -         -\n";
  CHECK(c.Out() == table + "\n" + table);
  CHECK(c.sleeps == std::vector<int>{kTopRefreshMs, kTopRefreshMs});
  CHECK(c.watched);

  Cli t;
  AddStats(t, "a", "running", "cpu_percent 1\n");
  t.ctx.terminal = true;
  t.interrupt_after_sleeps = 1;
  REQUIRE(t.Run({"top"}) == kExitOk);
  CHECK(t.Out() == "\033[H\033[2J" + table);
}

TEST_CASE("top fails when instances cannot be listed", "[ctl]") {
  Cli c;
  c.tree.Fail(FakeTree::Op::kList, kRoot + "/instances", EIO);
  CHECK(c.Run({"top", "--once"}) == kExitFailure);
  CHECK(c.Err() == "constellation: /m/constellation/instances: Input/output error\n");
}

// ---- the POSIX tree, on a temporary directory ----

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/cn-ctl-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() { std::system(("rm -rf '" + path + "'").c_str()); }
};

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << content;
}

TEST_CASE("the POSIX tree does plain file operations", "[ctl]") {
  TempDir t;
  auto tree = NewPosixTree();
  std::string f = t.path + "/value";
  WriteFile(f, "a much longer old value\n");
  REQUIRE(tree->Write(f, "512\n") == 0);  // O_TRUNC: nothing of the old value remains
  std::string s;
  REQUIRE(tree->Read(f, &s) == 0);
  CHECK(s == "512\n");
  CHECK(tree->Write(t.path + "/missing", "x") == ENOENT);  // never creates files
  CHECK_FALSE(tree->Exists(t.path + "/missing"));

  REQUIRE(tree->ReadAt(f, 1, 2, &s) == 0);
  CHECK(s == "12");
  REQUIRE(tree->ReadAt(f, 10, 100, &s) == 0);
  CHECK(s.empty());

  REQUIRE(tree->Mkdir(t.path + "/dir") == 0);
  CHECK(tree->Mkdir(t.path + "/dir") == EEXIST);
  CHECK(tree->IsDir(t.path + "/dir"));
  CHECK_FALSE(tree->IsDir(f));
  CHECK(tree->Exists(f));
  std::vector<DirEntry> entries;
  REQUIRE(tree->List(t.path, &entries) == 0);
  REQUIRE(entries.size() == 2);
  CHECK((entries[0].name == "dir" && entries[0].is_dir));
  CHECK((entries[1].name == "value" && !entries[1].is_dir));
  CHECK(tree->List(f, &entries) == ENOTDIR);
  REQUIRE(tree->Rmdir(t.path + "/dir") == 0);
  CHECK(tree->Rmdir(t.path + "/dir") == ENOENT);

  std::unique_ptr<Stream> stream;
  REQUIRE(tree->Open(f, &stream) == 0);
  char buf[3];
  CHECK(stream->Read(buf, 3) == 3);
  CHECK(stream->Read(buf, 3) == 1);
  CHECK(stream->Read(buf, 3) == 0);
  CHECK(tree->Open(t.path + "/missing", &stream) == ENOENT);

  WriteFile(t.path + "/big", std::string(kMaxReadBytes + 1, 'x'));
  CHECK(tree->Read(t.path + "/big", &s) == EFBIG);
}

TEST_CASE("the CLI end to end over a directory shaped like the tree", "[ctl]") {
  TempDir t;
  std::string root = t.path + "/constellation";
  REQUIRE(::mkdir(root.c_str(), 0755) == 0);
  REQUIRE(::mkdir((root + "/instances").c_str(), 0755) == 0);
  WriteFile(root + "/status", "health ok\n");
  auto tree = NewPosixTree();
  std::ostringstream out, err;
  std::istringstream in;
  Context ctx;
  ctx.tree = tree.get();
  ctx.out = &out;
  ctx.err = &err;
  ctx.in = &in;
  REQUIRE(Run({"--mount", t.path, "status"}, ctx) == kExitOk);
  CHECK(out.str() == "health ok\n");
  REQUIRE(Run({"--mount", t.path, "create", "instance", "web-1"}, ctx) == kExitOk);
  WriteFile(root + "/instances/web-1/ram_mb", "256\n");
  REQUIRE(Run({"--mount", t.path, "set", "instances/web-1/ram_mb", "1024"}, ctx) == kExitOk);
  out.str("");
  REQUIRE(Run({"--mount", t.path, "get", root + "/instances/web-1/ram_mb"}, ctx) == kExitOk);
  CHECK(out.str() == "1024\n");
  // A spec write into a plain directory fails (no such file): the instance is removed again.
  CHECK(Run({"--mount", t.path, "create", "instance", "web-2", "--ram-mb", "64"}, ctx) ==
        kExitFailure);
  CHECK_FALSE(tree->Exists(root + "/instances/web-2"));
  CHECK(err.str() ==
        "constellation: " + root + "/instances/web-2/spec: No such file or directory\n");
}

}  // namespace
}  // namespace constellation::ctl
