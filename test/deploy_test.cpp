#include "test/support.hpp"
#include "test/ceco_process.hpp"

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <random>
#include <sstream>
#include <thread>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "actors/deployment.hpp"
#include "actors/reconnect.hpp"
#include "actors/wire_bridge.hpp"
#include "net/transport.hpp"
#include "test/raw_wire_peer.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

/// Both sides run stories260K, whose reference tokens are known.
std::string model_arg() {
  return " --set model.path=" + stories_gguf();
}

/// A `ceco cloud` process on loopback; killed when the object goes.
struct cloud_process : ceco_process {
  int port = 0;
  std::string banner;

  explicit cloud_process(const std::string& args)
    : ceco_process("cloud " + args + model_arg(), true) {
    banner = line();
    stop_reading();  // the child's further output goes nowhere
    auto at = banner.rfind(':');
    if (banner.find("serving") != std::string::npos && at != std::string::npos)
      port = std::atoi(banner.c_str() + at + 1);
  }
};

run_result run_edge(const std::string& args) {
  return run_shell(std::string(CECO_BINARY) + " edge " + args + model_arg() + " 2>/dev/null");
}

/// `ceco edge <args>` with its errors (stderr) in the output.
run_result run_edge_with_errors(const std::string& args) {
  return run_shell(std::string(CECO_BINARY) + " edge " + args + model_arg() + " 2>&1");
}

/// Whether a TCP connection to local port `port` is established (from
/// /proc/net/tcp: local address and port in hex, state 01).
bool connection_established(int port) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  const auto local_port = fmt::format(":{:04X} ", port);
  while (std::getline(in, line)) {
    auto local = line.find(':', line.find(':') + 1);  // after "sl:"
    if (local == std::string::npos || line.compare(local, local_port.size(), local_port) != 0)
      continue;
    std::istringstream fields(line);
    std::string sl, local_address, remote_address, state;
    fields >> sl >> local_address >> remote_address >> state;
    if (state == "01")
      return true;
  }
  return false;
}

std::vector<nlohmann::json> json_lines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  size_t start = 0;
  while (start < out.size()) {
    auto end = out.find('\n', start);
    if (end == std::string::npos)
      end = out.size();
    if (end > start)
      lines.push_back(nlohmann::json::parse(out.substr(start, end - start)));
    start = end + 1;
  }
  return lines;
}

/// What a cloud serving stories260K checks frames against.
wire::wire_limits stories_limits() {
  static const auto limits = [] {
    auto s = load_settings("", {"model.path=" + stories_gguf()});
    return wire_limits_of(load_site_model(s, stories_gguf()));
  }();
  return limits;
}

/// A wire client of the test's own on a cloud's port, authenticated with `secret`.
struct wire_peer {
  explicit wire_peer(int port, const std::string& secret = {}) {
    wire::client_options o;
    o.port = uint16_t(port);
    o.secret = secret;
    o.limits = stories_limits();
    auto c = wire::client::connect(o);
    REQUIRE_MESSAGE(wire::ok(c), std::get<1>(c).text);
    client = std::move(std::get<0>(c));
  }
  /// The reply to the cloud_api message `xs`, or its error.
  template <class Reply, class... Ts>
  caf::expected<Reply> ask(Ts... xs) {
    return reply_of<Reply>(client->call(request_frame(std::move(xs)...), 5000));
  }
  /// describe() of the request's error, or "accepted".
  template <class Reply, class... Ts>
  std::string error_of(Ts... xs) {
    auto r = ask<Reply>(std::move(xs)...);
    return r ? std::string("accepted") : describe(r.error());
  }
  std::unique_ptr<wire::client> client;
};

std::string port_arg(const cloud_process& c) {
  return " --set cloud.port=" + std::to_string(c.port);
}

} // namespace

