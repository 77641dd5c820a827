#include "apps/prometheus_metrics.hpp"

#include <httplib.h>
#include <fmt/format.h>
#include <prometheus/text_serializer.h>

#include "apps/http_front.hpp"
#include "config/settings.hpp"

namespace ceco::app {

namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

/// Round trips and first tokens: from 0.1 ms (loopback) to 10 s.
const prometheus::Histogram::BucketBoundaries latency_buckets = {
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

prometheus::Counter& counter(prometheus::Registry& r, const std::string& name,
                             const std::string& help) {
  return BuildCounter().Name(name).Help(help).Register(r).Add({});
}

prometheus::Gauge& gauge(prometheus::Registry& r, const std::string& name,
                         const std::string& help) {
  return BuildGauge().Name(name).Help(help).Register(r).Add({});
}

prometheus::Histogram& histogram(prometheus::Registry& r, const std::string& name,
                                 const std::string& help) {
  return BuildHistogram().Name(name).Help(help).Register(r).Add({}, latency_buckets);
}

/// 1, 2, 4, ..., 1024: the upper bounds of cloud_stats::step_sizes.
prometheus::Histogram::BucketBoundaries step_boundaries() {
  prometheus::Histogram::BucketBoundaries b;
  for (int i = 0; i < step_size_buckets - 1; ++i)
    b.push_back(double(int64_t(1) << i));
  return b;
}

/// Counters only go up: add what `now` has beyond `last`.
void advance(prometheus::Counter& c, int64_t now, int64_t last) {
  if (now > last)
    c.Increment(double(now - last));
}

} // namespace

edge_metrics::edge_metrics(const std::vector<int>& exits)
  : registry_(std::make_shared<prometheus::Registry>()),
    requests_(BuildCounter()
                .Name("ceco_http_requests_total")
                .Help("HTTP requests answered, by endpoint and status")
                .Register(*registry_)),
    tokens_(BuildCounter()
              .Name("ceco_tokens_total")
              .Help("tokens generated, by where they came from: an exit layer or the cloud")
              .Register(*registry_)),
    cancelled_(BuildCounter()
                 .Name("ceco_cancelled_requests_total")
                 .Help("responses ended early: the client went away (disconnect), a stop "
                       "string was reached (stop) or the server shut down (shutdown)")
                 .Register(*registry_)),
    in_flight_(gauge(*registry_, "ceco_requests_in_flight", "completions being generated now")),
    queued_(gauge(*registry_, "ceco_requests_queued",
                  "completions waiting for a place beyond --max-concurrent (at most --queue)")),
    degraded_(counter(*registry_, "ceco_degraded_tokens_total",
                      "tokens produced on the edge alone because the cloud was lost")),
    cloud_requests_(counter(*registry_, "ceco_cloud_requests_total",
                            "token requests sent to the cloud")),
    bytes_up_(BuildCounter()
                .Name("ceco_link_bytes_total")
                .Help("bytes over the link to the cloud, by direction")
                .Register(*registry_)
                .Add({{"direction", "up"}})),
    bytes_down_(BuildCounter()
                  .Name("ceco_link_bytes_total")
                  .Help("bytes over the link to the cloud, by direction")
                  .Register(*registry_)
                  .Add({{"direction", "down"}})),
    cloud_latency_(histogram(*registry_, "ceco_cloud_request_seconds",
                             "round trip of a token request to the cloud")),
    first_token_(histogram(*registry_, "ceco_time_to_first_token_seconds",
                           "from a completion request to its first token")),
    link_up_(gauge(*registry_, "ceco_link_up", "1 while the link to the cloud is up")),
    reconnects_(counter(*registry_, "ceco_link_reconnects_total",
                        "times the link reconnected to the cloud after a loss")),
    cloud_tokens_(tokens_.Add({{"origin", "cloud"}})),
    drafts_(BuildCounter()
              .Name("ceco_draft_tokens_total")
              .Help("speculative and exact: drafts the cloud accepted, and edge tokens thrown "
                    "away by its corrections")
              .Register(*registry_)),
    drafts_accepted_(drafts_.Add({{"outcome", "accepted"}})),
    drafts_rolled_back_(drafts_.Add({{"outcome", "rolled_back"}})),
    exits_(exits) {
  for (int layer : exits_)
    exit_tokens_.push_back(&tokens_.Add({{"origin", "exit_" + std::to_string(layer)}}));
}

void edge_metrics::request(const std::string& endpoint, int status) {
  requests_.Add({{"endpoint", endpoint}, {"status", std::to_string(status)}}).Increment();
}

void edge_metrics::response(const response_report& r) {
  for (size_t i = 0; i < r.exit_layers.size() && i < r.exit_counts.size(); ++i) {
    auto at = std::find(exits_.begin(), exits_.end(), r.exit_layers[i]);
    if (at != exits_.end())
      exit_tokens_[size_t(at - exits_.begin())]->Increment(double(r.exit_counts[i]));
  }
  cloud_tokens_.Increment(double(r.cloud_tokens));
  drafts_accepted_.Increment(double(r.accepted_drafts));
  drafts_rolled_back_.Increment(double(r.discarded_tokens));
  degraded_.Increment(double(r.degraded_tokens));
  cloud_requests_.Increment(double(r.cloud_requests));
  bytes_up_.Increment(double(r.traffic.bytes_up));
  bytes_down_.Increment(double(r.traffic.bytes_down));
}

void edge_metrics::cancelled(const std::string& reason) {
  cancelled_.Add({{"reason", reason}}).Increment();
}

void edge_metrics::link(int64_t epoch) {
  std::lock_guard<std::mutex> lock(mutex_);
  link_up_.Set(epoch >= 0 ? 1 : 0);
  advance(reconnects_, epoch, epoch_seen_);
  epoch_seen_ = std::max(epoch_seen_, epoch);
}

std::string edge_metrics::text() const {
  auto families = registry_->Collect();
  for (auto& c : more_) {
    auto more = c->Collect();
    families.insert(families.end(), std::make_move_iterator(more.begin()),
                    std::make_move_iterator(more.end()));
  }
  return prometheus::TextSerializer{}.Serialize(families);
}

cloud_collector::cloud_collector(caf::actor_system& sys, context_manager_actor contexts,
                                 session_router_actor router)
  : sys_(sys), contexts_(std::move(contexts)),
    registry_(std::make_shared<prometheus::Registry>()),
    sessions_(gauge(*registry_, "ceco_cloud_sessions_open", "edge sessions open on the cloud")),
    memory_(gauge(*registry_, "ceco_cloud_session_memory_bytes",
                  "bytes the open sessions' contexts hold (KV caches and states)")),
    tokens_(counter(*registry_, "ceco_cloud_tokens_answered_total", "token requests answered")),
    positions_(counter(*registry_, "ceco_cloud_positions_total",
                       "uploaded positions the cloud layers caught up on")),
    steps_(counter(*registry_, "ceco_cloud_steps_total", "cloud steps computed")),
    stepped_(counter(*registry_, "ceco_cloud_stepped_sessions_total",
                     "sessions over all steps (divided by the steps: the mean step size)")),
    refused_limit_(BuildCounter()
                     .Name("ceco_cloud_refused_sessions_total")
                     .Help("session opens refused, by the limit reached")
                     .Register(*registry_)
                     .Add({{"reason", "max_sessions"}})),
    refused_memory_(BuildCounter()
                      .Name("ceco_cloud_refused_sessions_total")
                      .Help("session opens refused, by the limit reached")
                      .Register(*registry_)
                      .Add({{"reason", "max_memory"}})),
    expired_(counter(*registry_, "ceco_cloud_expired_sessions_total",
                     "sessions freed after session.ttl_s without traffic")),
    step_sizes_(BuildHistogram()
                  .Name("ceco_cloud_step_sessions")
                  .Help("sessions computed together per cloud step")
                  .Register(*registry_)
                  .Add({}, step_boundaries())),
    up_(gauge(*registry_, "ceco_cloud_up", "1 when the context manager answered this scrape")),
    router_(std::move(router)),
    worker_up_(BuildGauge().Name("ceco_cluster_worker_up")
                 .Help("a gateway's workers: 1 while connected (cluster.workers)")
                 .Register(*registry_)),
    worker_sessions_(BuildGauge().Name("ceco_cluster_worker_sessions")
                       .Help("sessions open on each worker, placed by this gateway")
                       .Register(*registry_)),
    worker_placed_(BuildGauge().Name("ceco_cluster_worker_placed_sessions")
                     .Help("sessions placed on each worker since the gateway started")
                     .Register(*registry_)),
    worker_lost_(BuildGauge().Name("ceco_cluster_worker_lost_sessions")
                   .Help("sessions on each worker when it went down (their edges opened new ones)")
                   .Register(*registry_)),
    worker_joins_(BuildGauge().Name("ceco_cluster_worker_joins")
                    .Help("times each worker joined (again)")
                    .Register(*registry_)),
    refused_full_(gauge(*registry_, "ceco_cluster_refused_full",
                        "session opens a gateway refused: every worker full")),
    refused_none_(gauge(*registry_, "ceco_cluster_refused_no_worker",
                        "session opens a gateway refused: no worker up")) {}

std::vector<prometheus::MetricFamily> cloud_collector::Collect() const {
  std::lock_guard<std::mutex> lock(mutex_);
  caf::scoped_actor self{sys_};
  bool ok = false;
  cloud_stats now;
  self->request(contexts_, std::chrono::seconds(5), stats_atom::value)
    .receive([&](cloud_stats& st) { now = st, ok = true; }, [&](caf::error&) {});
  up_.Set(ok ? 1 : 0);
  if (ok) {
    sessions_.Set(double(now.sessions));
    memory_.Set(double(now.context_bytes));
    advance(tokens_, now.tokens, last_.tokens);
    advance(positions_, now.positions, last_.positions);
    advance(steps_, now.steps, last_.steps);
    advance(stepped_, now.stepped_sessions, last_.stepped_sessions);
    advance(refused_limit_, now.refused_limit, last_.refused_limit);
    advance(refused_memory_, now.refused_memory, last_.refused_memory);
    advance(expired_, now.expired, last_.expired);
    if (now.step_sizes.size() == size_t(step_size_buckets)) {
      std::vector<double> more(now.step_sizes.size());
      for (size_t i = 0; i < more.size(); ++i)
        more[i] = double(now.step_sizes[i] - (i < last_.step_sizes.size() ? last_.step_sizes[i] : 0));
      step_sizes_.ObserveMultiple(more, double(now.stepped_sessions - last_.stepped_sessions));
    }
    last_ = now;
  }
  if (router_) {
    self->request(router_, std::chrono::seconds(5), cluster_atom::value)
      .receive(
        [&](cluster_status& st) {
          for (const auto& w : st.workers) {
            const std::map<std::string, std::string> label{{"worker", w.name}};
            worker_up_.Add(label).Set(w.up ? 1 : 0);
            worker_sessions_.Add(label).Set(double(w.sessions));
            worker_placed_.Add(label).Set(double(w.placed));
            worker_lost_.Add(label).Set(double(w.lost));
            worker_joins_.Add(label).Set(double(w.joins));
          }
          refused_full_.Set(double(st.refused_full));
          refused_none_.Set(double(st.refused_none));
        },
        [&](caf::error&) {});
  }
  return registry_->Collect();
}

struct metrics_endpoint::impl {
  httplib::Server http;
  std::thread thread;
};

metrics_endpoint::metrics_endpoint(const std::string& host, int port,
                                   std::shared_ptr<prometheus::Collectable> collectable,
                                   std::function<std::string()> cluster)
  : impl_(std::make_unique<impl>()) {
  impl_->http.set_socket_options([](socket_t sock) { set_listen_options(sock); });
  impl_->http.Get("/metrics", [collectable](const httplib::Request&, httplib::Response& res) {
    res.set_content(prometheus::TextSerializer{}.Serialize(collectable->Collect()),
                    "text/plain; version=0.0.4; charset=utf-8");
  });
  if (cluster)
    impl_->http.Get("/cluster", [cluster](const httplib::Request&, httplib::Response& res) {
      res.set_content(cluster(), "application/json");
    });
  port_ = port == 0 ? impl_->http.bind_to_any_port(host)
                    : (impl_->http.bind_to_port(host, port) ? port : -1);
  if (port_ <= 0)
    throw config_error(fmt::format("cannot serve metrics on {}:{}: {}", host, port,
                                   bind_failure(host, port)));
  impl_->thread = std::thread([this] { impl_->http.listen_after_bind(); });
}

metrics_endpoint::~metrics_endpoint() {
  impl_->http.stop();
  if (impl_->thread.joinable())
    impl_->thread.join();
}

} // namespace ceco::app
