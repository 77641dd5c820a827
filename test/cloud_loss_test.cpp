// policy.on_cloud_loss: what a response does when the cloud is lost
// mid-response. exact waits for the cloud by default and gives the
// undisturbed run's tokens; speculative holds its drafts and verifies them
// once the cloud is back; fail ends the response; a cloud that never comes
// back ends an exact response with an error naming the policy.

#include "test/support.hpp"
#include "test/cloud_sites.hpp"

#include <thread>

#include "actors/deployment.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

/// Every token a draft the cloud verifies, or asks the cloud, 1 ms each way.
std::vector<std::string> lossy(std::vector<std::string> more = {}) {
  more.insert(more.begin(), {"model.path=" + stories_gguf(), "link.latency_ms=1",
                             "link.bandwidth_mbps=0", "policy.max_draft=4"});
  return more;
}

/// One response whose first cloud is stopped after `after`; `reconnect`
/// (default: a fresh cloud site) is how the link gets a cloud again.
response_report run_with_loss(const std::vector<std::string>& sets, const std::string& mode,
                              int n, std::chrono::milliseconds after, bool cloud_returns = true) {
  auto s = load_settings("", sets);
  auto m = load_site_model(s, stories_gguf());
  caf::actor_system_config cfg;
  configure_actor_system(cfg, 2);
  caf::actor_system sys{cfg};
  replaceable_cloud clouds(sys, s, m);
  std::function<caf::expected<cloud_api>()> never = []() -> caf::expected<cloud_api> {
    return make_error(ceco_errc::cloud_unreachable, "test: the cloud stays away");
  };
  response_report r;
  {
    deployment sim(sys, s, m, clouds.first.front, cloud_returns ? clouds.reconnect : never);
    std::thread killer([&] {
      std::this_thread::sleep_for(after);
      clouds.first.stop();
    });
    r = sim.run(m.vocab.encode("Once upon a time"), mode, n);
    killer.join();
  }
  return r;
}

/// The same response with nothing lost.
response_report undisturbed(const std::vector<std::string>& sets, const std::string& mode, int n) {
  sim_fixture fx(sets);
  return fx.sim->run(fx.m.vocab.encode("Once upon a time"), mode, n);
}

} // namespace

TEST_CASE("cloud loss: exact waits for the cloud and gives the undisturbed run's tokens") {
  const int n = 60;
  auto sets = lossy();
  auto calm = undisturbed(sets, "exact", n);
  REQUIRE(calm.error.empty());
  auto cloud = undisturbed(sets, "cloud", n);
  CHECK(calm.tokens == cloud.tokens);
  auto r = run_with_loss(sets, "exact", n, std::chrono::milliseconds(40));
  CAPTURE(r.error);
  CHECK(r.error.empty());
  CHECK(r.resumed == 1);
  CHECK(r.degraded_tokens == 0);
  CHECK(r.unverified_tokens == 0);
  CHECK(r.tokens == calm.tokens);
}

TEST_CASE("cloud loss: speculative verifies the drafts it made while the cloud was away") {
  const int n = 40;
  // In profile mode each step takes the profile's time: the cloud goes
  // while the response runs.
  auto sets = lossy({"policy.threshold=0.9", "compute.mode=profile",
                     "compute.profile=paper-a100"});
  auto collaborative = undisturbed(sets, "collaborative", n);
  REQUIRE(collaborative.error.empty());
  auto r = run_with_loss(sets, "speculative", n, std::chrono::milliseconds(100));
  CAPTURE(r.error);
  CHECK(r.error.empty());
  CHECK(r.resumed == 1);
  CHECK(r.unverified_tokens == 0);
  CHECK(r.tokens == collaborative.tokens);
}

TEST_CASE("cloud loss: degrade with no wait makes the drafts final unverified at once") {
  auto r = run_with_loss(lossy({"policy.on_cloud_loss=degrade", "policy.cloud_loss_wait_ms=0"}),
                         "exact", 60, std::chrono::milliseconds(40));
  CHECK(r.error.empty());
  CHECK(r.tokens.size() == 60);
  CHECK(r.degraded_tokens > 0);
  CHECK(r.unverified_tokens > 0);
}

TEST_CASE("cloud loss: fail ends the response naming the policy") {
  auto r = run_with_loss(lossy({"policy.on_cloud_loss=fail"}), "exact", 60,
                         std::chrono::milliseconds(40));
  CHECK(r.error.find("policy.on_cloud_loss = \"fail\"") != std::string::npos);
  CHECK(r.tokens.size() < 60);
  CHECK(r.unverified_tokens == 0);
}

TEST_CASE("cloud loss: exact ends with an error when the cloud stays away past the wait") {
  const int n = 60;
  auto sets = lossy({"policy.cloud_loss_wait_ms=300"});
  auto calm = undisturbed(sets, "exact", n);
  auto t0 = std::chrono::steady_clock::now();
  auto r = run_with_loss(sets, "exact", n, std::chrono::milliseconds(40), false);
  auto waited = std::chrono::steady_clock::now() - t0;
  CAPTURE(r.error);
  CHECK(r.error.find("policy.cloud_loss_wait_ms") != std::string::npos);
  CHECK(r.error.find("not back within 300 ms") != std::string::npos);
  CHECK(r.unverified_tokens == 0);
  CHECK(r.degraded_tokens == 0);
  // Every token it did emit is verified: the undisturbed run's, in order.
  REQUIRE(r.tokens.size() < size_t(n));
  CHECK(std::equal(r.tokens.begin(), r.tokens.end(), calm.tokens.begin()));
  CHECK(waited < std::chrono::seconds(20));
}

TEST_CASE("cloud loss: a cloud-strategy generation lost mid-way is generated again once the cloud is back") {
  const int n = 40;
  // In profile mode the generation takes the profile's time (about a second):
  // the cloud goes while it runs.
  auto sets = lossy({"compute.mode=profile", "compute.profile=paper-a100"});
  auto calm = undisturbed(sets, "cloud", n);
  REQUIRE(calm.error.empty());
  auto r = run_with_loss(sets, "cloud", n, std::chrono::milliseconds(100));
  CAPTURE(r.error);
  CHECK(r.error.empty());
  CHECK(r.resumed == 1);
  CHECK(r.cloud_requests == 2);
  CHECK(r.tokens == calm.tokens);
  CHECK(r.phases == std::vector<std::string>{"opening", "running", "degraded", "resuming",
                                             "running", "closing", "reporting"});
}
