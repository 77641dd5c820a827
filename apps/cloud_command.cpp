// ceco cloud: the cloud of a two-node deployment. Publishes the cloud front
// (context manager and cloud layers behind it) on cloud.host:cloud.port and
// serves edges until SIGINT or SIGTERM.
//
//   ceco cloud --config config/sim.toml --set cloud.host=0.0.0.0
//   ceco edge  --config config/sim.toml --set cloud.host=<cloud address>

#include <csignal>
#include <iostream>

#include <caf/io/all.hpp>
#include <fmt/format.h>

#include "actors/simulation.hpp"
#include "apps/commands.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

namespace {

struct cloud_args {
  std::string config;
  std::vector<std::string> sets;
};

void run_cloud(const cloud_args& a) {
  auto s = load_settings(a.config, a.sets);
  // Signals go to sigwait below, not to CAF's threads (spawned after this).
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  // A server outlives a closed stdout or log pipe: writes fail, not the process.
  std::signal(SIGPIPE, SIG_IGN);

  set_compute_threads(1);
  auto m = load_sim_model(s, default_model_path(), default_exit_heads_path());
  caf::actor_system_config cfg;
  configure_deployment(cfg, s);
  caf::actor_system sys{cfg};
  auto site = spawn_cloud_site(sys, s, m);
  auto port = publish_cloud(sys, site.front, s);
  if (!port) {
    site.stop();
    throw config_error(fmt::format("cloud: cannot listen on {}:{}: {}", s.cloud.host, s.cloud.port,
                                   caf::to_string(port.error())));
  }
  const auto& c = m.model->config();
  // The port ends the first line's first part: scripts read it after the last ':'.
  fmt::print("ceco cloud: serving {} (layers {}..{} of {}, fingerprint {:016x}) on {}:{} over {}{}\n",
             m.path, s.split.layer, c.n_layer - 1, c.n_layer, m.fingerprint, s.cloud.host, *port,
             describe_transport(s), s.cloud.secret.empty() ? "" : ", secret required");
  std::cout.flush();
  int sig = 0;
  sigwait(&stop, &sig);
  fmt::print("ceco cloud: {} received, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  site.stop();
  unpublish_cloud(sys, site.front, *port, s);
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
  cmd->callback([a] { run_cloud(*a); });
}

} // namespace ceco::app
