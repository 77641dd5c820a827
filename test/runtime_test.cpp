#include "test/support.hpp"
#include "test/cloud_sites.hpp"

#include <array>
#include <cmath>
#include <map>
#include <mutex>
#include <thread>

#include "actors/cloud_context.hpp"
#include "actors/cloud_front.hpp"
#include "actors/cloud_layers.hpp"
#include "actors/context_manager.hpp"
#include "actors/deployment.hpp"
#include "actors/edge_layers.hpp"
#include "actors/hidden_rows.hpp"
#include "actors/link.hpp"
#include "actors/uploader.hpp"
#include "actors/wire_bridge.hpp"
#include "model/metrics.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

/// One actor system and simulation per test, on stories260K.
struct stories_sim : ceco::test::sim_fixture {
  explicit stories_sim(std::vector<std::string> sets = {})
      : sim_fixture(with_stories(std::move(sets))) {
    // nop
  }
  static std::vector<std::string> with_stories(std::vector<std::string> sets) {
    sets.insert(sets.begin(), "model.path=" + stories_gguf());
    return sets;
  }
};

const std::vector<std::string> test_prompts = {"Once upon a time", "Lily and Ben went to the park",
                                               "The little dog"};

int64_t varbyte(int64_t n) {
  int64_t bytes = 1;
  while (n >= 128) {
    n >>= 7;
    ++bytes;
  }
  return bytes;
}

} // namespace

TEST_CASE("collaborative with a threshold above 1 gives exactly the cloud strategy's tokens") {
  for (auto dtype : {"f32", "f16"}) {
    CAPTURE(dtype);
    stories_sim f({"split.layer=3", "model.exits=2,3", "policy.threshold=1.5",
                   std::string("upload.dtype=") + dtype, "link.latency_ms=0", "link.bandwidth_mbps=0"});
    for (auto& p : test_prompts) {
      auto ids = f.m.vocab.encode(p);
      auto cloud = f.sim->run(ids, "cloud", 40);
      auto collab = f.sim->run(ids, "collaborative", 40);
      CHECK(cloud.error.empty());
      CHECK(collab.error.empty());
      CHECK(collab.tokens == cloud.tokens);
      CHECK(collab.cloud_tokens == int(collab.tokens.size()));
      CHECK(collab.cloud_requests == int(collab.tokens.size()));
    }
  }
}

TEST_CASE("collaborative with threshold 0 gives exactly standalone's tokens, and naive gives cloud's") {
  stories_sim f({"split.layer=3", "model.exits=2,3", "policy.threshold=0", "link.latency_ms=0",
                 "link.bandwidth_mbps=0"});
  for (auto& p : test_prompts) {
    auto ids = f.m.vocab.encode(p);
    auto standalone = f.sim->run(ids, "standalone", 30);
    auto collab = f.sim->run(ids, "collaborative", 30);
    auto naive = f.sim->run(ids, "naive", 30);
    auto cloud = f.sim->run(ids, "cloud", 30);
    CHECK(collab.tokens == standalone.tokens);
    CHECK(collab.cloud_requests == 0);
    CHECK(standalone.exit_counts[0] == int(standalone.tokens.size()));  // exit 2 always fires
    CHECK(naive.tokens == cloud.tokens);
    CHECK(cloud.tokens.size() == 30);
  }
}

TEST_CASE("bytes up equal the docs/design.md formulas plus the documented per-message overhead") {
  stories_sim f({"link.latency_ms=0", "link.bandwidth_mbps=0"});
  const int64_t d = 64;
  auto ids = f.m.vocab.encode("Once upon a time");
  const int64_t p = int64_t(ids.size());

  auto collab = f.sim->run(ids, "collaborative", 30);
  const int64_t n = int64_t(collab.tokens.size());
  REQUIRE(n == 30);
  CHECK(collab.uploaded_positions == p + n - 1);
  CHECK(collab.uploads == n);  // the prompt in one message, then one per generated token but the last
  // open 21 (the sampling, no prompt ids) + close 8 (the session) + 12 per cloud request +
  // per upload 21 + length prefix + payload
  int64_t expected = 21 + 8 + 12 * collab.cloud_requests + (p + n - 1) * d * 2;
  expected += 21 + varbyte(p * d * 2) + (n - 1) * (21 + varbyte(d * 2));
  CHECK(collab.traffic.bytes_up == expected);

  auto naive = f.sim->run(ids, "naive", 30);
  int64_t naive_expected = 21 + 8;
  for (int64_t i = 0; i < 30; ++i) {
    int64_t payload = (p + i) * d * 4;
    naive_expected += payload + 17 + varbyte(payload);
  }
  CHECK(naive.traffic.bytes_up == naive_expected);
  CHECK(naive.traffic.messages_up == 32);

  auto cloud = f.sim->run(ids, "cloud", 30);
  // No open: the first generate_request opens its session (session 8 + ids
  // (prefix + 4 each) + max_tokens 4 + from 4 + sampling 20:
  // temperature, top_k, top_p, seed); then long polls (no ids:
  // 8 + 1 + 4 + 4 + 20) for the streamed tokens; close 8.
  const int64_t polls = cloud.traffic.messages_up - 2;
  CHECK(polls >= 0);
  CHECK(polls <= 29);
  CHECK(cloud.traffic.bytes_up == (8 + 1 + 4 * p + 4 + 4 + 20) + polls * 37 + 8);
  CHECK(cloud.traffic.messages_down == cloud.traffic.messages_up);
  CHECK(cloud.traffic.bytes_down > 4 * 30);
}

TEST_CASE("with upload.prompt = tokens the open carries the prompt's ids, the cloud computes their rows, and the tokens stay the cloud's") {
  // Every token a cloud request (threshold above 1), f32 uploads: collaborative
  // and exact give the cloud strategy's tokens, whichever way the prompt goes up.
  stories_sim f({"link.latency_ms=0", "link.bandwidth_mbps=0", "policy.threshold=1.5",
                 "upload.dtype=f32", "upload.prompt=tokens"});
  const int64_t d = 64;
  for (auto& prompt : test_prompts) {
    CAPTURE(prompt);
    auto ids = f.m.vocab.encode(prompt);
    const int64_t p = int64_t(ids.size());
    auto cloud = f.sim->run(ids, "cloud", 30);
    auto collab = f.sim->run(ids, "collaborative", 30);
    CHECK(collab.error.empty());
    CHECK(collab.tokens == cloud.tokens);
    const int64_t n = int64_t(collab.tokens.size());
    // The uploads begin at the prompt's last row: one row each.
    CHECK(collab.uploaded_positions == n);
    CHECK(collab.uploads == n);
    // open 21 + 4 per id, close 8, 12 per request, each upload 21 + length + one f32 row
    CHECK(collab.traffic.bytes_up ==
          21 + 4 * p + 8 + 12 * collab.cloud_requests + n * (21 + varbyte(d * 4) + d * 4));
    auto exact = f.sim->run(ids, "exact", 30);
    CHECK(exact.error.empty());
    CHECK(exact.tokens == cloud.tokens);
    CHECK(f.sim->cloud_state().sessions == 0);
  }
}

