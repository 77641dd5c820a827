// ceco train: trains a small LLaMA-shaped model from scratch on a text file,
// with its own BPE vocabulary and jointly trained exit heads, and writes a
// GGUF model plus a heads file that every other command reads.

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

#include "apps/commands.hpp"
#include "config/settings.hpp"
#include "model/bpe_learner.hpp"
#include "model/model_trainer.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

namespace {

struct train_args {
  std::string text;
  std::string shape;
  std::vector<int> exits;
  std::string out;
  int steps = 0;  // 0 = the shape file's
  int threads = 0;
};

/// [model] and [train] of a shape file; unknown keys are errors.
void read_shape(const std::string& path, model_config& cfg, training_options& opts, int& vocab) {
  toml::table t;
  try {
    t = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    throw config_error(fmt::format("{}:{}: {}", path, e.source().begin.line, e.description()));
  }
  auto get_int = [&](const char* section, const char* key, int fallback) {
    auto node = t[section][key];
    if (!node)
      return fallback;
    auto v = node.value_exact<int64_t>();
    if (!v || *v <= 0)
      throw config_error(fmt::format("{}: {}.{} must be a positive integer", path, section, key));
    return int(*v);
  };
  auto get_float = [&](const char* section, const char* key, double fallback) {
    auto node = t[section][key];
    if (!node)
      return fallback;
    auto v = node.value<double>();
    if (!v || *v < 0)
      throw config_error(fmt::format("{}: {}.{} must be a number >= 0", path, section, key));
    return *v;
  };
  const std::map<std::string, std::vector<std::string>> known = {
    {"model", {"dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "vocab_size", "context_length", "rope_theta"}},
    {"train", {"steps", "batch", "seq_len", "lr", "warmup", "seed", "exit_weight", "exit_distill",
               "layer_dropout"}},
  };
  for (auto&& [section, node] : t) {
    auto k = known.find(std::string(section.str()));
    if (k == known.end() || !node.is_table())
      throw config_error(fmt::format("{}: unknown section [{}] (expected [model] and [train])", path,
                                     section.str()));
    for (auto&& [key, value] : *node.as_table())
      if (std::find(k->second.begin(), k->second.end(), std::string(key.str())) == k->second.end())
        throw config_error(fmt::format("{}: unknown key '{}.{}'", path, section.str(), key.str()));
  }
  cfg.n_embd = get_int("model", "dim", 96);
  cfg.n_layer = get_int("model", "n_layers", 4);
  cfg.n_head = get_int("model", "n_heads", 4);
  cfg.n_head_kv = get_int("model", "n_kv_heads", cfg.n_head);
  cfg.n_ff = get_int("model", "hidden_dim", 256);
  vocab = get_int("model", "vocab_size", 768);
  cfg.vocab_size = vocab;
  cfg.max_seq = get_int("model", "context_length", 256);
  cfg.rope_theta = float(get_float("model", "rope_theta", 10000.0));
  opts.steps = get_int("train", "steps", 800);
  opts.batch = get_int("train", "batch", 32);
  opts.seq_len = get_int("train", "seq_len", 128);
  opts.lr = float(get_float("train", "lr", 3e-3));
  opts.warmup = get_int("train", "warmup", 50);
  opts.seed = uint64_t(get_int("train", "seed", 1));
  opts.exit_weight = float(get_float("train", "exit_weight", 0.5));
  opts.exit_distill = float(get_float("train", "exit_distill", 0.0));
  if (opts.exit_distill > 1)
    throw config_error(fmt::format("{}: train.exit_distill is {}; expected 0..1 (the share of an "
                                   "exit's loss distilled from the final layer)",
                                   path, opts.exit_distill));
  opts.layer_dropout = float(get_float("train", "layer_dropout", 0.0));
  if (opts.layer_dropout > 0.9)
    throw config_error(fmt::format("{}: train.layer_dropout is {}; expected 0..0.9 (the last "
                                   "layer's skip rate)",
                                   path, opts.layer_dropout));
}

void run_train(const train_args& a) {
  model_config cfg;
  training_options opts;
  int vocab_size = 0;
  read_shape(a.shape, cfg, opts, vocab_size);
  if (a.steps > 0)
    opts.steps = a.steps;
  opts.exits = a.exits;
  std::ifstream in(a.text, std::ios::binary);
  if (!in)
    throw config_error(fmt::format("--text {}: cannot open", a.text));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();

  int threads = a.threads > 0 ? a.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  set_blas_threads(threads);
  fmt::print(stderr, "train: learning a {}-piece BPE vocabulary from {} ({:.1f} MB)...\n", vocab_size,
             a.text, double(text.size()) / 1e6);
  auto vocab = train_bpe(text, vocab_size);
  cfg.vocab_size = vocab.vocab_size();
  auto tokens = encode_corpus(vocab, text);
  // The last 2% of the text is held out for the validation loss.
  size_t split = tokens.size() - tokens.size() / 50;
  std::vector<int32_t> train_tokens(tokens.begin(), tokens.begin() + std::ptrdiff_t(split));
  std::vector<int32_t> val_tokens(tokens.begin() + std::ptrdiff_t(split), tokens.end());
  fmt::print(stderr, "train: {} tokens ({} held out); model dim {}, {} layers, {} heads, ffn {}, "
                     "vocab {}, context {}; exits after {}\n",
             tokens.size(), val_tokens.size(), cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_ff,
             cfg.vocab_size, cfg.max_seq, a.exits.empty() ? "none" : fmt::format("{}", fmt::join(a.exits, ",")));

  model_trainer trainer(cfg, opts);
  auto t0 = std::chrono::steady_clock::now();
  float smooth = 0;
  trainer.train(train_tokens, [&](int step, float loss) {
    smooth = step == 1 ? loss : 0.95f * smooth + 0.05f * loss;
    if (step % 10 != 0 && step != opts.steps)
      return;
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double left = elapsed / step * (opts.steps - step);
    const int width = 30;
    int bar = int(double(width) * step / opts.steps);
    fmt::print(stderr, "\r[{}{}] step {}/{} loss {:.3f} ({:.0f} tokens/s, {:.0f}s left)   ",
               std::string(size_t(bar), '#'), std::string(size_t(width - bar), '.'), step,
               opts.steps, smooth, double(step) * opts.batch * opts.seq_len / elapsed, left);
  });
  fmt::print(stderr, "\ntrain: validation loss {:.3f}\n", trainer.evaluate(val_tokens, 64));
  std::filesystem::create_directories(a.out);
  auto model_path = (std::filesystem::path(a.out) / "model.gguf").string();
  auto heads_path = (std::filesystem::path(a.out) / "exits.gguf").string();
  trainer.save(model_path, heads_path, vocab);
  fmt::print("saved {}{}\n", model_path, a.exits.empty() ? "" : " and " + heads_path);
}

} // namespace

void add_train_command(CLI::App& app) {
  auto a = std::make_shared<train_args>();
  auto* cmd = app.add_subcommand(
    "train", "train a small LLaMA-shaped model from scratch on a text file, with its own BPE "
             "vocabulary and exit heads trained jointly");
  cmd->add_option("--text", a->text, "training text (UTF-8; one line = one sample)")
    ->required()->check(CLI::ExistingFile);
  cmd->add_option("--config", a->shape,
                  "shape and training settings (TOML: [model] dim, n_layers, n_heads, n_kv_heads, "
                  "hidden_dim, vocab_size, context_length; [train] steps, batch, seq_len, lr, "
                  "warmup, seed, exit_weight, exit_distill, layer_dropout; see config/models/kjv.toml)")
    ->required()->check(CLI::ExistingFile);
  cmd->add_option("--exits", a->exits, "exit layers trained with the model, e.g. 2,3")->delimiter(',');
  cmd->add_option("--out", a->out, "folder for model.gguf and exits.gguf")->required();
  cmd->add_option("--steps", a->steps, "override [train] steps")->check(CLI::NonNegativeNumber);
  cmd->add_option("--threads", a->threads, "compute threads; 0 = all cores")->capture_default_str();
  cmd->callback([a] { run_train(*a); });
}

} // namespace ceco::app
