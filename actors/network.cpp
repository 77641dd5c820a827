#include "actors/network.hpp"

#include <algorithm>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "actors/cluster.hpp"
#include "actors/remote_front.hpp"

namespace ceco {

namespace {

wire::tls_options tls_of(const settings& s, const char* peer) {
  if (!s.cloud.tls)
    return {};
  return {s.cloud.tls_certificate, s.cloud.tls_key, s.cloud.tls_ca_file, peer};
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

} // namespace

void configure_actor_system(caf::actor_system_config& cfg, int threads) {
  register_message_types(cfg);
  cfg.set("scheduler.max-threads", threads);
}

void configure_deployment(caf::actor_system_config& cfg, const settings& s) {
  configure_actor_system(cfg, s.runtime.threads);
  configure_cluster(cfg, s);
}

bool serves_strangers(const settings& s) {
  return !is_loopback(s.cloud.host) && !s.cloud.tls && s.cloud.secret.empty();
}

void check_secret(const settings& s) {
  const auto& c = s.cloud;
  if (c.secret.empty() || c.secret.size() >= min_secret_length || c.tls || is_loopback(c.host))
    return;
  throw config_error(fmt::format(
    "cloud.secret has {} characters; expected at least {} on plain TCP to or at cloud.host = "
    "\"{}\" (not loopback): whoever watches one handshake can try short secrets offline. Use a "
    "longer one (`openssl rand -hex 16` makes 32 characters), or cloud.tls = true",
    c.secret.size(), min_secret_length, c.host));
}

wire::server_options cloud_server_options(const settings& s, const wire::wire_limits& limits) {
  const auto& c = s.cloud;
  check_secret(s);
  if (serves_strangers(s) && !c.insecure)
    throw config_error(fmt::format(
      "cloud.host = \"{}\" is not a loopback address, and neither cloud.tls nor cloud.secret "
      "is set: anyone who reaches it would be served. Set cloud.secret (or TLS with "
      "certificates), or pass --insecure (cloud.insecure = true) for a trusted network",
      c.host));
  wire::server_options o;
  o.host = c.host;
  o.port = uint16_t(c.port);
  o.secret = c.secret;
  o.insecure = c.secret.empty();
  o.tls = tls_of(s, "ceco edge");
  o.limits = limits;
  // An edge pings every heartbeat; one silent for far longer is gone.
  if (c.heartbeat_ms > 0)
    o.idle_timeout_ms = std::max(8 * c.heartbeat_ms, 10000);
  o.max_connections = std::max(s.session.max_sessions + 16, 64);
  return o;
}

namespace {

caf::expected<cloud_api> connect_to_one(caf::actor_system& sys, const settings& s,
                                        const std::string& host, uint16_t port,
                                        const hello_msg& hello, const wire::wire_limits& limits) {
  wire::client_options o;
  o.host = host;
  o.port = port;
  o.secret = s.cloud.secret;
  o.tls = tls_of(s, "ceco cloud");
  o.limits = limits;
  // A hung cloud accepts connections but never answers the handshake: give
  // it as long as a heartbeat gives a silent peer.
  o.connect_timeout_ms = std::min(s.cloud.request_timeout_ms, 5000);
  if (s.cloud.heartbeat_ms > 0)
    o.connect_timeout_ms = std::clamp(4 * s.cloud.heartbeat_ms,
                                      std::min(1000, o.connect_timeout_ms), o.connect_timeout_ms);
  return connect_remote_front(sys, std::move(o), hello, s.cloud.heartbeat_ms,
                              s.cloud.request_timeout_ms);
}

} // namespace

caf::expected<cloud_api> connect_to_front(caf::actor_system& sys, const settings& s,
                                          const hello_msg& hello, const wire::wire_limits& limits) {
  // cloud.host:cloud.port first, then each of cloud.hosts (more gateways of
  // one cluster): the first that completes the handshake serves. A refusal
  // of this edge (another model, another secret) is an answer, not a loss.
  auto first = connect_to_one(sys, s, s.cloud.host, uint16_t(s.cloud.port), hello, limits);
  if (first || s.cloud.hosts.empty() || is(first.error(), ceco_errc::handshake_failed))
    return first;
  for (const auto& address : s.cloud.hosts) {
    auto [host, port] = *split_host_port(address);  // checked by the settings
    auto next = connect_to_one(sys, s, host, uint16_t(port), hello, limits);
    if (next || is(next.error(), ceco_errc::handshake_failed))
      return next;
  }
  return first;
}

std::string describe_transport(const settings& s) {
  return s.cloud.tls ? "TLS with certificates" : "plain TCP";
}

} // namespace ceco
