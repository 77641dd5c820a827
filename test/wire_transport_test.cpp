// The wire transport on loopback: authentication both ways, hostile peers
// closed within their bounds, and a good client served right after each.

#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <algorithm>
#include <atomic>
#include <future>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include <asio.hpp>
#include <fmt/format.h>
#include <cstdlib>
#include <poll.h>
#include <sys/socket.h>

#include "net/auth.hpp"
#include "net/sessions.hpp"
#include "net/transport.hpp"
#include "test/raw_wire_peer.hpp"

using namespace ceco;
using namespace ceco::wire;
using asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace {

const wire_limits limits = wire_limits::for_model(16, 32, 64, 6);
const std::string secret = "correct horse battery staple";

server_options test_options() {
  server_options o;
  o.secret = secret;
  o.limits = limits;
  o.handshake_timeout_ms = 300;
  o.frame_timeout_ms = 300;
  o.max_connections = 8;
  return o;
}

/// Answers open with a fresh id, infer with the position as the token, close
/// with a summary; anything else with an error frame.
struct echo_cloud {
  explicit echo_cloud(server_options o = test_options())
      : srv(std::move(o), [this](connection_id c, uint32_t id, message m) { handle(c, id, std::move(m)); },
            [this](connection_id c, const wire_error&) {
              std::lock_guard<std::mutex> lock(mutex);
              closed.insert(c);
            }) {}

  void handle(connection_id c, uint32_t id, message m) {
    if (std::holds_alternative<open_session>(m))
      return srv.reply(c, id, open_reply{random_session_id()});
    if (auto* r = std::get_if<infer_request>(&m))
      return srv.reply(c, id, infer_reply{r->pos, 1});
    if (auto* r = std::get_if<close_session>(&m))
      return srv.reply(c, id, session_summary{r->session, 0, 0, 0});
    srv.reply(c, id, error_frame{uint8_t(ceco_errc::unknown_message), "not served here"});
  }

  client_options client_opts(std::string s = secret) const {
    client_options o;
    o.port = srv.port();
    o.secret = std::move(s);
    o.limits = limits;
    o.connect_timeout_ms = 2000;
    return o;
  }

  /// A real client connects, authenticates and is answered.
  void serves_a_good_client() {
    auto c = client::connect(client_opts());
    REQUIRE_MESSAGE(ok(c), std::get<wire_error>(c).text);
    auto& cl = *std::get<std::unique_ptr<client>>(c);
    auto r = cl.call(infer_request{1, 17}, 2000);
    REQUIRE_MESSAGE(ok(r), std::get<wire_error>(r).text);
    CHECK(std::get<infer_reply>(std::get<message>(r)).token == 17);
  }

  std::mutex mutex;
  std::set<connection_id> closed;
  server srv;
};

/// A raw TCP peer for the attacks, under this file's limits and secret.
struct raw_peer : test::raw_wire_peer {
  explicit raw_peer(uint16_t port) : raw_wire_peer(port, ::limits) {}
  void authenticate(const std::string& s = secret) { raw_wire_peer::authenticate(s); }
};

/// Polls `f` until it is true or `ms` pass; whether it became true.
template <class F>
bool wired_within(int ms, F f) {
  auto until = clock_type::now() + std::chrono::milliseconds(ms);
  while (!f()) {
    if (clock_type::now() > until)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

std::vector<uint8_t> frame_bytes(const message& m, uint32_t id = 1) {
  return std::get<std::vector<uint8_t>>(encode(id, m, limits));
}

} // namespace

TEST_CASE("wire transport: an authenticated client is served and ids are fresh per open") {
  echo_cloud cloud;
  auto c = client::connect(cloud.client_opts());
  REQUIRE_MESSAGE(ok(c), std::get<wire_error>(c).text);
  auto& cl = *std::get<std::unique_ptr<client>>(c);
  CHECK(cl.is_open());
  std::set<uint64_t> ids;
  for (int i = 0; i < 50; ++i) {
    auto r = cl.call(open_session{}, 2000);
    REQUIRE_MESSAGE(ok(r), std::get<wire_error>(r).text);
    ids.insert(std::get<open_reply>(std::get<message>(r)).session);
  }
  CHECK(ids.size() == 50);
  CHECK(ids.count(0) == 0);
  auto pong_reply = cl.call(ping{123}, 2000);
  REQUIRE(ok(pong_reply));
  CHECK(std::get<pong>(std::get<message>(pong_reply)).stamp == 123);
  auto refused = cl.call(generate_request{1, {1}, 1}, 2000);
  REQUIRE(ok(refused));
  CHECK(std::get<error_frame>(std::get<message>(refused)).text == "not served here");
  // Many requests in flight at once, matched by id.
  std::mutex m;
  std::vector<int32_t> tokens;
  std::promise<void> all;
  for (int i = 0; i < 32; ++i)
    cl.request(infer_request{1, i}, [&, i](result<message> r) {
      std::lock_guard<std::mutex> lock(m);
      tokens.push_back(ok(r) && std::get<infer_reply>(std::get<message>(r)).token == i ? i : -1);
      if (tokens.size() == 32)
        all.set_value();
    });
  REQUIRE(all.get_future().wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK(std::count(tokens.begin(), tokens.end(), -1) == 0);
  // Round-trip latency of one small request on loopback.
  std::vector<double> us;
  for (int i = 0; i < 500; ++i) {
    auto t0 = clock_type::now();
    auto r = cl.call(infer_request{1, i % 32}, 2000);
    us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
    REQUIRE(ok(r));
  }
  std::sort(us.begin(), us.end());
  MESSAGE("loopback infer_request round trip: median " << us[us.size() / 2] << " us, p99 "
          << us[us.size() * 99 / 100] << " us");
  CHECK(us[us.size() / 2] < 50'000);
  cl.close();
  CHECK(!cl.is_open());
  // The server hears of the close (so the front can release its sessions).
  for (int i = 0; i < 100 && cloud.srv.stats().open > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  CHECK(cloud.srv.stats().open == 0);
  std::lock_guard<std::mutex> lock(cloud.mutex);
  CHECK(cloud.closed.size() == 1);
}

TEST_CASE("wire transport: a wrong secret gets a closed connection, both ways") {
  echo_cloud cloud;
  auto c = client::connect(cloud.client_opts("wrong secret"));
  REQUIRE(!ok(c));
  CHECK(std::get<wire_error>(c).code == wire_errc::auth_failed);
  CHECK(cloud.srv.stats().auth_failed == 1);
  CHECK(cloud.srv.stats().authenticated == 0);
  // A peer that skips the handshake gets nothing but the challenge and a close.
  raw_peer skip(cloud.srv.port());
  REQUIRE(skip.read(header_size + nonce_size).size() == header_size + nonce_size);
  skip.send(frame_bytes(open_session{}));
  CHECK(skip.closed_within(1000) >= 0);
  cloud.serves_a_good_client();

  // A fake cloud that does not know the secret is refused by the client.
  asio::io_context io;
  tcp::acceptor fake(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  std::thread fake_cloud([&] {
    tcp::socket s(io);
    fake.accept(s);
    auto sn = random_nonce();
    asio::write(s, asio::buffer(frame_bytes(auth_challenge{sn}, 0)));
    std::vector<uint8_t> response(header_size + nonce_size + mac_size);
    asio::read(s, asio::buffer(response));
    auth_ok forged;
    forged.server_mac.fill(7);
    asio::write(s, asio::buffer(frame_bytes(forged, 0)));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  });
  client_options o = cloud.client_opts();
  o.port = fake.local_endpoint().port();
  auto forged = client::connect(o);
  fake_cloud.join();
  REQUIRE(!ok(forged));
  CHECK(std::get<wire_error>(forged).code == wire_errc::auth_failed);
  CHECK(std::get<wire_error>(forged).text == "the server did not prove the shared secret");
}

TEST_CASE("wire transport: garbage, oversized lengths and silent peers are closed within the bound") {
  echo_cloud cloud;
  const int bound_ms = 300 + 500;  // handshake timeout + scheduling slack

  SUBCASE("garbage bytes") {
    raw_peer p(cloud.srv.port());
    std::vector<uint8_t> junk(64);
    for (size_t i = 0; i < junk.size(); ++i)
      junk[i] = uint8_t(i * 37 + 11);
    p.send(junk);
    auto ms = p.closed_within(2000);
    CHECK(ms >= 0);
    CHECK(ms < bound_ms);
  }
  SUBCASE("a 4 GiB length before the handshake") {
    raw_peer p(cloud.srv.port());
    auto header = frame_bytes(auth_response{});
    header.resize(header_size);
    std::memset(&header[12], 0xFF, 4);
    p.send(header);
    auto ms = p.closed_within(2000);
    CHECK(ms >= 0);
    CHECK(ms < bound_ms);
  }
  SUBCASE("slowloris: connected, sends nothing") {
    raw_peer p(cloud.srv.port());
    auto ms = p.closed_within(3000);
    CHECK(ms >= 200);
    CHECK(ms < bound_ms);
    CHECK(cloud.srv.stats().timed_out == 1);
  }
  SUBCASE("slowloris: a header, then nothing") {
    raw_peer p(cloud.srv.port());
    auto header = frame_bytes(auth_response{});
    header.resize(header_size + 10);
    p.send(header);
    auto ms = p.closed_within(3000);
    CHECK(ms >= 200);
    CHECK(ms < bound_ms);
  }
  SUBCASE("authenticated, then a frame that never completes") {
    raw_peer p(cloud.srv.port());
    p.authenticate();
    auto partial = frame_bytes(infer_request{1, 2});
    partial.resize(header_size + 3);
    p.send(partial);
    auto ms = p.closed_within(3000);
    CHECK(ms >= 200);
    CHECK(ms < bound_ms);
    CHECK(cloud.srv.stats().timed_out == 1);
  }
  SUBCASE("authenticated, then a malformed frame: an error frame, then closed") {
    raw_peer p(cloud.srv.port());
    p.authenticate();
    auto bad = frame_bytes(infer_request{1, 2});
    std::memset(&bad[24], 0xFF, 4);  // pos = -1
    p.send(bad);
    auto r = p.next_frame();
    REQUIRE(ok(r));
    auto err = std::get<error_frame>(std::get<frame>(r).msg);
    CHECK(err.code == uint8_t(wire_errc::bad_field));
    CHECK(err.text == "infer_request.pos: expected 0..31, got -1");
    CHECK(p.closed_within(2000) >= 0);
  }
  SUBCASE("authenticated, then a reply-type frame") {
    raw_peer p(cloud.srv.port());
    p.authenticate();
    p.send(frame_bytes(infer_reply{1, 1}));
    auto r = p.next_frame();
    REQUIRE(ok(r));
    CHECK(std::get<error_frame>(std::get<frame>(r).msg).text ==
          "a infer_reply frame is not expected here");
    CHECK(p.closed_within(2000) >= 0);
  }
  SUBCASE("authenticated, then an oversized length") {
    raw_peer p(cloud.srv.port());
    p.authenticate();
    auto header = frame_bytes(upload_msg{1, 0, {}});
    header.resize(header_size);
    std::memset(&header[12], 0xFF, 4);
    p.send(header);
    auto r = p.next_frame();
    REQUIRE(ok(r));
    CHECK(std::get<error_frame>(std::get<frame>(r).msg).code == uint8_t(wire_errc::too_large));
    CHECK(p.closed_within(2000) >= 0);
  }
  cloud.serves_a_good_client();
}

TEST_CASE("wire transport: connections are capped and pending requests hold reading back") {
  auto o = test_options();
  o.max_connections = 2;
  o.max_pending_requests = 4;
  o.handshake_timeout_ms = 400;
  std::mutex m;
  std::vector<std::pair<connection_id, uint32_t>> held;
  server* srv_ptr = nullptr;
  server srv(o, [&](connection_id c, uint32_t id, message) {
    std::lock_guard<std::mutex> lock(m);
    held.emplace_back(c, id);
  });
  srv_ptr = &srv;
  {
    raw_peer a(srv.port()), b(srv.port());
    REQUIRE(a.read(header_size + nonce_size).size() == header_size + nonce_size);
    REQUIRE(b.read(header_size + nonce_size).size() == header_size + nonce_size);
    raw_peer third(srv.port());
    auto ms = third.closed_within(1000);
    CHECK(ms >= 0);
    CHECK(ms < 200);  // refused at once, not after the handshake timeout
    CHECK(srv.stats().refused_full == 1);
    CHECK(a.closed_within(2000) >= 0);  // the idle ones time out
    CHECK(b.closed_within(2000) >= 0);
  }
  client_options co;
  co.port = srv.port();
  co.secret = secret;
  co.limits = limits;
  auto c = client::connect(co);
  REQUIRE_MESSAGE(ok(c), std::get<wire_error>(c).text);
  auto& cl = *std::get<std::unique_ptr<client>>(c);
  std::atomic<int> answered{0};
  for (int i = 0; i < 10; ++i)
    cl.request(infer_request{1, i}, [&](result<message> r) { answered += ok(r) ? 1 : 0; });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  {
    std::lock_guard<std::mutex> lock(m);
    CHECK(held.size() == 4);  // the server stopped reading at the cap
  }
  // Answering releases the rest, four at a time.
  for (int round = 0; round < 50 && answered < 10; ++round) {
    std::vector<std::pair<connection_id, uint32_t>> now;
    {
      std::lock_guard<std::mutex> lock(m);
      now.swap(held);
    }
    for (auto& [conn, id] : now)
      srv_ptr->reply(conn, id, infer_reply{0, 0});
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(answered == 10);
}

TEST_CASE("wire transport: a peer that sends but never reads is closed at the queued-frame cap") {
  auto o = test_options();
  o.max_queued_frames = 16;
  echo_cloud cloud(o);
  raw_peer p(cloud.srv.port());
  p.authenticate();
  // Pings are answered by the transport; their pongs pile up unread.
  std::vector<uint8_t> burst;
  for (int i = 0; i < 1000; ++i) {
    auto f = frame_bytes(ping{uint64_t(i)}, uint32_t(i + 1));
    burst.insert(burst.end(), f.begin(), f.end());
  }
  int sent = 0;
  asio::error_code ec;
  for (; sent < 4000 && !ec; ++sent)
    asio::write(p.socket, asio::buffer(burst), ec);
  MESSAGE("bursts of 1000 pings sent before the server closed: " << sent);
  CHECK(p.closed_within(5000) >= 0);
  CHECK(cloud.srv.stats().bad_frames == 1);
  cloud.serves_a_good_client();
}

namespace {

/// A CA and a certificate per role, made by deploy/make-tls-certs.sh.
struct test_certificates {
  test_certificates() {
    char pattern[] = "/tmp/ceco-wire-tls-XXXXXX";
    REQUIRE(::mkdtemp(pattern) != nullptr);
    dir = pattern;
    auto cmd = "sh " + std::string(CECO_SOURCE_DIR) + "/deploy/make-tls-certs.sh " + dir + " >/dev/null";
    REQUIRE(std::system(cmd.c_str()) == 0);
  }
  ~test_certificates() { std::system(("rm -rf " + dir).c_str()); }
  tls_options as(const std::string& node, const std::string& peer) const {
    return {dir + "/" + node + ".pem", dir + "/" + node + "-key.pem", dir + "/ca.pem", peer};
  }
  std::string dir;
};

/// Made once per process: each subcase runs the test case again.
const test_certificates& shared_certificates() {
  static test_certificates certs;
  return certs;
}

} // namespace

TEST_CASE("wire transport: TLS with certificate roles under the secret's handshake") {
  const auto& certs = shared_certificates();
  auto o = test_options();
  o.handshake_timeout_ms = 1000;
  o.tls = certs.as("cloud", "ceco edge");
  echo_cloud cloud(o);
  auto edge = cloud.client_opts();
  edge.tls = certs.as("edge", "ceco cloud");

  auto good = client::connect(edge);
  REQUIRE_MESSAGE(ok(good), std::get<wire_error>(good).text);
  auto r = std::get<std::unique_ptr<client>>(good)->call(infer_request{1, 9}, 2000);
  REQUIRE(ok(r));
  CHECK(std::get<infer_reply>(std::get<message>(r)).token == 9);

  SUBCASE("an edge certificate presented as the cloud's is refused by the edge") {
    auto fake_opts = o;
    fake_opts.tls = certs.as("edge", "ceco edge");
    echo_cloud fake(fake_opts);
    auto to_fake = edge;
    to_fake.port = fake.srv.port();
    auto c = client::connect(to_fake);
    REQUIRE(!ok(c));
    CHECK(std::get<wire_error>(c).code == wire_errc::auth_failed);
    CHECK(std::get<wire_error>(c).text.find("TLS handshake") != std::string::npos);
  }
  SUBCASE("the cloud's certificate presented as an edge's is refused by the cloud") {
    auto impostor = edge;
    impostor.tls = certs.as("cloud", "ceco cloud");
    auto c = client::connect(impostor);
    REQUIRE(!ok(c));
    for (int i = 0; i < 100 && cloud.srv.stats().auth_failed == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CHECK(cloud.srv.stats().auth_failed == 1);
  }
  SUBCASE("the right certificate but the wrong secret is refused") {
    auto wrong = edge;
    wrong.secret = "not it";
    auto c = client::connect(wrong);
    REQUIRE(!ok(c));
    CHECK(std::get<wire_error>(c).code == wire_errc::auth_failed);
  }
  SUBCASE("plain TCP to the TLS port is closed") {
    auto plain = cloud.client_opts();
    plain.connect_timeout_ms = 1500;
    auto c = client::connect(plain);
    REQUIRE(!ok(c));
    raw_peer p(cloud.srv.port());
    p.send(std::vector<uint8_t>(64, 0x41));
    auto ms = p.closed_within(2000);
    CHECK(ms >= 0);
    CHECK(ms < 1500);
  }
  SUBCASE("a missing certificate file is a clear error") {
    auto broken = edge;
    broken.tls.certificate = certs.dir + "/nope.pem";
    auto c = client::connect(broken);
    REQUIRE(!ok(c));
    CHECK(std::get<wire_error>(c).text.find("cannot load the certificate") != std::string::npos);
  }
  // The cloud keeps serving.
  auto again = client::connect(edge);
  REQUIRE_MESSAGE(ok(again), std::get<wire_error>(again).text);
}

TEST_CASE("wire transport: mutated frames from an authenticated peer never take the server down") {
  auto o = test_options();
  o.max_connections = 64;
  echo_cloud cloud(o);
  std::mt19937_64 rng(7);
  std::vector<std::vector<uint8_t>> corpus = {
    frame_bytes(open_session{}), frame_bytes(infer_request{1, 3}),
    frame_bytes(generate_request{1, {1, 2, 3}, 4}), frame_bytes(close_session{1}),
    frame_bytes(upload_msg{1, 0, {uint8_t(wire_dtype::f32), 2, 16, std::vector<uint8_t>(128, 1)}}),
    frame_bytes(ping{1})};
  int answered = 0, closed = 0;
  for (int c = 0; c < 300; ++c) {
    auto bytes = corpus[rng() % corpus.size()];
    for (int e = 0; e < 1 + int(rng() % 3); ++e) {
      size_t at = rng() % bytes.size();
      if (rng() % 2)
        bytes[at] ^= uint8_t(1u << (rng() % 8));
      else
        bytes[at] = uint8_t(rng());
    }
    if (rng() % 2 && bytes.size() >= header_size) {
      uint32_t size = uint32_t(bytes.size() - header_size);
      std::memcpy(&bytes[12], &size, 4);
    }
    raw_peer p(cloud.srv.port());
    p.authenticate();
    p.send(bytes);
    asio::error_code ignored;  // the server may have closed already
    p.socket.shutdown(tcp::socket::shutdown_send, ignored);  // no more bytes: nothing to wait for
    auto r = p.next_frame();
    if (ok(r))
      ++answered;
    CHECK(p.closed_within(2000) >= 0);
    ++closed;
  }
  MESSAGE("mutated frames: " << answered << " answered (a reply or an error), " << closed
                             << " connections closed");
  CHECK(cloud.srv.stats().open == 0);
  cloud.serves_a_good_client();
}

TEST_CASE("wire transport: a second connection cannot touch a session it did not open") {
  // The front's checks in miniature: sessions bound to the opening connection.
  session_owners owners;  // used on the server's I/O thread only
  std::vector<uint64_t> released;
  std::promise<void> released_once;
  server* srv = nullptr;
  server s(test_options(),
           [&](connection_id c, uint32_t id, message m) {
             if (std::holds_alternative<open_session>(m)) {
               auto session = random_session_id();
               owners.add(c, session);
               return srv->reply(c, id, open_reply{session});
             }
             auto session = session_of(m);
             if (!session || !owners.owns(c, *session))
               return srv->reply(c, id, error_frame{uint8_t(ceco_errc::unknown_session),
                                                   fmt::format("session {} is not open", session.value_or(0))});
             if (std::holds_alternative<close_session>(m)) {
               owners.remove(c, *session);
               return srv->reply(c, id, session_summary{*session, 0, 0, 0});
             }
             srv->reply(c, id, infer_reply{0, 0});
           },
           [&](connection_id c, const wire_error&) {
             auto sessions = owners.release(c);
             if (!sessions.empty()) {
               released = sessions;
               released_once.set_value();
             }
           });
  srv = &s;
  client_options o;
  o.port = s.port();
  o.secret = secret;
  o.limits = limits;
  auto a = std::move(std::get<std::unique_ptr<client>>(client::connect(o)));
  auto b = std::move(std::get<std::unique_ptr<client>>(client::connect(o)));
  auto opened = a->call(open_session{}, 2000);
  REQUIRE(ok(opened));
  auto session = std::get<open_reply>(std::get<message>(opened)).session;
  CHECK(session_of(infer_request{session, 0}) == session);
  CHECK(!session_of(open_session{}));

  for (message m : {message(infer_request{session, 0}), message(close_session{session}),
                    message(upload_msg{session, 0, {uint8_t(wire_dtype::f32), 0, 16, {}}}),
                    message(generate_request{session, {1}, 1})}) {
    auto r = b->call(m, 2000);
    REQUIRE(ok(r));
    auto* err = std::get_if<error_frame>(&std::get<message>(r));
    REQUIRE(err != nullptr);
    CHECK(err->code == uint8_t(ceco_errc::unknown_session));
  }
  auto own = a->call(infer_request{session, 0}, 2000);
  REQUIRE(ok(own));
  CHECK(std::holds_alternative<infer_reply>(std::get<message>(own)));
  // A's connection closes: its session is handed back for release.
  a.reset();
  REQUIRE(released_once.get_future().wait_for(std::chrono::seconds(2)) == std::future_status::ready);
  CHECK(released == std::vector<uint64_t>{session});
}

TEST_CASE("wire transport: the edge refuses a cloud's malformed replies without waiting or allocating") {
  // A cloud that knows the secret but answers with a 4 GiB length, then one
  // that answers a request nobody made.
  for (int variant = 0; variant < 2; ++variant) {
    CAPTURE(variant);
    asio::io_context io;
    tcp::acceptor fake(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    std::thread fake_cloud([&] {
      tcp::socket s(io);
      fake.accept(s);
      auto sn = random_nonce();
      asio::write(s, asio::buffer(frame_bytes(auth_challenge{sn}, 0)));
      std::vector<uint8_t> response(header_size + nonce_size + mac_size);
      asio::read(s, asio::buffer(response));
      auto r = std::get<auth_response>(std::get<frame>(decode(response.data(), response.size(), limits)).msg);
      asio::write(s, asio::buffer(frame_bytes(auth_ok{auth_mac(secret, auth_role::server, sn, r.client_nonce)}, 0)));
      std::vector<uint8_t> request(header_size + 12);
      asio::read(s, asio::buffer(request));
      uint32_t id = 0;
      std::memcpy(&id, &request[8], 4);
      auto reply = frame_bytes(infer_reply{1, 1}, variant == 0 ? id : id + 1000);
      if (variant == 0)
        std::memset(&reply[12], 0xFF, 4);
      asio::error_code ignored;
      asio::write(s, asio::buffer(reply), ignored);
      std::vector<uint8_t> rest(1);
      asio::read(s, asio::buffer(rest), ignored);  // until the edge closes
    });
    client_options o;
    o.port = fake.local_endpoint().port();
    o.secret = secret;
    o.limits = limits;
    auto c = client::connect(o);
    REQUIRE_MESSAGE(ok(c), std::get<wire_error>(c).text);
    auto& cl = *std::get<std::unique_ptr<client>>(c);
    auto t0 = clock_type::now();
    auto r = cl.call(infer_request{1, 2}, 3000);
    REQUIRE(!ok(r));
    auto& err = std::get<wire_error>(r);
    CHECK(std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0).count() < 1000);
    if (variant == 0) {
      CHECK(err.code == wire_errc::too_large);
      CHECK(err.text == "infer_reply frame: payload size expected at most 12 bytes, got 4294967295");
    } else {
      CHECK(err.code == wire_errc::not_allowed);
      CHECK(err.text.find("which is not pending") != std::string::npos);
    }
    CHECK(!cl.is_open());
    cl.close();
    fake_cloud.join();
  }
}

TEST_CASE("wire: session ids come from the CSPRNG and differ in every bit position") {
  std::set<uint64_t> ids;
  uint64_t ones = 0, zeros = 0;
  for (int i = 0; i < 1000; ++i) {
    auto id = random_session_id();
    ids.insert(id);
    ones |= id;
    zeros |= ~id;
  }
  CHECK(ids.size() == 1000);
  CHECK(ones == ~0ull);
  CHECK(zeros == ~0ull);
  CHECK(random_nonce() != random_nonce());
  nonce a{}, b{};
  b[0] = 1;
  CHECK(!same_mac(auth_mac("s", auth_role::client, a, b), auth_mac("s", auth_role::server, a, b)));
  CHECK(!same_mac(auth_mac("s", auth_role::client, a, b), auth_mac("t", auth_role::client, a, b)));
  CHECK(same_mac(auth_mac("s", auth_role::client, a, b), auth_mac("s", auth_role::client, a, b)));
}

TEST_CASE("wire transport: a server needs a secret unless told it is insecure") {
  auto o = test_options();
  o.secret = "";
  CHECK_THROWS_WITH_AS(server(o, {}), doctest::Contains("needs a shared secret"), std::runtime_error);
  o.insecure = true;
  server open_server(o, {});
  CHECK(open_server.port() != 0);
}

namespace {

/// A server whose handler holds every request until release() answers them.
struct holding_cloud {
  explicit holding_cloud(server_options o)
      : srv(std::move(o), [this](connection_id c, uint32_t id, message m) {
          std::lock_guard<std::mutex> lock(mutex);
          auto* r = std::get_if<infer_request>(&m);
          held.push_back({c, id, r ? r->pos : -1});
          most_held = std::max(most_held, held.size());
        }) {}
  /// Answers every request held now; how many.
  size_t release() {
    std::vector<std::tuple<connection_id, uint32_t, int32_t>> now;
    {
      std::lock_guard<std::mutex> lock(mutex);
      now.swap(held);
    }
    for (auto& [c, id, pos] : now)
      srv.reply(c, id, infer_reply{pos, 0});
    return now.size();
  }
  size_t holding() {
    std::lock_guard<std::mutex> lock(mutex);
    return held.size();
  }
  std::mutex mutex;
  std::vector<std::tuple<connection_id, uint32_t, int32_t>> held;
  size_t most_held = 0;
  server srv;
};

client_options client_of(const server& srv, int max_in_flight) {
  client_options o;
  o.port = srv.port();
  o.secret = secret;
  o.limits = limits;
  o.max_in_flight = max_in_flight;
  return o;
}

/// Milliseconds a ping takes to come back, or -1 if none within `ms`.
int64_t ping_ms(client& cl, int ms) {
  auto t0 = clock_type::now();
  auto r = cl.call(ping{1}, ms);
  if (!ok(r) || !std::holds_alternative<pong>(std::get<message>(r)))
    return -1;
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0).count();
}

} // namespace

TEST_CASE("wire transport: pings are answered while a connection's pending requests are at the cap") {
  auto o = test_options();
  o.max_pending_requests = 4;
  holding_cloud cloud(o);
  // A client that does not hold its requests back (an old or broken edge).
  auto c = client::connect(client_of(cloud.srv, 1000));
  REQUIRE_MESSAGE(ok(c), std::get<wire_error>(c).text);
  auto& cl = *std::get<std::unique_ptr<client>>(c);
  std::mutex m;
  std::vector<std::string> answers;
  for (int i = 0; i < 20; ++i)
    cl.request(infer_request{1, i}, [&](result<message> r) {
      std::lock_guard<std::mutex> lock(m);
      if (!ok(r))
        answers.push_back("lost: " + std::get<wire_error>(r).text);
      else if (auto* e = std::get_if<error_frame>(&std::get<message>(r)))
        answers.push_back(e->text);
      else
        answers.push_back("token");
    });
  CHECK(wired_within(1000, [&] { return cloud.holding() == 4; }));
  // Four are handed on, four wait in the transport, twelve are refused at
  // once; the connection is still read: its pings come back.
  const auto ms = ping_ms(cl, 1000);
  MESSAGE("a ping's round trip with 4 requests pending and 4 waiting: " << ms << " ms");
  CHECK(ms >= 0);
  CHECK(ms < 500);
  CHECK(cloud.srv.stats().parked == 4);
  CHECK(cloud.srv.stats().refused_busy == 12);
  while (cloud.release() > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(wired_within(2000, [&] {
    std::lock_guard<std::mutex> lock(m);
    return answers.size() == 20;
  }));
  std::lock_guard<std::mutex> lock(m);
  CHECK(std::count(answers.begin(), answers.end(), "token") == 8);
  CHECK(std::count_if(answers.begin(), answers.end(), [](const std::string& a) {
          return a.find("4 requests of this connection await replies and 4") == 0 &&
                 a.find("max_pending_requests = 4") != std::string::npos;
        }) == 12);
  CHECK(cl.is_open());
}

TEST_CASE("wire transport: a client keeps no more requests on the wire than the server takes") {
  auto o = test_options();
  o.max_pending_requests = 4;
  holding_cloud cloud(o);
  auto c = client::connect(client_of(cloud.srv, 4));
  REQUIRE_MESSAGE(ok(c), std::get<wire_error>(c).text);
  auto& cl = *std::get<std::unique_ptr<client>>(c);
  std::mutex m;
  std::vector<int32_t> tokens;
  for (int i = 0; i < 30; ++i)
    cl.request(infer_request{1, i}, [&, i](result<message> r) {
      std::lock_guard<std::mutex> lock(m);
      auto* reply = ok(r) ? std::get_if<infer_reply>(&std::get<message>(r)) : nullptr;
      tokens.push_back(reply && reply->token == i ? i : -1);
    });
  CHECK(wired_within(1000, [&] { return cloud.holding() == 4; }));
  // 26 wait in the client; a ping passes them.
  const auto ms = ping_ms(cl, 1000);
  CHECK(ms >= 0);
  CHECK(ms < 500);
  for (int round = 0; round < 100; ++round) {
    {
      std::lock_guard<std::mutex> lock(m);
      if (tokens.size() == 30)
        break;
    }
    cloud.release();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::lock_guard<std::mutex> lock(m);
  CHECK(tokens.size() == 30);
  CHECK(std::count(tokens.begin(), tokens.end(), -1) == 0);
  CHECK(cloud.most_held == 4);
  CHECK(cloud.srv.stats().parked == 0);  // the server never had more than it takes
  CHECK(cloud.srv.stats().refused_busy == 0);
}

TEST_CASE("wire transport: an edge is served during a flood of 1,000 unauthenticated sockets") {
  auto o = test_options();
  o.max_connections = 256;
  o.handshake_timeout_ms = server_options{}.handshake_timeout_ms;
  echo_cloud cloud(o);
  // From the edge's own address (loopback), so no per-address rule spares it.
  const auto t0 = clock_type::now();
  asio::io_context io;  // outlives the sockets below
  std::vector<std::unique_ptr<tcp::socket>> flood;
  for (int i = 0; i < 1000; ++i) {
    auto s = std::make_unique<tcp::socket>(io);
    asio::error_code ec;
    s->connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), cloud.srv.port()), ec);
    REQUIRE_MESSAGE(!ec, ec.message());
    flood.push_back(std::move(s));
  }
  const double flood_ms = std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
  // While the flood's sockets are all open (each would wait 2 s for a proof
  // of the secret), real clients connect, authenticate and are answered.
  std::vector<double> served_ms;
  for (int i = 0; i < 5; ++i) {
    auto t = clock_type::now();
    auto c = client::connect(cloud.client_opts());
    REQUIRE_MESSAGE(ok(c), std::get<wire_error>(c).text);
    auto r = std::get<std::unique_ptr<client>>(c)->call(infer_request{1, 7}, 2000);
    REQUIRE(ok(r));
    CHECK(std::get<infer_reply>(std::get<message>(r)).token == 7);
    served_ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - t).count());
  }
  const double total_ms = std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
  auto st = cloud.srv.stats();
  MESSAGE("1,000 unauthenticated sockets opened in " << flood_ms << " ms; 5 edges served in "
          << served_ms[0] << ", " << served_ms[1] << ", " << served_ms[2] << ", " << served_ms[3]
          << ", " << served_ms[4] << " ms; " << st.evicted << " evicted, " << st.open
          << " open, " << st.refused_full << " refused as full");
  CHECK(*std::max_element(served_ms.begin(), served_ms.end()) < 1000);
  CHECK(total_ms < o.handshake_timeout_ms);  // all during the flood, before its sockets time out
  CHECK(st.authenticated == 5);
  CHECK(st.refused_full == 0);
  // Unauthenticated connections held at once: within the pool's bound.
  CHECK(st.open <= server_options{}.max_unauthenticated_per_address + 1);
  // The flood's sockets that stayed are closed after the handshake deadline.
  CHECK(wired_within(4000, [&] { return cloud.srv.stats().open == 0; }));
}

TEST_CASE("wire transport: failed proofs of the secret are rate-limited per address") {
  auto o = test_options();
  o.max_failed_handshakes = 3;
  o.failed_handshake_refill_ms = 1000;
  echo_cloud cloud(o);
  for (int i = 0; i < 3; ++i) {
    auto c = client::connect(cloud.client_opts("a guess"));
    REQUIRE(!ok(c));
    CHECK(std::get<wire_error>(c).code == wire_errc::auth_failed);
  }
  CHECK(wired_within(1000, [&] { return cloud.srv.stats().auth_failed == 3; }));
  // The address has used its tries: the next connection is closed at accept,
  // even with the right secret, until a try comes back.
  auto t0 = clock_type::now();
  auto refused = client::connect(cloud.client_opts());
  CHECK(!ok(refused));
  CHECK(std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0).count() < 400);
  CHECK(cloud.srv.stats().refused_rate == 1);
  // Guessing now runs at one try per refill (1 s), however fast it knocks.
  int guesses = 0;
  const auto until = clock_type::now() + std::chrono::milliseconds(2200);
  while (clock_type::now() < until) {
    auto c = client::connect(cloud.client_opts("another guess"));
    REQUIRE(!ok(c));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  guesses = int(cloud.srv.stats().auth_failed) - 3;
  MESSAGE("wrong proofs the server checked in 2.2 s once the tries were used: " << guesses
          << " (refused at accept: " << cloud.srv.stats().refused_rate << ")");
  CHECK(guesses >= 1);
  CHECK(guesses <= 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  cloud.serves_a_good_client();
}
