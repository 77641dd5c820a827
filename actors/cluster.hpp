#pragma once

// Cloud nodes in one cluster, over CAF's network layer (docs/cluster.md).
// A gateway faces the edges on ceco's wire protocol exactly as a single
// cloud does; behind it, its session router (actors/session_router.hpp)
// reaches the workers' fronts through CAF's middleman, with mutual TLS
// (caf::openssl, certificates of the cluster's CA) unless cluster.insecure
// asks for plain TCP. BASP never faces an edge: a worker listens on its
// cluster port only, and a peer without a certificate the cluster's CA
// signed never gets past the TLS handshake.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "actors/messages.hpp"
#include "config/settings.hpp"

namespace ceco {

/// Loads CAF's middleman (and its OpenSSL module with this node's
/// certificate, key and the cluster CA) for cluster.role gateway or worker,
/// with heartbeats that notice a cut-off peer within a few seconds.
void configure_cluster(caf::actor_system_config& cfg, const settings& s);

/// "mutual TLS" or "plain TCP (cluster.insecure)".
std::string describe_cluster_transport(const settings& s);

/// A worker's face to its gateways: a gateway's hello first (the same
/// model, split, exits and placement, or it is refused), then the context
/// manager's messages.
worker_api spawn_worker_front(caf::actor_system& sys, context_manager_actor contexts,
                              hello_msg mine);

/// Publishes a worker's front on cluster.host:cluster.port; the port bound.
/// Throws config_error naming the address when it cannot.
uint16_t publish_worker(caf::actor_system& sys, const settings& s, const worker_api& front);

/// Takes a worker's front off its cluster port and stops it (the actor
/// system cannot shut down while the middleman holds it published).
void stop_worker(caf::actor_system& sys, const settings& s, const worker_api& front, uint16_t port);

/// A gateway's link to its workers: a thread that connects to each
/// cluster.workers address that is not up (at start, and again every
/// cluster.join_interval_ms after it went down), checks its hello and hands
/// it to the router. Logs each join and refusal through `log`.
class worker_joiner {
public:
  worker_joiner(caf::actor_system& sys, const settings& s, session_router_actor router,
                hello_msg mine, std::function<void(const std::string&)> log);
  ~worker_joiner();
  worker_joiner(const worker_joiner&) = delete;
  worker_joiner& operator=(const worker_joiner&) = delete;

  /// Tries every worker that is down once, now; how many are up after.
  size_t join_now();
  void stop();

private:
  caf::actor_system& sys_;
  settings settings_;
  session_router_actor router_;
  hello_msg mine_;
  std::function<void(const std::string&)> log_;
  std::atomic<bool> stopping_{false};
  std::map<std::string, std::string> last_failure_;  // per address, logged when it changes
  std::thread thread_;
};

} // namespace ceco
