#pragma once

// The handshake that opens every connection, before any other frame:
//
//   server -> client  auth_challenge{server nonce}
//   client -> server  auth_response{client nonce, HMAC(secret, "ceco client" | sn | cn)}
//   server -> client  auth_ok{HMAC(secret, "ceco server" | sn | cn)}
//
// Both sides prove the shared secret without sending it; the labels keep a
// reflected MAC from passing for the other side's, and fresh nonces from the
// operating system's CSPRNG keep an old exchange from being replayed. A peer
// that fails gets a closed connection and nothing else.

#include <cstdint>
#include <string>

#include "net/frame.hpp"

namespace ceco::wire {

/// `n` bytes from getrandom(2); throws std::system_error if the kernel refuses.
void random_bytes(uint8_t* out, size_t n);
nonce random_nonce();
/// A session id no earlier id predicts (getrandom), never 0.
uint64_t random_session_id();

enum class auth_role { client, server };
/// HMAC-SHA256(secret, label(role) | server_nonce | client_nonce).
mac auth_mac(const std::string& secret, auth_role role, const nonce& server_nonce,
             const nonce& client_nonce);
/// Constant-time comparison.
bool same_mac(const mac& a, const mac& b);

} // namespace ceco::wire
