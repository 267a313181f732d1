// DefaultEnv()'s process spawner: real children of this test process.
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "catch2/catch.hpp"
#include "node/env/env.h"
#include "tests/temp_dir.h"

namespace constellation {
namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Spawns and waits; returns the wait status.
int Run(const ProcessSpawner::Spec& spec) {
  ProcessSpawner* sp = DefaultEnv()->spawner;
  auto pid = sp->Spawn(spec);
  INFO(pid.status().ToString());
  REQUIRE(pid.ok());
  REQUIRE(*pid > 0);
  auto status = sp->Wait(*pid);
  INFO(status.status().ToString());
  REQUIRE(status.ok());
  return *status;
}

TEST_CASE("spawner: Wait returns the child's exit status") {
  int status = Run({{"/bin/sh", "-c", "exit 3"}, {}, ""});
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 3);

  status = Run({{"true"}, {}, ""});  // found on PATH
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);

  status = Run({{"/bin/sh", "-c", "kill -TERM $$"}, {}, ""});
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGTERM);
}

TEST_CASE("spawner: stdout and stderr go to stdout_path, appended") {
  TempDir dir("cn_spawn");
  std::string out = dir.path() + "/out.log";
  int status = Run({{"/bin/sh", "-c", "echo hello; echo oops >&2"}, {}, out});
  REQUIRE(WIFEXITED(status));
  REQUIRE(ReadFile(out) == "hello\noops\n");
  Run({{"/bin/sh", "-c", "echo again"}, {}, out});
  REQUIRE(ReadFile(out) == "hello\noops\nagain\n");
}

TEST_CASE("spawner: stdin is /dev/null and env replaces the environment when given") {
  TempDir dir("cn_spawn");
  std::string out = dir.path() + "/out.log";
  Run({{"/bin/sh", "-c", "cat; echo \"[$CN_TEST_VAR][${HOME-unset}]\""}, {"CN_TEST_VAR=x y"}, out});
  REQUIRE(ReadFile(out) == "[x y][unset]\n");
}

TEST_CASE("spawner: children do not inherit blocked or ignored signals") {
  // As a daemon might: SIGTERM blocked (for a signal thread) and ignored.
  sigset_t term, old_mask;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  REQUIRE(pthread_sigmask(SIG_BLOCK, &term, &old_mask) == 0);
  struct sigaction ignore {
  }, old_action;
  ignore.sa_handler = SIG_IGN;
  REQUIRE(sigaction(SIGTERM, &ignore, &old_action) == 0);

  int status = Run({{"/bin/sh", "-c", "kill -TERM $$; exit 7"}, {}, ""});

  REQUIRE(sigaction(SIGTERM, &old_action, nullptr) == 0);
  REQUIRE(pthread_sigmask(SIG_SETMASK, &old_mask, nullptr) == 0);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGTERM);
}

TEST_CASE("spawner: failures are reported, not crashes") {
  ProcessSpawner* sp = DefaultEnv()->spawner;
  REQUIRE(sp->Spawn({{}, {}, ""}).status().code() == Code::kInvalidArgument);
  REQUIRE_FALSE(sp->Spawn({{"/nonexistent/program"}, {}, ""}).ok());
  REQUIRE_FALSE(sp->Spawn({{"/bin/true"}, {}, "/nonexistent/dir/out.log"}).ok());
  REQUIRE_FALSE(sp->Wait(1).ok());  // not our child
}

}  // namespace
}  // namespace constellation
