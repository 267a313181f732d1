// Golden tests: every testdata/*.txt is a script of harness commands, each followed by "----" and
// its expected output (ended by a blank line). A run compares the output exactly;
// UPDATE_GOLDEN=1 rewrites the files with the actual output (review the diff before committing).
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "catch2/catch.hpp"
#include "tests/node/membership/harness.h"

namespace constellation::membership::testing {
namespace {

struct Block {
  std::vector<std::string> comments;
  std::string command;
  std::string expected;
  size_t line = 0;
};

std::vector<Block> Parse(const std::string& path, std::string* error) {
  std::ifstream f(path);
  std::vector<std::string> lines;
  std::string l;
  while (std::getline(f, l)) lines.push_back(l);
  std::vector<Block> blocks;
  std::vector<std::string> comments;
  for (size_t i = 0; i < lines.size();) {
    if (lines[i].empty()) {
      ++i;
      continue;
    }
    if (lines[i][0] == '#') {
      comments.push_back(lines[i++]);
      continue;
    }
    Block b;
    b.comments = std::move(comments);
    comments.clear();
    b.command = lines[i];
    b.line = i + 1;
    ++i;
    if (i >= lines.size() || lines[i] != "----") {
      *error = path + ":" + std::to_string(b.line) + ": command without a ---- line";
      return {};
    }
    ++i;
    while (i < lines.size() && !lines[i].empty()) b.expected += lines[i++] + "\n";
    blocks.push_back(std::move(b));
  }
  return blocks;
}

TEST_CASE("golden scripts") {
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(MEMBERSHIP_TESTDATA_DIR)) {
    if (e.path().extension() == ".txt") files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  REQUIRE(!files.empty());
  const bool update =
      std::getenv("UPDATE_GOLDEN") && std::string(std::getenv("UPDATE_GOLDEN")) == "1";
  for (const std::string& path : files) {
    DYNAMIC_SECTION(std::filesystem::path(path).filename().string()) {
      std::string error;
      std::vector<Block> blocks = Parse(path, &error);
      INFO(error);
      REQUIRE(error.empty());
      Harness h;
      std::ostringstream rewritten;
      for (Block& b : blocks) {
        std::string actual = h.Run(b.command);
        INFO(path << ":" << b.line << ": " << b.command);
        REQUIRE(actual.find("\n\n") == std::string::npos);
        if (update) {
          for (const std::string& c : b.comments) rewritten << c << "\n";
          rewritten << b.command << "\n----\n" << actual << "\n";
        } else {
          CHECK(actual == b.expected);
          if (actual != b.expected) break;  // later output depends on this block
        }
      }
      if (update) {
        std::string text = rewritten.str();
        if (!text.empty()) text.pop_back();  // no blank line at the end of the file
        std::ofstream(path) << text;
      }
    }
  }
}

}  // namespace
}  // namespace constellation::membership::testing
