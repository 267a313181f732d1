// Chunks and file extent lists: the value types of the DFS data layer (DESIGN.md §4).
//
// A file's bytes are cut into chunks of at most kMaxChunkBytes, each named by the XXH3-128 hash of
// its content (ChunkId). A file's content is an ExtentList: ordered, disjoint ranges of the file,
// each mapped to a range inside one chunk. Bytes of the file not covered by an extent are a hole
// and read as zeros (sparse files); the file's size lives in its inode, not here, so a hole at the
// end of a file is simply "no extent there".
//
// The list operations below (overwrite, punch, truncate, map) are pure functions: they run inside
// the replicated state machine's apply, so they are deterministic, never crash on any input, and on
// a refused argument leave the list unchanged. Every list they produce is normalized: sorted,
// disjoint, no empty extents, and no two neighbours that could be merged into one (same chunk,
// contiguous in both the file and the chunk), so equal contents give equal lists on every replica.
//
// Encoding of an ExtentList (goes into metadata commands; versioned, canonical, bounds-checked):
//   U8 version | Varint count | count x { Varint gap | Varint length | Fixed64 id.hi |
//   Fixed64 id.lo | Varint chunk_length | Varint chunk_offset }
// where gap = file_offset - end of the previous extent (0 for the first: its file_offset).
//
// Thread-safety: plain values and pure functions.
#ifndef CONSTELLATION_NODE_DFS_CHUNK_H_
#define CONSTELLATION_NODE_DFS_CHUNK_H_

#include <compare>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "node/base/status.h"

namespace constellation {

inline constexpr uint32_t kMaxChunkBytes = 4u << 20;  // 4 MiB
// Largest file offset (exclusive end) any extent may reach: POSIX off_t's maximum.
inline constexpr uint64_t kMaxFileBytes =
    static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
inline constexpr uint8_t kExtentListVersion = 1;
// Bound on the number of extents one encoded list may hold (4 TiB of 4 MiB chunks).
inline constexpr size_t kMaxExtentsPerList = 1u << 20;

// The XXH3-128 (seed 0) hash of a chunk's content; the chunk's name everywhere (store, wire,
// metadata). The zero id is never the hash of real data in practice and is used as "none".
struct ChunkId {
  uint64_t hi = 0;  // XXH128_hash_t.high64
  uint64_t lo = 0;  // XXH128_hash_t.low64

  // 32 lowercase hex chars, the canonical (big-endian) form: the same text `xxhsum -H2` prints.
  std::string Hex() const;
  // Parses Hex()'s form (either case); InvalidArgument for anything else.
  static Result<ChunkId> FromHex(std::string_view hex);
  bool IsZero() const { return hi == 0 && lo == 0; }

  auto operator<=>(const ChunkId&) const = default;
};

struct ChunkIdHash {
  size_t operator()(const ChunkId& id) const { return static_cast<size_t>(id.lo ^ (id.hi * 31)); }
};

ChunkId HashChunk(std::string_view data);

// A whole chunk: its id and its length in bytes (1..kMaxChunkBytes).
struct ChunkRef {
  ChunkId id;
  uint32_t length = 0;

  bool operator==(const ChunkRef&) const = default;
};

// File bytes [file_offset, file_offset + length) are chunk bytes
// [chunk_offset, chunk_offset + length). Valid when length > 0,
// chunk_offset + length <= chunk.length <= kMaxChunkBytes and file_offset + length <=
// kMaxFileBytes.
struct Extent {
  uint64_t file_offset = 0;
  uint64_t length = 0;
  ChunkRef chunk;
  uint32_t chunk_offset = 0;

  uint64_t end() const { return file_offset + length; }
  bool operator==(const Extent&) const = default;
};

// Sorted by file_offset, disjoint; see the file comment.
using ExtentList = std::vector<Extent>;

// InvalidArgument naming the first problem: an invalid extent, or extents out of order/overlapping.
// Does not require normalization (decoded lists need not be normalized).
Status ValidateExtent(const Extent& e);
Status ValidateExtents(const ExtentList& list);
// True when `list` is valid and normalized.
bool IsNormalized(const ExtentList& list);

// End of the last extent; 0 for an empty list. The file's size is at least this.
uint64_t ExtentsEnd(const ExtentList& list);

// Makes file bytes [e.file_offset, e.end()) come from `e`, cutting or splitting whatever extents
// covered them. `list` must be valid (InvalidArgument otherwise, as for an invalid `e`).
Status OverwriteExtent(ExtentList* list, const Extent& e);
// Makes [offset, offset + length) a hole. length 0 is a no-op; the range may extend past the data.
Status PunchHole(ExtentList* list, uint64_t offset, uint64_t length);
// Drops every byte at or past `size` (the data part of truncate(2); growing a file needs no
// extent change, the new bytes are a hole).
Status TruncateExtents(ExtentList* list, uint64_t size);

// One piece of a read: either a hole (zeros) or a range inside a chunk.
struct ReadPiece {
  uint64_t file_offset = 0;
  uint64_t length = 0;
  bool hole = true;
  ChunkRef chunk;             // when !hole
  uint32_t chunk_offset = 0;  // when !hole

  bool operator==(const ReadPiece&) const = default;
};
// Pieces that exactly tile [offset, offset + length), in order (empty for length 0). The caller
// clamps the range to the file's size first.
Result<std::vector<ReadPiece>> MapRange(const ExtentList& list, uint64_t offset, uint64_t length);

std::string EncodeExtents(const ExtentList& list);
// Corruption for malformed, non-canonical or invalid input, or more than `max_extents` extents;
// NotSupported for a newer version. Encode(Decode(x)) == x for every accepted x.
Result<ExtentList> DecodeExtents(std::string_view data, size_t max_extents = kMaxExtentsPerList);

}  // namespace constellation

#endif  // CONSTELLATION_NODE_DFS_CHUNK_H_
