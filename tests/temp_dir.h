// A fresh directory under the system temp dir (or under `root`) for one test, removed with
// everything in it at scope exit. Shared by the test binaries (include as "tests/temp_dir.h"; needs
// Catch2). Thread-safety: a value owned by one test.
#ifndef CONSTELLATION_TESTS_TEMP_DIR_H_
#define CONSTELLATION_TESTS_TEMP_DIR_H_

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

#include "catch2/catch.hpp"

namespace constellation {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "cn_test", const std::string& root = "") {
    std::filesystem::path base =
        root.empty() ? std::filesystem::temp_directory_path() : std::filesystem::path(root);
    std::string tmpl = (base / (prefix + "_XXXXXX")).string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace constellation

#endif  // CONSTELLATION_TESTS_TEMP_DIR_H_
