#include "test/support.hpp"

#include "model/exit_calibration.hpp"
#include "model/exit_training.hpp"
#include "model/generation.hpp"
#include "model/gguf.hpp"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

using namespace ceco;
using namespace ceco::test;

namespace {

std::string shipped_heads() {
  return std::string(CECO_SOURCE_DIR) + "/config/models/stories260K-exits-2-3.gguf";
}

/// Exits 2 and 3's data over `tokens` self-generated at temperatures 1 and
/// 0 (seed `seed`): for training, and the last `held` sequences held out.
std::pair<exit_dataset, exit_dataset> sampled_and_greedy_data(const transformer& m, int64_t tokens,
                                                              uint64_t seed, size_t held) {
  auto seqs = self_generated_sequences(m, tokens, 96, 1, seed, {1.0f, 0.0f});
  std::vector<std::vector<int32_t>> train_seqs(seqs.begin(), seqs.end() - std::ptrdiff_t(held));
  std::vector<std::vector<int32_t>> eval_seqs(seqs.end() - std::ptrdiff_t(held), seqs.end());
  return {collect_exit_data(m, train_seqs, {2, 3}), collect_exit_data(m, eval_seqs, {2, 3})};
}

} // namespace

TEST_CASE("tuning exit heads on self-generated text beats the untrained heads, reproducibly") {
  const auto& m = *load_stories("gguf").model;
  auto seqs = self_generated_sequences(m, 6000, 96, 1, 3);
  std::vector<std::vector<int32_t>> train_seqs(seqs.begin(), seqs.end() - 8);
  std::vector<std::vector<int32_t>> eval_seqs(seqs.end() - 8, seqs.end());
  auto train = collect_exit_data(m, train_seqs, {2, 3});
  auto eval = collect_exit_data(m, eval_seqs, {2, 3});
  CHECK(train.hidden.size() == 2);
  CHECK(train.hidden[0].size(1) == 64);
  CHECK(train.teacher.size(1) == 512);

  exit_training_options opts;
  opts.steps = 200;
  opts.confidence_units = 0;  // max softmax: the heads alone (the classifier: below)
  auto heads = train_exit_heads(m, train, opts);
  auto again = train_exit_heads(m, train, opts);
  {
    c10::InferenceMode guard;
    CHECK((heads[0].adapter_b - again[0].adapter_b).abs().max().item<float>() == 0.0f);
  }
  auto before = evaluate_exit_heads(exit_heads::untrained(m, {2, 3}), eval, {0.8f});
  auto after = evaluate_exit_heads(heads, eval, {0.8f});
  MESSAGE("combined at 0.8: before " << before[2].thresholds[0].exit_rate << " exits / "
          << before[2].thresholds[0].agreement << " agree, after "
          << after[2].thresholds[0].exit_rate << " / " << after[2].thresholds[0].agreement);
  CHECK(after[0].agreement > before[0].agreement + 0.3);  // exit 2: ~5% -> >50%
  CHECK(after[1].agreement > before[1].agreement + 0.2);
  CHECK(after[2].thresholds[0].agreement > 0.85);
  CHECK(after[2].thresholds[0].exit_rate > 0.15);

  for (auto loss : {"kl", "ce", "next"}) {
    CAPTURE(loss);
    opts.loss = loss;
    opts.steps = 30;
    opts.adapter_hidden = 0;
    auto h = train_exit_heads(m, train, opts);
    CHECK(!h[0].adapter_a.defined());
  }
  opts.loss = "bogus";
  CHECK(error_of([&] { train_exit_heads(m, train, opts); }).find("not a loss") != std::string::npos);
}

