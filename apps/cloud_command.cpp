// ceco cloud: the cloud of a two-node deployment. Serves the cloud front
// (context manager and cloud layers behind it) over ceco's wire protocol on
// cloud.host:cloud.port, through the gateway, until SIGINT or SIGTERM (status
// 0), or until one of its actors dies (status 3, naming the actor and why).
//
//   ceco cloud --config config/sim.toml --set cloud.host=0.0.0.0
//   ceco edge  --config config/sim.toml --set cloud.host=<cloud address>

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <csignal>
#include <cstdio>
#include <iostream>
#include <optional>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "actors/cluster.hpp"
#include "actors/deployment.hpp"
#include "actors/gateway.hpp"
#include "actors/layer_stage.hpp"
#include "apps/commands.hpp"
#include "apps/json_text.hpp"
#include "apps/prometheus_metrics.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

namespace {

struct cloud_args {
  std::string config;
  std::vector<std::string> sets;
  double stats_s = 0;
  int metrics_port = -1;  // -1: no metrics
  bool insecure = false;
  std::string role;  // cluster.role, when given
};

/// One line of what the cloud holds and has done since the last line.
void print_stats(caf::actor_system& sys, const cloud_site& site, cloud_stats& last,
                 double seconds) {
  caf::scoped_actor self{sys};
  cloud_stats now;
  bool ok = false;
  self->request(site.contexts, std::chrono::seconds(5), stats_atom::value)
    .receive([&](cloud_stats& st) { now = st, ok = true; }, [&](caf::error&) {});
  if (!ok)
    return;
  const auto steps = now.steps - last.steps;
  fmt::print("ceco cloud: {} session(s), {:.1f} MiB of context; last {:.0f} s: {} tokens "
             "({:.1f}/s), {} positions caught up, {} steps ({:.2f} sessions per step)\n",
             now.sessions, double(now.context_bytes) / 1048576.0, seconds, now.tokens - last.tokens,
             double(now.tokens - last.tokens) / seconds, now.positions - last.positions, steps,
             steps > 0 ? double(now.stepped_sessions - last.stepped_sessions) / double(steps) : 0.0);
  if (site.router) {
    self->request(site.router, std::chrono::seconds(5), cluster_atom::value)
      .receive(
        [&](cluster_status& st) {
          std::string line;
          for (const auto& w : st.workers)
            line += fmt::format("{}{} {} ({} session(s), {} placed, {} lost)",
                                line.empty() ? "" : "; ", w.name, w.up ? "up" : "DOWN",
                                w.sessions, w.placed, w.lost);
          fmt::print("ceco cloud: workers: {}\n", line.empty() ? "none listed" : line);
        },
        [&](caf::error&) {});
  }
  std::cout.flush();
  last = now;
}

/// A gateway's view of its workers as JSON (GET /cluster on its metrics port).
std::string cluster_json(caf::actor_system& sys, const session_router_actor& router) {
  caf::scoped_actor self{sys};
  nlohmann::json j = {{"role", "gateway"}, {"answered", false}};
  self->request(router, std::chrono::seconds(5), cluster_atom::value)
    .receive(
      [&](cluster_status& st) {
        j["answered"] = true;
        j["sessions"] = st.sessions;
        j["refused_full"] = st.refused_full;
        j["refused_no_worker"] = st.refused_none;
        j["workers"] = nlohmann::json::array();
        for (const auto& w : st.workers)
          j["workers"].push_back({{"name", w.name}, {"role", "worker"}, {"up", w.up},
                                  {"sessions", w.sessions}, {"placed", w.placed},
                                  {"lost", w.lost}, {"joins", w.joins}});
      },
      [&](caf::error&) {});
  return json_text(j);
}

/// cloud.host as the address to listen on: an IP address as it is, a name
/// ("localhost", as edge and serve accept it) as the first address it
/// resolves to.
std::string listen_address(const std::string& host) {
  in6_addr ip{};
  if (host.empty() || ::inet_pton(AF_INET, host.c_str(), &ip) == 1 ||
      ::inet_pton(AF_INET6, host.c_str(), &ip) == 1)
    return host;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &found); rc != 0)
    throw config_error(fmt::format("cloud.host '{}': not an IP address, and it does not resolve: {}",
                                   host, ::gai_strerror(rc)));
  char text[INET6_ADDRSTRLEN] = {};
  ::getnameinfo(found->ai_addr, found->ai_addrlen, text, sizeof text, nullptr, 0, NI_NUMERICHOST);
  ::freeaddrinfo(found);
  return text;
}

