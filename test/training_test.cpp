#include "test/support.hpp"

#include <fstream>
#include <sstream>

#include "model/exit_heads.hpp"
#include "model/bpe_learner.hpp"
#include "model/model_trainer.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

std::string shakespeare(size_t bytes) {
  std::ifstream in(shared_dir() + "/data/tinyshakespeare/input.txt");
  std::string text(bytes, '\0');
  in.read(text.data(), std::streamsize(bytes));
  text.resize(size_t(in.gcount()));
  return text;
}

} // namespace

TEST_CASE("a BPE vocabulary learned from text encodes and decodes it losslessly") {
  auto text = shakespeare(60000);
  auto vocab = train_bpe(text, 400);
  CHECK(vocab.vocab_size() == 400);
  CHECK(vocab.kind(1) == token_kind::control);
  CHECK(vocab.kind(3) == token_kind::byte);
  for (auto line : {"First Citizen:", "Before we proceed any further, hear me speak.", "Zoë 🙂"}) {
    auto ids = vocab.encode(line);
    CHECK(vocab.decode({ids.begin() + 1, ids.end()}, ids[0]) == line);
    // Merges make it shorter than one piece per character (+ BOS).
    if (std::string(line).size() > 20)
      CHECK(double(ids.size()) < 0.85 * double(std::string(line).size()));
  }
  auto stream = encode_corpus(vocab, "one line\n\nanother line\n");
  CHECK(std::count(stream.begin(), stream.end(), vocab.bos()) == 2);
}

TEST_CASE("training lowers the loss, and the written GGUF computes what the trainer computed") {
  auto text = shakespeare(60000);
  auto vocab = train_bpe(text, 400);
  auto tokens = encode_corpus(vocab, text);
  model_config cfg{32, 64, 2, 4, 2, vocab.vocab_size(), 64};  // GQA: 4 query heads, 2 kv heads
  training_options opts;
  opts.exits = {1};
  opts.steps = 60;
  opts.batch = 8;
  opts.seq_len = 32;
  opts.lr = 1e-2f;
  opts.warmup = 5;
  model_trainer trainer(cfg, opts);
  float before = trainer.evaluate(tokens, 8);
  trainer.train(tokens);
  float after = trainer.evaluate(tokens, 8);
  MESSAGE("loss " << before << " -> " << after);
  CHECK(after < before - 0.5f);

  temp_dir tmp;
  trainer.save(tmp.file("model.gguf"), tmp.file("exits.gguf"), vocab);
  auto loaded = load_model(tmp.file("model.gguf"));
  CHECK(loaded.config.n_head_kv == 2);
  CHECK(loaded.vocab.vocab_size() == vocab.vocab_size());
  CHECK(loaded.vocab.encode("Before we proceed") == vocab.encode("Before we proceed"));
  transformer model(loaded.config, loaded.weights, c10::Device(c10::kCPU));
  auto heads = exit_heads::load(tmp.file("exits.gguf"), model);
  CHECK(heads.layers() == std::vector<int>{1});

  std::vector<int32_t> ids(tokens.begin(), tokens.begin() + 40);
  auto expected = trainer.logits(ids);
  c10::InferenceMode guard;
  auto cache = model.make_cache(0, 2);
  auto x = model.embed(ids);
  model.forward_layers(x, 0, 0, 2, cache);
  auto got = model.logits(x);
  CHECK((got - expected).abs().max().item<float>() < 1e-4f);
  // One-token decoding through the CPU kernels agrees too.
  auto cache2 = model.make_cache(0, 2);
  auto row = at::empty({1, 32});
  auto out = at::empty({vocab.vocab_size()});
  for (size_t i = 0; i < ids.size(); ++i) {
    model.embed_into(ids[i], row);
    model.forward_layers(row, int64_t(i), 0, 2, cache2);
  }
  model.logits_into(row, out);
  CHECK((out - expected[-1]).abs().max().item<float>() < 1e-4f);
}

TEST_CASE("layer dropout and exit distillation train a model, seeded, and bad values are refused") {
  auto text = shakespeare(30000);
  auto vocab = train_bpe(text, 400);
  auto tokens = encode_corpus(vocab, text);
  model_config cfg{32, 64, 3, 4, 2, vocab.vocab_size(), 64};
  training_options opts;
  opts.exits = {1, 2};
  opts.steps = 30;
  opts.batch = 8;
  opts.seq_len = 32;
  opts.lr = 1e-2f;
  opts.warmup = 5;
  std::vector<int32_t> ids(tokens.begin(), tokens.begin() + 20);
  auto trained_logits = [&](const training_options& o) {
    model_trainer trainer(cfg, o);
    float before = trainer.evaluate(tokens, 4);
    trainer.train(tokens);
    float after = trainer.evaluate(tokens, 4);
    MESSAGE("dropout " << o.layer_dropout << " distill " << o.exit_distill << ": loss " << before
                       << " -> " << after);
    CHECK(after < before - 0.3f);
    return trainer.logits(ids);
  };
  auto plain = trained_logits(opts);
  auto layerskip = opts;
  layerskip.layer_dropout = 0.5f;
  layerskip.exit_distill = 0.5f;
  auto skipped = trained_logits(layerskip);
  CHECK(at::equal(skipped, trained_logits(layerskip)));  // the same seed, the same model
  CHECK(!at::allclose(skipped, plain));                 // and they do change the training
  auto distill_only = opts;
  distill_only.exit_distill = 1.0f;
  CHECK(!at::allclose(trained_logits(distill_only), plain));

  auto refused = [&](float distill, float dropout) {
    auto o = opts;
    o.exit_distill = distill;
    o.layer_dropout = dropout;
    try {
      model_trainer trainer(cfg, o);
    } catch (const model_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(refused(1.5f, 0) == "train: exit_distill is 1.5; expected 0..1");
  CHECK(refused(0, 0.95f) == "train: layer_dropout is 0.95; expected 0..0.9");
  CHECK(refused(0, -0.1f).find("layer_dropout is -0.1") != std::string::npos);
}
