// The cluster's wire decoder sees bytes from any peer that passed the ZAP check, including a
// node holding only the join key; join tokens come from the command line. Neither may crash or
// trust a length, and whatever decodes must re-encode to bytes that decode to the same value.
// Random bytes rarely get past the header, so each input is also tried behind each valid header.
#include <cstdint>
#include <string>
#include <string_view>

#include "node/base/log.h"
#include "node/cluster/wire.h"

namespace {

using namespace constellation;

void Check(std::string_view in) {
  Result<WireMessage> w = DecodeWire(in);
  if (!w.ok()) return;
  std::string again;
  switch (w->kind) {
    case WireKind::kRaft:
      again = EncodeRaftWire(w->raft);
      break;
    case WireKind::kJoinRequest:
      again = EncodeJoinRequest(w->join_request);
      break;
    case WireKind::kJoinReply:
      again = EncodeJoinReply(w->join_reply);
      break;
    case WireKind::kMembership:
      again = EncodeMembershipWire(w->membership);
      break;
  }
  Result<WireMessage> w2 = DecodeWire(again);
  CN_CHECK(w2.ok()) << "re-encoded wire message does not decode: " << w2.status().ToString();
  CN_CHECK(w2->kind == w->kind && w2->raft == w->raft && w2->join_request == w->join_request &&
           w2->join_reply == w->join_reply && w2->membership == w->membership)
      << "decode/encode is not a round trip";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  Check(in);
  for (char kind : {'\x01', '\x02', '\x03', '\x04'}) {
    std::string framed;
    framed.push_back(static_cast<char>(kWireVersion));
    framed.push_back(kind);
    framed.append(in);
    Check(framed);
  }
  Result<JoinToken> t = ParseJoinToken(in);
  if (t.ok()) {
    Result<JoinToken> again = ParseJoinToken(FormatJoinToken(*t));
    CN_CHECK(again.ok() && again->server_key == t->server_key &&
             again->join_secret == t->join_secret)
        << "join token does not round-trip";
  }
  std::string token = "cn1.";
  for (char c : in.substr(0, 128))
    token.push_back("0123456789abcdef"[static_cast<uint8_t>(c) % 16]);
  (void)ParseJoinToken(token);
  return 0;
}