TEST_CASE("two nodes over loopback: collaborative, speculative and exact above threshold 1 give the cloud's tokens") {
  cloud_process cloud("--set cloud.port=0");
  REQUIRE_MESSAGE(cloud.port > 0, cloud.banner);
  auto r = run_edge("--prompt 'Once upon a time' --set policy.threshold=1.5 --set upload.dtype=f32 --set link.latency_ms=0 "
                    "--max-tokens 40 --mode all --json" + port_arg(cloud));
  REQUIRE(r.status == 0);
  auto lines = json_lines(r.out);
  REQUIRE(lines.size() == 6);
  for (auto& j : lines) {
    CAPTURE(j["mode"]);
    if (j["mode"] == "standalone")
      continue;
    CHECK(j["tokens"].get<std::vector<int32_t>>() == greedy_40);
    CHECK(j["degraded_tokens"] == 0);
    CHECK(j["bytes_up"].get<int64_t>() > 0);
    // The link counts the frames it sends: the payload formulas plus each
    // frame's overhead (README, "Bytes on the wire"), an open (40: its
    // sampling and the prompt's ids it carries, 4 each) and a close.
    const int64_t up = j["bytes_up"], formula = j["formula_bytes_up"];
    const int64_t messages = j["messages_up"], requests = j["cloud_requests"];
    const int64_t p = j["n_prompt"];
    if (j["mode"] == "collaborative")
      CHECK(up == formula + 40 + 24 + 37 * (messages - 2 - requests) + 28 * requests);
    else if (j["mode"] == "speculative" || j["mode"] == "exact") {
      // A draft upload is an upload frame plus the epoch, one draft per row
      // and three counts of draft distributions, greedy drafts carrying none
      // (README, "Bytes on the wire"); rollbacks upload positions again.
      // exact's open carries the prompt's ids (upload.prompt = "auto"), and
      // its uploads begin at the prompt's last row: 40 rows in all.
      const bool ids = j["mode"] == "exact";
      const int64_t from_tokens = ids ? p : 0;
      const int64_t uploads = j["uploads"], positions = j["uploaded_positions"];
      const int64_t row_bytes = (formula - 4 * from_tokens) / (ids ? 40 : p + 40 - 1);
      CHECK(uploads == messages - 2);
      CHECK(j["verdicts"] == uploads);
      CHECK(up == 40 + 4 * from_tokens + 24 + 57 * uploads + (row_bytes + 4) * positions);
    }
    else if (j["mode"] == "naive")
      CHECK(up == formula + 40 + 24 + 33 * (messages - 2));
    else  // cloud: no open; the first generate 56 + ids, each long poll 56, close 24
      CHECK(up == formula + 24 + 56 * (messages - 1));
  }
}

TEST_CASE("exit evaluator and uploader placed on the cloud: evaluations and uploads go as their own frames") {
  const std::string placed = " --set placement.exit_evaluator=cloud --set placement.uploader=cloud "
                             "--set policy.threshold=1.5";
  cloud_process cloud("--set cloud.port=0" + placed);
  REQUIRE_MESSAGE(cloud.port > 0, cloud.banner);
  auto r = run_edge("--prompt 'Once upon a time' --set link.latency_ms=0 "
                    "--max-tokens 40 --mode collaborative --json" + placed + port_arg(cloud));
  REQUIRE(r.status == 0);
  auto j = json_lines(r.out).at(0);
  CHECK(j["tokens"].get<std::vector<int32_t>>() == greedy_40);
  CHECK(j["degraded_tokens"] == 0);
  // Each token also carries its exit states up: more than the uploads alone.
  CHECK(j["bytes_up"].get<int64_t>() > j["formula_bytes_up"].get<int64_t>() * 2);
}

TEST_CASE("ceco cloud on a non-loopback address needs a secret, TLS or --insecure") {
  auto refused = run_shell(std::string(CECO_BINARY) + " cloud --set cloud.host=0.0.0.0 --set cloud.port=0" +
                           model_arg() + " 2>&1");
  CHECK(refused.status != 0);
  CHECK(refused.out.find("pass --insecure") != std::string::npos);
  auto open = run_shell("timeout -s INT 3 " + std::string(CECO_BINARY) +
                        " cloud --insecure --set cloud.host=0.0.0.0 --set cloud.port=0" + model_arg() +
                        " 2>&1");
  CHECK(open.out.find("serving") != std::string::npos);
  CHECK(open.out.find("WARNING: serving 0.0.0.0 without TLS or a secret") != std::string::npos);
}

