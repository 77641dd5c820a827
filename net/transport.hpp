#pragma once

// The edge-cloud transport: frames of net/frame.hpp over TCP (standalone asio),
// every connection authenticated first (net/auth.hpp).
//
// server: accepts up to max_connections, gives each handshake_timeout_ms to
// prove the secret (else: closed, nothing sent), then hands every decoded
// request to a handler and writes the replies it is given. A connection is
// closed when a frame is malformed (after an error frame saying why), when a
// started frame does not complete within frame_timeout_ms, or when its
// queued frames pass max_queued_frames.
//
// Connections that have not proven the secret yet are bounded apart from the
// others: at most max_unauthenticated in all and max_unauthenticated_per_address
// from one address; one more evicts the oldest of its address (or of the
// address holding the most), so a flood of idle sockets never locks an edge
// out, it only shortens the flood's own waits. An address whose proofs failed
// more than max_failed_handshakes times (refilled one per
// failed_handshake_refill_ms) is refused at accept until it may try again.
//
// While max_pending_requests of a connection's requests await replies, the
// next ones wait in the transport (at most as many again, and
// max_parked_bytes), handed on as replies leave; past that a request is
// answered with a too_many_requests error frame. The connection is always
// read, so pings, answered by the transport itself, are never held back.
//
// client: connects, authenticates (and checks the server's proof), sends
// requests and matches replies by request id; a broken or fake server's
// frames are checked against the same limits. At most max_in_flight requests
// are on the wire at once (the server's max_pending_requests): the rest wait
// in the client, in order, and pings pass them.
//
// With tls_options, both sides speak TLS first (certificates signed by one CA,
// each checking the other's role), then the secret's handshake inside it.
// Both run their own I/O thread; handlers run on it and must not block.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "net/frame.hpp"

namespace ceco::wire {

using connection_id = uint64_t;

/// Requests of one connection a server hands on before the next ones wait,
/// and requests a client has on the wire at once: the same number, so that a
/// client never sends more than the server takes.
constexpr int default_max_pending_requests = 64;

/// TLS on a connection, under the secret's handshake: this node's
/// certificate and key, the CA that signed the peer's, and the peer's role,
/// the common name its certificate must carry ("ceco cloud" for the edge to
/// check, "ceco edge" for the cloud; deploy/make-tls-certs.sh makes both).
/// All empty: plain TCP.
struct tls_options {
  std::string certificate;
  std::string key;
  std::string ca_file;
  std::string peer_name;
  bool enabled() const {
    return !certificate.empty() || !key.empty() || !ca_file.empty() || !peer_name.empty();
  }
};

struct server_options {
  std::string host = "127.0.0.1";
  uint16_t port = 0;               // 0: any free port (see server::port)
  std::string secret;              // required unless insecure
  bool insecure = false;           // accept an empty secret (loopback tests, trusted zones)
  tls_options tls;
  wire_limits limits;              // what requests are checked against
  int handshake_timeout_ms = 2000; // from accept to a proven secret
  int frame_timeout_ms = 10000;    // from a frame's first byte to its last
  int idle_timeout_ms = 0;         // between frames once authenticated; 0 = none
  int max_connections = 256;
  int max_unauthenticated = 64;    // connections not yet past the secret, in all
  int max_unauthenticated_per_address = 8;  // ... from one remote address
  int max_failed_handshakes = 10;  // per address: wrong proofs before it must wait; 0 = no limit
  int failed_handshake_refill_ms = 1000;  // one more try per address after this
  int max_pending_requests = default_max_pending_requests;  // per connection: handed
                                   // on, not yet answered; as many more wait in the transport
  int64_t max_parked_bytes = 64ll << 20;  // per connection: payloads of the waiting ones
  int max_queued_frames = 256;     // per connection: waiting to be written
  /// A connection that closed before it proved the secret (a wrong or
  /// missing secret, a refused certificate, a plain peer of a TLS server),
  /// or that the server closed for a frame it refused (outside the model's
  /// bounds: the hello of an edge with another model's shape): its address
  /// ("10.0.0.7:51234") and why. Called on the server's thread.
  std::function<void(const std::string& peer, const wire_error& why)> on_refused;
};

struct server_stats {
  int64_t accepted = 0;
  int64_t refused_full = 0;   // over max_connections
  int64_t authenticated = 0;
  int64_t auth_failed = 0;
  int64_t timed_out = 0;
  int64_t bad_frames = 0;     // closed for a malformed or unexpected frame
  int64_t open = 0;           // connections now
  int64_t evicted = 0;        // unauthenticated, closed to make room for a newer one
  int64_t refused_rate = 0;   // refused at accept: the address's proofs failed too often
  int64_t parked = 0;         // requests that waited behind max_pending_requests
  int64_t refused_busy = 0;   // requests refused: too many waited already
};

class server {
 public:
  /// A request of an authenticated connection; answer it with reply().
  using request_handler = std::function<void(connection_id, uint32_t request_id, message)>;
  /// An authenticated connection closed (its sessions may be released).
  using close_handler = std::function<void(connection_id, const wire_error&)>;

  /// Listens at once; throws std::runtime_error when it cannot (address in use,
  /// an empty secret without insecure).
  server(server_options opts, request_handler on_request, close_handler on_close = {});
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  uint16_t port() const;
  /// The address of an open connection's peer ("" once it closed). From any thread.
  std::string peer(connection_id conn) const;
  /// From any thread; dropped if the connection has closed.
  void reply(connection_id conn, uint32_t request_id, message msg);
  /// From any thread.
  void close(connection_id conn);
  server_stats stats() const;
  /// Closes every connection and the listener; the destructor calls it.
  void stop();

 private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

struct client_options {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string secret;
  tls_options tls;
  wire_limits limits;               // what replies are checked against
  int connect_timeout_ms = 5000;    // connect and handshake
  int frame_timeout_ms = 10000;
  int max_pending_requests = 1024;  // requests awaiting replies, sent or waiting to be
  int max_in_flight = default_max_pending_requests;  // of those, sent at once (pings aside)
};

class client {
 public:
  /// A reply frame (an error_frame when the server refused the request), or
  /// why none came (the connection closed, a malformed reply).
  using reply_handler = std::function<void(result<message>)>;

  /// Connects and authenticates, or says why not.
  static result<std::unique_ptr<client>> connect(client_options opts,
                                                 std::function<void(const wire_error&)> on_close = {});
  ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  /// From any thread; `on_reply` runs on the client's I/O thread, exactly once.
  void request(message msg, reply_handler on_reply);
  /// Blocking request (not from a reply handler).
  result<message> call(message msg, int timeout_ms);
  bool is_open() const;
  void close();

 private:
  struct impl;
  explicit client(std::shared_ptr<impl> p);
  std::shared_ptr<impl> impl_;
};

} // namespace ceco::wire
