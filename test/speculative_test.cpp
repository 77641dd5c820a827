// Speculative and exact modes: the draft window's bookkeeping, the cloud's
// verification and rollback, and the exactness invariants over a grid of
// thresholds, splits, upload dtypes and links (docs/design.md §5).

#include "test/support.hpp"
#include "test/cloud_sites.hpp"

#include <thread>

#include "actors/cloud_context.hpp"
#include "actors/cloud_layers.hpp"
#include "actors/context_manager.hpp"
#include "actors/deployment.hpp"
#include "actors/draft_window.hpp"
#include "actors/hidden_rows.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

std::string builtin_model() { return std::string(CECO_SOURCE_DIR) + "/config/models/kjv/model.gguf"; }
std::string builtin_heads() { return std::string(CECO_SOURCE_DIR) + "/config/models/kjv/exits.gguf"; }
std::string stories_heads() {
  return std::string(CECO_SOURCE_DIR) + "/config/models/stories260K-exits-2-3.gguf";
}

struct model_case {
  const char* name;
  std::string path;
  std::string heads;
  std::vector<std::string> prompts;
};

std::vector<model_case> model_cases() {
  return {{"built-in", builtin_model(), builtin_heads(),
           {"In the beginning", "And the LORD said unto Moses", "Blessed are"}},
          {"stories260K", stories_gguf(), stories_heads(),
           {"Once upon a time", "Lily and Ben went to the park", "The little dog"}}};
}

/// The grid of the exactness invariants: every (model, threshold, split,
/// dtype, link) runs `check` on a fresh simulation.
template <class Check>
void over_the_grid(size_t model, Check check) {
  struct link_case {
    const char* latency;
    const char* jitter;
    size_t prompts;
    int tokens;
  };
  // 0 ms: three prompts; 20 ms with uneven delays (FIFO, so nothing is
  // reordered): one prompt, fewer tokens, to keep the test short.
  const link_case links[] = {{"0", "0", 3, 24}, {"20", "15", 1, 12}};
  const auto cases = model_cases();
  const auto& mc = cases[model];
  for (auto theta : {"0", "0.5", "0.8", "1.01"})
    for (int split : {2, 3})
      for (auto dtype : {"f32", "f16"})
        for (auto& link : links) {
            CAPTURE(mc.name);
            CAPTURE(theta);
            CAPTURE(split);
            CAPTURE(dtype);
            CAPTURE(link.latency);
            sim_fixture f({"model.path=" + mc.path, "model.exit_heads=" + mc.heads,
                           "split.layer=" + std::to_string(split),
                           split == 2 ? "model.exits=2" : "model.exits=2,3",
                           std::string("policy.threshold=") + theta,
                           std::string("upload.dtype=") + dtype,
                           std::string("link.latency_ms=") + link.latency,
                           std::string("link.jitter_ms=") + link.jitter, "link.bandwidth_mbps=0"});
            for (size_t i = 0; i < link.prompts; ++i)
              check(f, f.m.vocab.encode(mc.prompts[i]), link.tokens);
          }
}

} // namespace

TEST_CASE("draft window: drafts, verdicts, corrections and a lost cloud") {
  draft_window w({1, 2, 3});
  CHECK(w.final_size() == 3);
  w.draft(10, 0, false);  // a confident exit: final at once
  CHECK(w.final_size() == 4);
  w.draft(11, draft_window::uncertain, true);  // index 4, to verify
  w.draft(12, 1, false);                       // depends on it
  w.draft(13, draft_window::uncertain, true);  // index 6
  CHECK(w.final_size() == 4);
  CHECK(w.unverified() == 3);
  CHECK(w.accept(4) == 1);  // the upload of row 3 carried index 4's draft
  CHECK(w.final_size() == 6);
  CHECK(w.correct(6, 99) == 1);  // the draft at index 6 was wrong
  CHECK(w.sequence() == std::vector<int32_t>{1, 2, 3, 10, 11, 12, 99});
  CHECK(w.final_size() == 7);
  CHECK(w.origin(6) == draft_window::cloud);
  w.draft(14, draft_window::uncertain, true);
  w.draft(15, draft_window::uncertain, true);
  CHECK(w.correct(7, 98) == 2);  // both dropped, the cloud's token final
  CHECK(w.unverified() == 0);
  w.draft(16, draft_window::uncertain, true);
  w.draft(17, 0, false);
  CHECK(w.give_up(1) == 1);  // the cloud is gone: everything is final as drafted
  CHECK(w.final_size() == w.size());
  CHECK(w.origin(8) == 1);  // the uncertain draft counts for the fallback exit
  CHECK(w.generated() == 7);
}