TEST_CASE("ceco cloud --stats reports the tokens it answered and its steps") {
  temp_dir tmp;
  const std::string bin = CECO_BINARY, log = tmp.file("cloud.log");
  // The cloud in the background, an edge of 20 cloud tokens, then SIGINT.
  auto script = bin + " cloud --set cloud.port=0 --stats 0.2" + model_arg() + " > " + log +
                " 2>&1 &\n cloud=$!\n"
                "for i in $(seq 50); do grep -q serving " + log + " && break; sleep 0.1; done\n"
                "port=$(head -1 " + log + " | sed 's/.*:\\([0-9]*\\) over.*/\\1/')\n" +
                bin + " edge --set cloud.port=$port --set policy.threshold=1.5 --max-tokens 20" +
                model_arg() + " > /dev/null 2>&1 || echo edge failed\n"
                "sleep 0.6; kill -INT $cloud\n"
                "wait $cloud; echo \"cloud exited $?\"\n"
                "cat " + log;
  auto r = run_shell(script);
  CAPTURE(r.out);
  CHECK(r.out.find("edge failed") == std::string::npos);
  CHECK(r.out.find("SIGINT received") != std::string::npos);
  CHECK(r.out.find("cloud exited 0") != std::string::npos);  // a requested stop is a clean exit
  // The stats lines add up to the 20 tokens the edge asked for.
  int tokens = 0;
  for (size_t at = r.out.find(" s: "); at != std::string::npos; at = r.out.find(" s: ", at + 1))
    tokens += std::atoi(r.out.c_str() + at + 4);
  CHECK(tokens == 20);
}

TEST_CASE("the handshake refuses another split, another secret and a node that skipped it") {
  cloud_process cloud("--set cloud.port=0 --set cloud.secret=s3cret");
  REQUIRE_MESSAGE(cloud.port > 0, cloud.banner);
  auto split = run_edge_with_errors("--set split.layer=2 --set model.exits=2 --set cloud.secret=s3cret" + port_arg(cloud));
  CHECK(split.status == 1);
  CHECK(split.out.find("split.layer: edge 2, cloud 3") != std::string::npos);
  auto secret = run_edge_with_errors("--set cloud.secret=guess" + port_arg(cloud));
  CHECK(secret.status == 1);
  CHECK(secret.out.find("cloud.secret differs") != std::string::npos);
  CHECK(secret.out.find("guess") == std::string::npos);  // secrets are never printed
  auto ok = run_edge("--set cloud.secret=s3cret --max-tokens 5 --json" + port_arg(cloud));
  CHECK(ok.status == 0);
  auto placed = run_shell(std::string(CECO_BINARY) + " edge --set placement.exit_evaluator=cloud "
                          "--set cloud.secret=s3cret" + port_arg(cloud) + model_arg() + " 2>&1");
  CHECK(placed.status == 1);
  CHECK(placed.out.find("placement.exit_evaluator: edge \"cloud\", cloud \"edge\"") != std::string::npos);

  // A peer of our own that knows the secret but skips the hello.
  wire_peer peer(cloud.port, "s3cret");
  auto open_error = peer.error_of<uint64_t>(open_session{});
  CHECK(open_error.find("handshake_failed: send hello_msg first") == 0);
}

TEST_CASE("TLS with certificates: the cloud serves edges its CA signed and refuses the rest") {
  temp_dir certs;
  auto made = run_shell("sh " + std::string(CECO_SOURCE_DIR) + "/deploy/make-tls-certs.sh " +
                        certs.path.string() + " 2>&1");
  REQUIRE_MESSAGE(made.status == 0, made.out);
  auto node = [&](const std::string& name, const std::string& ca) {
    return " --set cloud.tls=true --set cloud.tls_certificate=" + certs.file(name + ".pem") +
           " --set cloud.tls_key=" + certs.file(name + "-key.pem") +
           " --set cloud.tls_ca_file=" + certs.file(ca);
  };
  cloud_process cloud("--set cloud.port=0" + node("cloud", "ca.pem"));
  REQUIRE_MESSAGE(cloud.port > 0, cloud.banner);
  CHECK(cloud.banner.find("over TLS with certificates") != std::string::npos);

  auto ok = run_edge("--prompt 'Once upon a time' --set policy.threshold=1.5 --set link.latency_ms=0 "
                     "--max-tokens 40 --mode collaborative --json" + node("edge", "ca.pem") +
                     port_arg(cloud));
  REQUIRE(ok.status == 0);
  auto lines = json_lines(ok.out);
  REQUIRE(lines.size() == 1);
  CHECK(lines[0]["tokens"].get<std::vector<int32_t>>() == greedy_40);
  CHECK(lines[0]["degraded_tokens"] == 0);

  // A second CA whose certificate the cloud does not trust.
  temp_dir other;
  REQUIRE(run_shell("sh " + std::string(CECO_SOURCE_DIR) + "/deploy/make-tls-certs.sh " +
                    other.path.string() + " >/dev/null 2>&1").status == 0);
  auto foreign = " --set cloud.tls=true --set cloud.tls_certificate=" + other.file("edge.pem") +
                 " --set cloud.tls_key=" + other.file("edge-key.pem") +
                 " --set cloud.tls_ca_file=" + other.file("ca.pem");
  for (const std::string& refused : {std::string(" --set cloud.tls=false"), foreign}) {
    CAPTURE(refused);
    auto r = run_shell(std::string(CECO_BINARY) + " edge --max-tokens 5 --set cloud.connect_tries=1" +
                       refused + port_arg(cloud) + model_arg() + " 2>&1");
    CHECK(r.status == 1);
    CHECK(r.out.find("both nodes must agree on cloud.tls") != std::string::npos);
  }
  // TLS without certificates authenticates no one: refused before connecting.
  auto anonymous = run_shell(std::string(CECO_BINARY) + " edge --max-tokens 5 --set cloud.tls=true" +
                             port_arg(cloud) + model_arg() + " 2>&1");
  CHECK(anonymous.status != 0);
  CHECK(anonymous.out.find("cloud.tls = true needs cloud.tls_certificate") != std::string::npos);
  // Still serving.
  CHECK(run_edge("--max-tokens 5" + node("edge", "ca.pem") + port_arg(cloud)).status == 0);
}

