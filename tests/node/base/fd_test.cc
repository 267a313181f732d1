#include "node/base/fd.h"

#include <fcntl.h>

#include <string>

#include "catch2/catch.hpp"
#include "tests/temp_dir.h"

namespace constellation {

TEST_CASE("FdBudget hands out at most its slots, and given-back slots again") {
  FdBudget budget(2);
  CHECK(budget.Take());
  CHECK(budget.Take());
  CHECK_FALSE(budget.Take());  // full: nothing taken
  CHECK(budget.used() == 2);
  budget.Give();
  CHECK(budget.Take());
  CHECK_FALSE(budget.Take());
  budget.Give(2);
  CHECK(budget.used() == 0);
}

TEST_CASE("PwriteAll and PreadAll move whole buffers; a short file is a failed read") {
  TempDir tmp;
  std::string path = tmp.path() + "/f";
  Fd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  REQUIRE(fd.get() >= 0);
  std::string data(100000, 'x');
  REQUIRE(PwriteAll(fd.get(), data.data(), data.size(), 10));
  std::string back(data.size(), '\0');
  REQUIRE(PreadAll(fd.get(), back.data(), back.size(), 10));
  CHECK(back == data);
  // Past the end: false, with errno 0 (not an I/O error).
  errno = EINTR;
  CHECK_FALSE(PreadAll(fd.get(), back.data(), back.size(), 20));
  CHECK(errno == 0);
  CHECK(fd.Close() == 0);
  CHECK_FALSE(PwriteAll(-1, data.data(), 1, 0));
  CHECK(errno == EBADF);
}

}  // namespace constellation
