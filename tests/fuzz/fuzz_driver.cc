// Standalone driver for libFuzzer-style targets, so every fuzz target also runs under CTest with
// gcc: it feeds the target the files named on the command line (a corpus) and then a bounded
// number of pseudo-random inputs, some built by mutating the corpus. The seed is printed; rerun
// with `--seed N` to replay. With -DCONSTELLATION_FUZZ=ON and clang the same target links against
// libFuzzer instead and this file is not used.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  uint64_t seed = std::random_device{}();
  long iterations = 200000;
  std::vector<std::string> corpus;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--seed") && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (!std::strcmp(argv[i], "--iterations") && i + 1 < argc) {
      iterations = std::strtol(argv[++i], nullptr, 10);
    } else {
      std::ifstream f(argv[i], std::ios::binary);
      corpus.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    }
  }
  std::printf("fuzz driver: seed %llu, %ld iterations, %zu corpus inputs\n",
              static_cast<unsigned long long>(seed), iterations, corpus.size());
  std::fflush(stdout);
  for (const std::string& c : corpus) {
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(c.data()), c.size());
  }
  std::mt19937_64 rng(seed);
  std::string buf;
  for (long it = 0; it < iterations; ++it) {
    if (!corpus.empty() && rng() % 2) {
      buf = corpus[rng() % corpus.size()];
      int edits = 1 + rng() % 8;
      for (int e = 0; e < edits; ++e) {
        switch (rng() % 4) {
          case 0:
            if (!buf.empty()) buf[rng() % buf.size()] = static_cast<char>(rng());
            break;
          case 1:
            buf.insert(buf.begin() + (buf.empty() ? 0 : rng() % buf.size()),
                       static_cast<char>(rng()));
            break;
          case 2:
            if (!buf.empty()) buf.erase(rng() % buf.size(), 1 + rng() % 4);
            break;
          case 3:
            if (!buf.empty()) buf.resize(rng() % buf.size());
            break;
        }
      }
    } else {
      buf.resize(rng() % 256);
      for (char& ch : buf) ch = static_cast<char>(rng() % 4 ? rng() % 128 : rng());
    }
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(buf.data()), buf.size());
  }
  std::printf("fuzz driver: done\n");
  return 0;
}
