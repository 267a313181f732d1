// The real message transport between nodes: ZeroMQ over TCP, behind env.h's Transport.
//
// Wire format: a DEALER (one per peer, outbound) sends two-frame messages [from][payload] to the
// peer's ROUTER (inbound). `from` is the sender's self_address as the sender states it.
//
// Security (ZmqTransportOptions::curve): with CURVE keys every connection is encrypted and
// authenticated. The ROUTER is a CURVE server whose ZAP handler (run on the I/O thread) asks
// `authorize` whether the connecting key may connect; a refused key never gets a message through
// (and is counted). The handler's `from` is then the sender's authenticated public key (Z85), not
// its claimed address. A DEALER must know its peer's server key (SetPeerKey) before Send.
//
// Delivery: best effort, in order per (sender, receiver) pair while a connection lasts. Messages
// can be lost when a connection drops, when a peer restarts, and when the transport shuts down
// (pending messages are discarded). Callers (raft, membership) retry at their own level. A peer
// whose messages have not been handed over for 3 s is connected afresh: ZeroMQ itself never
// retries a connection whose handshake the peer refused (a restarting node refuses keys until it
// knows its members), so without that the messages would wait forever.
//
// Thread-safety: Send, SetHandler and the accessors are safe from any thread. Send never blocks on
// the network: when nothing is queued for the peer and its connection is up, it hands the message
// to ZeroMQ on the calling thread; otherwise it queues it for the transport's I/O thread. The
// handler runs on that single I/O thread, one message at a time; it may call Send and SetHandler,
// but must not destroy the transport (that would join the thread it runs on). No other thread may
// be calling the transport while it is destroyed.
#ifndef CONSTELLATION_NODE_ENV_TRANSPORT_H_
#define CONSTELLATION_NODE_ENV_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "node/base/status.h"
#include "node/env/env.h"

namespace constellation {

// Monotonic counts since the transport was created.
struct TransportCounters {
  uint64_t sent = 0;      // messages handed to the network (not an acknowledgement)
  uint64_t received = 0;  // messages given to the handler
  // Messages given up: received but oversized, malformed or with no handler set; or queued for a
  // peer whose address could not be connected to.
  uint64_t dropped = 0;
  uint64_t rejected = 0;  // Send calls refused (queue full, too many peers, too large)
  // CURVE only: connections refused by the ZAP check (a key not admitted), and connections to the
  // listening socket that did not complete the handshake otherwise (garbage bytes, a client using
  // a wrong server key; a handshake still under way counts until it completes).
  uint64_t refused = 0;
  uint64_t handshake_failed = 0;
};

struct ZmqTransportOptions {
  // Where to listen: "tcp://host:port" or "host:port". Port "*" or "0" picks a free port (see
  // ZmqTransport::bound_address()). IPv6 literals go in brackets: "[::1]:7400".
  std::string bind_address;
  // How peers reach this node ("host:port"); sent as `from` with every message, and the name peers
  // pass to Send to reply. Empty: the bound address, which then must not be a wildcard
  // (0.0.0.0, *, [::]).
  std::string self_address;
  // Messages queued per peer before Send returns Unavailable. Also ZeroMQ's send high-water mark
  // per peer connection, so up to about twice this many can be in flight. 1..1'000'000.
  size_t send_queue_limit = 1024;
  // Bytes queued over all peers before Send returns Unavailable. At least max_message_size.
  size_t max_queued_bytes = size_t{256} << 20;
  // Largest payload. Send refuses larger ones with TooLarge; larger received ones are dropped and
  // counted. Received frames over twice this size make ZeroMQ drop the connection instead (and
  // are not counted), so a peer cannot make us allocate without bound. 1..1 GiB.
  size_t max_message_size = size_t{64} << 20;
  // Distinct peers this node sends to (one socket each). 1..1000.
  size_t max_peers = 256;

  // CURVE: this node's key pair, Z85-encoded (40 characters each). Both empty: no encryption
  // and no authentication (tests only).
  struct Curve {
    std::string public_key;
    std::string secret_key;
  } curve;
  // With CURVE: whether a peer presenting this public key (Z85) may connect. Called on the I/O
  // thread for every connection attempt; must be quick and must not call the transport. Null:
  // every peer is refused.
  std::function<bool(const std::string& public_key)> authorize;
};

class ZmqTransport : public Transport {
 public:
  // The address actually bound, "host:port" (with the real port when "*" or 0 was asked for).
  virtual std::string bound_address() const = 0;
  // The `from` this transport sends (ZmqTransportOptions::self_address, or bound_address()).
  virtual std::string self_address() const = 0;
  virtual TransportCounters counters() const = 0;
  // With CURVE: the server key of the peer at `address` (needed before Send to it), and the client
  // key pair to present to it when not this node's own (a joining node presents the join key).
  // Changing them replaces the connection; messages still queued go over the new one.
  virtual void SetPeerKey(const std::string& address, const std::string& server_key,
                          const std::string& client_public = "",
                          const std::string& client_secret = "") = 0;
};

// Binds, starts the I/O thread and returns. Errors: InvalidArgument for bad options, keys or
// address, NotSupported when CURVE is asked for and libzmq lacks it, IoError (e.g. address in
// use) from ZeroMQ.
// Peer addresses given to Send are "host:port" (or "tcp://host:port"); an address that ZeroMQ
// later refuses to connect to has its queued messages dropped and counted.
Result<std::unique_ptr<ZmqTransport>> NewZmqTransport(const ZmqTransportOptions& options);

// A new CURVE key pair (Z85 public, Z85 secret).
Result<std::pair<std::string, std::string>> NewCurveKeyPair();
// The public key of a Z85 secret key; InvalidArgument if it is not one.
Result<std::string> CurvePublicKey(const std::string& secret_key);

}  // namespace constellation

#endif  // CONSTELLATION_NODE_ENV_TRANSPORT_H_
