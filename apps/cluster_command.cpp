// ceco cluster status: a gateway's workers, as its metrics port reports them
// (GET /cluster; `ceco cloud --role gateway --metrics-port N`).
//
//   ceco cluster status --gateway 10.0.0.1:9100

#include <cstdio>

#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "apps/json_text.hpp"
#include "config/settings.hpp"

namespace ceco::app {

namespace {

struct cluster_args {
  std::string gateway = "127.0.0.1:9100";
  bool json = false;
};

void print_status(const cluster_args& a) {
  auto where = split_host_port(a.gateway);
  if (!where)
    throw config_error(fmt::format("--gateway '{}': expected host:port of a gateway's metrics "
                                   "port (ceco cloud --role gateway --metrics-port N)", a.gateway));
  httplib::Client http(where->first, where->second);
  http.set_connection_timeout(5);
  http.set_read_timeout(10);
  auto res = http.Get("/cluster");
  if (!res)
    throw config_error(fmt::format("cannot reach {}: {}", a.gateway, httplib::to_string(res.error())));
  if (res->status == 404)
    throw config_error(fmt::format("{} serves no /cluster: it is not a gateway's metrics port "
                                   "(a single cloud or a worker has no workers to list)", a.gateway));
  if (res->status != 200)
    throw config_error(fmt::format("{} answered HTTP {}", a.gateway, res->status));
  auto j = nlohmann::json::parse(res->body, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw config_error(fmt::format("{} answered /cluster with something that is not JSON", a.gateway));
  if (a.json) {
    fmt::print("{}\n", json_text(j, 2));
    return;
  }
  if (!j.value("answered", false)) {
    fmt::print("gateway {}: its session router did not answer\n", a.gateway);
    return;
  }
  fmt::print("gateway {}: {} session(s) open; opens refused: {} (every worker full), {} (no "
             "worker up)\n",
             a.gateway, j.value("sessions", 0), j.value("refused_full", 0),
             j.value("refused_no_worker", 0));
  fmt::print("{:<24} {:<6} {:>9} {:>9} {:>7} {:>6}\n", "worker", "health", "sessions", "placed",
             "lost", "joins");
  for (const auto& w : j.value("workers", nlohmann::json::array()))
    fmt::print("{:<24} {:<6} {:>9} {:>9} {:>7} {:>6}\n", w.value("name", std::string("?")),
               w.value("up", false) ? "up" : "DOWN", w.value("sessions", 0), w.value("placed", 0),
               w.value("lost", 0), w.value("joins", 0));
}

} // namespace

void add_cluster_command(CLI::App& app) {
  auto a = std::make_shared<cluster_args>();
  auto* cmd = app.add_subcommand("cluster", "a cloud cluster's state, as its gateway reports it "
                                            "(see docs/cluster.md)");
  cmd->require_subcommand(1);
  auto* status = cmd->add_subcommand(
    "status", "list a gateway's workers: up or down, sessions open, placed and lost, joins");
  status->add_option("--gateway", a->gateway,
                     "host:port of the gateway's metrics port (ceco cloud --role gateway "
                     "--metrics-port N)")
    ->capture_default_str();
  status->add_flag("--json", a->json, "print the gateway's JSON as it is");
  status->callback([a] { print_status(*a); });
}

} // namespace ceco::app
