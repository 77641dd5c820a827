// ceco edge: the edge of a two-node deployment. Connects to `ceco cloud`
// (cloud.host, cloud.port) with the reconnect backoff, checks the handshake,
// and runs the prompts like `ceco sim`, the cloud site being remote; after a
// loss the link reconnects by itself.

#include <chrono>
#include <thread>

#include <fmt/format.h>

#include "actors/deployment.hpp"
#include "actors/network.hpp"
#include "actors/reconnect.hpp"
#include "apps/commands.hpp"
#include "apps/sessions.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

namespace {

/// Connects to the cloud that `s` names, with doubling backoff, and checks
/// the handshake; throws model_error when it cannot.
cloud_api connect_to_cloud(caf::actor_system& sys, const settings& s, const site_model& m) {
  std::string last_error;
  const backoff policy;
  for (int attempt = 1; attempt <= s.cloud.connect_tries; ++attempt) {
    auto remote = connect_to_front(sys, s, make_hello(s, m), wire_limits_of(m));
    if (remote)
      return *remote;
    // A refusal is final; a handshake that timed out is tried again.
    if (is(remote.error(), ceco_errc::handshake_failed))
      throw model_error(describe(remote.error()));
    last_error = describe(remote.error());
    if (attempt < s.cloud.connect_tries) {
      const auto wait = policy.after(attempt - 1);
      fmt::print(stderr, "ceco edge: cannot reach {}:{} ({}); retrying in {} ms\n", s.cloud.host,
                 s.cloud.port, last_error, wait.count());
      std::this_thread::sleep_for(wait);
    }
  }
  throw model_error(fmt::format("cannot reach the cloud at {}:{} after {} attempt(s): {}",
                                s.cloud.host, s.cloud.port, s.cloud.connect_tries, last_error));
}

std::unique_ptr<deployment> wire_to_remote_cloud(caf::actor_system& sys, const settings& s,
                                                 const site_model& m) {
  // After a loss the link reconnects by itself, from a thread of its own.
  auto reconnect = [&sys, s, hello = make_hello(s, m), limits = wire_limits_of(m)] {
    return connect_to_front(sys, s, hello, limits);
  };
  return std::make_unique<deployment>(sys, s, m, connect_to_cloud(sys, s, m), reconnect);
}

} // namespace

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
