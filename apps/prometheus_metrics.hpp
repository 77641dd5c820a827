#pragma once

// What a person operating `ceco serve` and `ceco cloud` watches, as
// Prometheus metrics (prometheus-cpp builds and writes them):
//
//   edge   ceco_http_requests_total{endpoint,status}, ceco_requests_in_flight,
//          ceco_tokens_total{origin="exit_<layer>"|"cloud"}, ceco_degraded_tokens_total,
//          ceco_draft_tokens_total{outcome="accepted"|"rolled_back"} (speculative, exact),
//          ceco_cloud_requests_total, ceco_cloud_request_seconds (histogram),
//          ceco_time_to_first_token_seconds (histogram), ceco_link_bytes_total{direction},
//          ceco_link_up, ceco_link_reconnects_total, ceco_cancelled_requests_total{reason}
//   cloud  ceco_cloud_sessions_open, ceco_cloud_session_memory_bytes,
//          ceco_cloud_tokens_answered_total, ceco_cloud_positions_total,
//          ceco_cloud_steps_total, ceco_cloud_stepped_sessions_total,
//          ceco_cloud_step_sessions (histogram: sessions per step),
//          ceco_cloud_refused_sessions_total{reason}, ceco_cloud_expired_sessions_total

#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "actors/messages.hpp"

namespace ceco::app {

/// The edge's metrics, updated by the server as requests come and go.
class edge_metrics {
public:
  explicit edge_metrics(const std::vector<int>& exits);

  void request(const std::string& endpoint, int status);
  void in_flight(int n) { in_flight_.Set(double(n)); }
  /// Completions waiting for a place (--queue).
  void queued(int n) { queued_.Set(double(n)); }
  /// A finished response: its tokens by origin, cloud requests, bytes.
  void response(const response_report& r);
  void cloud_round_trip(double seconds) { cloud_latency_.Observe(seconds); }
  void first_token(double seconds) { first_token_.Observe(seconds); }
  void cancelled(const std::string& reason);
  /// The link's epoch (reconnections so far, -1 while the cloud is lost).
  void link(int64_t epoch);

  /// Everything registered, the cloud's too when it runs in this process.
  void add(std::shared_ptr<prometheus::Collectable> more) { more_.push_back(std::move(more)); }
  /// The Prometheus text exposition.
  std::string text() const;

private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& tokens_;
  prometheus::Family<prometheus::Counter>& cancelled_;
  prometheus::Gauge& in_flight_;
  prometheus::Gauge& queued_;
  prometheus::Counter& degraded_;
  prometheus::Counter& cloud_requests_;
  prometheus::Counter& bytes_up_;
  prometheus::Counter& bytes_down_;
  prometheus::Histogram& cloud_latency_;
  prometheus::Histogram& first_token_;
  prometheus::Gauge& link_up_;
  prometheus::Counter& reconnects_;
  std::vector<prometheus::Counter*> exit_tokens_;  // per configured exit
  prometheus::Counter& cloud_tokens_;
  prometheus::Family<prometheus::Counter>& drafts_;
  prometheus::Counter& drafts_accepted_;
  prometheus::Counter& drafts_rolled_back_;
  std::vector<int> exits_;
  std::mutex mutex_;
  int64_t epoch_seen_ = 0;
  std::vector<std::shared_ptr<prometheus::Collectable>> more_;
};

/// The context manager's figures, read when scraped; at a gateway, its
/// workers' figures added up, and each worker's health and sessions
/// (`router` set).
class cloud_collector : public prometheus::Collectable {
public:
  cloud_collector(caf::actor_system& sys, context_manager_actor contexts,
                  session_router_actor router = {});
  std::vector<prometheus::MetricFamily> Collect() const override;

private:
  caf::actor_system& sys_;
  context_manager_actor contexts_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Gauge& sessions_;
  prometheus::Gauge& memory_;
  prometheus::Counter& tokens_;
  prometheus::Counter& positions_;
  prometheus::Counter& steps_;
  prometheus::Counter& stepped_;
  prometheus::Counter& refused_limit_;
  prometheus::Counter& refused_memory_;
  prometheus::Counter& expired_;
  prometheus::Histogram& step_sizes_;
  prometheus::Gauge& up_;
  session_router_actor router_;
  prometheus::Family<prometheus::Gauge>& worker_up_;
  prometheus::Family<prometheus::Gauge>& worker_sessions_;
  prometheus::Family<prometheus::Gauge>& worker_placed_;
  prometheus::Family<prometheus::Gauge>& worker_lost_;
  prometheus::Family<prometheus::Gauge>& worker_joins_;
  prometheus::Gauge& refused_full_;
  prometheus::Gauge& refused_none_;
  mutable std::mutex mutex_;
  mutable cloud_stats last_;
};

/// Prometheus text exposition of `collectable` at GET /metrics on
/// host:port (0: any free port), from a thread of its own until destroyed;
/// with `cluster` set (a gateway), its JSON at GET /cluster as well
/// (`ceco cluster status` reads it).
class metrics_endpoint {
public:
  metrics_endpoint(const std::string& host, int port,
                   std::shared_ptr<prometheus::Collectable> collectable,
                   std::function<std::string()> cluster = {});
  ~metrics_endpoint();
  int port() const { return port_; }

private:
  struct impl;
  std::unique_ptr<impl> impl_;
  int port_ = 0;
};

} // namespace ceco::app
