// The wire protocol's frame codec: every message round-trips, every limit is
// checked with an error that names the field, and a seeded mutation run over
// encoded frames never crashes, stalls or grows memory.

#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <algorithm>
#include <limits>
#include <map>
#include <random>

#include <fmt/format.h>
#include <sys/resource.h>

#include "net/frame.hpp"

using namespace ceco;
using namespace ceco::wire;

namespace {

// A small model's shape: n_embd 16, context 32, vocabulary 64, 6 layers.
const wire_limits limits = wire_limits::for_model(16, 32, 64, 6);

tensor_blob blob(int32_t rows, int32_t cols, wire_dtype dtype, uint8_t seed) {
  tensor_blob b;
  b.dtype = uint8_t(dtype);
  b.rows = rows;
  b.cols = cols;
  b.bytes.resize(size_t(rows) * cols * (dtype == wire_dtype::f16 ? 2 : 4));
  for (size_t i = 0; i < b.bytes.size(); ++i)
    b.bytes[i] = uint8_t(seed + i * 7);
  return b;
}

hello_msg sample_hello() {
  hello_msg h;
  h.fingerprint = 0x1234'5678'9abc'def0ull;
  h.n_layer = 6;
  h.split = 3;
  h.exits = {2, 3};
  h.evaluator_on_cloud = true;
  h.threshold = 0.8f;
  h.min_exit_layer = 1;
  h.upload_dtype = 1;
  h.shape_fingerprint = 0x0fed'cba9'8765'4321ull;
  h.weight_types = "Q4_K+Q6_K";
  h.allow_mixed_quantization = true;
  return h;
}

/// One valid message of every frame type, in frame_type order.
std::vector<message> samples() {
  auth_challenge challenge;
  challenge.server_nonce.fill(0xA5);
  auth_response response;
  response.client_nonce.fill(0x11);
  response.client_mac.fill(0x22);
  auth_ok proof;
  proof.server_mac.fill(0x33);
  exit_decision decision;
  decision.exit_layer = 2;
  decision.token = 63;
  decision.confidence = {0.25f, 1.0f};
  decision.compute_us = 77;
  decision.draft = 5;
  decision.q_tokens = {5, 63};
  decision.q_weights = {0.5f, 0.5f};
  return {challenge,
          response,
          proof,
          sample_hello(),
          hello_reply{sample_hello()},
          open_session{},
          open_reply{0xFFFF'FFFF'FFFF'FFFFull},
          upload_msg{42, 5, blob(3, 16, wire_dtype::f16, 1)},
          positions_reply{8},
          infer_request{42, 31},
          infer_reply{17, 1234},
          naive_request{42, blob(32, 16, wire_dtype::f32, 2)},
          generate_request{42, {1, 2, 63}, 29},
          generate_reply{{5, 6, 7, 0}, 99},
          close_session{42},
          session_summary{42, 32, 5000, 1},
          evaluate_request{42, blob(2, 16, wire_dtype::f32, 3)},
          decision,
          upload_states{42, 0, blob(1, 16, wire_dtype::f32, 4)},
          ping{7},
          pong{7},
          error_frame{uint8_t(ceco_errc::unknown_session), "session 42 is not open"},
          draft_upload{42, 3, 7, blob(2, 16, wire_dtype::f16, 5), {-1, 63},
                       {{0, 2}, {63, 5}, {0.75f, 0.25f}}},
          verdict{uint8_t(verdict_outcome::corrected), 4, 8, 17, 321}};
}

std::vector<uint8_t> bytes_of(const message& m, uint32_t request_id = 9) {
  auto r = encode(request_id, m, limits);
  REQUIRE_MESSAGE(ok(r), std::get<wire_error>(r).text);
  return std::get<std::vector<uint8_t>>(r);
}

/// The error text decoding `bytes` gives ("" if it decodes).
std::string decode_error(const std::vector<uint8_t>& bytes) {
  auto r = decode(bytes.data(), bytes.size(), limits);
  return ok(r) ? std::string() : std::get<wire_error>(r).text;
}

void put_u32(std::vector<uint8_t>& b, size_t at, uint32_t v) { std::memcpy(&b[at], &v, 4); }
void put_i32(std::vector<uint8_t>& b, size_t at, int32_t v) { std::memcpy(&b[at], &v, 4); }
void put_f32(std::vector<uint8_t>& b, size_t at, float v) { std::memcpy(&b[at], &v, 4); }
void fix_size(std::vector<uint8_t>& b) { put_u32(b, 12, uint32_t(b.size() - header_size)); }

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

} // namespace

TEST_CASE("wire: every message type round-trips to the same message and bytes") {
  auto all = samples();
  REQUIRE(all.size() == frame_type_count);
  for (size_t i = 0; i < all.size(); ++i) {
    CAPTURE(to_string(type_of(all[i])));
    CHECK(uint16_t(type_of(all[i])) == i + 1);
    auto bytes = bytes_of(all[i], 1000 + uint32_t(i));
    CHECK(bytes.size() <= header_size + max_payload_of(type_of(all[i]), limits));
    CHECK(encoded_size(all[i]) == bytes.size());  // what a link counts, never encoded
    auto r = decode(bytes.data(), bytes.size(), limits);
    REQUIRE_MESSAGE(ok(r), std::get<wire_error>(r).text);
    auto& f = std::get<frame>(r);
    CHECK(f.request_id == 1000 + i);
    CHECK(f.msg.index() == all[i].index());
    CHECK(bytes_of(f.msg, f.request_id) == bytes);
  }
  // Field by field for the ones with vectors, tensors and text.
  auto up = std::get<frame>(decode(bytes_of(all[7]).data(), bytes_of(all[7]).size(), limits));
  auto& u = std::get<upload_msg>(up.msg);
  CHECK(u.session == 42);
  CHECK(u.start == 5);
  CHECK(u.states == std::get<upload_msg>(all[7]).states);
  auto gen_bytes = bytes_of(all[12]);
  auto gen = std::get<generate_request>(std::get<frame>(decode(gen_bytes.data(), gen_bytes.size(), limits)).msg);
  CHECK(gen.prompt == std::vector<int32_t>{1, 2, 63});
  CHECK(gen.max_tokens == 29);
  auto hello_bytes = bytes_of(all[3]);
  auto hello = std::get<hello_msg>(std::get<frame>(decode(hello_bytes.data(), hello_bytes.size(), limits)).msg);
  CHECK(compare_hello(hello, sample_hello()) == "");
  CHECK(hello.shape_fingerprint == sample_hello().shape_fingerprint);
  CHECK(hello.weight_types == "Q4_K+Q6_K");
  CHECK(hello.allow_mixed_quantization);
  CHECK(hello.threshold == 0.8f);
  auto err_bytes = bytes_of(all[21]);
  auto err = std::get<error_frame>(std::get<frame>(decode(err_bytes.data(), err_bytes.size(), limits)).msg);
  CHECK(err.text == "session 42 is not open");
  CHECK(err.code == uint8_t(ceco_errc::unknown_session));
}

TEST_CASE("wire: the header layout is magic, version, type, request id, payload size") {
  auto bytes = bytes_of(infer_request{0x0102030405060708ull, 7}, 0xAABBCCDD);
  REQUIRE(bytes.size() == header_size + 12);
  CHECK(std::string(bytes.begin(), bytes.begin() + 4) == "CECO");
  CHECK(bytes[4] == wire_version);
  CHECK(bytes[5] == 0);
  CHECK(bytes[6] == uint8_t(frame_type::infer_request));
  CHECK(bytes[8] == 0xDD);
  CHECK(bytes[11] == 0xAA);
  CHECK(bytes[12] == 12);
  CHECK(bytes[16] == 0x08);  // session, little-endian
  CHECK(bytes[24] == 7);     // pos
  // The secret of a hello never travels.
  auto h = sample_hello();
  h.secret = "do-not-send-me";
  auto hb = bytes_of(h);
  CHECK(std::search(hb.begin(), hb.end(), h.secret.begin(), h.secret.end()) == hb.end());
}

TEST_CASE("wire: headers are refused before the payload is read") {
  auto good = bytes_of(infer_request{1, 2});
  auto bad = good;
  bad[0] = 'X';
  CHECK(contains(decode_error(bad), "frame magic: expected 0x4f434543 (\"CECO\"), got 0x4f434558"));
  bad = good;
  bad[4] = 9;
  CHECK(contains(decode_error(bad), "frame version: expected 1, got 9"));
  bad = good;
  bad[6] = 0;
  CHECK(contains(decode_error(bad), "frame type: expected 1..24, got 0"));
  bad[6] = 99;
  CHECK(contains(decode_error(bad), "frame type: expected 1..24, got 99"));
  // An oversized length is refused from the header alone, per type.
  for (uint16_t t = 1; t <= frame_type_count; ++t) {
    std::vector<uint8_t> header(good.begin(), good.begin() + header_size);
    header[6] = uint8_t(t);
    put_u32(header, 12, 0xFFFFFFFF);
    auto r = parse_header(header.data(), limits);
    REQUIRE(!ok(r));
    CHECK(std::get<wire_error>(r).code == wire_errc::too_large);
    CHECK(contains(std::get<wire_error>(r).text, "got 4294967295"));
  }
  std::vector<uint8_t> header(good.begin(), good.begin() + header_size);
  put_u32(header, 12, 13);
  CHECK(std::get<wire_error>(parse_header(header.data(), limits)).text ==
        "infer_request frame: payload size expected at most 12 bytes, got 13");
  // The largest naive request: 32 x 16 fp32 rows.
  CHECK(max_payload_of(frame_type::naive_request, limits) == 8 + 9 + 32 * 16 * 4);
  // The largest draft upload: 32 x 16 fp32 rows, a draft and a draft
  // distribution of 64 candidates (8 bytes each) per row.
  CHECK(max_payload_of(frame_type::draft_upload, limits) ==
        8 + 4 + 4 + 9 + 32 * 16 * 4 + 4 + 32 * 4 + 4 + 32 * 4 + 2 * (4 + 32 * 64 * 4));
  CHECK(limits.max_payload == max_payload_of(frame_type::draft_upload, limits));
  CHECK(limits.max_payload > 1 + 4 + limits.max_text);  // the longest error text
  // A frame cap below a type's maximum wins.
  auto capped = limits;
  capped.max_payload = 100;
  put_u32(header, 12, 200);
  header[6] = uint8_t(frame_type::upload);
  CHECK(contains(std::get<wire_error>(parse_header(header.data(), capped)).text,
                 "upload frame: payload size expected at most 100 bytes, got 200"));
}

TEST_CASE("wire: every field is checked against the model, naming field, bound and value") {
  // upload: session(8) start(4) dtype(1) rows(4) cols(4) bytes
  auto up = bytes_of(upload_msg{1, 5, blob(3, 16, wire_dtype::f32, 0)});
  auto bad = up;
  put_i32(bad, 24, -1);
  CHECK(decode_error(bad) == "upload.start: expected 0..31, got -1");
  bad = up;
  put_i32(bad, 29, 28);
  CHECK(decode_error(bad) == "upload.states.rows: expected 0..27, got 28");  // 5 + 28 > 32
  bad = up;
  put_i32(bad, 33, 4096);
  CHECK(decode_error(bad) == "upload.states.cols: expected 16..16, got 4096");
  bad = up;
  bad[28] = 2;
  CHECK(decode_error(bad) == "upload.states.dtype: expected 0..1, got 2");
  bad = up;
  put_i32(bad, 29, 4);  // one row more than the bytes that follow
  CHECK(decode_error(bad) == "upload.states.bytes: the payload ends inside it (needs 256 bytes, 192 left)");
  bad = up;
  bad.push_back(0);
  fix_size(bad);
  CHECK(decode_error(bad) == "upload frame: 1 bytes after the last field");
  bad = up;
  bad.pop_back();
  CHECK(contains(decode_error(bad), "upload frame: payload size 213 in the header, 212 bytes follow"));

  // infer_request / naive_request positions and rows.
  auto inf = bytes_of(infer_request{1, 0});
  put_i32(inf, 24, 32);
  CHECK(decode_error(inf) == "infer_request.pos: expected 0..31, got 32");
  auto naive = bytes_of(naive_request{1, blob(1, 16, wire_dtype::f32, 0)});
  put_i32(naive, 25, 0);
  CHECK(decode_error(naive) == "naive_request.states.rows: expected 1..32, got 0");

  // generate_request: prompt count, token ids, max_tokens.
  auto gen = bytes_of(generate_request{1, {1, 2}, 4});  // session(8) count(4) ids max_tokens from
  auto g = gen;
  put_i32(g, 32, 64);
  CHECK(decode_error(g) == "generate_request.prompt[1]: expected 0..63, got 64");
  g = gen;
  put_i32(g, 36, -1);
  CHECK(decode_error(g) == "generate_request.max_tokens: expected 1..32, got -1");
  g = gen;
  put_u32(g, 24, 0xFFFFFFFF);  // a count no payload can hold: refused, nothing allocated
  CHECK(decode_error(g) == "generate_request.prompt: expected 0..32 elements, got 4294967295");
  g = gen;
  put_u32(g, 24, 30);  // within bounds, but the bytes are not there
  CHECK(decode_error(g) == "generate_request.prompt: the payload ends inside it (needs 120 bytes, 36 left)");

  // Replies checked on the edge the same way.
  auto reply = bytes_of(infer_reply{3, 10});
  put_i32(reply, 16, 64);
  CHECK(decode_error(reply) == "infer_reply.token: expected 0..63, got 64");
  reply = bytes_of(infer_reply{3, 10});
  reply[27] = 0x80;  // cloud_us negative
  CHECK(contains(decode_error(reply), "infer_reply.cloud_us: expected 0..86400000000, got -"));
  auto decision = exit_decision{};
  decision.confidence = {0.5f};
  auto dec = bytes_of(decision);
  put_f32(dec, 28, std::numeric_limits<float>::quiet_NaN());
  CHECK(contains(decode_error(dec), "exit_decision.confidence[0]: expected 0..1.001, got nan"));

  // hello: layers, split, exits, booleans, a finite threshold.
  auto hb = bytes_of(sample_hello());  // protocol(4) fp(8) n_layer(4) split(4) count(4) exits(8) bools(2) threshold(4)
  auto h = hb;
  put_i32(h, 28, 7);
  CHECK(decode_error(h) == "hello.n_layer: expected 1..6, got 7");
  h = hb;
  put_i32(h, 32, 6);
  CHECK(decode_error(h) == "hello.split: expected 1..5, got 6");
  h = hb;
  put_i32(h, 44, 0);
  CHECK(decode_error(h) == "hello.exits[1]: expected 1..6, got 0");
  h = hb;
  h[48] = 2;
  CHECK(decode_error(h) == "hello.evaluator_on_cloud: expected 0..1, got 2");
  h = hb;
  put_f32(h, 50, std::numeric_limits<float>::infinity());
  CHECK(contains(decode_error(h), "hello.threshold: expected a finite number in [0, 1000000], got inf"));

  // error text length.
  auto long_text = error_frame{1, std::string(limits.max_text + 1, 'x')};
  auto unchecked = wire_limits{};  // no frame cap: the writer may produce it
  unchecked.max_text = 10'000;
  auto eb = std::get<std::vector<uint8_t>>(encode(0, long_text, unchecked));
  CHECK(contains(decode_error(eb), "payload size expected at most 4101 bytes, got 4102"));

  // Encoding an inconsistent tensor is refused, not sent.
  auto broken = upload_msg{1, 0, blob(2, 16, wire_dtype::f32, 0)};
  broken.states.bytes.pop_back();
  auto r = encode(0, broken, limits);
  REQUIRE(!ok(r));
  CHECK(std::get<wire_error>(r).text == "upload.states: a 2x16 tensor of dtype 0 needs 128 bytes, has 127");
}

TEST_CASE("wire: a seeded mutation run over encoded frames never crashes, stalls or grows") {
  // Every case either decodes to a message that re-encodes to the same bytes,
  // or gives an error; no case takes a second; memory stays bounded.
  constexpr int cases = 50'000;
  std::mt19937_64 rng(20261129);
  std::vector<std::vector<uint8_t>> corpus;
  for (auto& m : samples())
    corpus.push_back(bytes_of(m, uint32_t(rng())));
  static const uint32_t interesting[] = {0, 1, 2, 15, 16, 17, 31, 32, 33, 63, 64, 0x7F, 0x80,
                                         0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF};
  auto pick = [&](size_t n) { return n ? size_t(rng() % n) : size_t(0); };

  rusage before{};
  getrusage(RUSAGE_SELF, &before);
  int decoded = 0, refused = 0;
  std::map<wire_errc, int> by_code;
  double slowest_ms = 0;
  auto start = std::chrono::steady_clock::now();
  for (int c = 0; c < cases; ++c) {
    auto bytes = corpus[pick(corpus.size())];
    int edits = 1 + int(pick(4));
    for (int e = 0; e < edits; ++e) {
      switch (pick(8)) {
        case 0:
          if (!bytes.empty())
            bytes[pick(bytes.size())] ^= uint8_t(1u << pick(8));
          break;
        case 1:
          if (!bytes.empty())
            bytes[pick(bytes.size())] = uint8_t(interesting[pick(std::size(interesting))]);
          break;
        case 2:
          if (bytes.size() >= 4) {
            uint32_t v = interesting[pick(std::size(interesting))];
            std::memcpy(&bytes[pick(bytes.size() - 3)], &v, 4);
          }
          break;
        case 3:
          bytes.resize(pick(bytes.size() + 1));
          break;
        case 4: {
          size_t at = pick(bytes.size() + 1), n = 1 + pick(16);
          std::vector<uint8_t> extra(n);
          for (auto& x : extra)
            x = uint8_t(rng());
          bytes.insert(bytes.begin() + at, extra.begin(), extra.end());
          break;
        }
        case 5:
          if (!bytes.empty()) {
            size_t at = pick(bytes.size()), n = 1 + pick(std::min<size_t>(16, bytes.size() - at));
            bytes.erase(bytes.begin() + at, bytes.begin() + at + n);
          }
          break;
        case 6: {  // another frame's header on this payload
          auto& other = corpus[pick(corpus.size())];
          if (bytes.size() >= header_size)
            std::copy(other.begin(), other.begin() + header_size, bytes.begin());
          break;
        }
        case 7:
          break;
      }
    }
    // Most cases keep a consistent size field, so the payload decoder is reached.
    if (bytes.size() >= header_size && pick(4) != 0)
      fix_size(bytes);

    auto t0 = std::chrono::steady_clock::now();
    auto r = decode(bytes.data(), bytes.size(), limits);
    if (ok(r)) {
      ++decoded;
      auto& f = std::get<frame>(r);
      auto again = encode(f.request_id, f.msg, limits);
      REQUIRE(ok(again));
      REQUIRE(std::get<std::vector<uint8_t>>(again) == bytes);
    } else {
      ++refused;
      auto& err = std::get<wire_error>(r);
      REQUIRE(!err.text.empty());
      ++by_code[err.code];
    }
    slowest_ms = std::max(slowest_ms, std::chrono::duration<double, std::milli>(
                                        std::chrono::steady_clock::now() - t0).count());
  }
  double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  rusage after{};
  getrusage(RUSAGE_SELF, &after);
  long grown_kb = after.ru_maxrss - before.ru_maxrss;
  MESSAGE(fmt::format("wire fuzz: {} cases in {:.2f} s, {} decoded, {} refused, slowest {:.3f} ms, "
                      "max RSS {} KiB (grew {} KiB)",
                      cases, total_s, decoded, refused, slowest_ms, after.ru_maxrss, grown_kb));
  for (auto& [code, n] : by_code)
    MESSAGE(fmt::format("  {}: {}", to_string(code), n));
  CHECK(decoded + refused == cases);
  CHECK(decoded > cases / 50);   // the mutations reach valid messages too
  CHECK(by_code.size() >= 5);    // and every kind of refusal
  CHECK(slowest_ms < 1000.0);
  CHECK(total_s < 60.0);
  CHECK(grown_kb < 64 * 1024);
}
