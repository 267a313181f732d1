// Chunk ids and extent lists (node/dfs/chunk.h): hash vectors, the list operations against a
// byte-array model under randomized operations, and the extent list codec.
#include "node/dfs/chunk.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "catch2/catch.hpp"
#include "node/base/coding.h"

namespace constellation {
namespace {

// The pattern the hash vectors below were computed over (with `xxhsum -H2`, xxHash 0.8.1).
std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (uint64_t i = 0; i < n; ++i) s[i] = static_cast<char>((((i * 131 + 7) >> 3) ^ i) & 0xff);
  return s;
}

struct Vector {
  size_t size;
  const char* hex;
};
// Sizes cover each XXH3-128 code path (0, 1-3, 4-8, 9-16, 17-128, 129-240, long, multi-block).
const Vector kVectors[] = {
    {1, "a6cd5e9392000f6ac44bdff4074eecdb"},       {3, "fa2a8c1f0c4d338936c12bb0fbb61830"},
    {4, "2773a70380a721577b6c766f1f1c2382"},       {8, "72ace1ed0ec5db5ab6aec5a5cf163f87"},
    {9, "5f4618ac1770053885139f178a826072"},       {16, "9fe8d2e326e155bad01e5f6e6878720f"},
    {17, "d8eb3c0c5005d00213c3b37d57505d65"},      {128, "ab69ffd3f326e983160ea15e3b1683b9"},
    {129, "6fa56c479c5c49dbb79e0a2e6d9cdbd0"},     {240, "c96910ddd3469a1109cee63f7d709854"},
    {241, "6327a02dcd5a49a79231c47510b399cc"},     {1024, "a02a94765b73c05bfd465d2a141102ce"},
    {1025, "a0c83bdca539b9f62a87b0596369e008"},    {65536, "0694111e9b30408c1df9da2d06ffab89"},
    {4194304, "b8496d7b7001f976e943ba2c75306260"},
};

uint64_t TestSeed() {
  const char* env = std::getenv("CN_TEST_SEED");
  uint64_t seed = env != nullptr ? std::strtoull(env, nullptr, 10) : std::random_device{}();
  std::printf("seed %llu (rerun with CN_TEST_SEED=%llu)\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  return seed;
}

TEST_CASE("chunk ids: known XXH3-128 vectors and the hex form") {
  CHECK(HashChunk("").Hex() == "99aa06d3014798d86001c324468d497f");
  CHECK(HashChunk("abc").Hex() == "06b05ab6733a618578af5f94892f3950");
  for (const Vector& v : kVectors) {
    INFO("size " << v.size);
    CHECK(HashChunk(Pattern(v.size)).Hex() == v.hex);
  }
  ChunkId id = HashChunk("abc");
  CHECK(id.Hex().size() == 32);
  Result<ChunkId> back = ChunkId::FromHex(id.Hex());
  REQUIRE(back.ok());
  CHECK(*back == id);
  Result<ChunkId> upper = ChunkId::FromHex("06B05AB6733A618578AF5F94892F3950");
  REQUIRE(upper.ok());
  CHECK(*upper == id);
  CHECK_FALSE(ChunkId::FromHex("").ok());
  CHECK_FALSE(ChunkId::FromHex(id.Hex().substr(1)).ok());
  CHECK_FALSE(ChunkId::FromHex(id.Hex() + "0").ok());
  CHECK_FALSE(ChunkId::FromHex("06b05ab6733a618578af5f94892f395g").ok());
  CHECK(ChunkId{}.IsZero());
  CHECK_FALSE(id.IsZero());
  CHECK(ChunkId{1, 0} > ChunkId{0, 5});
  CHECK(ChunkId{1, 2} < ChunkId{1, 3});
  CHECK(ChunkIdHash{}(ChunkId{1, 2}) == ChunkIdHash{}(ChunkId{1, 2}));
}

TEST_CASE("chunk ids match the xxhsum command when it is installed") {
  if (::access("/usr/bin/xxhsum", X_OK) != 0) {
    WARN("xxhsum not installed; only the built-in vectors were checked");
    return;
  }
  std::mt19937_64 rng(TestSeed());
  std::string path =
      (std::filesystem::temp_directory_path() / ("cn_xxh_" + std::to_string(::getpid()))).string();
  for (size_t size : {size_t{0}, size_t{5}, size_t{200}, size_t{3000}, size_t{1} << 20}) {
    std::string data(size, '\0');
    for (char& c : data) c = static_cast<char>(rng());
    {
      std::ofstream f(path, std::ios::binary);
      f << data;
    }
    FILE* p = ::popen(("/usr/bin/xxhsum -H2 " + path + " 2>/dev/null").c_str(), "r");
    REQUIRE(p != nullptr);
    char line[256] = {};
    REQUIRE(std::fgets(line, sizeof(line), p) != nullptr);
    ::pclose(p);
    INFO("size " << size << ": " << line);
    CHECK(std::string(line).substr(0, 32) == HashChunk(data).Hex());
  }
  std::filesystem::remove(path);
}

// ---- Extent lists against a byte-array model ----

// A pool of small chunks for the model test; a byte's label says where it comes from.
struct Pool {
  std::vector<std::string> data;
  std::vector<ChunkRef> refs;
  std::map<ChunkId, int> index;
};

constexpr int64_t kHole = -1;
int64_t Label(int chunk, uint64_t offset) { return (int64_t{chunk} << 32) | int64_t(offset); }

// What the list says each of bytes [0, size) is.
std::vector<int64_t> Materialize(const Pool& pool, const ExtentList& list, size_t size) {
  std::vector<int64_t> labels(size, kHole);
  for (const Extent& e : list) {
    int c = pool.index.at(e.chunk.id);
    for (uint64_t k = 0; k < e.length; ++k) {
      if (e.file_offset + k < size) labels[e.file_offset + k] = Label(c, e.chunk_offset + k);
    }
  }
  return labels;
}

TEST_CASE("extent list operations match a byte-array model under random operations") {
  std::mt19937_64 rng(TestSeed());
  auto uniform = [&](uint64_t lo, uint64_t hi) {  // inclusive
    return std::uniform_int_distribution<uint64_t>(lo, hi)(rng);
  };
  Pool pool;
  for (int c = 0; c < 12; ++c) {
    std::string d(uniform(1, 300), '\0');
    for (char& ch : d) ch = static_cast<char>(rng());
    ChunkRef ref{HashChunk(d), static_cast<uint32_t>(d.size())};
    pool.index[ref.id] = c;
    pool.data.push_back(d);
    pool.refs.push_back(ref);
  }
  constexpr uint64_t kSpan = 3000;
  constexpr int kOps = 25000;
  ExtentList list;
  std::vector<int64_t> model;  // labels of bytes [0, file size)
  int writes = 0, merges_seen = 0;
  for (int op = 0; op < kOps; ++op) {
    uint64_t kind = uniform(0, 99);
    INFO("op " << op << " kind " << kind);
    if (kind < 40 || (kind < 50 && list.empty())) {  // overwrite with a random chunk range
      int c = static_cast<int>(uniform(0, pool.refs.size() - 1));
      uint32_t clen = pool.refs[c].length;
      Extent e;
      e.chunk = pool.refs[c];
      e.chunk_offset = static_cast<uint32_t>(uniform(0, clen - 1));
      e.length = uniform(1, clen - e.chunk_offset);
      e.file_offset = uniform(0, kSpan);
      REQUIRE(OverwriteExtent(&list, e).ok());
      if (model.size() < e.end()) model.resize(e.end(), kHole);
      for (uint64_t k = 0; k < e.length; ++k)
        model[e.file_offset + k] = Label(c, e.chunk_offset + k);
      ++writes;
    } else if (kind < 50) {  // continue an existing extent with the next bytes of its chunk
      const Extent& base = list[uniform(0, list.size() - 1)];
      uint64_t used = base.chunk_offset + base.length;
      if (used < base.chunk.length) {
        Extent e = base;
        e.file_offset = base.end();
        e.chunk_offset = static_cast<uint32_t>(used);
        e.length = uniform(1, base.chunk.length - used);
        size_t before = list.size();
        REQUIRE(OverwriteExtent(&list, e).ok());
        if (list.size() <= before) ++merges_seen;
        int c = pool.index.at(e.chunk.id);
        if (model.size() < e.end()) model.resize(e.end(), kHole);
        for (uint64_t k = 0; k < e.length; ++k) {
          model[e.file_offset + k] = Label(c, e.chunk_offset + k);
        }
      }
    } else if (kind < 65) {  // punch a hole (keeps the size)
      uint64_t off = uniform(0, kSpan + 500);
      uint64_t len = uniform(0, 800);
      REQUIRE(PunchHole(&list, off, len).ok());
      for (uint64_t k = off; k < off + len && k < model.size(); ++k) model[k] = kHole;
    } else if (kind < 75) {  // truncate, shrinking or growing
      uint64_t size = uniform(0, kSpan + 500);
      REQUIRE(TruncateExtents(&list, size).ok());
      if (size < model.size()) model.resize(size);
      model.resize(size, kHole);
    } else {  // map a random range and compare the pieces with the model
      uint64_t off = uniform(0, model.size() + 100);
      uint64_t len = uniform(0, 1000);
      Result<std::vector<ReadPiece>> pieces = MapRange(list, off, len);
      REQUIRE(pieces.ok());
      uint64_t cursor = off;
      for (const ReadPiece& p : *pieces) {
        REQUIRE(p.file_offset == cursor);
        REQUIRE(p.length > 0);
        for (uint64_t k = 0; k < p.length; ++k) {
          uint64_t at = p.file_offset + k;
          int64_t want = at < model.size() ? model[at] : kHole;
          int64_t got = p.hole ? kHole : Label(pool.index.at(p.chunk.id), p.chunk_offset + k);
          REQUIRE(got == want);
        }
        cursor += p.length;
      }
      REQUIRE(cursor == off + len);
    }
    REQUIRE(IsNormalized(list));
    REQUIRE(ExtentsEnd(list) <= model.size());
    REQUIRE(Materialize(pool, list, model.size()) == model);
    if (op % 97 == 0) {
      Result<ExtentList> back = DecodeExtents(EncodeExtents(list));
      REQUIRE(back.ok());
      REQUIRE(*back == list);
    }
  }
  CHECK(writes > kOps / 3);
  CHECK(merges_seen > 0);
}

Extent MakeExtent(uint64_t file_offset, uint64_t length, const ChunkRef& chunk,
                  uint32_t chunk_offset) {
  Extent e;
  e.file_offset = file_offset;
  e.length = length;
  e.chunk = chunk;
  e.chunk_offset = chunk_offset;
  return e;
}

TEST_CASE("extent operations: splitting, merging and refusals") {
  ChunkRef a{HashChunk("a"), 100};
  ChunkRef b{HashChunk("b"), 50};
  ExtentList list;
  REQUIRE(OverwriteExtent(&list, MakeExtent(0, 100, a, 0)).ok());
  // Overwrite the middle: the old extent splits around the new one.
  REQUIRE(OverwriteExtent(&list, MakeExtent(40, 10, b, 5)).ok());
  REQUIRE(list.size() == 3);
  CHECK(list[0] == MakeExtent(0, 40, a, 0));
  CHECK(list[1] == MakeExtent(40, 10, b, 5));
  CHECK(list[2] == MakeExtent(50, 50, a, 50));
  // Writing back the original bytes merges everything into one extent again.
  REQUIRE(OverwriteExtent(&list, MakeExtent(40, 10, a, 40)).ok());
  REQUIRE(list.size() == 1);
  CHECK(list[0] == MakeExtent(0, 100, a, 0));
  // A hole in the middle, then a sparse write far away.
  REQUIRE(PunchHole(&list, 10, 20).ok());
  REQUIRE(list.size() == 2);
  CHECK(list[1] == MakeExtent(30, 70, a, 30));
  REQUIRE(OverwriteExtent(&list, MakeExtent(1'000'000, 50, b, 0)).ok());
  Result<std::vector<ReadPiece>> pieces = MapRange(list, 5, 1'000'000);
  REQUIRE(pieces.ok());
  REQUIRE(pieces->size() == 5);
  CHECK((*pieces)[0].chunk_offset == 5);
  CHECK((*pieces)[1].hole);
  CHECK((*pieces)[1].length == 20);
  CHECK((*pieces)[3].hole);
  CHECK((*pieces)[4].length == 5);
  // Truncate into the middle of an extent, then to zero.
  REQUIRE(TruncateExtents(&list, 60).ok());
  REQUIRE(list.size() == 2);
  CHECK(list[1] == MakeExtent(30, 30, a, 30));
  REQUIRE(TruncateExtents(&list, 0).ok());
  CHECK(list.empty());

  // Refused arguments leave the list unchanged.
  REQUIRE(OverwriteExtent(&list, MakeExtent(0, 100, a, 0)).ok());
  ExtentList before = list;
  CHECK(OverwriteExtent(&list, MakeExtent(0, 0, a, 0)).code() == Code::kInvalidArgument);
  CHECK(OverwriteExtent(&list, MakeExtent(0, 10, a, 95)).code() == Code::kInvalidArgument);
  CHECK(OverwriteExtent(&list, MakeExtent(0, 10, ChunkRef{a.id, 0}, 0)).code() ==
        Code::kInvalidArgument);
  CHECK(OverwriteExtent(&list, MakeExtent(0, 10, ChunkRef{a.id, kMaxChunkBytes + 1}, 0)).code() ==
        Code::kInvalidArgument);
  CHECK(OverwriteExtent(&list, MakeExtent(kMaxFileBytes - 5, 10, a, 0)).code() ==
        Code::kInvalidArgument);
  CHECK(PunchHole(&list, kMaxFileBytes + 1, 1).code() == Code::kInvalidArgument);
  CHECK(TruncateExtents(&list, kMaxFileBytes + 1).code() == Code::kInvalidArgument);
  CHECK(MapRange(list, kMaxFileBytes, 1).status().code() == Code::kInvalidArgument);
  CHECK(list == before);
  // An invalid list is refused, not "fixed".
  ExtentList overlapping = {MakeExtent(0, 10, a, 0), MakeExtent(5, 10, b, 0)};
  ExtentList copy = overlapping;
  CHECK(OverwriteExtent(&overlapping, MakeExtent(0, 1, a, 0)).code() == Code::kInvalidArgument);
  CHECK(PunchHole(&overlapping, 0, 1).code() == Code::kInvalidArgument);
  CHECK(overlapping == copy);
  // MapRange stays in bounds and tiles the range even for an invalid list.
  Result<std::vector<ReadPiece>> odd = MapRange(overlapping, 0, 30);
  REQUIRE(odd.ok());
  uint64_t cursor = 0;
  for (const ReadPiece& p : *odd) {
    CHECK(p.file_offset == cursor);
    cursor += p.length;
  }
  CHECK(cursor == 30);

  // The largest file offset works at the edge; punching "to infinity" clamps.
  ExtentList edge;
  REQUIRE(OverwriteExtent(&edge, MakeExtent(kMaxFileBytes - 10, 10, a, 0)).ok());
  REQUIRE(PunchHole(&edge, kMaxFileBytes - 5, UINT64_MAX).ok());
  REQUIRE(edge.size() == 1);
  CHECK(edge[0].length == 5);
  Result<ExtentList> edge_back = DecodeExtents(EncodeExtents(edge));
  REQUIRE(edge_back.ok());
  CHECK(*edge_back == edge);
}

TEST_CASE("extent list decoder refuses malformed input") {
  ChunkRef a{HashChunk("a"), 100};
  ExtentList list = {MakeExtent(0, 10, a, 0), MakeExtent(300, 20, a, 50),
                     MakeExtent(1ull << 40, 100, a, 0)};
  std::string data = EncodeExtents(list);
  Result<ExtentList> back = DecodeExtents(data);
  REQUIRE(back.ok());
  CHECK(*back == list);
  for (size_t n = 0; n < data.size(); ++n) {
    CHECK(DecodeExtents(data.substr(0, n)).status().code() == Code::kCorruption);
  }
  CHECK(DecodeExtents(data + "x").status().code() == Code::kCorruption);
  std::string v0 = data;
  v0[0] = 0;
  CHECK(DecodeExtents(v0).status().code() == Code::kCorruption);
  std::string v2 = data;
  v2[0] = 2;
  CHECK(DecodeExtents(v2).status().code() == Code::kNotSupported);
  CHECK(DecodeExtents(data, 2).status().code() == Code::kCorruption);
  CHECK(DecodeExtents(data, 3).ok());
  // An empty list is one version byte and a zero count.
  CHECK(EncodeExtents({}) == std::string("\x01\x00", 2));
  CHECK(DecodeExtents(std::string("\x01\x00", 2))->empty());
  // A huge count with no bytes behind it.
  CHECK(DecodeExtents(std::string("\x01\xff\xff\xff\xff\x0f", 6)).status().code() ==
        Code::kCorruption);
  // A non-canonical varint (count 0 spelled in two bytes).
  CHECK(DecodeExtents(std::string("\x01\x80\x00", 3)).status().code() == Code::kCorruption);
  // Extents that are each wrong in one way.
  auto one = [](const Extent& e) { return EncodeExtents(ExtentList{e}); };
  CHECK_FALSE(DecodeExtents(one(MakeExtent(0, 0, a, 0))).ok());
  CHECK_FALSE(DecodeExtents(one(MakeExtent(0, 10, a, 91))).ok());
  CHECK_FALSE(DecodeExtents(one(MakeExtent(0, 10, ChunkRef{a.id, kMaxChunkBytes + 1}, 0))).ok());
  CHECK_FALSE(DecodeExtents(one(MakeExtent(kMaxFileBytes, 1, a, 0))).ok());
  CHECK(DecodeExtents(one(MakeExtent(kMaxFileBytes - 1, 1, a, 0))).ok());
  // Overlap cannot even be expressed (gaps are unsigned), but a gap past the limit can.
  Writer w;
  w.U8(1);
  w.Varint(2);
  for (int i = 0; i < 2; ++i) {
    w.Varint(i == 0 ? 0 : kMaxFileBytes - 5);
    w.Varint(10);
    w.Fixed64(a.id.hi);
    w.Fixed64(a.id.lo);
    w.Varint(100);
    w.Varint(0);
  }
  CHECK(DecodeExtents(w.Take()).status().code() == Code::kCorruption);
}

}  // namespace
}  // namespace constellation
