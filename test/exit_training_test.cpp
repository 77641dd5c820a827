#include "test/support.hpp"

#include "model/exit_training.hpp"
#include "model/generation.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

std::string shipped_heads() {
  return std::string(CECO_SOURCE_DIR) + "/config/models/stories260K-exits-2-3.gguf";
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
