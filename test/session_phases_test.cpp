// The edge session's phases (actors/edge_session.hpp): only the diagram's
// edges are taken, and each path through it is the one a response takes:
// open, run, degrade, resume, close, and a cancel during the open.

#include "test/support.hpp"
#include "test/cloud_sites.hpp"

#include <future>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "actors/deployment.hpp"
#include "actors/edge_session.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

using phases = std::vector<std::string>;

/// Every adjacent pair of a report's phases (after idle) is an edge of the diagram.
bool follows_the_diagram(const phases& taken) {
  std::string from = "idle";
  for (const auto& to : taken) {
    auto p = [](const std::string& name) {
      for (auto x : {phase::idle, phase::opening, phase::running, phase::degraded,
                     phase::resuming, phase::closing, phase::reporting})
        if (name == to_string(x))
          return x;
      FAIL("not a phase: " << name);
      return phase::idle;
    };
    if (!phase_transition_allowed(p(from), p(to)))
      return false;
    from = to;
  }
  return true;
}

/// A cloud that answers opens only when told to (run_atom), or refuses them
/// as unreachable, and closes whatever it is asked to.
struct stub_cloud_state {
  caf::response_promise open;
  static inline const char* name = "stub_cloud";
};

caf::behavior stub_cloud(caf::stateful_actor<stub_cloud_state>* self,
                         std::shared_ptr<std::promise<void>> open_seen, bool unreachable) {
  return {
    [=](open_session&) -> caf::result<uint64_t> {
      if (unreachable)
        return make_error(ceco_errc::cloud_unreachable, "test: no cloud here");
      self->state.open = self->make_response_promise();
      open_seen->set_value();
      return caf::delegated<uint64_t>();
    },
    [=](run_atom) { self->state.open.deliver(uint64_t(7)); },
    [=](close_session& c) { return session_summary{c.session, 0, 0, 0}; },
    [=](upload_msg&) { return int32_t(0); },
  };
}

settings stories_settings(std::vector<std::string> more = {}) {
  more.insert(more.begin(), "model.path=" + stories_gguf());
  return load_settings("", more);
}

} // namespace

TEST_CASE("session phases: the diagram's edges, and no others") {
  const std::vector<std::pair<phase, phase>> edges = {
    {phase::idle, phase::opening},       {phase::idle, phase::running},
    {phase::opening, phase::running},    {phase::opening, phase::degraded},
    {phase::opening, phase::closing},    {phase::running, phase::degraded},
    {phase::running, phase::closing},    {phase::degraded, phase::resuming},
    {phase::degraded, phase::closing},   {phase::resuming, phase::running},
    {phase::resuming, phase::degraded},  {phase::resuming, phase::closing},
    {phase::closing, phase::reporting}};
  const phase all[] = {phase::idle,     phase::opening, phase::running,  phase::degraded,
                       phase::resuming, phase::closing, phase::reporting};
  int allowed = 0;
  for (auto from : all)
    for (auto to : all) {
      const bool listed = std::find(edges.begin(), edges.end(), std::pair{from, to}) != edges.end();
      CAPTURE(to_string(from));
      CAPTURE(to_string(to));
      CHECK(phase_transition_allowed(from, to) == listed);
      allowed += phase_transition_allowed(from, to);
    }
  CHECK(allowed == int(edges.size()));
}

TEST_CASE("session phases: open, run, close on virtual time, for every strategy") {
  sim_fixture fx({"model.path=" + stories_gguf(), "compute.mode=profile",
                  "compute.profile=paper-a100", "compute.clock=virtual"});
  auto ids = fx.m.vocab.encode("Once upon a time");
  for (const char* mode : {"cloud", "naive", "collaborative", "speculative", "exact"}) {
    CAPTURE(mode);
    auto r = fx.sim->run(ids, mode, 6);
    CHECK(r.error.empty());
    CHECK(r.phases == phases{"opening", "running", "closing", "reporting"});
  }
  // Standalone never opens a cloud session, so nothing is left to report.
  auto alone = fx.sim->run(ids, "standalone", 6);
  CHECK(alone.phases == phases{"running", "closing"});
}