namespace {

void check_exactness(size_t model) {
  int64_t rollbacks = 0, drafts = 0, confident = 0;
  over_the_grid(model, [&](sim_fixture& f, const std::vector<int32_t>& ids, int n) {
    auto cloud = f.sim->run(ids, "cloud", n);
    auto exact = f.sim->run(ids, "exact", n);
    auto collab = f.sim->run(ids, "collaborative", n);
    auto spec = f.sim->run(ids, "speculative", n);
    REQUIRE(cloud.error.empty());
    REQUIRE(exact.error.empty());
    REQUIRE(collab.error.empty());
    REQUIRE(spec.error.empty());
    CHECK(exact.tokens == cloud.tokens);
    CHECK(spec.tokens == collab.tokens);
    // Same decisions: what the cloud decided in collaborative it decides
    // (by accepting or correcting a draft) in speculative.
    CHECK(spec.cloud_tokens == collab.cloud_tokens);
    CHECK(spec.exit_counts == collab.exit_counts);
    CHECK(exact.unverified_tokens == 0);
    CHECK(exact.degraded_tokens == 0);
    CHECK(exact.accepted_drafts + exact.rollbacks <= exact.drafts);
    CHECK(exact.verdicts == exact.uploads);
    rollbacks += exact.rollbacks + spec.rollbacks;
    drafts += exact.drafts;
    for (auto c : exact.exit_counts)
      confident += c;
  });
  // The grid exercised rollbacks and confident exits, not only agreement.
  MESSAGE(rollbacks << " rollbacks, " << drafts << " exact drafts, " << confident
                    << " confident exits verified");
  CHECK(rollbacks > 10);
  CHECK(confident > 10);
}

} // namespace

TEST_CASE("exact gives exactly the cloud strategy's tokens, speculative exactly collaborative's: built-in model") {
  check_exactness(0);
}

TEST_CASE("exact gives exactly the cloud strategy's tokens, speculative exactly collaborative's: stories260K") {
  check_exactness(1);
}

namespace {

/// A cloud site of its own on stories260K (split 3, and `sets`), an actor
/// to ask it, and a prompt with the full model's greedy continuation.
struct stories_cloud {
  stories_cloud(std::vector<std::string> sets, int continuation) {
    sets.insert(sets.begin(), {"model.path=" + stories_gguf(), "split.layer=3"});
    s = load_settings("", sets);
    m = load_site_model(s, stories_gguf());
    configure_actor_system(cfg, 2);
    sys = std::make_unique<caf::actor_system>(cfg);
    site = spawn_cloud_site(*sys, s, m);
    self = std::make_unique<caf::scoped_actor>(*sys);
    prompt = m.vocab.encode("Once upon a time");
    generation_options g;
    g.max_tokens = continuation;
    g.stop_at_eos = false;
    greedy = generate(*m.model, prompt, g).tokens;
  }
  ~stories_cloud() { site.stop(); }
  settings s;
  site_model m;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  cloud_site site;
  std::unique_ptr<caf::scoped_actor> self;
  std::vector<int32_t> prompt;
  std::vector<int32_t> greedy;  // the full model's tokens after the prompt
};

} // namespace

