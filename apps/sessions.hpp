#pragma once

// Running prompts under one or all strategies and reporting them: what
// `ceco sim` (edge and cloud sites in this process) and `ceco edge` (the
// cloud elsewhere) share: their options, the run, the JSON lines and the
// table.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "actors/deployment.hpp"

namespace ceco::app {

struct session_args {
  std::string config;
  std::vector<std::string> sets;
  std::string mode;
  std::string prompt;
  std::string prompts_file;
  int max_tokens = 0;
  int sessions = 1;
  bool json = false;
  bool print_config = false;
  bool regime = true;  // sim --mode all: the paper-regime table too (--no-paper-regime)
};

/// --config, --set, --mode, --prompt(s), --max-tokens, --json, --sessions, --print-config.
void add_session_options(CLI::App* cmd, const std::shared_ptr<session_args>& a);

/// The edge site wired to a cloud that runs elsewhere (`ceco edge`).
using remote_cloud_fn = std::function<std::unique_ptr<deployment>(
  caf::actor_system& sys, const settings& s, const site_model& m)>;

/// The edge site wired to the `ceco cloud` that `s` names (cloud.host,
/// cloud.port), connected with the reconnect backoff and the handshake
/// checked; after a loss its link reconnects by itself. Throws model_error
/// when the cloud cannot be reached.
std::unique_ptr<deployment> wire_to_remote_cloud(caf::actor_system& sys, const settings& s,
                                                 const site_model& m);

/// What a command that answers people (serve, chat) reads to reach its cloud:
/// --config, --set, --local-cloud.
struct edge_front_args {
  std::string config;
  std::vector<std::string> sets;
  bool local_cloud = false;
};
void add_edge_front_options(CLI::App* cmd, edge_front_args& a);
/// The actor system's configuration for the edge of `a`: one with a cloud in
/// this process, or a deployment's.
void configure_edge_front(caf::actor_system_config& cfg, const settings& s,
                          const edge_front_args& a);
/// The edge site with a cloud in this process (--local-cloud) or wired to
/// `ceco cloud` (wire_to_remote_cloud).
std::unique_ptr<deployment> start_edge_front(caf::actor_system& sys, const settings& s,
                                             const site_model& m, const edge_front_args& a);
/// "in this process" or "HOST:PORT", for a start line.
std::string cloud_location(const settings& s, const edge_front_args& a);

/// Runs the prompts of `a` under its strategies and prints the report. With
/// `remote` unset both sites run here (`ceco sim`); with it, the cloud is
/// remote: the actor system is set up for a deployment, and after a loss
/// each response waits a while for the link to reconnect.
void run_sessions(session_args a, const remote_cloud_fn& remote = {});

} // namespace ceco::app
