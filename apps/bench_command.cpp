// ceco bench: prefill and decode speed of the forward pass, on a real
// checkpoint or on seeded random weights of a named shape.

#include <iostream>
#include <random>

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "model/generation.hpp"
#include "model/loader.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

namespace {

struct bench_args {
  std::string model;
  std::string tokenizer;
  std::string shape;
  int tokens = 256;
  int prompt_tokens = 32;
  int threads = 1;
  uint64_t seed = 1;
  std::string device = "cpu";
  bool json = false;
};

void run_bench(const bench_args& a) {
  set_compute_threads(a.threads);
  auto device = parse_device(a.device);
  model_config cfg;
  model_weights weights;
  std::string source;
  if (!a.shape.empty()) {
    cfg = shape_preset(a.shape);
    cfg.max_seq = std::max(cfg.max_seq, a.prompt_tokens + a.tokens + 1);
    if (!a.json)
      fmt::print(stderr, "building random {} model (seed {})...\n", a.shape, a.seed);
    weights = random_weights(cfg, a.seed);
    source = "random " + a.shape;
  } else {
    auto m = load_model(a.model.empty() ? default_model_path() : a.model, a.tokenizer);
    cfg = m.config;
    weights = std::move(m.weights);
    source = m.path;
  }
  if (a.prompt_tokens + a.tokens >= cfg.max_seq)
    throw model_error(fmt::format(
      "bench: --prompt-tokens {} + --tokens {} exceed the model's context of {}",
      a.prompt_tokens, a.tokens, cfg.max_seq));
  int64_t n_params = 0;
  for (auto& l : weights.layers)
    for (auto* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w1, &l.w2, &l.w3})
      n_params += t->numel();
  n_params += weights.tok_embd.numel() + weights.output_norm.numel();
  if (!weights.output.is_same(weights.tok_embd))
    n_params += weights.output.numel();
  transformer model(cfg, std::move(weights), device);

  std::mt19937 rng(uint32_t(a.seed));
  std::vector<int32_t> prompt{1};
  while (int(prompt.size()) < std::max(1, a.prompt_tokens))
    prompt.push_back(int32_t(rng() % uint32_t(cfg.vocab_size)));

  generation_options opts;
  opts.stop_at_eos = false;
  opts.max_tokens = std::min(8, a.tokens);
  generate(model, prompt, opts);  // warm-up: first-touch of weights and caches
  opts.max_tokens = a.tokens;
  auto r = generate(model, prompt, opts);

  if (a.json) {
    nlohmann::json j;
    j["model"] = source;
    j["n_params"] = n_params;
    j["n_embd"] = cfg.n_embd;
    j["n_layer"] = cfg.n_layer;
    j["vocab_size"] = cfg.vocab_size;
    j["threads"] = at::get_num_threads();
    j["device"] = a.device;
    j["n_prompt"] = r.prompt.size();
    j["n_generated"] = r.tokens.size();
    j["prefill_ms"] = r.prefill_ms;
    j["decode_ms"] = r.decode_ms;
    j["prefill_tokens_per_s"] = r.prefill_tokens_per_s();
    j["decode_tokens_per_s"] = r.decode_tokens_per_s();
    std::cout << j.dump() << "\n";
    return;
  }
  fmt::print("model     {} ({:.2f}M parameters, dim {}, {} layers, vocab {})\n", source,
             double(n_params) / 1e6, cfg.n_embd, cfg.n_layer, cfg.vocab_size);
  fmt::print("threads   {} on {}\n", at::get_num_threads(), a.device);
  fmt::print("prefill   {:>5} tokens  {:>9.1f} tokens/s\n", r.prompt.size(),
             r.prefill_tokens_per_s());
  fmt::print("decode    {:>5} tokens  {:>9.1f} tokens/s\n", r.decode_steps,
             r.decode_tokens_per_s());
}

} // namespace

void add_bench_command(CLI::App& app) {
  auto a = std::make_shared<bench_args>();
  auto* cmd = app.add_subcommand("bench", "measure prefill and decode speed");
  auto* model = cmd->add_option("--model", a->model,
                                "checkpoint to measure (default: $CECO_MODEL, else " +
                                  default_model_path() + ")");
  cmd->add_option("--tokenizer", a->tokenizer, "llama2.c tokenizer.bin for a .bin model");
  cmd->add_option("--shape", a->shape,
                  "measure seeded random weights of a named shape instead: 260K, 15M, 42M or "
                  "110M (llama2.c's tinyllamas dims; vocabulary 32000 above 260K)")
    ->excludes(model);
  cmd->add_option("--tokens", a->tokens, "tokens to decode")->capture_default_str()
    ->check(CLI::PositiveNumber);
  cmd->add_option("--prompt-tokens", a->prompt_tokens, "prompt length for the prefill")
    ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--threads", a->threads, "compute threads; 0 = all cores")
    ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", a->seed, "seed of the random weights and prompt")
    ->capture_default_str();
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_flag("--json", a->json, "print one JSON object (decode_tokens_per_s, ...)");
  cmd->callback([a] { run_bench(*a); });
}

} // namespace ceco::app