TEST_CASE("after a rollback the cloud session equals a fresh one fed the final tokens: stale uploads change nothing") {
  stories_cloud f({}, 4);
  const auto& model = *f.m.model;
  const int split = 3;
  auto& site = f.site;
  auto& self = *f.self;
  const auto& prompt = f.prompt;
  const auto P = int32_t(prompt.size());
  const auto& greedy = f.greedy;  // t_P .. t_{P+3}
  REQUIRE(greedy.size() == 4);
  const int32_t wrong = (greedy[2] + 1) % model.config().vocab_size;

  // Split-layer rows of a token sequence, as the edge computes them.
  auto split_rows = [&](const std::vector<int32_t>& seq) {
    c10::InferenceMode guard;
    auto cache = model.make_cache(0, split);
    auto x = model.embed(seq);
    model.forward_layers(x, 0, 0, split, cache);
    return encode_tensor(x, wire_dtype::f32);
  };
  auto rows_of = [](const tensor_blob& b, int32_t from, int32_t to) {
    auto h = hidden_rows::decode(b);
    std::vector<float> part(h.data.begin() + ptrdiff_t(from) * h.cols,
                            h.data.begin() + ptrdiff_t(to) * h.cols);
    return make_blob(part.data(), to - from, h.cols, wire_dtype::f32);
  };
  auto seq = prompt;
  seq.insert(seq.end(), greedy.begin(), greedy.end());  // prompt + t_P..t_{P+3}
  auto right = split_rows(seq);
  auto branch = prompt;  // t_{P+1} replaced by a wrong token
  branch.insert(branch.end(), {greedy[0], greedy[1], wrong});
  auto wrong_rows = split_rows(branch);

  auto open = [&] {
    uint64_t id = 0;
    self->request(site.contexts, caf::infinite, open_session{})
      .receive([&](uint64_t x) { id = x; }, [&](caf::error& e) { FAIL(describe(e)); });
    return id;
  };
  auto send = [&](draft_upload m) {
    verdict v;
    self->request(site.contexts, caf::infinite, std::move(m))
      .receive([&](verdict& x) { v = x; }, [&](caf::error& e) { FAIL(describe(e)); });
    return v;
  };
  auto context = [&](uint64_t id) {
    cloud_context_ptr ctx;
    self->request(site.contexts, caf::infinite, get_atom::value, id)
      .receive([&](cloud_context_ptr& x) { ctx = x; }, [&](caf::error& e) { FAIL(describe(e)); });
    return ctx;
  };
  auto drafts = [](int32_t rows, std::vector<int32_t> tail) {
    std::vector<int32_t> d(size_t(rows) - tail.size(), -1);
    d.insert(d.end(), tail.begin(), tail.end());
    return d;
  };

  // Session A: the prompt, then three rows of a wrong branch in one upload
  // whose second draft (t_{P+2}) is wrong: the cloud computes all three,
  // corrects position P+1 and forgets position P+2.
  auto a = open();
  auto v = send({a, 0, 0, rows_of(right, 0, P), drafts(P, {greedy[0]})});
  CHECK(v.what() == verdict_outcome::accepted);
  v = send({a, 0, P, rows_of(wrong_rows, P, P + 3), {greedy[1], wrong, 5}});
  CHECK(v.what() == verdict_outcome::corrected);
  CHECK(v.position == P + 1);
  CHECK(v.token == greedy[2]);
  CHECK(v.epoch == 1);
  auto ctx_a = context(a);
  CHECK(computed_positions(*ctx_a) == P + 2);

  // A stale upload (epoch 0) is dropped: nothing changes.
  auto keys_before = ctx_a->cache.keys(split).clone();
  v = send({a, 0, P + 2, rows_of(wrong_rows, P + 2, P + 3), {3}});
  CHECK(v.what() == verdict_outcome::stale);
  CHECK(v.epoch == 1);
  CHECK(computed_positions(*ctx_a) == P + 2);
  CHECK(at::equal(ctx_a->cache.keys(split), keys_before));
  // A gap or an overlap in the new epoch is refused, never computed over.
  self->request(site.contexts, caf::infinite,
                draft_upload{a, 1, P + 3, rows_of(right, P + 3, P + 4), {-1}})
    .receive([&](verdict&) { FAIL("a gap was accepted"); },
             [&](caf::error& e) { CHECK(is(e, ceco_errc::position_gap)); });

  // A draft's distribution must be consistent and hold the draft: refused
  // naming what is wrong, and nothing is computed over.
  const int32_t vocab = model.config().vocab_size;
  auto refused = [&](draft_upload m) {
    std::string why;
    self->request(site.contexts, caf::infinite, std::move(m))
      .receive([&](verdict&) { why = "accepted"; }, [&](caf::error& e) { why = describe(e); });
    return why;
  };
  CHECK(refused({a, 1, P + 2, rows_of(right, P + 2, P + 3), {greedy[3]},
                 {{2}, {(greedy[3] + 1) % vocab, (greedy[3] + 2) % vocab}, {0.5f, 0.5f}}})
          .find("bad_tensor: draft upload: row 0's draft " + std::to_string(greedy[3]) +
                " is not among its 2 candidates") == 0);
  CHECK(refused({a, 1, P + 2, rows_of(right, P + 2, P + 3), {greedy[3]},
                 {{3}, {greedy[3]}, {1.0f}}})
          .find("draft distributions count 3 candidates, but carry 1 tokens and 1 weights") !=
        std::string::npos);
  CHECK(refused({a, 1, P + 2, rows_of(right, P + 2, P + 3), {greedy[3]},
                 {{1}, {greedy[3]}, {-0.5f}}})
          .find("has weight -0.5; expected 0..1") != std::string::npos);
  CHECK(computed_positions(*ctx_a) == P + 2);

  // The edge continues from the cloud's token: position P+2 of the right sequence.
  v = send({a, 1, P + 2, rows_of(right, P + 2, P + 3), {greedy[3]}});
  CHECK(v.what() == verdict_outcome::accepted);
  CHECK(computed_positions(*ctx_a) == P + 3);

  // Session B: fed only the final tokens.
  auto b = open();
  CHECK(send({b, 0, 0, rows_of(right, 0, P), drafts(P, {-1})}).what() == verdict_outcome::accepted);
  CHECK(send({b, 0, P, rows_of(right, P, P + 2), {-1, -1}}).what() == verdict_outcome::accepted);
  CHECK(send({b, 0, P + 2, rows_of(right, P + 2, P + 3), {-1}}).what() == verdict_outcome::accepted);
  auto ctx_b = context(b);
  REQUIRE(computed_positions(*ctx_b) == P + 3);
  const int64_t n = P + 3;
  for (int il = split; il < model.config().n_layer; ++il) {
    CAPTURE(il);
    // Rows computed in different batches may round differently, by float epsilons.
    CHECK(at::allclose(ctx_a->cache.keys(il).narrow(0, 0, n), ctx_b->cache.keys(il).narrow(0, 0, n),
                       1e-5, 1e-5));
    CHECK(at::allclose(ctx_a->cache.values(il).narrow(0, 0, n),
                       ctx_b->cache.values(il).narrow(0, 0, n), 1e-5, 1e-5));
  }
  CHECK(at::allclose(ctx_a->final_hidden.narrow(0, 0, n), ctx_b->final_hidden.narrow(0, 0, n),
                     1e-5, 1e-5));
}

