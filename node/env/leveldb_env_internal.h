// The leveldb::Env under our key-value store (env_posix.cc). Internal to node/env; exposed for
// tests.
//
// Why: every commit waits for leveldb's log write with sync. leveldb appends to its log, so each
// fdatasync also commits the file's new size through the ext4 journal — about twice the time of
// an fdatasync that only overwrites blocks already allocated (measured here: 512 µs against 243 µs
// for a 4 KiB O_DSYNC write). This Env writes each log file into a region it has filled with
// zeros ahead of the writes (PreallocatingLogEnv), so most syncs overwrite allocated blocks.
//
// The zero-filled tail changes what a crash leaves: an append-only log ends where its last write
// ended, a torn last record at the end of the file; here a torn record is followed by zeros, which
// leveldb (paranoid_checks) would report as a checksum mismatch rather than as the end of the log.
// So before leveldb reads a log (recovery, with the DB's lock held), RepairLogTail cuts the file
// after its last intact record when nothing intact follows — exactly the records no sync covered.
// A damaged record with intact records after it is left for leveldb to report as corruption.
// Limits: damage to the very last record (bit rot in a synced one) is cut like a torn write rather
// than reported; and a page lost from the middle of the unsynced tail by a power loss, with later
// records intact, is reported by leveldb as corruption, as with an appending log.
#ifndef CONSTELLATION_NODE_ENV_LEVELDB_ENV_INTERNAL_H_
#define CONSTELLATION_NODE_ENV_LEVELDB_ENV_INTERNAL_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "leveldb/env.h"
#include "node/base/status.h"

namespace constellation {

// leveldb::Env::Default() with two changes for files named *.log: they are written in place into
// zero-filled space allocated kLogExtendBytes at a time (and cut to their length on close), and
// their tails are repaired before they are read. Lives for the process. Thread-safe.
leveldb::Env* PreallocatingLogEnv();

constexpr uint64_t kLogExtendBytes = 1u << 20;

// Makes every record written so far to the open logs of the store in `dir` durable (fdatasync),
// from any thread, while leveldb goes on writing: KvStore::Sync of OpenLevelDb's store. Logs
// leveldb has closed were synced as they closed.
Status SyncLevelDbLogs(const std::string& dir);

struct LogTailRepair {
  uint64_t size_before = 0;
  uint64_t size_after = 0;  // == size_before: nothing cut
  uint64_t records = 0;     // intact physical records kept
  bool torn = false;        // a damaged record was cut (not just zeros)
};

// Cuts leveldb log file `path` after its last intact physical record when every byte after that
// point is either zero or part of one damaged record followed only by zeros/damage (no intact
// record). Corruption with intact records after it is left in place (OK is returned; leveldb
// reports it). IoError when the file cannot be read or cut.
Result<LogTailRepair> RepairLogTail(const std::string& path);

// leveldb's masked CRC32C (util/crc32c.h, log_format.h), for the repair and its tests.
uint32_t MaskedCrc32c(std::string_view data);

}  // namespace constellation

#endif  // CONSTELLATION_NODE_ENV_LEVELDB_ENV_INTERNAL_H_
