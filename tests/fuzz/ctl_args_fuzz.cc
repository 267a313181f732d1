// Fuzz target for the CLI's argument parser and verbs: the input, split on NUL bytes, is argv;
// it runs against a populated FakeTree (with injected failures, an events stream and a log) and
// must never crash, hang or read out of bounds.
//
// Random bytes rarely spell a verb, so a token whose first byte is >= 0x80 is replaced by a word
// from the dictionary below followed by the token's remaining bytes; everything else is literal.
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "ctl/cli.h"

namespace {

using constellation::ctl::Context;
using constellation::ctl::FakeTree;

const char* const kWords[] = {
    "help",
    "status",
    "ls",
    "get",
    "set",
    "create",
    "rm",
    "start",
    "stop",
    "restart",
    "kill",
    "events",
    "logs",
    "top",
    "--help",
    "-h",
    "--mount",
    "--mount=/m",
    "/m",
    "--",
    "-",
    "instance",
    "instances",
    "nodes",
    "node",
    "instances/web-1",
    "instances/web-1/ram_mb",
    "instances/bad/ram_mb",
    "/m/constellation/status",
    "/constellation/ctl",
    "ctl",
    "web-1",
    "bad",
    "ghost",
    "--cmd",
    "--env",
    "--cpu-percent",
    "--ram-mb=64",
    "--disk-mb",
    "--restart",
    "--node",
    "--namespace",
    "--start",
    "--count",
    "-n",
    "2",
    "-f",
    "--follow",
    "--once",
    "constellation/",
    "..",
    ".",
    "instances/",
    "services",
};
constexpr size_t kWordCount = sizeof(kWords) / sizeof(kWords[0]);

void Populate(FakeTree& tree) {
  const std::string root = "/m/constellation";
  tree.AddFile(root + "/status", "cluster c\nhealth ok\n");
  tree.AddFile(root + "/error", "last cluster error\n");
  tree.AddFile(root + "/ctl", "");
  tree.AddDir(root + "/services/api");
  tree.AddFile(root + "/nodes/node-a/status", "alive\n");
  tree.AddFile(root + "/nodes/node-a/addr", "127.0.0.1:1\n");
  tree.AddFile(root + "/nodes/node-a/error", "");
  for (const char* name : {"web-1", "bad"}) {
    std::string d = root + "/instances/" + name;
    for (const char* f : {"ram_mb", "cpu_percent", "node", "restart", "ctl", "spec", "cmd"}) {
      tree.AddFile(d + "/" + f, "1\n");
    }
    tree.AddFile(d + "/state", "running\n");
    tree.AddFile(d + "/error", "");
    tree.AddFile(d + "/stats", "cpu_percent 1\nram_mb 2\nbroken\n\n x\n");
    tree.AddFile(d + "/log", "log line\npartial");
  }
  tree.Fail(FakeTree::Op::kWrite, root + "/instances/bad/ram_mb", EINVAL,
            root + "/instances/bad/error", "ram_mb: bad\n");
  tree.Fail(FakeTree::Op::kWrite, root + "/instances/bad/spec", EINVAL,
            root + "/instances/bad/error", "spec: bad\n");
  tree.Fail(FakeTree::Op::kRmdir, root + "/instances/bad", EPERM);
  tree.Fail(FakeTree::Op::kRead, root + "/instances/bad/log", EIO);
  tree.SetStream(root + "/events", {"1 a b\n2 c", " d\n", std::string(3, '\n'), "tail"}, EINTR);
  tree.on_mkdir = [&tree](const std::string& dir) {
    tree.AddFile(dir + "/spec", "");
    tree.AddFile(dir + "/ctl", "");
    tree.AddFile(dir + "/error", "");
  };
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args;
  std::string current;
  auto finish = [&] {
    if (!current.empty() && static_cast<unsigned char>(current[0]) >= 0x80) {
      current = kWords[static_cast<unsigned char>(current[0]) % kWordCount] + current.substr(1);
    }
    args.push_back(std::move(current));
    current.clear();
  };
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      finish();
    } else {
      current.push_back(static_cast<char>(data[i]));
    }
  }
  if (size > 0) finish();

  FakeTree tree;
  Populate(tree);
  std::ostringstream out, err;
  std::istringstream in("value from stdin\n");
  int sleeps = 0;
  int polls = 0;
  Context ctx;
  ctx.tree = &tree;
  ctx.out = &out;
  ctx.err = &err;
  ctx.in = &in;
  ctx.env_mount = "/m";
  ctx.terminal = size % 2 == 0;
  ctx.sleep_ms = [&](int) { ++sleeps; };
  // Every loop that waits for an interrupt must stop once this turns true.
  ctx.interrupted = [&] { return ++polls > 3 || sleeps > 3; };
  ctx.watch_interrupts = [] {};
  int rc = constellation::ctl::Run(args, ctx);
  if (rc < 0 || rc > 2) __builtin_trap();
  return 0;
}
