// ceco edge: the edge of a two-node deployment. Connects to `ceco cloud`
// (cloud.host, cloud.port) with the reconnect backoff, checks the handshake,
// and runs the prompts like `ceco sim`, the cloud site being remote; after a
// loss the link reconnects by itself.

#include <fmt/format.h>

#include "apps/commands.hpp"
#include "apps/sessions.hpp"

namespace ceco::app {

void add_edge_command(CLI::App& app) {
  auto a = std::make_shared<session_args>();
  auto* cmd = app.add_subcommand(
    "edge", "run the edge of a two-node deployment: connect to `ceco cloud` at cloud.host and "
            "cloud.port and generate (same settings, output and JSON as sim; the link adds no "
            "delay unless link.* in the file or --set asks for it)");
  add_session_options(cmd, a);
  cmd->callback([a] { run_sessions(*a, wire_to_remote_cloud); });
}

} // namespace ceco::app