TEST_CASE("concurrent exact sessions with rollbacks never see each other's state") {
  sim_fixture f({"model.path=" + builtin_model(), "model.exit_heads=" + builtin_heads(),
                 "policy.threshold=0.8", "link.latency_ms=1", "link.jitter_ms=1",
                 "link.bandwidth_mbps=0"});
  std::vector<std::vector<int32_t>> prompts;
  const auto cases = model_cases();
  for (auto& p : cases[0].prompts)
    for (int i = 0; i < 2; ++i)
      prompts.push_back(f.m.vocab.encode(p));
  std::vector<response_report> cloud;
  for (auto& p : prompts)
    cloud.push_back(f.sim->run(p, "cloud", 30));
  for (auto mode : {"exact", "speculative"}) {
    CAPTURE(mode);
    auto together = f.sim->run_concurrently(prompts, mode, 30);
    int rollbacks = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      CHECK(together[i].error.empty());
      if (std::string(mode) == "exact")
        CHECK(together[i].tokens == cloud[i].tokens);
      else
        CHECK(together[i].tokens == f.sim->run(prompts[i], "collaborative", 30).tokens);
      rollbacks += together[i].rollbacks;
    }
    CHECK(rollbacks > 0);
  }
  CHECK(f.sim->cloud_state().sessions == 0);
}