TEST_CASE("a broken peer's bad messages get errors while the cloud keeps serving") {
  cloud_process cloud("--set cloud.port=0");
  REQUIRE_MESSAGE(cloud.port > 0, cloud.banner);

  // The model's hello, as an edge with the default settings sends it.
  auto s = load_settings("", {"model.path=" + stories_gguf()});
  auto m = load_site_model(s, stories_gguf());
  auto greet = [&](wire_peer& peer) {
    auto h = peer.ask<hello_msg>(make_hello(s, m));
    REQUIRE_MESSAGE(h, describe(h.error()));
    CHECK(h->split == 3);
  };
  wire_peer peer(cloud.port);
  greet(peer);
  auto opened = peer.ask<uint64_t>(open_session{});
  REQUIRE_MESSAGE(opened, describe(opened.error()));
  const uint64_t id = *opened;

  auto upload_error = [&](wire_peer& p, upload_msg msg) { return p.error_of<int32_t>(std::move(msg)); };
  std::vector<float> rows(4 * 64, 0.1f);
  auto good = make_blob(rows.data(), 4, 64, wire_dtype::f16);
  CHECK(upload_error(peer, {id ^ 1, 0, good}).find("unknown_session") == 0);
  CHECK(upload_error(peer, {id, 2, good}).find("position_gap") == 0);
  CHECK(upload_error(peer, {id, 0, good}) == "accepted");
  auto answer = peer.ask<infer_reply>(infer_request{id, 3});
  REQUIRE_MESSAGE(answer, describe(answer.error()));
  CHECK(answer->token >= 0);

  // Asking for actors this cloud does not run (they are placed on the edge).
  CHECK(peer.error_of<exit_decision>(evaluate_request{id, good})
          .find("not_placed_here: the exit evaluator runs on the edge") == 0);
  CHECK(peer.error_of<int32_t>(upload_states{{id, int32_t(4), good}})
          .find("not_placed_here: the uploader runs on the edge") == 0);

  // Tensors that lie about their shape, have the wrong width or more rows
  // than the context are refused by the frame decoder, before the cloud's
  // actors see them: an error naming the field, and a closed connection.
  auto lying = good;
  lying.rows = 400;  // claims more rows than its bytes hold
  std::vector<float> huge(size_t(3000) * 64, 0.0f);
  const std::vector<std::pair<tensor_blob, std::string>> refusals = {
    {make_blob(rows.data(), 8, 32, wire_dtype::f16), "upload.states.cols: expected 64..64, got 32"},
    {make_blob(huge.data(), 3000, 64, wire_dtype::f16), "upload.states.rows: expected 0.."}};
  for (const auto& [bad, why] : refusals) {
    wire_peer broken(cloud.port);
    greet(broken);
    auto err = upload_error(broken, {id, 0, bad});
    CAPTURE(err);
    CHECK(err.find("cloud_unreachable") == 0);
    CHECK(err.find(why) != std::string::npos);
    CHECK(!broken.client->is_open());
  }

  // The lying one cannot even be encoded: the edge's side refuses it, that
  // request fails alone, nothing is sent and the connection goes on.
  {
    wire_peer careful(cloud.port);
    greet(careful);
    auto err = upload_error(careful, {id, 0, lying});
    CAPTURE(err);
    CHECK(err.find("bad_request: not sent: a upload frame this side cannot encode") == 0);
    CHECK(careful.client->is_open());
    CHECK(careful.ask<uint64_t>(open_session{}));
  }

  // A frame type the protocol does not have, from an authenticated peer.
  test::raw_wire_peer raw(uint16_t(cloud.port), stories_limits());
  raw.authenticate("");
  auto unknown = std::get<std::vector<uint8_t>>(wire::encode(7, wire::ping{1}));
  unknown[6] = 0x63;  // type 99
  raw.send(unknown);
  auto refused = raw.next_frame();
  REQUIRE(wire::ok(refused));
  auto* e = std::get_if<wire::error_frame>(&std::get<0>(refused).msg);
  REQUIRE(e != nullptr);
  CHECK(e->code == uint8_t(wire::wire_errc::bad_header));
  CHECK(raw.closed_within(2000) >= 0);

  // The first connection's session is still served.
  CHECK(peer.error_of<session_summary>(close_session{id}) == "accepted");

  // Meanwhile a real edge is served as usual.
  auto r = run_edge("--max-tokens 20 --json --set link.latency_ms=0" + port_arg(cloud));
  REQUIRE(r.status == 0);
  CHECK(json_lines(r.out).at(0)["n_generated"] == 20);
}