TEST_CASE("the cloud strategy streams: no open round trip, its first token after one round trip") {
  // A 50 ms link each way: the first token needs the request up and its
  // reply down (plus prefill and one step of a tiny model), never a round
  // trip more for an open; the other tokens stream on long polls.
  std::vector<int32_t> reference;  // the whole model's, on a link of no delay
  {
    stories_sim plain;
    reference = plain.sim->run(plain.m.vocab.encode("Once upon a time"), "cloud", 8).tokens;
  }
  stories_sim f({"link.latency_ms=50", "compute.mode=profile", "compute.profile=paper-a100",
                 "compute.clock=virtual"});
  auto ids = f.m.vocab.encode("Once upon a time");
  auto streamed = f.sim->run(ids, "cloud", 8);
  REQUIRE(streamed.error.empty());
  REQUIRE(streamed.tokens.size() == 8);
  CHECK(streamed.first_token_us >= 100'000);
  CHECK(streamed.first_token_us < 200'000);  // one round trip, not two
  CHECK(streamed.total_us > streamed.first_token_us);
  CHECK(streamed.cloud_requests == 1);
  CHECK(streamed.traffic.messages_up >= 3);  // the first request, polls, the close
  CHECK(reference == streamed.tokens);
}

TEST_CASE("asynchronous upload keeps the edge from waiting on a slow link") {
  // Every token exits on the edge (threshold 0), so no cloud request ever
  // needs the uploads; a synchronous uploader still waits for each one.
  std::vector<std::string> common = {"split.layer=3", "model.exits=2,3", "policy.threshold=0",
                                     "link.latency_ms=0", "link.bandwidth_mbps=0.5"};
  auto with = [&](const char* mode) {
    auto sets = common;
    sets.push_back(std::string("upload.mode=") + mode);
    return sets;
  };
  stories_sim async_sim(with("async"));
  stories_sim sync_sim(with("sync"));
  auto ids = async_sim.m.vocab.encode("Once upon a time");
  auto a = async_sim.sim->run(ids, "collaborative", 40);
  auto s = sync_sim.sim->run(ids, "collaborative", 40);
  CHECK(a.tokens == s.tokens);
  // Time the uploads occupy the 0.5 Mbit/s uplink.
  double upload_ms = double(a.traffic.bytes_up) * 8.0 / 0.5e6 * 1000.0;
  MESSAGE("async total " << a.total_us / 1000.0 << " ms, sync total " << s.total_us / 1000.0
                         << " ms, uplink busy " << upload_ms << " ms");
  // The synchronous edge waits for every upload; the asynchronous one only
  // for its session's open, a tiny message.
  CHECK(double(s.comm_us) / 1000.0 >= 0.9 * upload_ms);
  CHECK(a.comm_us * 4 < s.comm_us);
  CHECK(double(s.total_us - a.total_us) / 1000.0 >= 0.5 * upload_ms);
}

TEST_CASE("a session's cloud state is freed at its end and after its TTL") {
  stories_sim f({"session.ttl_s=0.2", "link.latency_ms=0", "link.bandwidth_mbps=0"});
  auto ids = f.m.vocab.encode("Once upon a time");
  auto r = f.sim->run(ids, "collaborative", 10);
  CHECK(r.error.empty());
  CHECK(f.sim->cloud_state().sessions == 0);
  CHECK(f.sim->cloud_state().context_bytes == 0);

  // A session the edge never closes.
  caf::scoped_actor self{*f.sys};
  auto cm = f.sim->contexts();
  uint64_t id = 0;
  self->request(cm, std::chrono::seconds(5), open_session{})
    .receive([&](uint64_t x) { id = x; }, [&](caf::error& e) { FAIL(describe(e)); });
  std::vector<float> rows(2 * 64, 0.5f);
  self->request(cm, std::chrono::seconds(5), upload_msg{id, 0, make_blob(rows.data(), 2, 64, wire_dtype::f16)})
    .receive([&](int32_t held) { CHECK(held == 2); }, [&](caf::error& e) { FAIL(describe(e)); });
  auto held = f.sim->cloud_state();
  CHECK(held.sessions == 1);
  CHECK(held.context_bytes > 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  CHECK(f.sim->cloud_state().sessions == 0);
  CHECK(f.sim->cloud_state().context_bytes == 0);
  self->request(cm, std::chrono::seconds(5), infer_request{id, 1})
    .receive([&](infer_reply&) { FAIL("an expired session answered"); },
             [&](caf::error& e) { CHECK(describe(e).find("unknown_session") == 0); });
}

TEST_CASE("concurrent sessions in one context manager never see each other's state") {
  stories_sim f({"split.layer=3", "model.exits=2,3", "policy.threshold=0.9", "upload.dtype=f32",
                 "link.latency_ms=1", "link.bandwidth_mbps=0"});
  std::vector<std::vector<int32_t>> prompts;
  for (auto& p : test_prompts)
    prompts.push_back(f.m.vocab.encode(p));
  std::vector<response_report> alone;
  for (auto& p : prompts)
    alone.push_back(f.sim->run(p, "collaborative", 30));
  auto together = f.sim->run_concurrently(prompts, "collaborative", 30);
  for (size_t i = 0; i < prompts.size(); ++i) {
    CHECK(together[i].error.empty());
    CHECK(together[i].tokens == alone[i].tokens);
    CHECK(together[i].cloud_requests == alone[i].cloud_requests);
  }
  CHECK(f.sim->cloud_state().sessions == 0);
}

TEST_CASE("the cloud computes ready sessions together, and each gets the tokens it gets alone") {
  for (auto batch : {1, 64}) {
    CAPTURE(batch);
    // Threshold above 1: every token is a cloud request.
    stories_sim f({"policy.threshold=1.5", "link.latency_ms=0", "link.bandwidth_mbps=0",
                   "session.batch_sessions=" + std::to_string(batch)});
    std::vector<std::vector<int32_t>> prompts;
    for (int copy = 0; copy < 3; ++copy)
      for (auto& p : test_prompts)
        prompts.push_back(f.m.vocab.encode(p));
    std::vector<response_report> alone;
    for (auto& p : prompts)
      alone.push_back(f.sim->run(p, "collaborative", 30));
    auto before = f.sim->cloud_state();
    auto together = f.sim->run_concurrently(prompts, "collaborative", 30);
    auto after = f.sim->cloud_state();
    for (size_t i = 0; i < prompts.size(); ++i) {
      CAPTURE(i);
      CHECK(together[i].error.empty());
      CHECK(together[i].tokens == alone[i].tokens);
      CHECK(together[i].cloud_tokens == 30);
    }
    const auto steps = after.steps - before.steps;
    const auto stepped = after.stepped_sessions - before.stepped_sessions;
    CHECK(steps > 0);
    if (batch == 1)
      CHECK(stepped == steps);
    else
      CHECK(stepped > steps);  // some steps served several sessions
  }
}

TEST_CASE("the cloud refuses a session past its memory limit, naming the limit") {
  // stories260K's cloud context (layers 3..5, 2048 positions) is 1.5 MiB.
  stories_sim f({"session.max_memory_mb=2", "link.latency_ms=0", "link.bandwidth_mbps=0"});
  caf::scoped_actor self{*f.sys};
  auto cm = f.sim->contexts();
  self->request(cm, std::chrono::seconds(5), open_session{})
    .receive([&](uint64_t) {}, [&](caf::error& e) { FAIL(describe(e)); });
  self->request(cm, std::chrono::seconds(5), open_session{})
    .receive([&](uint64_t) { FAIL("a session past the memory limit was opened"); },
             [&](caf::error& e) {
               auto what = describe(e);
               CHECK(what.find("session_limit") == 0);
               CHECK(what.find("session.max_memory_mb") != std::string::npos);
             });
  CHECK(f.sim->cloud_state().sessions == 1);
}

TEST_CASE("the session limit holds for opens that arrive together") {
  stories_sim f({"session.max_sessions=10", "link.latency_ms=0", "link.bandwidth_mbps=0"});
  caf::scoped_actor self{*f.sys};
  auto cm = f.sim->contexts();
  // Every open is sent before the first is answered.
  std::vector<decltype(self->request(cm, std::chrono::seconds(5), open_session{}))> opens;
  for (int i = 0; i < 40; ++i)
    opens.push_back(self->request(cm, std::chrono::seconds(5), open_session{}));
  int opened = 0, refused = 0;
  for (auto& h : opens)
    h.receive([&](uint64_t) { ++opened; },
              [&](caf::error& e) {
                CHECK(describe(e).find("session.max_sessions") != std::string::npos);
                ++refused;
              });
  CHECK(opened == 10);
  CHECK(refused == 30);
  CHECK(f.sim->cloud_state().sessions == 10);
}

TEST_CASE("a session's token requests waiting for uploads are bounded") {
  stories_sim f({"link.latency_ms=0", "link.bandwidth_mbps=0"});
  caf::scoped_actor self{*f.sys};
  auto cm = f.sim->contexts();
  uint64_t id = 0;
  self->request(cm, std::chrono::seconds(5), open_session{})
    .receive([&](uint64_t x) { id = x; }, [&](caf::error& e) { FAIL(describe(e)); });
  // Position 5 is never uploaded: every request waits.
  std::vector<decltype(self->request(cm, std::chrono::seconds(5), infer_request{id, 5}))> asks;
  for (int i = 0; i < 300; ++i)
    asks.push_back(self->request(cm, std::chrono::seconds(5), infer_request{id, 5}));
  self->request(cm, std::chrono::seconds(5), close_session{id})
    .receive([&](session_summary&) {}, [&](caf::error& e) { FAIL(describe(e)); });
  int limited = 0, closed = 0;
  for (auto& h : asks)
    h.receive([&](infer_reply&) { FAIL("a request for a position never uploaded was answered"); },
              [&](caf::error& e) {
                auto what = describe(e);
                if (what.find("session_limit") == 0)
                  ++limited;
                else if (what.find("unknown_session") == 0)
                  ++closed;
              });
  CHECK(closed == 256);
  CHECK(limited == 44);
}

TEST_CASE("moving the exit evaluator or the uploader to the cloud changes the traffic, never the tokens") {
  auto run = [](const std::string& evaluator, const std::string& uploader, const char* mode) {
    stories_sim f({"link.latency_ms=0", "link.bandwidth_mbps=0", "placement.exit_evaluator=" + evaluator,
                   "placement.uploader=" + uploader,
                   "model.exit_heads=" + std::string(CECO_SOURCE_DIR) +
                     "/config/models/stories260K-exits-2-3.gguf"});
    return f.sim->run(f.m.vocab.encode("Once upon a time"), mode, 30);
  };
  const int64_t d = 64, n_exits = 2;
  auto base = run("edge", "edge", "collaborative");
  REQUIRE(base.error.empty());
  REQUIRE(base.cloud_tokens > 0);
  REQUIRE(base.cloud_tokens < int(base.tokens.size()));  // some exits fire

  // The uploader on the cloud receives fp32 states: the f16 payload again on top.
  auto up = run("edge", "cloud", "collaborative");
  CHECK(up.error.empty());
  CHECK(up.tokens == base.tokens);
  CHECK(up.exit_counts == base.exit_counts);
  const int64_t extra_up = up.traffic.bytes_up - base.traffic.bytes_up;
  CHECK(extra_up >= base.uploaded_positions * d * 2);
  CHECK(extra_up <= base.uploaded_positions * d * 2 + int64_t(base.uploads) * 16);

  // The evaluator on the cloud gets every token's exit states (fp32) over the link.
  auto ev = run("cloud", "edge", "collaborative");
  CHECK(ev.error.empty());
  CHECK(ev.tokens == base.tokens);
  CHECK(ev.exit_counts == base.exit_counts);
  const auto evaluations = int64_t(base.tokens.size());
  CHECK(ev.traffic.messages_up == base.traffic.messages_up + evaluations);
  CHECK(ev.traffic.bytes_up - base.traffic.bytes_up >= evaluations * n_exits * d * 4);

  // Standalone stays on the edge wherever the evaluator is placed.
  auto alone = run("cloud", "cloud", "standalone");
  CHECK(alone.error.empty());
  CHECK(alone.traffic.bytes_up == 0);
  CHECK(alone.tokens == run("edge", "edge", "standalone").tokens);
}

TEST_CASE("a response that lost the cloud resumes in a new session, re-uploading its context") {
  // Every token is a cloud request (threshold above 1), 1 ms each way. In
  // profile mode each step takes the profile's time (the edge's about 20 ms):
  // the edge alone cannot finish the response before the link reconnects,
  // which its host's speed alone (microseconds a token) could.
  auto s = load_settings("", {"model.path=" + stories_gguf(), "policy.threshold=1.5",
                              "link.latency_ms=1", "link.bandwidth_mbps=0",
                              "compute.mode=profile", "compute.profile=paper-a100"});
  auto m = load_site_model(s, stories_gguf());
  caf::actor_system_config cfg;
  configure_actor_system(cfg, 2);
  caf::actor_system sys{cfg};
  // The "remote" cloud is a cloud site of its own; the link's reconnect
  // brings up a fresh one, which knows nothing of the response.
  replaceable_cloud clouds(sys, s, m);
  auto ids = m.vocab.encode("Once upon a time");
  const int n = 30;
  response_report r;
  {
    deployment sim(sys, s, m, clouds.first.front, clouds.reconnect);
    std::thread killer([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the response takes ~1 s
      clouds.first.stop();
    });
    r = sim.run(ids, "collaborative", n);
    killer.join();
  }
  MESSAGE(r.degraded_tokens << " of " << n << " tokens on the edge alone, resumed " << r.resumed
                            << " time(s)");
  CHECK(r.error.empty());
  REQUIRE(int(r.tokens.size()) == n);
  CHECK(r.resumed == 1);
  CHECK(clouds.reconnections() == 1);
  CHECK(r.cloud_tokens + r.degraded_tokens == n);
  CHECK(r.cloud_tokens > 0);
  // The new session got the whole context again on top of the usual uploads.
  CHECK(r.uploaded_positions > int(ids.size()) + n - 1);

  // Every token the cloud gave is the full model's greedy choice after the
  // tokens before it: the new cloud computed on the right context.
  c10::InferenceMode guard;
  auto seq = ids;
  seq.insert(seq.end(), r.tokens.begin(), r.tokens.end());
  const int L = m.model->config().n_layer;
  auto cache = m.model->make_cache(0, L);
  auto x = m.model->embed(seq);
  m.model->forward_layers(x, 0, 0, L, cache);
  auto best = at::argmax(m.model->logits(x), 1);
  int agree = 0;
  for (int i = 0; i < n; ++i)
    agree += best[int64_t(ids.size()) + i - 1].item<int64_t>() == r.tokens[size_t(i)];
  CHECK(agree >= n - r.degraded_tokens);
}

TEST_CASE("the context manager answers bad messages with errors and keeps serving") {
  stories_sim f;
  caf::scoped_actor self{*f.sys};
  auto cm = f.sim->contexts();
  auto error_of_upload = [&](upload_msg m) {
    std::string out;
    self->request(cm, std::chrono::seconds(5), std::move(m))
      .receive([&](int32_t) { out = "accepted"; }, [&](caf::error& e) { out = describe(e); });
    return out;
  };
  uint64_t id = 0;
  self->request(cm, std::chrono::seconds(5), open_session{})
    .receive([&](uint64_t x) { id = x; }, [&](caf::error& e) { FAIL(describe(e)); });
  std::vector<float> rows(3 * 64, 0.25f);
  auto good = make_blob(rows.data(), 3, 64, wire_dtype::f16);

  auto narrow = make_blob(rows.data(), 3, 32, wire_dtype::f16);
  CHECK(error_of_upload({id, 0, narrow}).find("bad_tensor: upload at position 0: rows have 32 values, expected 64") == 0);
  auto short_payload = good;
  short_payload.bytes.pop_back();
  CHECK(error_of_upload({id, 0, short_payload}).find("needs 384 bytes, the payload has 383") != std::string::npos);
  auto bad_dtype = good;
  bad_dtype.dtype = 9;
  CHECK(error_of_upload({id, 0, bad_dtype}).find("dtype 9") != std::string::npos);
  CHECK(error_of_upload({id + 1, 0, good}).find("unknown_session") == 0);
  CHECK(error_of_upload({id, 5, good}).find("position_gap: upload starts at position 5, but the cloud holds positions 0..-1") == 0);
  CHECK(error_of_upload({id, 5000, good}).find("bad_position: upload of positions 5000..5002 exceeds the context of 2048") == 0);

  // The same session still works: in order, with a harmless re-send.
  CHECK(error_of_upload({id, 0, good}) == "accepted");
  CHECK(error_of_upload({id, 1, good}) == "accepted");  // positions 1, 2 again, then 3
  int32_t token = -1;
  self->request(cm, std::chrono::seconds(5), infer_request{id, 3})
    .receive([&](infer_reply& r) { token = r.token; }, [&](caf::error& e) { FAIL(describe(e)); });
  CHECK(token >= 0);
  self->request(cm, std::chrono::seconds(5), infer_request{id, -4})
    .receive([&](infer_reply&) { FAIL("negative position answered"); },
             [&](caf::error& e) { CHECK(describe(e).find("bad_position") == 0); });
  self->request(cm, std::chrono::seconds(5), close_session{id})
    .receive([&](session_summary& s) {
               CHECK(s.positions == 4);
               CHECK(s.gaps == 1);
             },
             [&](caf::error& e) { FAIL(describe(e)); });

  // An open's prompt ids: each in the vocabulary, fewer than the context.
  auto error_of_open = [&](open_session m) {
    std::string out;
    self->request(cm, std::chrono::seconds(5), std::move(m))
      .receive([&](uint64_t) { out = "opened"; }, [&](caf::error& e) { out = describe(e); });
    return out;
  };
  CHECK(error_of_open({{}, {1, 512}}).find("bad_tensor: open_session: prompt token 1 is id 512; "
                                           "the vocabulary holds 0..511") == 0);
  CHECK(error_of_open({{}, std::vector<int32_t>(2048, 1)}).find("a prompt of 2048 tokens") !=
        std::string::npos);
  // A good one: its rows are computed, and the uploads go on after them.
  uint64_t with_prompt = 0;
  self->request(cm, std::chrono::seconds(5), open_session{{}, {1, 403, 407}})
    .receive([&](uint64_t x) { with_prompt = x; }, [&](caf::error& e) { FAIL(describe(e)); });
  CHECK(error_of_upload({with_prompt, 0, good}) == "accepted");  // positions 0..2 again, then none
  CHECK(error_of_upload({with_prompt, 4, good}).find("position_gap") == 0);
  CHECK(error_of_upload({with_prompt, 3, good}) == "accepted");
  self->request(cm, std::chrono::seconds(5), infer_request{with_prompt, 5})
    .receive([&](infer_reply& r) { CHECK(r.token >= 0); },
             [&](caf::error& e) { FAIL(describe(e)); });
  self->request(cm, std::chrono::seconds(5), close_session{with_prompt})
    .receive([&](session_summary& s) { CHECK(s.positions == 6); },
             [&](caf::error& e) { FAIL(describe(e)); });
}

TEST_CASE("the cloud layers refuse absurd generate requests and keep serving") {
  stories_sim f;
  auto site = spawn_cloud_site(*f.sys, f.s, f.m);
  caf::scoped_actor self{*f.sys};
  auto error_of = [&](generate_request r) {
    std::string out;
    self->request(site.layers, std::chrono::seconds(5), std::move(r))
      .receive([&](generate_reply& g) { out = std::to_string(g.tokens.size()) + " tokens"; },
               [&](caf::error& e) { out = describe(e); });
    return out;
  };
  CHECK(error_of({0, {1, 403}, -1}).find("max_tokens -1; expected 1..2048") != std::string::npos);
  CHECK(error_of({0, {}, 4}).find("a prompt of 0 tokens") != std::string::npos);
  CHECK(error_of({0, {1, 512}, 4}).find("prompt token 1 is id 512; the vocabulary holds 0..511") !=
        std::string::npos);
  CHECK(error_of({0, {1, 403, 407}, 4}) == "4 tokens");  // still alive and serving
  site.stop();
}

TEST_CASE("the cloud layers hold at most session.max_sessions generations at once") {
  stories_sim f({"session.max_sessions=2"});
  auto site = spawn_cloud_site(*f.sys, f.s, f.m);
  caf::scoped_actor self{*f.sys};
  // Three long generations asked at once: each holds a KV cache until done.
  using handle = decltype(self->request(site.layers, caf::infinite, generate_request{}));
  std::vector<handle> pending;
  for (int i = 0; i < 3; ++i)
    pending.push_back(
      self->request(site.layers, std::chrono::seconds(60), generate_request{0, {1, 403, 407}, 400}));
  std::vector<std::string> out(pending.size());
  for (size_t i = 0; i < pending.size(); ++i)
    pending[i].receive([&](generate_reply& g) { out[i] = std::to_string(g.tokens.size()) + " tokens"; },
                       [&](caf::error& e) { out[i] = describe(e); });
  size_t refused = 0, served = 0;
  for (auto& o : out) {
    refused += o.find("2 generations are in progress, the limit is 2 (session.max_sessions)")
               != std::string::npos;
    served += o.find(" tokens") != std::string::npos;
  }
  CAPTURE(out[0]);
  CHECK(refused == 1);
  CHECK(served == 2);
  site.stop();
}

TEST_CASE("every cross-site message round-trips through CAF's binary serialiser") {
  auto round_trip = [](auto x) {
    std::vector<char> buf;
    caf::binary_serializer sink{nullptr, buf};
    REQUIRE(!sink(x));
    decltype(x) y;
    caf::binary_deserializer source{nullptr, buf};
    REQUIRE(!source(y));
    CHECK(wire_size(x) == int64_t(buf.size()));
    return y;
  };
  std::vector<float> rows = {1.0f, -2.5f, 3.25f, 0.0f, 65504.0f, -1e-3f};
  auto blob16 = make_blob(rows.data(), 2, 3, wire_dtype::f16);
  auto blob32 = make_blob(rows.data(), 3, 2, wire_dtype::f32);
  CHECK(round_trip(blob16) == blob16);
  std::vector<float> back(6);
  read_blob(round_trip(blob32), back.data());
  CHECK(back == rows);
  read_blob(round_trip(blob16), back.data());
  for (size_t i = 0; i < rows.size(); ++i)
    CHECK(back[i] == doctest::Approx(rows[i]).epsilon(1e-3));

  auto u = round_trip(upload_msg{0x1234567890abcdefULL, 17, blob16});
  CHECK(u.session == 0x1234567890abcdefULL);
  CHECK(u.start == 17);
  CHECK(u.states == blob16);
  auto du = round_trip(draft_upload{5, 2, 17, blob16, {-1, 431}, {{0, 2}, {431, 7}, {0.5f, 0.5f}}});
  CHECK((du.session == 5 && du.epoch == 2 && du.start == 17 && du.states == blob16
         && du.drafts == std::vector<int32_t>{-1, 431}));
  CHECK((du.q.counts == std::vector<int32_t>{0, 2} && du.q.tokens == std::vector<int32_t>{431, 7}
         && du.q.weights == std::vector<float>{0.5f, 0.5f}));
  auto v = round_trip(verdict{uint8_t(verdict_outcome::corrected), 3, 20, 431, 55});
  CHECK((v.what() == verdict_outcome::corrected && v.epoch == 3 && v.position == 20
         && v.token == 431 && v.cloud_us == 55));
  auto q = round_trip(infer_request{42, 99});
  CHECK((q.session == 42 && q.pos == 99));
  auto a = round_trip(infer_reply{431, 1234});
  CHECK((a.token == 431 && a.cloud_us == 1234));
  auto n = round_trip(naive_request{7, blob32});
  CHECK((n.session == 7 && n.states == blob32));
  auto g = round_trip(generate_request{9, {1, 403, 407}, 50});
  CHECK((g.session == 9 && g.prompt == std::vector<int32_t>{1, 403, 407} && g.max_tokens == 50));
  auto gr = round_trip(generate_reply{{432, 383}, 77});
  CHECK((gr.tokens == std::vector<int32_t>{432, 383} && gr.cloud_us == 77));
  auto s = round_trip(session_summary{3, 45, 999, 2});
  CHECK((s.session == 3 && s.positions == 45 && s.compute_us == 999 && s.gaps == 2));
  auto e = round_trip(edge_output{blob32, blob16, 5});
  CHECK((e.split == blob32 && e.exit_states == blob16 && e.compute_us == 5));
  auto d = round_trip(exit_decision{3, 431, {0.5f, 0.9f}, 6});
  CHECK((d.exit_layer == 3 && d.token == 431 && d.confidence == std::vector<float>{0.5f, 0.9f}));
  response_report r;
  r.mode = strategy::collaborative;
  r.tokens = {1, 2, 3};
  r.exit_counts = {2, 1};
  r.traffic.bytes_up = 12345;
  auto rr = round_trip(r);
  CHECK((rr.mode == r.mode && rr.tokens == r.tokens && rr.exit_counts == r.exit_counts
         && rr.traffic.bytes_up == 12345));
  // A truncated buffer fails to deserialise instead of crashing.
  std::vector<char> buf;
  caf::binary_serializer sink{nullptr, buf};
  auto m = upload_msg{1, 2, blob32};
  REQUIRE(!sink(m));
  buf.resize(buf.size() - 5);
  upload_msg y;
  caf::binary_deserializer source{nullptr, buf};
  CHECK(static_cast<bool>(source(y)));
}

TEST_CASE("quality metrics on hand-made cases") {
  CHECK(token_agreement({1, 2, 3}, {1, 2, 4}) == doctest::Approx(2.0 / 3.0));
  CHECK(token_agreement({1, 2}, {1, 2, 3, 4}) == doctest::Approx(0.5));
  CHECK(token_agreement({}, {}) == 1.0);
  CHECK(rouge_l(std::vector<int32_t>{1, 2, 3, 4}, std::vector<int32_t>{1, 3, 4}) ==
        doctest::Approx(2 * (0.75 * 1.0) / 1.75));
  CHECK(exact_match("The Cat!", "cat") == 1.0);
  CHECK(exact_match("a dog", "cat") == 0.0);
  CHECK(token_f1("the red ball", "a big red ball") == doctest::Approx(2 * (1.0 * (2.0 / 3.0)) / (1.0 + 2.0 / 3.0)));
  CHECK(token_f1("", "") == 1.0);
}

TEST_CASE("hidden rows: from a tensor to the wire and back, and the uploader's transcode") {
  c10::InferenceMode guard;
  auto x = at::randn({5, 8}, at::kFloat);
  auto rows = hidden_rows::from_tensor(x);
  CHECK((rows.rows == 5 && rows.cols == 8 && rows.data.size() == 40));
  auto f32 = encode_tensor(x, wire_dtype::f32);
  CHECK(f32 == rows.encode(wire_dtype::f32));
  CHECK(f32.check(8).empty());
  CHECK(at::equal(to_tensor(f32), x));  // f32 is exact
  // f16: the same rounding whichever way the rows reach it.
  std::vector<float> scratch;
  auto f16 = transcode(f32, wire_dtype::f16, scratch);
  CHECK(f16 == rows.encode(wire_dtype::f16));
  CHECK(f16.bytes.size() == 40 * 2);
  CHECK(transcode(f16, wire_dtype::f16, scratch) == f16);
  CHECK(at::allclose(to_tensor(f16), x, 1e-2, 1e-3));
  // A context grows run by run and re-encodes to the rows it was given.
  hidden_rows context;
  context.append(encode_tensor(x.narrow(0, 0, 2), wire_dtype::f32));
  context.append(encode_tensor(x.narrow(0, 2, 3), wire_dtype::f32));
  CHECK(context.encode(wire_dtype::f32) == f32);
}

TEST_CASE("in one process an uploaded row reaches the cloud step in the buffer the edge layers made") {
  // docs/design.md §2: the edge layers' split rows, already in the wire
  // dtype, are moved through the session, the uploader, the link, the
  // cloud front and the context manager into the cloud step, which decodes
  // them into its input: the bytes the step sees are the edge's own.
  stories_sim f({"split.layer=3", "model.exits=2,3"});
  auto& sys = *f.sys;
  const auto cfg = f.m.model->config();
  auto layers = spawn_cloud_layers(sys, f.m.model, 3, f.m.vocab.eos(), 8);
  // In front of the cloud layers: notes where each step's rows lie, passes all on.
  struct seen_parts {
    std::mutex mu;
    std::vector<const uint8_t*> data;
  };
  auto seen = std::make_shared<seen_parts>();
  auto tap = sys.spawn([layers, seen](cloud_layers_actor::pointer self)
                         -> cloud_layers_actor::behavior_type {
    return {
      [=](open_atom a) -> caf::result<cloud_context_ptr> { return self->delegate(layers, a); },
      [=](cloud_step& step) -> caf::result<cloud_step_done> {
        {
          std::lock_guard<std::mutex> lock(seen->mu);
          for (auto& w : step.work)
            for (auto& part : w.states.parts)
              seen->data.push_back(part.bytes.data());
        }
        return self->delegate(layers, std::move(step));
      },
      [=](naive_work& w) -> caf::result<infer_reply> { return self->delegate(layers, std::move(w)); },
      [=](generate_request& r) -> caf::result<generate_reply> {
        return self->delegate(layers, std::move(r));
      },
      [=](generate_atom a) { self->send(layers, a); },
      [=](close_atom a, uint64_t id) { self->send(layers, a, id); },
      [=](deliver_atom a, uint64_t id) { self->send(layers, a, id); },
    };
  });
  auto contexts = spawn_context_manager(sys, tap, cfg, context_manager_options{});
  auto front = spawn_cloud_front(sys, contexts, cloud_placed{}, make_hello(f.s, f.m));
  auto link = spawn_link(sys, front, link_options{});
  auto uploader = spawn_uploader(sys, caf::actor_cast<upload_sink>(link), wire_dtype::f16,
                                 std::chrono::seconds(30));
  auto edge = spawn_edge_layers(sys, f.m.model, 3, {2, 3});
  caf::scoped_actor self{sys};
  const auto timeout = std::chrono::seconds(30);
  uint64_t session = 0;
  self->request(link, timeout, open_session{})
    .receive([&](uint64_t id) { session = id; }, [&](caf::error& e) { FAIL(describe(e)); });
  REQUIRE(session != 0);
  auto prompt = f.m.vocab.encode("Once upon a time");
  for (int32_t pos = 0, n = 0; pos < int32_t(prompt.size()) + 3; pos += n) {
    // The prompt in one run, then one position at a time.
    std::vector<int32_t> run = pos == 0 ? prompt : std::vector<int32_t>{prompt[0]};
    n = int32_t(run.size());
    tensor_blob split;
    self->request(edge, timeout, forward_atom::value, uint64_t(1), pos, run,
                  uint8_t(wire_dtype::f16), uint64_t(0))
      .receive([&](edge_output& out) { split = std::move(out.split); },
               [&](caf::error& e) { FAIL(describe(e)); });
    REQUIRE(split.rows == n);
    CHECK(split.dtype == uint8_t(wire_dtype::f16));
    const uint8_t* made = split.bytes.data();
    {
      // Only steps after this buffer was made: an address seen before could be reused.
      std::lock_guard<std::mutex> lock(seen->mu);
      seen->data.clear();
    }
    self->request(uploader, timeout, upload_states{{session, pos, std::move(split)}})
      .receive([&](int32_t) {}, [&](caf::error& e) { FAIL(describe(e)); });
    // The token after the run's last position: its step has run when it comes.
    self->request(link, timeout, infer_request{session, pos + n - 1})
      .receive([&](infer_reply&) {}, [&](caf::error& e) { FAIL(describe(e)); });
    std::lock_guard<std::mutex> lock(seen->mu);
    CHECK(std::find(seen->data.begin(), seen->data.end(), made) != seen->data.end());
  }
  // Rows in another dtype than the uploader's are converted on the way: the
  // step sees another buffer (what every upload took before the edge layers
  // wrote the wire dtype).
  const int32_t pos = int32_t(prompt.size()) + 3;
  tensor_blob f32_split;
  self->request(edge, timeout, forward_atom::value, uint64_t(1), pos, std::vector<int32_t>{prompt[0]},
                uint8_t(wire_dtype::f32), uint64_t(0))
    .receive([&](edge_output& out) { f32_split = std::move(out.split); },
             [&](caf::error& e) { FAIL(describe(e)); });
  CHECK(f32_split.dtype == uint8_t(wire_dtype::f32));
  const uint8_t* made = f32_split.bytes.data();
  {
    std::lock_guard<std::mutex> lock(seen->mu);
    seen->data.clear();
  }
  self->request(uploader, timeout, upload_states{{session, pos, std::move(f32_split)}})
    .receive([&](int32_t) {}, [&](caf::error& e) { FAIL(describe(e)); });
  self->request(link, timeout, infer_request{session, pos})
    .receive([&](infer_reply&) {}, [&](caf::error& e) { FAIL(describe(e)); });
  {
    std::lock_guard<std::mutex> lock(seen->mu);
    CHECK(!seen->data.empty());
    CHECK(std::find(seen->data.begin(), seen->data.end(), made) == seen->data.end());
  }
  cloud_context_ptr ctx;
  self->request(contexts, timeout, get_atom::value, session)
    .receive([&](cloud_context_ptr& x) { ctx = x; }, [&](caf::error& e) { FAIL(describe(e)); });
  REQUIRE(ctx);
  CHECK(computed_positions(*ctx) == pos + 1);
  for (auto h : {caf::actor_cast<caf::actor>(edge), caf::actor_cast<caf::actor>(uploader),
                 caf::actor_cast<caf::actor>(link), caf::actor_cast<caf::actor>(front),
                 caf::actor_cast<caf::actor>(contexts), caf::actor_cast<caf::actor>(tap),
                 caf::actor_cast<caf::actor>(layers)})
    self->send_exit(h, caf::exit_reason::user_shutdown);
}

TEST_CASE("an edge step asked before its session's stop ends with no rows and leaves nothing "
          "behind") {
  stories_sim f({"split.layer=3", "model.exits=2,3"});
  auto& sys = *f.sys;
  auto stops = std::make_shared<edge_step_stops>();
  auto edge = spawn_edge_layers(sys, f.m.model, 3, {2, 3}, nullptr, stops);
  auto plain = spawn_edge_layers(sys, f.m.model, 3, {2, 3});  // never stopped
  caf::scoped_actor self{sys};
  const auto timeout = std::chrono::seconds(30);
  auto forward = [&](const edge_layers_actor& layers, int32_t pos, std::vector<int32_t> tokens,
                     uint64_t ticket) {
    edge_output got;
    self->request(layers, timeout, forward_atom::value, uint64_t(7), pos, std::move(tokens),
                  uint8_t(wire_dtype::f32), ticket)
      .receive([&](edge_output& out) { got = std::move(out); },
               [&](caf::error& e) { FAIL(describe(e)); });
    return got;
  };
  auto prompt = f.m.vocab.encode("Once upon a time");
  const auto P = int32_t(prompt.size());
  REQUIRE(forward(edge, 0, prompt, stops->ticket(7)).split.rows == P);
  forward(plain, 0, prompt, 0);
  // A draft step asked, then a rollback stops it before it ran a layer.
  const uint64_t before = stops->ticket(7);
  stops->stop(7);
  CHECK(stops->stopped(7, before));
  auto stopped = forward(edge, P, {prompt[1], prompt[2]}, before);
  CHECK(stopped.split.rows == 0);
  CHECK(stopped.exit_states.rows == 0);
  // The next step, asked after the stop, runs, and gives the rows of an
  // edge that never ran the stopped one.
  CHECK_FALSE(stops->stopped(7, stops->ticket(7)));
  auto after = forward(edge, P, {prompt[0]}, stops->ticket(7));
  auto reference = forward(plain, P, {prompt[0]}, 0);
  REQUIRE(after.split.rows == 1);
  CHECK(after.split.bytes == reference.split.bytes);
  CHECK(after.exit_states.bytes == reference.exit_states.bytes);
  // Other sessions' steps are not stopped.
  CHECK_FALSE(stops->stopped(8, stops->ticket(8)));
  for (auto h : {edge, plain})
    self->send_exit(h, caf::exit_reason::user_shutdown);
}

TEST_CASE("the link counts a message's bytes without serialising it") {
  std::vector<float> rows(size_t(64) * 288, 0.25f);
  upload_msg m{7, 0, make_blob(rows.data(), 64, 288, wire_dtype::f16)};
  draft_upload d{7, 2, 5, make_blob(rows.data(), 3, 288, wire_dtype::f32), {-1, 17, 4}};
  // What the simulated link counts: CAF's binary serialisation, to the byte.
  std::vector<char> buf;
  caf::binary_serializer sink{nullptr, buf};
  REQUIRE(!sink(m));
  // What a link to a remote cloud counts: the frame encode() writes.
  auto frame = wire::encode(1, wire::message(m));
  REQUIRE(wire::ok(frame));
  auto draft_frame = wire::encode(1, wire::message(d));
  REQUIRE(wire::ok(draft_frame));
  // Counting either way allocates nothing: no buffer, no copy of the payload.
  const int64_t before = allocations_on_this_thread();
  const int64_t caf_bytes = wire_size(m);
  const int64_t frame_bytes = request_frame_bytes(m);
  const int64_t draft_bytes = request_frame_bytes(d);
  const int64_t verdict_bytes = reply_frame_bytes(verdict{});
  const int64_t allocations = allocations_on_this_thread() - before;
  CHECK(allocations == 0);
  CHECK(caf_bytes == int64_t(buf.size()));
  CHECK(frame_bytes == int64_t(std::get<0>(frame).size()));
  CHECK(draft_bytes == int64_t(std::get<0>(draft_frame).size()));
  CHECK(verdict_bytes == int64_t(std::get<0>(wire::encode(1, wire::message(verdict{}))).size()));
  MESSAGE("a 64 x 288 f16 upload: " << caf_bytes << " bytes in a simulation, " << frame_bytes
          << " as a frame");
}

TEST_CASE("an actor of the cloud that dies is the deployment's failure, named with its reason") {
  stories_sim fx;
  CHECK(!fx.sim->cloud_failure(std::chrono::milliseconds(50)));
  caf::anon_send_exit(fx.sim->cloud_layers(), caf::exit_reason::kill);
  auto failure = fx.sim->cloud_failure(std::chrono::seconds(5));
  REQUIRE(failure);
  CHECK(failure->find("the cloud layers actor went down") == 0);
  CHECK(failure->find("kill") != std::string::npos);
  // The first failure stays the one reported.
  caf::anon_send_exit(fx.sim->contexts(), caf::exit_reason::kill);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(*fx.sim->cloud_failure() == *failure);

  stories_sim other;
  caf::anon_send_exit(other.sim->contexts(), caf::exit_reason::unhandled_exception);
  auto second = other.sim->cloud_failure(std::chrono::seconds(5));
  REQUIRE(second);
  CHECK(second->find("the context manager actor went down") == 0);
}

TEST_CASE("a cloud site stopped on purpose is no failure") {
  stories_sim fx;
  auto site = spawn_cloud_site(*fx.sys, fx.s, fx.m);
  auto watch = site.watch;
  // Wait until the site's actors are really gone, then ask the watch.
  caf::scoped_actor self{*fx.sys};
  self->monitor(site.contexts);
  self->monitor(site.layers);
  site.stop();
  int downs = 0;
  self->receive_for(downs, 2)([](caf::down_msg&) {}, caf::after(std::chrono::seconds(10)) >> [&] {
    FAIL("the cloud site's actors did not stop");
  });
  CHECK(downs == 2);
  // The watch saw the same downs; a failure it recorded would show here.
  CHECK(!watch->failure(std::chrono::milliseconds(500)));
}

TEST_CASE("sampling: the cloud strategy and standalone sample, a seed reproduces a response") {
  auto ids = std::vector<int32_t>{};
  auto run = [&](const char* mode, const char* temperature, const char* seed) {
    // The tuned exit heads: untrained ones put nearly all their mass on one
    // token, which no temperature of 1 moves.
    stories_sim f({"link.latency_ms=0", "link.bandwidth_mbps=0", "model.exits=2,3",
                   "model.exit_heads=" + std::string(CECO_SOURCE_DIR) +
                     "/config/models/stories260K-exits-2-3.gguf",
                   std::string("sampling.temperature=") + temperature,
                   std::string("sampling.seed=") + seed});
    if (ids.empty())
      ids = f.m.vocab.encode("Once upon a time");
    return f.sim->run(ids, mode, 30).tokens;
  };
  for (const char* mode : {"cloud", "standalone"}) {
    CAPTURE(mode);
    auto greedy = run(mode, "0", "0");
    auto a = run(mode, "1.0", "5");
    CHECK(a == run(mode, "1.0", "5"));
    CHECK(a != greedy);
    CHECK(a != run(mode, "1.0", "6"));
    CHECK(run(mode, "0", "9") == greedy);  // the seed means nothing to greedy decoding
  }
}

TEST_CASE("sampling: every strategy samples, and a seed reproduces a response whatever the link") {
  auto ids = std::vector<int32_t>{};
  auto run = [&](const char* mode, const char* temperature, const char* seed, const char* latency) {
    stories_sim f({std::string("link.latency_ms=") + latency, "link.jitter_ms=0",
                   "link.bandwidth_mbps=0", "model.exits=2,3",
                   "model.exit_heads=" + std::string(CECO_SOURCE_DIR) +
                     "/config/models/stories260K-exits-2-3.gguf",
                   "policy.threshold=0.5", std::string("sampling.temperature=") + temperature,
                   std::string("sampling.seed=") + seed});
    if (ids.empty())
      ids = f.m.vocab.encode("Once upon a time");
    auto r = f.sim->run(ids, mode, 24);
    CHECK(r.error.empty());
    return r.tokens;
  };
  for (const char* mode : {"naive", "collaborative", "speculative", "exact"}) {
    CAPTURE(mode);
    auto greedy = run(mode, "0", "0", "0");
    auto a = run(mode, "1.0", "5", "0");
    // Every draw depends on the seed and the position alone: a slower link
    // changes when tokens are decided (and how drafts batch), not which.
    CHECK(a == run(mode, "1.0", "5", "15"));
    CHECK(a != greedy);
    CHECK(a != run(mode, "1.0", "6", "0"));
  }
}

namespace {

/// Whether two samples of tokens come from one distribution: Pearson's
/// chi-square test of homogeneity at p >= 0.01, tokens seen fewer than 10
/// times in both together pooled into one category. The critical value is
/// Wilson and Hilferty's approximation of the chi-square quantile.
bool same_distribution(const std::vector<int32_t>& a, const std::vector<int32_t>& b,
                       double& chi2, int& dof) {
  std::map<int32_t, std::array<double, 2>> counts;
  for (auto t : a)
    counts[t][0] += 1;
  for (auto t : b)
    counts[t][1] += 1;
  std::vector<std::array<double, 2>> cells;
  std::array<double, 2> rare{0, 0};
  for (auto& [t, c] : counts)
    if (c[0] + c[1] < 10) {
      rare[0] += c[0];
      rare[1] += c[1];
    } else {
      cells.push_back(c);
    }
  if (rare[0] + rare[1] > 0)
    cells.push_back(rare);
  const double na = double(a.size()), nb = double(b.size()), n = na + nb;
  chi2 = 0;
  for (auto& c : cells) {
    const double total = c[0] + c[1];
    for (int g = 0; g < 2; ++g) {
      const double expected = total * (g == 0 ? na : nb) / n;
      chi2 += (c[size_t(g)] - expected) * (c[size_t(g)] - expected) / expected;
    }
  }
  dof = int(cells.size()) - 1;
  if (dof < 1)
    return true;  // one category: nothing can differ
  const double k = dof, z = 2.3263;  // the normal's 0.99 quantile
  const double h = 1.0 - 2.0 / (9.0 * k) + z * std::sqrt(2.0 / (9.0 * k));
  return chi2 < k * h * h * h;
}

} // namespace

/// exact's tokens are distributed as the cloud strategy's, speculative's as
/// collaborative's, with drafts verified through `candidates` of their
/// distribution (policy.draft_candidates; 0: as point masses).
static void check_sampled_verification(const std::string& candidates) {
  // Tuned heads and a temperature above 1: exits that disagree with the
  // cloud often, so many drafts are corrected from the residual.
  stories_sim f({"link.latency_ms=0", "link.bandwidth_mbps=0", "model.exits=2,3",
                 "model.exit_heads=" + std::string(CECO_SOURCE_DIR) +
                   "/config/models/stories260K-exits-2-3.gguf",
                 "policy.threshold=0.6", "policy.draft_candidates=" + candidates});
  const auto ids = f.m.vocab.encode("The little dog");
  const size_t n = 400;
  constexpr int positions = 3;
  // The token at each of the first positions over n seeds; each strategy
  // its own seeds, so the two samples are independent.
  int64_t drafts = 0, accepted = 0;
  auto tokens = [&](const std::string& mode, uint64_t first_seed, int64_t& corrected) {
    std::array<std::vector<int32_t>, positions> at;
    for (size_t done = 0; done < n;) {
      const size_t batch = std::min<size_t>(50, n - done);
      std::vector<sampler_options> sampling;
      for (size_t i = 0; i < batch; ++i)
        sampling.push_back({1.3f, 0, 1.0f, first_seed + done + i});
      auto reports = f.sim->run_concurrently(std::vector<std::vector<int32_t>>(batch, ids),
                                             strategy_of(mode, "mode"), positions, sampling);
      for (auto& r : reports) {
        REQUIRE(r.error.empty());
        REQUIRE(int(r.tokens.size()) == positions);
        for (int p = 0; p < positions; ++p)
          at[size_t(p)].push_back(r.tokens[size_t(p)]);
        corrected += r.rollbacks;
        drafts += r.drafts;
        accepted += r.accepted_drafts;
      }
      done += batch;
    }
    return at;
  };
  for (auto [mode, reference] : {std::pair<std::string, std::string>{"exact", "cloud"},
                                 std::pair<std::string, std::string>{"speculative", "collaborative"}}) {
    CAPTURE(mode);
    int64_t corrected = 0, unused = 0;
    drafts = accepted = 0;
    auto got = tokens(mode, 1, corrected);
    MESSAGE(mode << " with " << candidates << " candidates: " << accepted << " of " << drafts
                 << " drafts accepted");
    auto want = tokens(reference, 1'000'000, unused);
    CHECK(corrected > int64_t(n) / 10);  // the residual draws are exercised
    for (int p = 0; p < positions; ++p) {
      double chi2 = 0;
      int dof = 0;
      const bool same = same_distribution(got[size_t(p)], want[size_t(p)], chi2, dof);
      MESSAGE(mode << " vs " << reference << ", token " << p << ": chi-square " << chi2 << " ("
                   << dof << " degrees of freedom), " << corrected << " corrections");
      CHECK(dof >= 2);  // a distribution with some spread, not a near-certain token
      CHECK(same);
    }
  }
}

TEST_CASE("sampling: exact keeps the cloud strategy's distribution, speculative collaborative's") {
  check_sampled_verification("16");
}

TEST_CASE("sampling: drafts verified as point masses keep the same distributions") {
  check_sampled_verification("0");
}