TEST_CASE("an exact response told to degrade that loses the cloud finishes, says what was never verified, and resumes") {
  // exact waits for a lost cloud by default (cloud_loss_test.cpp); this is
  // the degrading path, at once.
  auto s = load_settings("", {"model.path=" + builtin_model(), "model.exit_heads=" + builtin_heads(),
                              "policy.threshold=0.8", "policy.max_draft=4", "link.latency_ms=2",
                              "link.bandwidth_mbps=0", "policy.on_cloud_loss=degrade",
                              "policy.cloud_loss_wait_ms=0"});
  auto m = load_site_model(s, s.model.path);
  caf::actor_system_config cfg;
  configure_actor_system(cfg, 2);
  caf::actor_system sys{cfg};
  replaceable_cloud clouds(sys, s, m);
  auto ids = m.vocab.encode("And the LORD said unto Moses");
  const int n = 80;
  response_report r, cloud;
  {
    deployment sim(sys, s, m, clouds.first.front, clouds.reconnect);
    cloud = sim.run(ids, "cloud", n);
    // Lost mid-response: once the first cloud has caught up on a dozen
    // positions past the prompt (however loaded the machine is).
    std::thread killer([&] {
      caf::scoped_actor poll{sys};
      for (int i = 0; i < 5000; ++i) {
        int64_t positions = 0;
        poll->request(clouds.first.contexts, std::chrono::seconds(1), stats_atom::value)
          .receive([&](cloud_stats& c) { positions = c.positions; }, [](caf::error&) {});
        if (positions > int64_t(ids.size()) + 12)
          break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      clouds.first.stop();
    });
    r = sim.run(ids, "exact", n);
    killer.join();
  }
  MESSAGE(r.degraded_tokens << " of " << r.tokens.size() << " tokens on the edge alone, "
                            << r.unverified_tokens << " never verified, resumed " << r.resumed
                            << " time(s)");
  CHECK(r.error.empty());
  CHECK(r.degraded_tokens > 0);
  CHECK(r.unverified_tokens > 0);
  CHECK(r.unverified_tokens <= r.degraded_tokens);
  CHECK(r.resumed == 1);
  // Up to the first unverified token the response is the cloud's.
  size_t same = 0;
  while (same < r.tokens.size() && same < cloud.tokens.size() && r.tokens[same] == cloud.tokens[same])
    ++same;
  CHECK(same > 0);
}

TEST_CASE("a draft on the last row of a prompt the cloud computes from its ids is verified, however early it comes") {
  // In profile mode the cloud's prompt step takes the profile's time (real
  // clock), so a draft upload sent right after the open arrives while the
  // step is in flight; its verdict must wait for the check, not only the rows.
  stories_cloud f({"compute.mode=profile", "compute.profile=paper-a100"}, 1);
  const auto& model = *f.m.model;
  auto& site = f.site;
  auto& self = *f.self;
  const auto& prompt = f.prompt;
  const auto P = int32_t(prompt.size());
  const int32_t next = f.greedy.at(0);
  const int32_t wrong = (next + 1) % model.config().vocab_size;
  // The edge's row P-1 (the cloud keeps its own).
  std::vector<float> zeros(size_t(model.config().n_embd), 0.0f);
  auto row = make_blob(zeros.data(), 1, model.config().n_embd, wire_dtype::f32);
  for (int32_t draft : {wrong, next, -1}) {
    CAPTURE(draft);
    uint64_t id = 0;
    self->request(site.contexts, caf::infinite, open_session{{}, prompt})
      .receive([&](uint64_t x) { id = x; }, [&](caf::error& e) { FAIL(describe(e)); });
    if (draft < 0) {
      // No draft: sent once the prompt is computed, when no step is left to
      // answer it.
      for (int i = 0; i < 500; ++i) {
        int32_t computed = 0;
        self->request(site.contexts, caf::infinite, get_atom::value, id)
          .receive([&](cloud_context_ptr& c) { computed = computed_positions(*c); },
                   [&](caf::error& e) { FAIL(describe(e)); });
        if (computed == P)
          break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      // Computed, and the step's profiled time (tens of ms) over.
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
    verdict v;
    self->request(site.contexts, caf::infinite, draft_upload{id, 0, P - 1, row, {draft}, {}})
      .receive([&](verdict& x) { v = x; }, [&](caf::error& e) { FAIL(describe(e)); });
    if (draft == wrong) {
      CHECK(v.what() == verdict_outcome::corrected);
      CHECK(v.position == P - 1);
      CHECK(v.token == next);
    } else {  // the right draft, or none (a confident exit's row: nothing to compute)
      CHECK(v.what() == verdict_outcome::accepted);
    }
    // Once a row past the prompt is held, an upload beginning inside the
    // prompt is refused.
    self->request(site.contexts, caf::infinite, draft_upload{id, v.epoch, P, row, {-1}, {}})
      .receive([&](verdict& x) { CHECK(x.what() == verdict_outcome::accepted); },
               [&](caf::error& e) { FAIL(describe(e)); });
    self->request(site.contexts, caf::infinite,
                  draft_upload{id, v.epoch, P - 1, row, {-1}, {}})
      .receive([&](verdict&) { FAIL("an overlap past the prompt was accepted"); },
               [&](caf::error& e) { CHECK(describe(e).find("bad_position") == 0); });
    self->request(site.contexts, caf::infinite, close_session{id})
      .receive([](session_summary&) {}, [&](caf::error& e) { FAIL(describe(e)); });
  }
}
