#pragma once

// The network layer of a deployment: ceco's own wire protocol (net/), never
// CAF's. The cloud serves it through a gateway (actors/gateway.hpp), the
// edge reaches the cloud through a remote front (actors/remote_front.hpp);
// both check every frame against the model's limits, authenticate with
// cloud.secret, and with cloud.tls speak TLS with certificates whose roles
// each side checks ("ceco cloud" for the edge, "ceco edge" for the cloud).

#include <cstdint>
#include <string>

#include <caf/fwd.hpp>

#include "actors/messages.hpp"
#include "config/settings.hpp"
#include "net/transport.hpp"

namespace ceco {

/// Registers ceco's message types and sizes the scheduler.
void configure_actor_system(caf::actor_system_config& cfg, int threads);

/// The same for a deployment node described by `s`.
void configure_deployment(caf::actor_system_config& cfg, const settings& s);

/// Whether a cloud with these settings would serve anyone who reaches it:
/// cloud.host is not loopback and neither TLS nor a secret guards it.
bool serves_strangers(const settings& s);

/// Shortest cloud.secret a node accepts on plain TCP to or at an address
/// other than loopback.
constexpr size_t min_secret_length = 16;

/// Throws config_error for a cloud.secret shorter than min_secret_length on
/// plain TCP (cloud.tls off) when cloud.host is not loopback: whoever watches
/// one handshake sees both nonces and the MAC, and can try short secrets
/// offline. Both nodes check it (the cloud listening, the edge connecting).
void check_secret(const settings& s);

/// The transport's options for `ceco cloud`: cloud.host, cloud.port,
/// cloud.secret, TLS, heartbeats as the idle timeout. Throws config_error
/// for a listener on a non-loopback address with neither TLS nor a secret,
/// unless cloud.insecure, and for a short secret there (check_secret).
wire::server_options cloud_server_options(const settings& s, const wire::wire_limits& limits);

/// One attempt to connect, authenticate and pass the handshake with
/// `hello`: the cloud front, or why not (handshake_failed when the cloud
/// refused this edge, handshake_timeout when it did not finish the handshake
/// in time). Blocking; safe from any thread but a scheduler's.
caf::expected<cloud_api> connect_to_front(caf::actor_system& sys, const settings& s,
                                          const hello_msg& hello, const wire::wire_limits& limits);

/// "TLS with certificates" or "plain TCP", for banners and logs.
std::string describe_transport(const settings& s);

} // namespace ceco
