#pragma once

// Sessions bound to the connection that opened them. The cloud front records
// each session it opens for a connection; a request that names a session
// another connection opened (or none did) is refused as an unknown session,
// exactly as if it did not exist, so ids reveal nothing across connections.
// When a connection closes, its sessions are handed back to be closed (no
// other connection can reach them); a session that ends otherwise (expired)
// is forgotten, so it no longer counts against its connection.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "net/frame.hpp"
#include "net/transport.hpp"

namespace ceco::wire {

/// The session a request addresses; none for hello, open_session and ping.
std::optional<uint64_t> session_of(const message& request);

class session_owners {
 public:
  /// Records that `conn` opened `session`; false if any connection already has it.
  bool add(connection_id conn, uint64_t session);
  bool owns(connection_id conn, uint64_t session) const;
  /// The session was closed.
  void remove(connection_id conn, uint64_t session);
  /// The session ended, whoever owned it (expired, say).
  void forget(uint64_t session);
  /// The connection closed: its sessions, now owned by no one.
  std::vector<uint64_t> release(connection_id conn);
  /// Sessions `conn` holds (for a per-connection cap).
  size_t count(connection_id conn) const;
  /// Sessions all connections hold.
  size_t total() const { return owner_.size(); }

 private:
  std::unordered_map<uint64_t, connection_id> owner_;
  std::unordered_map<connection_id, std::unordered_set<uint64_t>> sessions_;
};

} // namespace ceco::wire