TEST_CASE("the shipped stories260K heads exit early on a quarter of the tokens and agree on 90%") {
  const auto& m = *load_stories("gguf").model;
  const auto& vocab = load_stories("gguf").files.vocab;
  auto heads = exit_heads::load(shipped_heads(), m);
  CHECK(heads.layers() == std::vector<int>{2, 3});
  generation_options opts;
  opts.max_tokens = 100;
  opts.exits = &heads;
  opts.threshold = 0.8f;
  exit_tally t;
  // Prompts not used in tuning (the heads were tuned on self-generated text).
  for (auto p : {"Tom and his dog", "The sun was shining", "One day, a little bird",
                 "Sara wanted to bake a cake"})
    t.add(generate(m, vocab.encode(p), opts).exit_trace);
  MESSAGE(t.exited << " of " << t.tokens << " tokens exited, " << t.agree << " agree");
  CHECK(t.exited >= t.tokens / 4);
  CHECK(t.agree >= 0.9 * t.exited);
}

TEST_CASE("greedy self-generated sequences continue a sampled opening greedily, each its own") {
  const auto& m = *load_stories("gguf").model;
  auto seqs = self_generated_sequences(m, 400, 40, 1, 5, {0.0f});
  REQUIRE(seqs.size() >= 3);
  for (size_t i = 0; i < 3; ++i) {
    CAPTURE(i);
    const auto& s = seqs[i];
    REQUIRE(s.size() == 41);
    // Some opening of 4 .. 10 sampled tokens continues greedily into the rest.
    bool greedy_after_opening = false;
    for (int k = greedy_opening_tokens; k <= 10 && !greedy_after_opening; ++k) {
      std::vector<int32_t> opening(s.begin(), s.begin() + 1 + k);
      generation_options greedy;
      greedy.max_tokens = int(s.size()) - int(opening.size());
      auto r = generate(m, opening, greedy);
      greedy_after_opening = std::vector<int32_t>(s.begin() + 1 + k, s.end()) == r.tokens;
    }
    CHECK(greedy_after_opening);
  }
  CHECK(seqs[0] != seqs[1]);
  // Alternating temperatures: sequence 0 sampled at 1 is the one a plain
  // temperature-1 run gives first.
  auto both = self_generated_sequences(m, 400, 40, 1, 5, {1.0f, 0.0f});
  CHECK(both[0] == self_generated_sequences(m, 10, 40, 1, 5)[0]);
  CHECK(both[1] == seqs[1]);
  CHECK(error_of([&] { self_generated_sequences(m, 10, 40, 1, 5, {}); }).find("temperature")
        != std::string::npos);
  CHECK(error_of([&] { self_generated_sequences(m, 10, 40, 1, 5, {-1.0f}); })
          .find("temperature -1 is not >= 0") != std::string::npos);
}

TEST_CASE("a confidence classifier tells agreeing positions apart better than max softmax, and "
          "keeps in the heads file") {
  const auto& m = *load_stories("gguf").model;
  auto [train, eval] = sampled_and_greedy_data(m, 12000, 3, 30);
  exit_training_options opts;
  opts.steps = 300;
  opts.confidence_units = 0;
  auto plain = train_exit_heads(m, train, opts);
  CHECK_FALSE(plain[0].has_confidence_classifier());
  auto judged = plain;
  opts.confidence_units = 32;
  opts.confidence_steps = 1500;
  train_confidence_classifiers(judged, train, opts);
  REQUIRE(judged[0].has_confidence_classifier());
  CHECK(judged[0].confidence_a.sizes() == at::IntArrayRef{32, 64 + confidence_extra_features});

  // The same heads, the same tokens: only the confidence differs. Calibrated
  // to 95% on the held-out positions, the classifier lets more of them exit.
  exit_calibration_options o;
  o.target_agreement = 0.95;
  o.min_tokens = 30;
  auto by_softmax = calibrate_exit_thresholds(calibration_data(plain, eval), o);
  auto by_classifier = calibrate_exit_thresholds(calibration_data(judged, eval), o);
  auto fired = [](const exit_calibration& c) {
    int64_t n = 0;
    for (auto& e : c.exits)
      n += e.fired;
    return n;
  };
  MESSAGE("held-out positions exiting at 95%: max softmax " << fired(by_softmax)
          << ", classifier " << fired(by_classifier) << " of " << eval.size());
  CHECK(fired(by_classifier) > fired(by_softmax) * 11 / 10);

  temp_dir tmp;
  const auto path = tmp.file("judged.gguf");
  judged.save(path);
  auto back = exit_heads::load(path, m);
  REQUIRE(back[1].has_confidence_classifier());
  auto rows = eval.hidden[1].narrow(0, 0, 50);
  {
    c10::InferenceMode guard;
    auto z = back.logits(1, rows);
    CHECK((back.confidence(1, rows, z) - judged.confidence(1, rows, judged.logits(1, rows)))
            .abs().max().item<float>() == 0.0f);
    auto one = back.read(1, rows.narrow(0, 7, 1));
    CHECK(one.confidence == doctest::Approx(back.confidence(1, rows, z)[7].item<float>()));
    CHECK(one.token == z[7].argmax().item<int64_t>());
  }
  CHECK(gguf_file(path).get_uint("ceco.exit_heads.version") == exit_heads_file_version);
}

