#include "node/dfs/chunk.h"

#include <xxhash.h>

#include <algorithm>

#include "node/base/coding.h"

namespace constellation {
namespace {

void AppendHex64(uint64_t v, std::string* out) {
  static constexpr char kDigits[] = "0123456789abcdef";
  for (int shift = 60; shift >= 0; shift -= 4) out->push_back(kDigits[(v >> shift) & 0xf]);
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool Mergeable(const Extent& a, const Extent& b) {
  return a.end() == b.file_offset && a.chunk == b.chunk &&
         static_cast<uint64_t>(a.chunk_offset) + a.length == b.chunk_offset;
}

// Merges every mergeable pair of neighbours, in one pass.
void Normalize(ExtentList* list) {
  if (list->size() < 2) return;
  size_t out = 0;
  for (size_t i = 1; i < list->size(); ++i) {
    Extent& prev = (*list)[out];
    const Extent& cur = (*list)[i];
    if (Mergeable(prev, cur)) {
      prev.length += cur.length;
    } else {
      (*list)[++out] = cur;
    }
  }
  list->resize(out + 1);
}

// Removes file bytes [begin, end) from `list` (valid), cutting the extents at both edges, and
// returns the index where the removed range was (where an extent for it would be inserted).
size_t CutRange(ExtentList* list, uint64_t begin, uint64_t end) {
  // Extents [first, last) overlap [begin, end): ends are sorted because extents are disjoint.
  auto first_it = std::partition_point(list->begin(), list->end(),
                                       [&](const Extent& x) { return x.end() <= begin; });
  auto last_it = std::partition_point(first_it, list->end(),
                                      [&](const Extent& x) { return x.file_offset < end; });
  size_t first = static_cast<size_t>(first_it - list->begin());
  size_t last = static_cast<size_t>(last_it - list->begin());
  if (first == last) return first;

  Extent kept[2];
  size_t kept_count = 0;
  const Extent& f = (*list)[first];
  if (f.file_offset < begin) {
    Extent left = f;
    left.length = begin - f.file_offset;
    kept[kept_count++] = left;
  }
  const Extent& l = (*list)[last - 1];
  if (l.end() > end) {
    Extent right = l;
    uint64_t skip = end - l.file_offset;
    right.file_offset = end;
    right.chunk_offset = static_cast<uint32_t>(l.chunk_offset + skip);
    right.length = l.length - skip;
    kept[kept_count++] = right;
  }
  list->erase(list->begin() + static_cast<std::ptrdiff_t>(first),
              list->begin() + static_cast<std::ptrdiff_t>(last));
  list->insert(list->begin() + static_cast<std::ptrdiff_t>(first), kept, kept + kept_count);
  // The insertion point is after the left remainder, if there is one.
  return first + ((kept_count > 0 && kept[0].file_offset < begin) ? 1 : 0);
}

}  // namespace

std::string ChunkId::Hex() const {
  std::string out;
  out.reserve(32);
  AppendHex64(hi, &out);
  AppendHex64(lo, &out);
  return out;
}

Result<ChunkId> ChunkId::FromHex(std::string_view hex) {
  if (hex.size() != 32) return Status::InvalidArgument("chunk id must be 32 hex characters");
  ChunkId id;
  for (size_t i = 0; i < 32; ++i) {
    int v = HexValue(hex[i]);
    if (v < 0) return Status::InvalidArgument("chunk id has a non-hex character");
    uint64_t& half = i < 16 ? id.hi : id.lo;
    half = (half << 4) | static_cast<uint64_t>(v);
  }
  return id;
}

ChunkId HashChunk(std::string_view data) {
  XXH128_hash_t h = XXH3_128bits(data.data(), data.size());
  return ChunkId{h.high64, h.low64};
}

Status ValidateExtent(const Extent& e) {
  if (e.length == 0) return Status::InvalidArgument("empty extent");
  if (e.chunk.length == 0 || e.chunk.length > kMaxChunkBytes) {
    return Status::InvalidArgument("chunk length out of range");
  }
  if (e.length > e.chunk.length || e.chunk_offset > e.chunk.length - e.length) {
    return Status::InvalidArgument("extent reaches past the end of its chunk");
  }
  if (e.file_offset > kMaxFileBytes || e.length > kMaxFileBytes - e.file_offset) {
    return Status::InvalidArgument("extent reaches past the largest file size");
  }
  return Status::Ok();
}

Status ValidateExtents(const ExtentList& list) {
  uint64_t prev_end = 0;
  for (size_t i = 0; i < list.size(); ++i) {
    CN_RETURN_IF_ERROR(ValidateExtent(list[i]));
    if (i > 0 && list[i].file_offset < prev_end) {
      return Status::InvalidArgument("extents out of order or overlapping at index " +
                                     std::to_string(i));
    }
    prev_end = list[i].end();
  }
  return Status::Ok();
}

bool IsNormalized(const ExtentList& list) {
  if (!ValidateExtents(list).ok()) return false;
  for (size_t i = 1; i < list.size(); ++i) {
    if (Mergeable(list[i - 1], list[i])) return false;
  }
  return true;
}

uint64_t ExtentsEnd(const ExtentList& list) { return list.empty() ? 0 : list.back().end(); }

Status OverwriteExtent(ExtentList* list, const Extent& e) {
  CN_RETURN_IF_ERROR(ValidateExtent(e));
  CN_RETURN_IF_ERROR(ValidateExtents(*list));
  size_t at = CutRange(list, e.file_offset, e.end());
  list->insert(list->begin() + static_cast<std::ptrdiff_t>(at), e);
  Normalize(list);
  return Status::Ok();
}

Status PunchHole(ExtentList* list, uint64_t offset, uint64_t length) {
  if (offset > kMaxFileBytes) return Status::InvalidArgument("hole starts past the largest file");
  CN_RETURN_IF_ERROR(ValidateExtents(*list));
  if (length == 0) return Status::Ok();
  uint64_t end = length > kMaxFileBytes - offset ? kMaxFileBytes : offset + length;
  CutRange(list, offset, end);
  Normalize(list);
  return Status::Ok();
}

Status TruncateExtents(ExtentList* list, uint64_t size) {
  if (size > kMaxFileBytes) return Status::InvalidArgument("size past the largest file");
  return PunchHole(list, size, kMaxFileBytes - size);
}

Result<std::vector<ReadPiece>> MapRange(const ExtentList& list, uint64_t offset, uint64_t length) {
  if (offset > kMaxFileBytes || length > kMaxFileBytes - offset) {
    return Status::InvalidArgument("read range past the largest file");
  }
  std::vector<ReadPiece> pieces;
  const uint64_t end = offset + length;
  uint64_t cursor = offset;
  // Written to stay memory-safe and terminate even for an invalid list: overlapped parts are
  // skipped, and the cursor only moves forward.
  auto it = std::partition_point(list.begin(), list.end(),
                                 [&](const Extent& x) { return x.end() <= offset; });
  for (; it != list.end() && cursor < end && it->file_offset < end; ++it) {
    const Extent& x = *it;
    if (x.end() <= cursor) continue;
    if (x.file_offset > cursor) {
      ReadPiece hole;
      hole.file_offset = cursor;
      hole.length = x.file_offset - cursor;
      pieces.push_back(hole);
      cursor = x.file_offset;
    }
    uint64_t piece_end = std::min(x.end(), end);
    ReadPiece p;
    p.file_offset = cursor;
    p.length = piece_end - cursor;
    p.hole = false;
    p.chunk = x.chunk;
    p.chunk_offset = static_cast<uint32_t>(x.chunk_offset + (cursor - x.file_offset));
    pieces.push_back(p);
    cursor = piece_end;
  }
  if (cursor < end) {
    ReadPiece hole;
    hole.file_offset = cursor;
    hole.length = end - cursor;
    pieces.push_back(hole);
  }
  return pieces;
}

std::string EncodeExtents(const ExtentList& list) {
  Writer w;
  w.U8(kExtentListVersion);
  w.Varint(list.size());
  uint64_t prev_end = 0;
  for (const Extent& e : list) {
    w.Varint(e.file_offset - prev_end);
    w.Varint(e.length);
    w.Fixed64(e.chunk.id.hi);
    w.Fixed64(e.chunk.id.lo);
    w.Varint(e.chunk.length);
    w.Varint(e.chunk_offset);
    prev_end = e.end();
  }
  return w.Take();
}

Result<ExtentList> DecodeExtents(std::string_view data, size_t max_extents) {
  // The smallest encoded extent: four one-byte varints and the 16-byte id.
  constexpr size_t kMinExtentBytes = 20;
  Reader r(data);
  uint8_t version;
  if (!r.U8(&version)) return Status::Corruption("extent list: truncated");
  if (version == 0) return Status::Corruption("extent list: version 0");
  if (version > kExtentListVersion) {
    return Status::NotSupported("extent list: version " + std::to_string(version));
  }
  uint64_t count;
  if (!r.Varint(&count)) return Status::Corruption("extent list: truncated count");
  if (count > max_extents || count > r.remaining() / kMinExtentBytes) {
    return Status::Corruption("extent list: bad extent count");
  }
  ExtentList list;
  list.reserve(count);
  uint64_t prev_end = 0;
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t gap, length, chunk_length, chunk_offset;
    Extent e;
    if (!r.Varint(&gap) || !r.Varint(&length) || !r.Fixed64(&e.chunk.id.hi) ||
        !r.Fixed64(&e.chunk.id.lo) || !r.Varint(&chunk_length) || !r.Varint(&chunk_offset)) {
      return Status::Corruption("extent list: truncated extent");
    }
    if (gap > kMaxFileBytes - prev_end || chunk_length > kMaxChunkBytes ||
        chunk_offset > kMaxChunkBytes) {
      return Status::Corruption("extent list: extent out of range");
    }
    e.file_offset = prev_end + gap;
    e.length = length;
    e.chunk.length = static_cast<uint32_t>(chunk_length);
    e.chunk_offset = static_cast<uint32_t>(chunk_offset);
    Status s = ValidateExtent(e);
    if (!s.ok()) return Status::Corruption("extent list: " + s.message());
    prev_end = e.end();
    list.push_back(e);
  }
  if (!r.done()) return Status::Corruption("extent list: trailing bytes");
  // Varints have several spellings of one value; accepting only the canonical one keeps
  // Encode(Decode(x)) == x, so replicas and fuzzers can compare encodings.
  if (EncodeExtents(list) != data) return Status::Corruption("extent list: non-canonical");
  return list;
}

}  // namespace constellation
