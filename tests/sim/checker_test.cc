// The simulator's checkers must be able to fail: the linearizability checker on hand-made
// histories, and the KV state machine's snapshot encoding.
#include "catch2/catch.hpp"
#include "tests/sim/kv.h"
#include "tests/sim/linearizability.h"

namespace constellation::sim {
namespace {

LinOp Put(std::string v, uint64_t call, uint64_t ret) {
  LinOp op;
  op.kind = LinOp::kPut;
  op.value = std::move(v);
  op.call = call;
  op.ret = ret;
  return op;
}
LinOp Get(std::string out, uint64_t call, uint64_t ret) {
  LinOp op;
  op.kind = LinOp::kGet;
  op.out_value = std::move(out);
  op.call = call;
  op.ret = ret;
  return op;
}
LinOp Cas(std::string expect, std::string v, bool ok, uint64_t call, uint64_t ret) {
  LinOp op;
  op.kind = LinOp::kCas;
  op.expect = std::move(expect);
  op.value = std::move(v);
  op.out_ok = ok;
  op.call = call;
  op.ret = ret;
  return op;
}

TEST_CASE("sequential histories: right ones pass, a stale read fails") {
  CHECK(CheckRegister({Put("a", 1, 2), Get("a", 3, 4), Put("b", 5, 6), Get("b", 7, 8)}).ok);
  LinResult r = CheckRegister({Put("a", 1, 2), Put("b", 3, 4), Get("a", 5, 6)});
  CHECK(!r.ok);
  CHECK(r.explanation.find("get() -> 'a'") != std::string::npos);
  CHECK(!CheckRegister({Get("x", 1, 2)}).ok);  // a value never written
  CHECK(CheckRegister({Get("", 1, 2)}).ok);    // the initial (absent) value
}

TEST_CASE("concurrent ops may take effect in either order, but only once") {
  // put(a) and put(b) overlap; reads after both see one of them, consistently.
  CHECK(CheckRegister({Put("a", 1, 4), Put("b", 2, 3), Get("a", 5, 6), Get("a", 7, 8)}).ok);
  CHECK(CheckRegister({Put("a", 1, 4), Put("b", 2, 3), Get("b", 5, 6)}).ok);
  CHECK(!CheckRegister({Put("a", 1, 4), Put("b", 2, 3), Get("a", 5, 6), Get("b", 7, 8)}).ok);
  // A read overlapping a write may see either value.
  CHECK(CheckRegister({Put("a", 1, 2), Put("b", 3, 6), Get("a", 4, 5)}).ok);
  CHECK(CheckRegister({Put("a", 1, 2), Put("b", 3, 6), Get("b", 4, 5)}).ok);
}

TEST_CASE("writes with unknown outcome may or may not have happened, at any later time") {
  CHECK(CheckRegister({Put("a", 1, 2), Put("b", 3, kNeverReturned), Get("a", 4, 5)}).ok);
  CHECK(CheckRegister({Put("a", 1, 2), Put("b", 3, kNeverReturned), Get("b", 4, 5)}).ok);
  // ...but not before they were invoked.
  CHECK(!CheckRegister({Put("a", 1, 2), Get("b", 3, 4), Put("b", 5, kNeverReturned)}).ok);
  // ...and not twice.
  CHECK(!CheckRegister({Put("b", 1, kNeverReturned), Put("a", 2, 3), Get("b", 4, 5), Get("a", 6, 7),
                        Get("b", 8, 9)})
             .ok);
}

TEST_CASE("compare-and-swap") {
  CHECK(CheckRegister({Put("a", 1, 2), Cas("a", "b", true, 3, 4), Get("b", 5, 6)}).ok);
  CHECK(!CheckRegister({Put("a", 1, 2), Cas("x", "b", true, 3, 4)}).ok);  // could not succeed
  CHECK(CheckRegister({Put("a", 1, 2), Cas("x", "b", false, 3, 4), Get("a", 5, 6)}).ok);
  CHECK(!CheckRegister({Put("a", 1, 2), Cas("a", "b", false, 3, 4)}).ok);  // must have succeeded
  // Two CASes from the same value cannot both succeed.
  CHECK(!CheckRegister({Put("a", 1, 2), Cas("a", "b", true, 3, 6), Cas("a", "c", true, 4, 5)}).ok);
}

TEST_CASE("the KV state machine: dedup, and snapshots that detect corruption") {
  KvState kv;
  KvOp put{KvOp::kPut, 1, 1, "k", "v", ""};
  CHECK(!kv.Apply(put).duplicate);
  CHECK(kv.Apply(put).duplicate);  // the same op again: no effect
  KvOp cas{KvOp::kCas, 2, 1, "k", "w", "v"};
  CHECK(kv.Apply(cas).ok);
  CHECK(kv.Get("k") == "w");
  KvOp cas2{KvOp::kCas, 2, 2, "k", "z", "v"};
  CHECK(!kv.Apply(cas2).ok);
  std::string snap = kv.Encode(7, 100);
  KvState back;
  REQUIRE(back.Decode(snap, 7, 100));
  CHECK(back.Hash() == kv.Hash());
  CHECK(!back.Decode(snap, 8, 100));  // the padding belongs to index 7
  snap[snap.size() - 3] ^= 1;
  CHECK(!back.Decode(snap, 7, 100));
  std::optional<KvOp> op = DecodeOp(EncodeOp(cas));
  REQUIRE(op);
  CHECK(op->expect == "v");
  CHECK(!DecodeOp("junk"));
}

}  // namespace
}  // namespace constellation::sim