TEST_CASE("hostile peers on the cloud's port get a closed connection, and an edge is served after each") {
  cloud_process cloud("--set cloud.port=0 --set cloud.secret=s3cret");
  REQUIRE_MESSAGE(cloud.port > 0, cloud.banner);
  const auto limits = stories_limits();
  auto be32 = [](std::vector<uint8_t>& out, uint32_t x) {
    for (int shift = 24; shift >= 0; shift -= 8)
      out.push_back(uint8_t(x >> shift));
  };
  // CAF 0.17's BASP header (32 bytes, big-endian): operation, 2 padding,
  // flags, payload_len, operation_data (8), source and destination actor (8 each).
  auto basp_header = [&](uint8_t op, uint32_t payload_len, uint64_t op_data) {
    std::vector<uint8_t> h{op, 0, 0, 0};
    be32(h, payload_len);
    be32(h, uint32_t(op_data >> 32));
    be32(h, uint32_t(op_data));
    h.resize(32, 0);
    return h;
  };
  // A ceco header that announces `size` payload bytes.
  auto ceco_header = [](wire::frame_type type, uint32_t size) {
    auto h = std::get<std::vector<uint8_t>>(wire::encode(1, wire::ping{0}));
    h.resize(wire::header_size);
    h[6] = uint8_t(uint16_t(type)), h[7] = uint8_t(uint16_t(type) >> 8);
    for (int i = 0; i < 4; ++i)
      h[12 + i] = uint8_t(size >> (8 * i));
    return h;
  };
  std::mt19937 rng(12);
  std::vector<uint8_t> garbage(4096);
  for (auto& b : garbage)
    b = uint8_t(rng());

  struct attack {
    const char* name;
    std::vector<uint8_t> bytes;
    bool authenticated;
  };
  const std::vector<attack> attacks = {
    {"BASP server handshake, payload_len 0 (crashed CAF)", basp_header(0, 0, 1), false},
    {"BASP client handshake, payload_len 0", basp_header(1, 0, 0), false},
    {"BASP header, payload_len 0xFFFFFFFF", basp_header(0, 0xFFFFFFFFu, 1), false},
    {"ceco header, payload 0xFFFFFFFF before the handshake",
     ceco_header(wire::frame_type::auth_response, 0xFFFFFFFFu), false},
    {"4 KiB of garbage", garbage, false},
    {"ceco upload header, payload 0xFFFFFFFF after the handshake",
     ceco_header(wire::frame_type::upload, 0xFFFFFFFFu), true},
    {"4 KiB of garbage after the handshake", garbage, true},
  };
  for (const auto& a : attacks) {
    CAPTURE(a.name);
    test::raw_wire_peer p(uint16_t(cloud.port), limits);
    if (a.authenticated)
      p.authenticate("s3cret");
    p.send(a.bytes);
    const auto ms = p.closed_within(5000);
    CHECK(ms >= 0);
    CHECK(::kill(cloud.pid, 0) == 0);
    auto r = run_edge("--max-tokens 3 --json --set cloud.secret=s3cret --set link.latency_ms=0" +
                      port_arg(cloud));
    CHECK(r.status == 0);
  }

  // Another connection cannot touch a session it did not open.
  auto s = load_settings("", {"model.path=" + stories_gguf(), "cloud.secret=s3cret"});
  auto m = load_site_model(s, stories_gguf());
  wire_peer owner(cloud.port, "s3cret"), other(cloud.port, "s3cret");
  REQUIRE(owner.ask<hello_msg>(make_hello(s, m)));
  REQUIRE(other.ask<hello_msg>(make_hello(s, m)));
  auto opened = owner.ask<uint64_t>(open_session{});
  REQUIRE(opened);
  std::vector<float> rows(2 * 64, 0.1f);
  auto states = make_blob(rows.data(), 2, 64, wire_dtype::f16);
  CHECK(other.error_of<int32_t>(upload_msg{*opened, 0, states}).find("unknown_session") == 0);
  CHECK(other.error_of<infer_reply>(infer_request{*opened, 1}).find("unknown_session") == 0);
  CHECK(other.error_of<session_summary>(close_session{*opened}).find("unknown_session") == 0);
  CHECK(owner.error_of<int32_t>(upload_msg{*opened, 0, states}) == "accepted");
  CHECK(owner.error_of<session_summary>(close_session{*opened}) == "accepted");

  // A generate_request with max_tokens = -1 once killed the cloud layers for
  // good: now the frame is refused, and the whole protocol still works.
  auto err = other.error_of<generate_reply>(generate_request{0, {1, 2, 3}, -1});
  CAPTURE(err);
  CHECK(err != "accepted");
  CHECK(err.find("max_tokens") != std::string::npos);
  auto r = run_edge("--max-tokens 5 --json --mode all --set cloud.secret=s3cret --set link.latency_ms=0" +
                    port_arg(cloud));
  REQUIRE(r.status == 0);
  for (auto& j : json_lines(r.out)) {
    CAPTURE(j["mode"]);
    CHECK(j["n_generated"] == 5);
    CHECK(j["degraded_tokens"] == 0);
  }
}