TEST_CASE("a fitted sampling temperature undoes a head's overconfidence, and keeps in the heads "
          "file") {
  const auto& m = *load_stories("gguf").model;
  auto [train, eval] = sampled_and_greedy_data(m, 8000, 4, 20);
  exit_training_options opts;
  opts.steps = 300;
  opts.confidence_units = 0;
  auto heads = train_exit_heads(m, train, opts);
  CHECK(heads[0].sampling_temperature == 1.0f);
  auto fitted = fit_sampling_temperatures(heads, train);
  // The same heads with every logit doubled: far too sure of themselves.
  auto sharp = heads;
  for (size_t i = 0; i < sharp.size(); ++i) {
    c10::InferenceMode guard;
    sharp[i].output = weight_matrix(sharp[i].output.tensor("test") * 2.0f);
    sharp[i].sampling_temperature = 1.0f;
  }
  auto overlap = fit_sampling_temperatures(sharp, train);
  c10::InferenceMode guard;
  auto teacher = at::softmax(eval.teacher, -1);
  for (size_t i = 0; i < 2; ++i) {
    CAPTURE(i);
    const float t = sharp[i].sampling_temperature;
    MESSAGE("exit " << sharp[i].layer << ": fitted " << heads[i].sampling_temperature
            << ", doubled logits " << t << ", training overlap " << overlap[i].first << " -> "
            << overlap[i].second << " (" << fitted[i].second << " before doubling)");
    CHECK(t == doctest::Approx(2.0f * heads[i].sampling_temperature).epsilon(0.06));
    CHECK(overlap[i].second == doctest::Approx(fitted[i].second).epsilon(0.01));
    // On held-out positions too, its drafts are accepted more often
    // (Σ min(p, q)) than at temperature 1.
    auto z = sharp.logits(i, eval.hidden[i]);
    auto accept_at = [&](float s) {
      return at::minimum(teacher, at::softmax(z / s, -1)).sum(-1).mean().item<double>();
    };
    CHECK(accept_at(t) > accept_at(1.0f) + 0.05);
    // Sampled at temperature T, the exit draws from softmax(z / (T·t)).
    sampler_options at_08;
    at_08.temperature = 0.8f;
    at_08.top_p = 0.9f;
    const auto tempered = sharp.sampling_options(i, at_08);
    CHECK(tempered.temperature == doctest::Approx(0.8f * t));
    CHECK(tempered.top_p == 0.9f);
  }
  temp_dir tmp;
  const auto path = tmp.file("tempered.gguf");
  sharp.save(path);
  // No classifier: the file stays version 2, which builds before
  // classifiers read (ignoring the temperatures).
  CHECK(gguf_file(path).get_uint("ceco.exit_heads.version") == 2);
  auto back = exit_heads::load(path, m);
  CHECK(back[0].sampling_temperature == sharp[0].sampling_temperature);
  CHECK(back[1].sampling_temperature == sharp[1].sampling_temperature);
  // One exit of the file keeps its own.
  auto three = exit_heads::load(path, m, {3});
  CHECK(three[0].sampling_temperature == sharp[1].sampling_temperature);
}