/// A stage node: stage cluster.stage of placement.cloud_stages (and the
/// stages after it, unless cluster.stage_hosts places them elsewhere) for
/// the workers that send it work, until SIGINT or SIGTERM.
void serve_stage(caf::actor_system& sys, const settings& s, const site_model& m,
                 const sigset_t& stop) {
  const auto& bounds = s.placement.cloud_stages;
  const size_t k = size_t(s.cluster.stage - 1);
  const int n_layer = m.model->config().n_layer;
  const int last = k + 1 < bounds.size() ? bounds[k + 1] : n_layer;
  auto next = stage_chain(sys, s, m.model, m.fingerprint, k + 1);
  auto stage = spawn_layer_stage(sys, m.model, bounds[k], last, next, m.fingerprint);
  const auto port = publish_layer_stage(sys, s, stage);
  fmt::print("ceco cloud: stage {} serving {} (layers {}..{} of {}{}, fingerprint {:016x}) to "
             "workers on {}:{} over {}\n",
             k + 1, m.path, bounds[k], last - 1, n_layer,
             next ? ", then the next stage" : ", the final head", m.fingerprint, s.cluster.host,
             port, describe_cluster_transport(s));
  std::cout.flush();
  int sig = 0;
  while (sig <= 0)
    sig = sigwaitinfo(&stop, nullptr);
  fmt::print("ceco cloud: {} received, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  std::cout.flush();
  stop_layer_stage(sys, s, stage, port);
  if (next)
    caf::anon_send_exit(next, caf::exit_reason::user_shutdown);
}

void run_cloud(const cloud_args& a) {
  auto sets = a.sets;
  if (!a.role.empty())
    sets.push_back("cluster.role=\"" + a.role + "\"");
  auto s = load_settings(a.config, sets);
  s.cloud.host = listen_address(s.cloud.host);
  if (a.insecure)
    s.cloud.insecure = true;
  const bool worker = s.cluster.role == "worker";
  const bool gateway = s.cluster.role == "gateway";
  // Signals go to sigwait below, not to CAF's threads (spawned after this).
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  // A server outlives a closed stdout or log pipe: writes fail, not the process.
  std::signal(SIGPIPE, SIG_IGN);

  set_compute_threads(1);
  check_clock(s, false);
  auto m = load_site_model(s, default_model_path(), default_exit_heads_path());
  caf::actor_system_config cfg;
  configure_deployment(cfg, s);
  caf::actor_system sys{cfg};
  auto options = cloud_server_options(s, wire_limits_of(m));
  // Each refused edge on stderr, with its address and why: a wrong or missing
  // secret, a plain edge of a TLS cloud, another model (the gateway's hello).
  // Never throws: stderr may be a closed pipe (SIGPIPE is ignored), and this
  // runs on the transport's thread and in the gateway actor.
  auto log_refusal = [](const std::string& line) {
    std::fputs(("ceco cloud: " + line + "\n").c_str(), stderr);
    std::fflush(stderr);
  };
  const bool tls = s.cloud.tls;
  options.on_refused = [log_refusal, tls](const std::string& peer, const wire::wire_error& why) {
    std::string hint;
    if (why.text.rfind("hello.", 0) == 0)
      hint = " (an edge whose model is not this cloud's: another shape)";
    else if (why.code == wire::wire_errc::auth_failed && why.text.rfind("TLS", 0) != 0)
      hint = " (its cloud.secret is not this cloud's, or it has none)";
    else if (tls && (why.code == wire::wire_errc::timed_out || why.text.rfind("TLS", 0) == 0))
      hint = " (an edge without cloud.tls = true, or a certificate this cloud's "
             "cloud.tls_ca_file did not sign)";
    log_refusal(fmt::format("refused the connection from {}: {}: {}{}", peer,
                            wire::to_string(why.code), why.text, hint));
  };
  if (s.cluster.role == "stage")
    return serve_stage(sys, s, m, stop);
  auto site = spawn_cloud_site(sys, s, m);
  // A worker faces its gateways only, on its cluster port; a single cloud
  // and a gateway face the edges on the wire protocol.
  std::unique_ptr<cloud_gateway> edges;
  std::unique_ptr<worker_joiner> joiner;
  worker_api front;
  uint16_t port = 0;
  try {
    if (worker) {
      front = spawn_worker_front(sys, site.contexts, make_hello(s, m));
      site.watch->add(caf::actor_cast<caf::actor>(front), "worker front");
      port = publish_worker(sys, s, front);
    } else {
      edges = std::make_unique<cloud_gateway>(sys, site.front, std::move(options),
                                              s.session.max_sessions_per_connection,
                                              site.session_ends, log_refusal);
      port = edges->port();
    }
  } catch (const config_error&) {
    site.stop();
    throw;
  } catch (const std::exception& e) {
    site.stop();
    throw config_error(fmt::format("cloud: cannot listen on {}:{}: {}", s.cloud.host, s.cloud.port,
                                   e.what()));
  }
  if (gateway)
    joiner = std::make_unique<worker_joiner>(sys, s, site.router, make_hello(s, m),
                                             [](const std::string& line) {
                                               fmt::print("ceco cloud: cluster: {}\n", line);
                                               std::fflush(stdout);
                                             });
  // Prometheus metrics on their own port, from a thread of their own.
  std::unique_ptr<metrics_endpoint> metrics;
  if (a.metrics_port >= 0) {
    try {
      std::function<std::string()> cluster;
      if (site.router)
        cluster = [&sys, router = site.router] { return cluster_json(sys, router); };
      metrics = std::make_unique<metrics_endpoint>(
        s.cloud.host, a.metrics_port, std::make_shared<cloud_collector>(sys, site.contexts, site.router),
        std::move(cluster));
    } catch (const std::exception&) {
      joiner.reset();
      if (edges)
        edges->stop();
      site.stop();
      throw;
    }
  }
  const auto& c = m.model->config();
  // The port ends the first line's first part: scripts read it after the last ':'.
  if (worker)
    fmt::print("ceco cloud: worker serving {} (layers {}..{} of {}, fingerprint {:016x}) to "
               "gateways on {}:{} over {}\n",
               m.path, s.split.layer, c.n_layer - 1, c.n_layer, m.fingerprint, s.cluster.host,
               port, describe_cluster_transport(s));
  else
    fmt::print("ceco cloud: {} {} (layers {}..{} of {}, fingerprint {:016x}) on {}:{} over {}{}\n",
               gateway ? "gateway for" : "serving", m.path, s.split.layer, c.n_layer - 1,
               c.n_layer, m.fingerprint, s.cloud.host, port, describe_transport(s),
               s.cloud.secret.empty() ? "" : ", secret required");
  if (gateway)
    fmt::print("ceco cloud: gateway: {} worker(s) listed (cluster.workers) over {}\n",
               s.cluster.workers.size(), describe_cluster_transport(s));
  std::cout.flush();
  if (metrics)
    fmt::print("ceco cloud: metrics on http://{}:{}/metrics{}\n", s.cloud.host, metrics->port(),
               site.router ? fmt::format(", workers on http://{}:{}/cluster (ceco cluster status)",
                                         s.cloud.host, metrics->port())
                           : std::string());
  std::cout.flush();
  if (!worker && serves_strangers(s))
    fmt::print(stderr, "ceco cloud: WARNING: serving {} without TLS or a secret (--insecure): "
                       "anyone who reaches it is served\n", s.cloud.host);
  if (edges)
    site.watch->add(edges->actor(), "gateway");
  // Until a signal, or until an actor of the cloud dies: then the process
  // exits non-zero (its supervisor restarts it) rather than answer errors.
  cloud_stats last;
  using clock = std::chrono::steady_clock;
  const auto period = std::chrono::duration_cast<clock::duration>(
    std::chrono::duration<double>(a.stats_s > 0 ? a.stats_s : 0.0));
  auto next = clock::now() + period;
  int sig = 0;
  std::optional<std::string> failure;
  while (sig <= 0 && !failure) {
    timespec tick{0, 100'000'000};  // how soon a failure is noticed
    sig = sigtimedwait(&stop, nullptr, &tick);
    failure = site.watch->failure();
    if (sig <= 0 && a.stats_s > 0 && clock::now() >= next) {
      print_stats(sys, site, last, a.stats_s);
      next += period;
    }
  }
  site.watch->stop();
  if (failure)
    fmt::print(stderr, "ceco cloud: {}; shutting down\n", *failure);
  else
    fmt::print("ceco cloud: {} received, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  std::cout.flush();
  metrics.reset();
  joiner.reset();
  if (edges)
    edges->stop();
  if (front)
    stop_worker(sys, s, front, port);
  site.stop();
  if (failure)
    throw fatal_failure(fmt::format("cloud: {}: exiting with status {} so that its supervisor "
                                    "restarts it", *failure, fatal_failure_status));
}

} // namespace

void add_cloud_command(CLI::App& app) {
  auto a = std::make_shared<cloud_args>();
  auto* cmd = app.add_subcommand(
    "cloud", "serve the cloud side of a two-node deployment (context manager and cloud layers) "
             "on cloud.host:cloud.port until SIGINT or SIGTERM");
  cmd->add_option("--config", a->config, "TOML settings (the same schema as sim; see config/sim.toml)");
  cmd->add_option("--set", a->sets, "override one setting, e.g. --set cloud.port=7070")
    ->take_all()->allow_extra_args(false);
  cmd->add_option("--stats", a->stats_s,
                  "every this many seconds, print one line: sessions, context memory, tokens "
                  "answered per second, steps and sessions per step (0 = never)")
    ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--metrics-port", a->metrics_port,
                  "serve Prometheus metrics (sessions open, their memory, tokens answered, steps, "
                  "refused sessions by reason) on cloud.host at this port, /metrics (0: any free "
                  "port, printed)")
    ->check(CLI::Range(0, 65535));
  cmd->add_option("--role", a->role,
                  "cluster.role: \"worker\" holds sessions and cloud layers for its gateways on "
                  "cluster.host:cluster.port (CAF's network layer, mutual TLS); \"gateway\" faces "
                  "the edges and places each session on one of cluster.workers; \"single\" (the "
                  "default) is both in one process; \"stage\" runs stage cluster.stage of "
                  "placement.cloud_stages, a range of the cloud's layers, for the workers listing "
                  "it in cluster.stage_hosts (see docs/cluster.md)")
    ->check(CLI::IsMember({"single", "gateway", "worker", "stage"}));
  cmd->add_flag("--insecure", a->insecure,
                "serve a non-loopback cloud.host with neither TLS nor cloud.secret (a trusted "
                "network only; the same as cloud.insecure = true)");
  cmd->callback([a] { run_cloud(*a); });
}

} // namespace ceco::app
