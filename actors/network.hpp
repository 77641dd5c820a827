#pragma once

// The network layer of a deployment: CAF's middleman, with heartbeats, and
// TLS through CAF's OpenSSL module when `cloud.tls` is on. Both nodes must
// agree on TLS; the edge and the cloud use the same settings keys.

#include <cstdint>

#include <caf/fwd.hpp>

#include "actors/messages.hpp"
#include "config/settings.hpp"

namespace ceco {

/// Registers ceco's message types, sizes the scheduler and, for
/// deployments, loads the network layer with heartbeats.
void configure_actor_system(caf::actor_system_config& cfg, int threads, bool network = false,
                            int heartbeat_ms = 0);

/// The same for a deployment node described by `s`: scheduler threads,
/// heartbeats and, with cloud.tls, the OpenSSL module and this node's
/// certificate, key and trusted CA.
void configure_deployment(caf::actor_system_config& cfg, const settings& s);

/// Publishes the cloud front on cloud.host:cloud.port (TLS with cloud.tls);
/// returns the port bound.
caf::expected<uint16_t> publish_cloud(caf::actor_system& sys, const cloud_api& front,
                                      const settings& s);

/// Stops listening on `port`.
void unpublish_cloud(caf::actor_system& sys, const cloud_api& front, uint16_t port,
                     const settings& s);

/// Connects to the cloud front at cloud.host:cloud.port (TLS with
/// cloud.tls). One attempt; no handshake.
caf::expected<cloud_api> remote_cloud(caf::actor_system& sys, const settings& s);

/// One attempt to connect and pass the handshake with `hello`: the cloud
/// front, or why not (handshake_failed when the cloud refused this edge).
/// Blocking; safe from any thread but a scheduler's.
caf::expected<cloud_api> connect_to_front(caf::actor_system& sys, const settings& s,
                                          const hello_msg& hello);

/// "TLS with certificates", "TLS without certificates (encrypted, peer not
/// authenticated)" or "plain TCP", for banners and logs.
std::string describe_transport(const settings& s);

} // namespace ceco
