#include "fsd/ctl_parse.h"

#include <csignal>

#include "catch2/catch.hpp"
#include "fsd/errno.h"

namespace constellation {
namespace {
constexpr VerbSpec kVerbs[] = {{"start", 0, 0, "start"}, {"kill", 0, 1, "kill [SIGNAL]"}};
}

TEST_CASE("ctl lines parse into a verb and arguments") {
  Result<ParsedCtl> p = ParseCtl("kill TERM", kVerbs);
  REQUIRE(p.ok());
  CHECK(p->verb == 1);
  CHECK(p->args == std::vector<std::string>{"TERM"});
  p = ParseCtl("  start\t", kVerbs);
  REQUIRE(p.ok());
  CHECK(p->verb == 0);
  CHECK(p->args.empty());
}

TEST_CASE("ctl refuses unknown verbs, wrong counts, empty lines and control characters") {
  Result<ParsedCtl> p = ParseCtl("explode", kVerbs);
  REQUIRE_FALSE(p.ok());
  CHECK(p.status().code() == Code::kInvalidArgument);
  CHECK(p.status().message() == "ctl: unknown verb \"explode\"; expected start | kill [SIGNAL]");
  CHECK(ParseCtl("start now", kVerbs).status().message() == "ctl: usage: start");
  CHECK(ParseCtl("kill 9 9", kVerbs).status().message() == "ctl: usage: kill [SIGNAL]");
  CHECK_FALSE(ParseCtl("", kVerbs).ok());
  CHECK_FALSE(ParseCtl("   ", kVerbs).ok());
  CHECK_FALSE(ParseCtl("start\nstop", kVerbs).ok());
  CHECK_FALSE(ParseCtl(std::string(kMaxCtlLineBytes + 1, 'a'), kVerbs).ok());
  std::string many = "kill";
  for (int i = 0; i < 40; ++i) many += " x";
  CHECK_FALSE(ParseCtl(many, kVerbs).ok());
}

TEST_CASE("signals by name or number") {
  CHECK(*ParseSignal("TERM") == SIGTERM);
  CHECK(*ParseSignal("SIGKILL") == SIGKILL);
  CHECK(*ParseSignal("9") == 9);
  CHECK(*ParseSignal("64") == 64);
  CHECK_FALSE(ParseSignal("65").ok());
  CHECK_FALSE(ParseSignal("0").ok());
  CHECK_FALSE(ParseSignal("SIG").ok());
  CHECK_FALSE(ParseSignal("term").ok());
  CHECK_FALSE(ParseSignal("-9").ok());
}

TEST_CASE("every status code maps to an errno") {
  CHECK(ToErrno(Status::Ok()) == 0);
  CHECK(ToErrno(Status::InvalidArgument("x")) == EINVAL);
  CHECK(ToErrno(Status::NotFound("x")) == ENOENT);
  CHECK(ToErrno(Status::NoSpace("x")) == ENOSPC);
  CHECK(ToErrno(Status::Unavailable("x")) == EAGAIN);
  CHECK(ToErrno(Status::TooLarge("x")) == EFBIG);
  for (int c = 1; c <= static_cast<int>(Code::kLoop); ++c) {
    CHECK(ToErrno(Status(static_cast<Code>(c), "x")) > 0);
  }
}

}  // namespace constellation
