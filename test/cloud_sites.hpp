#pragma once

// A cloud that can be lost and come back, for tests of losing and resuming:
// `first` is the cloud site a deployment starts with; `reconnect` (given to
// the deployment's link) brings up a fresh site each time, which knows
// nothing of earlier sessions.

#include <mutex>
#include <vector>

#include "actors/deployment.hpp"

namespace ceco::test {

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
