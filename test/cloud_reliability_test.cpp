// The cloud's side of the wire under real traffic, in one process: a cloud
// site behind its gateway on loopback, and edges reaching it through the
// wire (the link, the remote front, the transport's client), as `ceco cloud`
// and `ceco edge` / `ceco serve` run them.

#include "test/support.hpp"

#include <chrono>
#include <future>
#include <thread>

#include <caf/all.hpp>
#include <fmt/format.h>

#include "actors/context_manager.hpp"
#include "actors/deployment.hpp"
#include "actors/gateway.hpp"
#include "actors/network.hpp"
#include "actors/wire_bridge.hpp"
#include "net/transport.hpp"

using namespace ceco;
using namespace ceco::test;
using clock_type = std::chrono::steady_clock;

namespace {

/// A cloud site and its gateway on a free loopback port, with these settings
/// (stories260K); `edge_settings()` are the same, pointed at it.
struct wired_cloud {
  explicit wired_cloud(std::vector<std::string> sets) {
    sets.insert(sets.begin(), "model.path=" + stories_gguf());
    sets.push_back("cloud.port=0");
    s = load_settings("", sets);
    m = load_site_model(s, stories_gguf());
    configure_actor_system(cfg, 2);
    sys = std::make_unique<caf::actor_system>(cfg);
    site = spawn_cloud_site(*sys, s, m);
    gateway = std::make_unique<cloud_gateway>(*sys, site.front,
                                              cloud_server_options(s, wire_limits_of(m)),
                                              s.session.max_sessions_per_connection,
                                              site.session_ends);
  }
  ~wired_cloud() {
    gateway->stop();
    site.stop();
  }
  settings edge_settings() const {
    auto e = s;
    e.cloud.port = gateway->port();
    e.link.latency_ms = 0;
    e.link.bandwidth_mbps = 0;
    return e;
  }
  /// An edge deployment wired to this cloud, as `ceco edge` and `ceco serve`
  /// wire theirs (apps/sessions.cpp: wire_to_remote_cloud).
  std::unique_ptr<deployment> edge() {
    auto e = edge_settings();
    auto front = connect_to_front(*sys, e, make_hello(e, m), wire_limits_of(m));
    REQUIRE_MESSAGE(front, describe(front.error()));
    return std::make_unique<deployment>(*sys, e, m, *front);
  }
  int64_t cloud_sessions() {
    caf::scoped_actor self{*sys};
    int64_t n = -1;
    self->request(site.contexts, std::chrono::seconds(5), stats_atom::value)
      .receive([&](cloud_stats& st) { n = st.sessions; }, [](caf::error&) {});
    return n;
  }
  /// Polls `f` until it is true or `ms` pass; whether it became true.
  template <class F>
  static bool within(int ms, F f) {
    auto until = clock_type::now() + std::chrono::milliseconds(ms);
    while (!f()) {
      if (clock_type::now() > until)
        return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
  }

  settings s;
  site_model m;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  cloud_site site;
  std::unique_ptr<cloud_gateway> gateway;
};

/// A wire client of the test's own, past the secret and the hello.
struct greeted_peer {
  greeted_peer(wired_cloud& cloud) {
    wire::client_options o;
    o.port = cloud.gateway->port();
    o.secret = cloud.s.cloud.secret;
    o.limits = wire_limits_of(cloud.m);
    auto c = wire::client::connect(o);
    REQUIRE_MESSAGE(wire::ok(c), std::get<1>(c).text);
    client = std::move(std::get<0>(c));
    auto h = reply_of<hello_msg>(client->call(request_frame(make_hello(cloud.s, cloud.m)), 5000));
    REQUIRE_MESSAGE(h, describe(h.error()));
  }
  /// A new session's id, or the error's description.
  std::variant<uint64_t, std::string> open() {
    auto r = reply_of<uint64_t>(client->call(request_frame(open_session{}), 5000));
    if (r)
      return *r;
    return describe(r.error());
  }
  std::unique_ptr<wire::client> client;
};

/// An open's error, or "" for an id.
std::string why(const std::variant<uint64_t, std::string>& opened) {
  return std::holds_alternative<std::string>(opened) ? std::get<std::string>(opened) : "";
}

} // namespace

TEST_CASE("cloud-mode generations longer than session.ttl_s succeed over the wire, and the "
          "connection holds no session after them") {
  // paper-a100's cloud takes about 37 ms a token: 12 tokens outlast a 0.2 s TTL.
  wired_cloud cloud({"compute.mode=profile", "compute.profile=paper-a100", "session.ttl_s=0.2",
                     "session.max_sessions_per_connection=4"});
  auto edge = cloud.edge();
  auto prompt = cloud.m.vocab.encode("Once upon a time");
  const auto t0 = clock_type::now();
  for (int i = 0; i < 12; ++i) {
    CAPTURE(i);
    auto r = edge->run(prompt, "cloud", 12);
    CHECK(r.error == "");
    CHECK(r.tokens.size() == 12);
  }
  const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
  MESSAGE("12 sequential cloud-mode responses of 12 tokens (TTL 0.2 s): " << s << " s");
  CHECK(s / 12 > 0.2);  // each outlived the TTL
  // Every session was closed by its response: none left on the connection
  // (whose cap of 4 twelve responses would otherwise have filled).
  CHECK(cloud.gateway->sessions_held() == 0);
  CHECK(cloud.cloud_sessions() == 0);
}

TEST_CASE("an expired session leaves its connection's count: the connection can open again") {
  wired_cloud cloud({"session.ttl_s=0.2", "session.max_sessions_per_connection=3"});
  greeted_peer peer(cloud);
  for (int i = 0; i < 3; ++i)
    REQUIRE(std::holds_alternative<uint64_t>(peer.open()));
  auto refused = peer.open();
  REQUIRE(std::holds_alternative<std::string>(refused));
  CHECK(std::get<std::string>(refused).find("session_limit: this connection holds 3") == 0);
  CHECK(cloud.gateway->sessions_held() == 3);
  // Left idle, the three expire (after 0.2 s, swept every 50 ms), and the
  // connection holds none of them any more.
  CHECK(wired_cloud::within(2000, [&] { return cloud.gateway->sessions_held() == 0; }));
  CHECK(cloud.cloud_sessions() == 0);
  for (int i = 0; i < 3; ++i) {
    auto again = peer.open();
    CAPTURE(why(again));
    CHECK(std::holds_alternative<uint64_t>(again));
  }
}

TEST_CASE("a session's exit evaluations on the cloud alone keep it alive past session.ttl_s") {
  wired_cloud cloud({"session.ttl_s=0.2", "placement.exit_evaluator=cloud"});
  greeted_peer peer(cloud);
  auto opened = peer.open();
  REQUIRE(std::holds_alternative<uint64_t>(opened));
  const auto id = std::get<uint64_t>(opened);
  const auto exits = int32_t(cloud.s.model.exits.size());
  const int n_embd = cloud.m.model->config().n_embd;
  std::vector<float> rows(size_t(exits) * size_t(n_embd), 0.1f);
  auto states = make_blob(rows.data(), exits, n_embd, wire_dtype::f32);
  // Five TTLs of nothing but evaluations, one every 0.1 s.
  for (int i = 0; i < 10; ++i) {
    CAPTURE(i);
    auto d = reply_of<exit_decision>(
      peer.client->call(request_frame(evaluate_request{id, states}), 5000));
    CHECK_MESSAGE(d, describe(d.error()));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  auto closed = reply_of<session_summary>(peer.client->call(request_frame(close_session{id}), 5000));
  CHECK_MESSAGE(closed, describe(closed.error()));
  CHECK(cloud.gateway->sessions_held() == 0);
}

TEST_CASE("a closed connection's sessions end at once and stop holding session.max_sessions") {
  wired_cloud cloud({"session.max_sessions=4", "session.max_sessions_per_connection=4",
                     "session.ttl_s=60"});
  {
    greeted_peer first(cloud);
    for (int i = 0; i < 4; ++i)
      REQUIRE(std::holds_alternative<uint64_t>(first.open()));
    greeted_peer full(cloud);
    auto refused = full.open();
    REQUIRE(std::holds_alternative<std::string>(refused));
    CHECK(std::get<std::string>(refused).find("session_limit: 4 sessions are open") == 0);
    first.client->close();
    // Long before the TTL (60 s): the connection's sessions are closed as it goes.
    const auto t0 = clock_type::now();
    CHECK(wired_cloud::within(2000, [&] { return cloud.cloud_sessions() == 0; }));
    MESSAGE("a closed connection's 4 sessions ended after "
            << std::chrono::duration<double, std::milli>(clock_type::now() - t0).count()
            << " ms (session.ttl_s = 60)");
    for (int i = 0; i < 4; ++i) {
      auto opened = full.open();
      CAPTURE(why(opened));
      CHECK(std::holds_alternative<uint64_t>(opened));
    }
  }
  CHECK(wired_cloud::within(2000, [&] { return cloud.gateway->sessions_held() == 0; }));
}

TEST_CASE("more concurrent generations than a connection's pending-request cap all succeed "
          "through one link, heartbeats answered") {
  // 200 generations, each longer than four heartbeats (the edge's patience):
  // more than the cloud takes from one connection (64 handed on, 64 waiting),
  // so the edge holds the rest back, and the cloud keeps reading its pings.
  wired_cloud cloud({"compute.mode=profile", "compute.profile=paper-a100",
                     "session.max_sessions_per_connection=256", "cloud.heartbeat_ms=200"});
  auto edge = cloud.edge();
  const std::vector<std::string> texts = {"Once upon a time", "Lily and Ben went to the park",
                                          "The little dog"};
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 200; ++i)
    prompts.push_back(cloud.m.vocab.encode(texts[size_t(i) % texts.size()]));
  const auto t0 = clock_type::now();
  auto reports = edge->run_concurrently(prompts, "cloud", 24);
  const double s = std::chrono::duration<double>(clock_type::now() - t0).count();
  MESSAGE("200 concurrent cloud-mode responses of 24 tokens through one link: " << s << " s");
  REQUIRE(reports.size() == 200);
  int good = 0;
  for (auto& r : reports) {
    CAPTURE(r.error);
    good += r.error.empty() && r.tokens.size() == 24 && r.degraded_tokens == 0;
  }
  CHECK(good == 200);
  CHECK(s > 0.8);  // longer than the four heartbeats a starved link would survive
  auto st = cloud.gateway->stats();
  CHECK(st.parked == 0);  // the edge never sent more than the cloud hands on
  CHECK(st.refused_busy == 0);
  CHECK(cloud.gateway->sessions_held() == 0);
}

TEST_CASE("a short cloud.secret is refused on plain TCP beyond loopback, naming the setting") {
  auto s = load_settings("", {"cloud.host=0.0.0.0", "cloud.secret=s3cret"});
  const auto limits = wire::wire_limits::for_model(16, 32, 64, 6);
  std::string error;
  try {
    cloud_server_options(s, limits);
  } catch (const config_error& e) {
    error = e.what();
  }
  CHECK(error.find("cloud.secret has 6 characters; expected at least 16") == 0);
  CHECK(error.find("cloud.host = \"0.0.0.0\"") != std::string::npos);
  CHECK(error.find("s3cret") == std::string::npos);  // never printed
  // The edge refuses it too, before connecting.
  s.cloud.host = "10.1.2.3";
  CHECK_THROWS_AS(check_secret(s), config_error);
  // Long enough, on loopback (local users only) or under TLS: accepted.
  s.cloud.secret = "0123456789abcdef";
  CHECK_NOTHROW(check_secret(s));
  s.cloud.secret = "s3cret";
  s.cloud.host = "127.0.0.1";
  CHECK_NOTHROW(check_secret(s));
  s.cloud.host = "0.0.0.0";
  s.cloud.tls = true;
  CHECK_NOTHROW(check_secret(s));
}
