#include "actors/network.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>
#include <fmt/format.h>

namespace ceco {

void configure_actor_system(caf::actor_system_config& cfg, int threads, bool network,
                            int heartbeat_ms) {
  register_message_types(cfg);
  cfg.set("scheduler.max-threads", threads);
  if (network) {
    cfg.load<caf::io::middleman>();
    if (heartbeat_ms > 0) {
      cfg.set("middleman.heartbeat-interval", caf::timespan(std::chrono::milliseconds(heartbeat_ms)));
      cfg.set("middleman.connection-timeout",
              caf::timespan(std::chrono::milliseconds(4 * heartbeat_ms)));
    }
  }
}

void configure_deployment(caf::actor_system_config& cfg, const settings& s) {
  configure_actor_system(cfg, s.runtime.threads, true, s.cloud.heartbeat_ms);
  if (!s.cloud.tls)
    return;
  cfg.load<caf::openssl::manager>();
  // With a certificate both nodes present theirs and check the other's
  // against the CA file; without, the channel is encrypted but anonymous.
  cfg.openssl_certificate = s.cloud.tls_certificate;
  cfg.openssl_key = s.cloud.tls_key;
  cfg.openssl_cafile = s.cloud.tls_ca_file;
}

caf::expected<uint16_t> publish_cloud(caf::actor_system& sys, const cloud_api& front,
                                      const settings& s) {
  if (s.cloud.tls)
    return caf::openssl::publish(front, uint16_t(s.cloud.port), s.cloud.host.c_str(), true);
  return sys.middleman().publish(front, uint16_t(s.cloud.port), s.cloud.host.c_str(), true);
}

void unpublish_cloud(caf::actor_system& sys, const cloud_api& front, uint16_t port,
                     const settings& s) {
  // CAF 0.17's openssl::unpublish does not compile (it names a 0.18 atom);
  // a TLS listener closes when the actor system shuts down.
  if (!s.cloud.tls)
    sys.middleman().unpublish(front, port);
}

caf::expected<cloud_api> remote_cloud(caf::actor_system& sys, const settings& s) {
  if (s.cloud.tls)
    return caf::openssl::remote_actor<cloud_api>(sys, s.cloud.host, uint16_t(s.cloud.port));
  return sys.middleman().remote_actor<cloud_api>(s.cloud.host, uint16_t(s.cloud.port));
}

caf::expected<cloud_api> connect_to_front(caf::actor_system& sys, const settings& s,
                                          const hello_msg& hello) {
  auto front = remote_cloud(sys, s);
  if (!front)
    return front;
  caf::scoped_actor self{sys};
  caf::error refused;
  self->request(*front, std::chrono::milliseconds(s.cloud.request_timeout_ms), hello)
    .receive([](hello_msg&) {}, [&](caf::error& err) { refused = std::move(err); });
  if (refused)
    return make_error(ceco_errc::handshake_failed,
                      fmt::format("cloud at {}:{}: {}", s.cloud.host, s.cloud.port,
                                  describe(refused)));
  return front;
}

std::string describe_transport(const settings& s) {
  if (!s.cloud.tls)
    return "plain TCP";
  if (s.cloud.tls_certificate.empty())
    return "TLS without certificates (encrypted, peers not authenticated)";
  return "TLS with certificates";
}

} // namespace ceco