TEST_CASE("ceco edge exits non-zero when a response failed, after printing its figures") {
  // stories260K's cloud context is 1.5 MiB: every session is refused.
  cloud_process cloud("--set cloud.port=0 --set session.max_memory_mb=1");
  REQUIRE_MESSAGE(cloud.port > 0, cloud.banner);
  auto r = run_edge_with_errors("--max-tokens 5 --json --mode cloud --set link.latency_ms=0" + port_arg(cloud));
  CHECK(r.status == 1);
  CHECK(r.out.find("1 of 1 responses failed; the first (cloud): open session: session_limit") != std::string::npos);
  CHECK(r.out.find("\"mode\":\"cloud\"") != std::string::npos);  // the JSON line still came
}

TEST_CASE("a cloud killed mid-response: the edge finishes alone, then reconnects to a new cloud") {
  auto first = std::make_unique<cloud_process>("--set cloud.port=0");
  REQUIRE_MESSAGE(first->port > 0, first->banner);
  const int port = first->port;
  run_result r;
  std::thread edge([&] {
    // Every token goes to the cloud (threshold above 1), 10 ms each way.
    r = run_edge("--set policy.threshold=1.5 --set link.latency_ms=10 --set cloud.connect_tries=9 "
                 "--max-tokens 300 --json --prompts " + std::string(CECO_SOURCE_DIR) +
                 "/test/two-prompts.txt --set cloud.port=" + std::to_string(port));
  });
  // Mid-response: once the edge is connected (its start-up takes a second or
  // more on a loaded machine) and a few of its 300 tokens of >= 20 ms are done.
  for (int i = 0; i < 200 && !connection_established(port); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  first->kill_now();
  // The edge finishes the first response alone, then tries to reconnect
  // with backoff; a new cloud on the same port picks up the next one.
  auto second = std::make_unique<cloud_process>("--set cloud.port=" + std::to_string(port));
  edge.join();
  REQUIRE(r.status == 0);
  auto lines = json_lines(r.out);
  REQUIRE(lines.size() == 2);
  MESSAGE("first response: " << lines[0]["degraded_tokens"] << " of " << lines[0]["n_generated"]
                             << " tokens without the cloud");
  CHECK(lines[0]["n_generated"] == 300);
  CHECK(lines[0]["degraded_tokens"].get<int>() > 0);
  CHECK(lines[0]["cloud_requests"].get<int>() > 0);
  CHECK(lines[1]["mode"] == "collaborative");
  CHECK(lines[1]["degraded_tokens"] == 0);
  CHECK(lines[1]["cloud_requests"].get<int>() == lines[1]["n_generated"].get<int>());
  // The resumed response is the one an undisturbed edge gets from that cloud.
  auto undisturbed = run_edge("--set policy.threshold=1.5 --set link.latency_ms=0 --max-tokens 300 "
                              "--json --prompt 'Tom and his dog' --set cloud.port=" +
                              std::to_string(port));
  REQUIRE(undisturbed.status == 0);
  CHECK(lines[1]["prompt"] == "Tom and his dog");
  CHECK(lines[1]["tokens"] == json_lines(undisturbed.out).at(0)["tokens"]);
}

TEST_CASE("a hung cloud is noticed by heartbeats and the edge finishes alone") {
  cloud_process cloud("--set cloud.port=0 --set cloud.heartbeat_ms=200");
  REQUIRE_MESSAGE(cloud.port > 0, cloud.banner);
  run_result r;
  auto t0 = std::chrono::steady_clock::now();
  std::thread edge([&] {
    r = run_edge("--set policy.threshold=1.5 --set link.latency_ms=10 --set cloud.heartbeat_ms=200 "
                 "--set cloud.connect_tries=1 --max-tokens 300 --json" + port_arg(cloud));
  });
  for (int i = 0; i < 200 && !connection_established(cloud.port); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  cloud.signal(SIGSTOP);  // alive but silent: only heartbeats can tell
  edge.join();
  auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  cloud.signal(SIGCONT);
  REQUIRE(r.status == 0);
  auto j = json_lines(r.out).at(0);
  MESSAGE("edge done after " << seconds << " s, " << j["degraded_tokens"] << " tokens without the cloud");
  CHECK(j["n_generated"] == 300);
  CHECK(j["degraded_tokens"].get<int>() > 0);
  CHECK(seconds < 9.0);  // well before the 10 s request timeout would have fired
}

TEST_CASE("the two-node setup in network namespaces runs where the machine allows it") {
  std::string cmd = "bash " + std::string(CECO_SOURCE_DIR) + "/deploy/two-node-netns.sh --binary " +
                    CECO_BINARY + " --profile paper --max-tokens 10 --json 2>&1";
  auto [code, out] = run_shell(cmd);
  if (code == 77)
    return skip_test("network namespaces are not available here: " + out);
  REQUIRE_MESSAGE(code == 0, out);
  auto line = out.substr(out.find("{\""));
  auto j = nlohmann::json::parse(line.substr(0, line.find('\n')));
  CHECK(j["n_generated"] == 10);
  CHECK(j["degraded_tokens"] == 0);
}

TEST_CASE("one connection holds at most session.max_sessions_per_connection sessions") {
  cloud_process cloud("--set cloud.port=0 --set session.max_sessions=8 "
                      "--set session.max_sessions_per_connection=2");
  REQUIRE_MESSAGE(cloud.port > 0, cloud.banner);
  auto s = load_settings("", {"model.path=" + stories_gguf()});
  auto m = load_site_model(s, stories_gguf());
  auto greeted = [&](wire_peer& peer) {
    auto h = peer.ask<hello_msg>(make_hello(s, m));
    REQUIRE_MESSAGE(h, describe(h.error()));
  };
  wire_peer greedy(cloud.port);
  greeted(greedy);
  auto first = greedy.ask<uint64_t>(open_session{});
  auto second = greedy.ask<uint64_t>(open_session{});
  REQUIRE(first);
  REQUIRE(second);
  auto third = greedy.error_of<uint64_t>(open_session{});
  CHECK(third.find("session_limit: this connection holds 2 session(s)") == 0);
  CHECK(third.find("session.max_sessions_per_connection = 2") != std::string::npos);

  // Another connection still gets its own, up to its own limit.
  wire_peer other(cloud.port);
  greeted(other);
  CHECK(other.ask<uint64_t>(open_session{}));
  CHECK(other.ask<uint64_t>(open_session{}));
  CHECK(other.error_of<uint64_t>(open_session{}).find("session_limit") == 0);

  // Closing one frees a place on that connection.
  CHECK(greedy.error_of<session_summary>(close_session{*first}) == "accepted");
  CHECK(greedy.ask<uint64_t>(open_session{}));

  // Opens sent together, unanswered, count too: two of five at most pass.
  wire_peer eager(cloud.port);
  greeted(eager);
  std::vector<std::future<bool>> answers;
  for (int i = 0; i < 5; ++i) {
    auto done = std::make_shared<std::promise<bool>>();
    answers.push_back(done->get_future());
    eager.client->request(request_frame(open_session{}), [done](wire::result<wire::message> r) {
      done->set_value(wire::ok(r) && bool(reply_of<uint64_t>(std::move(r))));
    });
  }
  int opened = 0;
  for (auto& a : answers) {
    REQUIRE(a.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
    opened += a.get() ? 1 : 0;
  }
  CHECK(opened == 2);
}

namespace {

/// A TCP port on loopback that accepts connections (the kernel's backlog)
/// and never says a word: a hung cloud, or something that is no cloud.
struct silent_listener {
  int fd = -1;
  int port = 0;
  silent_listener() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(fd, 16) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    port = ntohs(a.sin_port);
  }
  ~silent_listener() { ::close(fd); }
};

} // namespace

TEST_CASE("a handshake that timed out is handshake_timeout, not handshake_failed, and is retried") {
  auto s = load_settings("", {"model.path=" + stories_gguf(), "cloud.heartbeat_ms=250"});
  auto m = load_site_model(s, stories_gguf());
  caf::actor_system_config cfg;
  configure_actor_system(cfg, 2);
  caf::actor_system sys{cfg};

  // Nothing answers the authentication: the connect deadline (4 heartbeats).
  silent_listener silent;
  s.cloud.port = silent.port;
  auto start = std::chrono::steady_clock::now();
  auto hung = connect_to_front(sys, s, make_hello(s, m), wire_limits_of(m));
  auto waited = std::chrono::steady_clock::now() - start;
  REQUIRE(!hung);
  CAPTURE(describe(hung.error()));
  CHECK(is(hung.error(), ceco_errc::handshake_timeout));
  CHECK(describe(hung.error()).find("no authenticated connection within 1000 ms") !=
        std::string::npos);
  CHECK(waited >= std::chrono::milliseconds(900));
  CHECK(waited < std::chrono::seconds(5));

  // The secret is proven, but the hello is never answered.
  wire::server_options o;
  o.insecure = true;
  o.limits = wire_limits_of(m);
  wire::server mute(o, [](wire::connection_id, uint32_t, wire::message) {});
  s.cloud.port = mute.port();
  s.cloud.request_timeout_ms = 400;
  auto unanswered = connect_to_front(sys, s, make_hello(s, m), wire_limits_of(m));
  REQUIRE(!unanswered);
  CAPTURE(describe(unanswered.error()));
  CHECK(is(unanswered.error(), ceco_errc::handshake_timeout));
  CHECK(describe(unanswered.error()).find("did not answer the hello within 400 ms") !=
        std::string::npos);

  // `ceco edge` tries again with backoff, then gives up naming the timeout.
  auto edge = run_edge_with_errors(fmt::format(
    "--max-tokens 4 --set cloud.port={} --set cloud.connect_tries=2 --set cloud.heartbeat_ms=250",
    silent.port));
  CAPTURE(edge.out);
  CHECK(edge.status == 1);
  CHECK(edge.out.find("handshake_timeout") != std::string::npos);
  CHECK(edge.out.find("retrying in 100 ms") != std::string::npos);
  CHECK(edge.out.find("after 2 attempt(s)") != std::string::npos);

  // The link's reconnector tries again after a timed-out handshake, with
  // backoff, until a front comes.
  auto front = caf::actor_cast<cloud_api>(sys.spawn([]() -> caf::behavior {
    return {[](int32_t) {}};
  }));
  std::atomic<int> attempts{0};
  std::promise<std::chrono::steady_clock::time_point> handed;
  reconnector again;
  const auto first_try = std::chrono::steady_clock::now();
  again.start(
    sys,
    [&]() -> caf::expected<cloud_api> {
      if (++attempts < 3)
        return make_error(ceco_errc::handshake_timeout, "test: no hello within 1 ms");
      return front;
    },
    [&](cloud_api) { handed.set_value(std::chrono::steady_clock::now()); });
  auto got = handed.get_future();
  REQUIRE(got.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK(attempts == 3);
  CHECK(got.get() - first_try >= std::chrono::milliseconds(300));  // 100 ms, then 200 ms
  caf::anon_send_exit(front, caf::exit_reason::user_shutdown);
}
