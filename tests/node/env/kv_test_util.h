// Small helpers for tests of KvStore implementations (kv_test, kv_cache_test).
#ifndef CONSTELLATION_TESTS_NODE_ENV_KV_TEST_UTIL_H_
#define CONSTELLATION_TESTS_NODE_ENV_KV_TEST_UTIL_H_

#include <string>
#include <string_view>

#include "catch2/catch.hpp"
#include "node/env/env.h"

namespace constellation::testing {

// The value of `key`, which must be there.
inline std::string MustGet(KvStore* kv, std::string_view key) {
  std::string v;
  Status s = kv->Get(key, &v);
  INFO(s.ToString());
  REQUIRE(s.ok());
  return v;
}

// A one-key batch.
inline Status Put(KvStore* kv, std::string_view k, std::string_view v, bool sync = false) {
  KvStore::Batch b;
  b.Put(k, v);
  return kv->Write(b, sync);
}

}  // namespace constellation::testing

#endif  // CONSTELLATION_TESTS_NODE_ENV_KV_TEST_UTIL_H_
