// KvStore contract, run against leveldb (OpenLevelDb) and FakeKvStore, plus what only one of them
// does: leveldb's lock and persistence, the fake's crash and fault injection.
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "catch2/catch.hpp"
#include "node/env/env.h"
#include "node/env/env_fake.h"
#include "tests/node/env/kv_test_util.h"
#include "tests/temp_dir.h"

namespace constellation {
namespace {

using Pairs = std::vector<std::pair<std::string, std::string>>;

Pairs ScanAll(KvStore* kv, std::string_view start, std::string_view limit, size_t max = 1000) {
  Pairs out;
  Status s = kv->Scan(start, limit, [&](std::string_view k, std::string_view v) {
    out.emplace_back(std::string(k), std::string(v));
    return out.size() < max;
  });
  REQUIRE(s.ok());
  return out;
}

using testing::MustGet;
using testing::Put;

// The behaviour every KvStore must have.
void CheckContract(KvStore* kv) {
  std::string v;
  REQUIRE(kv->Get("missing", &v).code() == Code::kNotFound);

  REQUIRE(Put(kv, "b", "2").ok());
  REQUIRE(Put(kv, "a", "1").ok());
  REQUIRE(Put(kv, "d", "4", /*sync=*/true).ok());
  REQUIRE(Put(kv, "c", "3").ok());
  REQUIRE(Put(kv, std::string("e\0x", 3), std::string("5\0y", 3)).ok());  // binary-safe
  REQUIRE(MustGet(kv, "a") == "1");
  REQUIRE(MustGet(kv, std::string("e\0x", 3)) == std::string("5\0y", 3));
  REQUIRE(Put(kv, "a", "one").ok());  // overwrite
  REQUIRE(MustGet(kv, "a") == "one");

  // Ranges are [start, limit); empty limit runs to the end; fn returning false stops.
  REQUIRE(ScanAll(kv, "b", "d") == Pairs{{"b", "2"}, {"c", "3"}});
  REQUIRE(ScanAll(kv, "bb", "c") == Pairs{});
  REQUIRE(ScanAll(kv, "", "b") == Pairs{{"a", "one"}});
  REQUIRE(ScanAll(kv, "c", "") ==
          Pairs{{"c", "3"}, {"d", "4"}, {std::string("e\0x", 3), std::string("5\0y", 3)}});
  REQUIRE(ScanAll(kv, "", "", 2) == Pairs{{"a", "one"}, {"b", "2"}});

  // Delete, including of a key that is not there.
  KvStore::Batch del;
  del.Delete("b");
  del.Delete("never-was");
  REQUIRE(kv->Write(del, false).ok());
  REQUIRE(kv->Get("b", &v).code() == Code::kNotFound);
  REQUIRE(ScanAll(kv, "a", "d") == Pairs{{"a", "one"}, {"c", "3"}});

  // A batch applies in order, all together.
  KvStore::Batch batch;
  batch.Put("k", "first");
  batch.Delete("k");
  batch.Put("k", "last");
  batch.Delete("c");
  batch.Put("z", "26");
  REQUIRE(kv->Write(batch, true).ok());
  REQUIRE(MustGet(kv, "k") == "last");
  REQUIRE(kv->Get("c", &v).code() == Code::kNotFound);
  REQUIRE(MustGet(kv, "z") == "26");

  // A scan sees the store as of its start, not writes made from inside it.
  Pairs seen;
  REQUIRE(kv->Scan("", "", [&](std::string_view k, std::string_view val) {
              seen.emplace_back(std::string(k), std::string(val));
              if (k == "a") {
                KvStore::Batch w;
                w.Put("b", "new");
                w.Delete("z");
                REQUIRE(kv->Write(w, false).ok());
              }
              return true;
            }).ok());
  REQUIRE(seen.size() == 5);
  REQUIRE(seen[1].first == "d");
  REQUIRE(seen.back() == std::make_pair(std::string("z"), std::string("26")));
  REQUIRE(MustGet(kv, "b") == "new");

  // A view is the store as of NewView, whatever is written after, read from another thread too.
  Pairs before = ScanAll(kv, "", "");
  Result<std::unique_ptr<KvStore::View>> view = kv->NewView();
  REQUIRE(view.ok());
  KvStore::Batch later;
  later.Put("a", "changed");
  later.Delete("d");
  later.Put("y", "new");
  REQUIRE(kv->Write(later, true).ok());
  REQUIRE(MustGet(kv, "a") == "changed");
  Pairs in_view;
  std::thread reader([&] {
    REQUIRE((*view)
                ->Scan("", "",
                       [&](std::string_view k, std::string_view val) {
                         in_view.emplace_back(std::string(k), std::string(val));
                         return true;
                       })
                .ok());
  });
  reader.join();
  REQUIRE(in_view == before);
  Pairs ranged;
  REQUIRE((*view)
              ->Scan("b", "e",
                     [&](std::string_view k, std::string_view val) {
                       ranged.emplace_back(std::string(k), std::string(val));
                       return ranged.size() < 2;
                     })
              .ok());
  REQUIRE(ranged == Pairs{{"b", "new"}, {"d", "4"}});
  view->reset();
}

TEST_CASE("kv: leveldb meets the KvStore contract") {
  TempDir dir("cn_kv");
  auto kv = OpenLevelDb(dir.path());
  INFO(kv.status().ToString());
  REQUIRE(kv.ok());
  CheckContract(kv->get());
}

TEST_CASE("kv: FakeKvStore meets the KvStore contract") {
  FakeKvStore kv;
  CheckContract(&kv);
}

TEST_CASE("kv: leveldb keeps data across reopen and refuses a second opener") {
  TempDir dir("cn_kv");
  {
    auto kv = OpenLevelDb(dir.path());
    REQUIRE(kv.ok());
    REQUIRE(Put(kv->get(), "k", "v", true).ok());

    auto second = OpenLevelDb(dir.path());
    REQUIRE_FALSE(second.ok());
    INFO(second.status().ToString());
    REQUIRE(second.status().code() == Code::kBusy);
  }
  auto kv = OpenLevelDb(dir.path());  // the lock went with the first store
  REQUIRE(kv.ok());
  REQUIRE(MustGet(kv->get(), "k") == "v");
}

TEST_CASE("kv: leveldb creates a missing directory and reports an unusable one") {
  TempDir dir("cn_kv");
  auto kv = OpenLevelDb(dir.path() + "/sub");
  REQUIRE(kv.ok());

  // A regular file where the directory should be is not "Busy".
  std::string file = dir.path() + "/file";
  std::ofstream(file) << "not a directory";
  auto bad = OpenLevelDb(file);
  REQUIRE_FALSE(bad.ok());
  INFO(bad.status().ToString());
  REQUIRE(bad.status().code() != Code::kBusy);
}

TEST_CASE("kv: FakeKvStore Crash keeps synced writes and loses the rest") {
  FakeKvStore kv;
  std::string v;
  REQUIRE(Put(&kv, "unsynced-before", "1").ok());
  REQUIRE(Put(&kv, "synced", "2", /*sync=*/true).ok());  // also makes the write before durable
  REQUIRE(Put(&kv, "unsynced-after", "3").ok());
  KvStore::Batch del;
  del.Delete("synced");
  REQUIRE(kv.Write(del, false).ok());
  REQUIRE(kv.Get("synced", &v).code() == Code::kNotFound);
  REQUIRE(kv.sync_count() == 1);

  kv.Crash();
  REQUIRE(MustGet(&kv, "unsynced-before") == "1");
  REQUIRE(MustGet(&kv, "synced") == "2");  // the unsynced delete is undone
  REQUIRE(kv.Get("unsynced-after", &v).code() == Code::kNotFound);
  REQUIRE(ScanAll(&kv, "", "") == Pairs{{"synced", "2"}, {"unsynced-before", "1"}});

  kv.Crash();  // nothing more to lose
  REQUIRE(ScanAll(&kv, "", "").size() == 2);
}

TEST_CASE("kv: FakeKvStore FailNextWrites fails exactly that many writes and changes nothing") {
  FakeKvStore kv;
  REQUIRE(Put(&kv, "a", "1", true).ok());
  kv.FailNextWrites(2, Status::NoSpace("disk full"));

  KvStore::Batch batch;
  batch.Put("a", "changed");
  batch.Put("b", "new");
  Status s = kv.Write(batch, true);
  REQUIRE(s == Status::NoSpace("disk full"));
  REQUIRE(kv.Write(batch, false).code() == Code::kNoSpace);
  REQUIRE(ScanAll(&kv, "", "") == Pairs{{"a", "1"}});
  REQUIRE(kv.sync_count() == 1);

  REQUIRE(kv.Write(batch, false).ok());  // the third write goes through
  REQUIRE(ScanAll(&kv, "", "") == Pairs{{"a", "changed"}, {"b", "new"}});
}

}  // namespace
}  // namespace constellation
