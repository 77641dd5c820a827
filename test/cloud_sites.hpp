#pragma once

// Simulated deployments for the runtime tests: one with its own actor
// system, and a cloud that can be lost and come back.

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "actors/deployment.hpp"
#include "actors/sim_clock.hpp"

namespace ceco::test {

/// One actor system and simulated deployment with these settings; an empty
/// model.path loads `default_model` (and `default_heads`).
struct sim_fixture {
  explicit sim_fixture(const std::vector<std::string>& sets, const std::string& default_model = {},
                       const std::string& default_heads = {}) {
    s = load_settings("", sets);
    m = load_site_model(s, default_model.empty() ? s.model.path : default_model, default_heads);
    configure_actor_system(cfg, 2);
    if (s.compute.clock == "virtual")
      configure_virtual_time(cfg);
    sys = std::make_unique<caf::actor_system>(cfg);
    sim = std::make_unique<deployment>(*sys, s, m);
  }
  ~sim_fixture() { sim.reset(); }
  settings s;
  site_model m;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::unique_ptr<deployment> sim;
};

/// A cloud that can be lost and come back: `first` is the cloud site a
/// deployment starts with; `reconnect` (given to the deployment's link)
/// brings up a fresh site each time, which knows nothing of earlier sessions.
struct replaceable_cloud {
  replaceable_cloud(caf::actor_system& sys, const settings& s, const site_model& m)
      : first(spawn_cloud_site(sys, s, m)) {
    reconnect = [this, &sys, &s, &m]() -> caf::expected<cloud_api> {
      std::lock_guard<std::mutex> lock(mu);
      later.push_back(spawn_cloud_site(sys, s, m));
      return later.back().front;
    };
  }
  ~replaceable_cloud() {
    first.stop();
    std::lock_guard<std::mutex> lock(mu);
    for (auto& c : later)
      c.stop();
  }
  size_t reconnections() {
    std::lock_guard<std::mutex> lock(mu);
    return later.size();
  }

  cloud_site first;
  std::function<caf::expected<cloud_api>()> reconnect;

private:
  std::mutex mu;
  std::vector<cloud_site> later;
};

} // namespace ceco::test