TEST_CASE("session phases: a cancel during the open closes what the open brings, then reports") {
  auto s = stories_settings({"link.latency_ms=0"});
  auto m = load_site_model(s, stories_gguf());
  caf::actor_system_config cfg;
  configure_actor_system(cfg, 2);
  caf::actor_system sys{cfg};
  auto seen = std::make_shared<std::promise<void>>();
  auto stub = sys.spawn(stub_cloud, seen, false);
  deployment dep(sys, s, m, caf::actor_cast<cloud_api>(stub));
  auto session = dep.spawn_session(m.vocab.encode("Once upon a time"), strategy::collaborative, 8);
  caf::scoped_actor self{sys};
  auto running = self->request(session, std::chrono::seconds(20), run_atom::value);
  REQUIRE(seen->get_future().wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  self->send(session, cancel_atom::value);
  // The open answers only after the cancel is in.
  self->send(stub, run_atom::value);
  response_report r;
  running.receive([&](response_report& x) { r = std::move(x); },
                  [&](caf::error& err) { FAIL(describe(err)); });
  CHECK(r.error == "cancelled");
  CHECK(r.tokens.empty());
  CHECK(r.phases == phases{"opening", "closing", "reporting"});
  caf::anon_send_exit(stub, caf::exit_reason::user_shutdown);
}

TEST_CASE("session phases: a cloud unreachable at the open degrades the response from the start") {
  auto s = stories_settings({"link.latency_ms=0"});
  auto m = load_site_model(s, stories_gguf());
  caf::actor_system_config cfg;
  configure_actor_system(cfg, 2);
  caf::actor_system sys{cfg};
  auto stub = sys.spawn(stub_cloud, std::make_shared<std::promise<void>>(), true);
  response_report r;
  {
    deployment dep(sys, s, m, caf::actor_cast<cloud_api>(stub));
    r = dep.run(m.vocab.encode("Once upon a time"), "collaborative", 8);
  }
  CHECK(r.error.empty());
  CHECK(r.tokens.size() == 8);
  CHECK(r.degraded_tokens == 8);
  CHECK(r.phases == phases{"opening", "degraded", "closing"});
  caf::anon_send_exit(stub, caf::exit_reason::user_shutdown);
}

TEST_CASE("session phases: a lost cloud degrades the response, a reconnected one resumes it") {
  // Every token is a cloud request (threshold above 1), 1 ms each way. In
  // profile mode each step takes the profile's time: the edge alone cannot
  // finish the response before the link reconnects (runtime_test.cpp).
  auto s = stories_settings({"policy.threshold=1.5", "link.latency_ms=1", "link.bandwidth_mbps=0",
                             "compute.mode=profile", "compute.profile=paper-a100"});
  auto m = load_site_model(s, stories_gguf());
  caf::actor_system_config cfg;
  configure_actor_system(cfg, 2);
  caf::actor_system sys{cfg};
  replaceable_cloud clouds(sys, s, m);
  response_report r;
  {
    deployment sim(sys, s, m, clouds.first.front, clouds.reconnect);
    std::thread killer([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the response takes ~1 s
      clouds.first.stop();
    });
    r = sim.run(m.vocab.encode("Once upon a time"), "collaborative", 30);
    killer.join();
  }
  CAPTURE(fmt::format("{}", fmt::join(r.phases, " ")));
  CHECK(r.error.empty());
  CHECK(r.resumed == 1);
  CHECK(follows_the_diagram(r.phases));
  REQUIRE(r.phases.size() >= 6);
  CHECK(phases(r.phases.begin(), r.phases.begin() + 3) == phases{"opening", "running", "degraded"});
  CHECK(phases(r.phases.end() - 4, r.phases.end()) ==
        phases{"resuming", "running", "closing", "reporting"});
}

TEST_CASE("session phases: a cloud lost while a finished response closes its session leaves the response whole") {
  auto s = stories_settings({"link.latency_ms=0"});
  auto m = load_site_model(s, stories_gguf());
  caf::actor_system_config cfg;
  configure_actor_system(cfg, 2);
  caf::actor_system sys{cfg};
  // Answers the open and the generation, then is gone at the close.
  auto stub = sys.spawn([]() -> caf::behavior {
    return {
      [](open_session&) { return uint64_t(7); },
      [](generate_request&) { return generate_reply{{5, 6, 7}, 0, 7, 1}; },  // all, done
      [](close_session&) -> caf::result<session_summary> {
        return make_error(ceco_errc::cloud_unreachable, "test: the cloud went at the close");
      },
    };
  });
  response_report r;
  {
    deployment dep(sys, s, m, caf::actor_cast<cloud_api>(stub));
    r = dep.run(m.vocab.encode("Once upon a time"), "cloud", 3);
  }
  CHECK(r.error.empty());
  CHECK(r.tokens == std::vector<int32_t>{5, 6, 7});
  CHECK(r.phases == phases{"opening", "running", "closing", "reporting"});
  caf::anon_send_exit(stub, caf::exit_reason::user_shutdown);
}
