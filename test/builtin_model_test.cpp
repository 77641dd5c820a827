#include "test/support.hpp"

#include "model/exit_heads.hpp"
#include "model/generation.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

std::string builtin(const char* file) {
  return std::string(CECO_SOURCE_DIR) + "/config/models/kjv/" + file;
}

} // namespace

TEST_CASE("the built-in model has learned its corpus and exits early at its calibrated thresholds with agreement") {
  auto m = load_model(builtin("model.gguf"));
  CHECK(m.config.n_layer == 4);
  transformer model(m.config, m.weights, c10::Device(c10::kCPU));
  auto heads = exit_heads::load(builtin("exits.gguf"), model);
  CHECK(heads.layers() == std::vector<int>{2, 3});

  // Mean next-token loss on verses (public domain, KJV) far below chance.
  c10::InferenceMode guard;
  auto ids = m.vocab.encode("The LORD is my shepherd; I shall not want. He maketh me to lie down in "
                            "green pastures: he leadeth me beside the still waters.");
  auto cache = model.make_cache(0, 4);
  auto x = model.embed(ids);
  model.forward_layers(x, 0, 0, 4, cache);
  auto logp = at::log_softmax(model.logits(x), -1);
  auto target = at::tensor(std::vector<int64_t>(ids.begin() + 1, ids.end()), at::kLong);
  float nll = -logp.narrow(0, 0, int64_t(ids.size()) - 1).gather(1, target.unsqueeze(1)).mean().item<float>();
  MESSAGE("loss " << nll << " nats per token (chance: " << std::log(float(m.config.vocab_size)) << ")");
  CHECK(nll < 3.5f);

  generation_options opts;
  opts.max_tokens = 80;
  opts.exits = &heads;  // the heads file's thresholds, calibrated to 99%
  REQUIRE(heads.calibrated());
  opts.eos = m.vocab.eos();
  exit_tally t;
  for (auto p : {"And God said", "In the beginning", "Blessed are the"}) {
    auto r = generate(model, m.vocab.encode(p), opts);
    CHECK(m.vocab.decode(r.tokens).find(" the ") != std::string::npos);
    t.add(r.exit_trace);
  }
  MESSAGE(t.exited << " of " << t.tokens << " tokens exited, " << t.agree << " agree");
  CHECK(t.exited >= t.tokens / 3);
  CHECK(t.agree >= 0.97 * t.exited);
}
