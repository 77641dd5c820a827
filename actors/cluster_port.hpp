#pragma once

// An actor published on this node's cluster port (cluster.host:cluster.port)
// for other cloud nodes, over the cluster's mutual TLS unless cluster.insecure:
// a worker's front, a layer stage. Includes CAF's io and OpenSSL modules:
// for the .cpp files that publish.

#include <chrono>
#include <cstdint>
#include <string>

#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>
#include <fmt/format.h>

#include "actors/messages.hpp"
#include "config/settings.hpp"

namespace ceco {

/// Publishes `handle` (typed: a peer's remote_actor checks its interface);
/// the port bound. Throws config_error naming the address when it cannot.
template <class Handle>
uint16_t publish_on_cluster_port(caf::actor_system& sys, const settings& s, const Handle& handle) {
  const auto& host = s.cluster.host;
  auto port = uint16_t(s.cluster.port);
  auto bound = !s.cluster.insecure ? caf::openssl::publish(handle, port, host.c_str(), true)
                                   : sys.middleman().publish(handle, port, host.c_str(), true);
  if (!bound)
    throw config_error(fmt::format("cluster: cannot listen on {}:{} (cluster.host, cluster.port): "
                                   "{}", host, port, sys.render(bound.error())));
  return *bound;
}

/// Takes what publish_on_cluster_port published off `port` and stops it (the
/// actor system cannot shut down while the middleman holds it published).
template <class Handle>
void stop_on_cluster_port(caf::actor_system& sys, const settings& s, const Handle& handle,
                          uint16_t port) {
  // The OpenSSL module's middleman actor speaks the io middleman's protocol
  // (its unpublish helper does not compile against CAF 0.17's atoms).
  auto mm = !s.cluster.insecure ? sys.openssl_manager().actor_handle()
                                : sys.middleman().actor_handle();
  caf::scoped_actor self{sys};
  self->request(mm, std::chrono::seconds(5), caf::unpublish_atom::value, handle.address(), port)
    .receive([] {}, [](caf::error&) {});
  caf::anon_send_exit(handle, caf::exit_reason::user_shutdown);
}

/// The actor another cloud node published on `host:port`, over the
/// cluster's transport; the error says why not, with what usually causes it.
template <class Handle>
caf::expected<Handle> connect_on_cluster_port(caf::actor_system& sys, const settings& s,
                                              const std::string& host, uint16_t port) {
  auto peer = !s.cluster.insecure ? caf::openssl::remote_actor<Handle>(sys, host, port)
                                  : sys.middleman().remote_actor<Handle>(host, port);
  if (peer)
    return peer;
  return make_error(ceco_errc::cloud_unreachable,
                    fmt::format("cannot connect: {}{}", sys.render(peer.error()),
                                !s.cluster.insecure
                                  ? " (not up, or its certificate is not signed by "
                                    "cluster.tls_ca_file, or ours not by its)"
                                  : " (not up?)"));
}

} // namespace ceco
