// ceco sim: the six strategies (docs/design.md §1) in a single-node simulation,
// edge and cloud sites in one process joined by a simulated link.

#include "apps/commands.hpp"
#include "apps/sessions.hpp"

namespace ceco::app {

void add_sim_command(CLI::App& app) {
  auto a = std::make_shared<session_args>();
  auto* cmd = app.add_subcommand(
    "sim", "simulate edge and cloud in one process: the cloud, naive, standalone, "
           "collaborative, speculative and exact strategies over the same actors and a "
           "simulated link");
  add_session_options(cmd, a);
  cmd->callback([a] { run_sessions(*a); });
}

} // namespace ceco::app
