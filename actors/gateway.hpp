#pragma once

// The cloud's side of the wire: a wire::server (net/transport.hpp) whose
// decoded requests a gateway actor hands to the cloud front, answering each
// with its reply frame or an error frame. Its thread never touches actor
// state: requests and closed connections reach the gateway as messages.
//
// Per connection, the gateway serves nothing but a hello until one passed
// (the front compares it with the cloud's; the transport has already
// checked the secret), and only the sessions the connection opened
// (wire::session_owners): another connection's session is an unknown
// session. A connection holds at most `max_sessions_per_connection`
// sessions (opened or being opened): one more is refused with session_limit,
// so no one connection takes all of session.max_sessions. A session that
// ends (closed, or expired at the context manager: told through the site's
// session_end_hook) no longer counts. A closed connection's sessions are
// closed at once: no other connection can reach them, so there is nothing
// to resume, and they would hold session.max_sessions until session.ttl_s.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "actors/messages.hpp"
#include "net/transport.hpp"

namespace ceco {

class session_end_hook;

class cloud_gateway {
public:
  /// Listens at once (throws std::runtime_error when it cannot). `secret`
  /// is the one the transport checks: a hello that reached the front proved it.
  /// `session_ends`: the cloud site's (cloud_site::session_ends), so that
  /// expired sessions leave their connection's count. `log`, when set, hears
  /// each refused hello with the edge's address and why.
  cloud_gateway(caf::actor_system& sys, cloud_api front, wire::server_options opts,
                int max_sessions_per_connection,
                std::shared_ptr<session_end_hook> session_ends = {},
                std::function<void(const std::string&)> log = {});
  ~cloud_gateway();
  cloud_gateway(const cloud_gateway&) = delete;
  cloud_gateway& operator=(const cloud_gateway&) = delete;

  uint16_t port() const { return server_->port(); }
  wire::server_stats stats() const { return server_->stats(); }
  /// The gateway actor (to watch it).
  const caf::actor& actor() const { return gateway_; }
  /// Sessions the open connections hold now (opened or being opened); -1
  /// if the gateway did not answer within a second.
  int64_t sessions_held();
  /// Closes the listener and every connection, then stops the gateway actor.
  void stop();

private:
  caf::actor_system& sys_;
  std::shared_ptr<session_end_hook> session_ends_;
  caf::actor gateway_;
  std::shared_ptr<std::atomic<wire::server*>> replies_;
  std::unique_ptr<wire::server> server_;
};

} // namespace ceco
