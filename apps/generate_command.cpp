// ceco generate: the whole model on one node, streaming its text, optionally
// tracing what each early exit would have emitted at a threshold.

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "model/exit_heads.hpp"
#include "model/generation.hpp"
#include "model/loader.hpp"
#include "model/transformer.hpp"
#include "apps/json_text.hpp"

namespace ceco::app {

namespace {

struct generate_args {
  std::string model;
  std::string tokenizer;
  std::string prompt = "And God said";
  std::string prompt_file;  // --prompt-file: the prompt from a file, "-" = stdin
  int max_tokens = 128;
  float temperature = 0.0f;
  float top_p = 1.0f;
  int top_k = 0;
  uint64_t seed = 42;
  std::vector<int> exits;
  std::string exit_heads_file;
  std::optional<float> threshold;  // unset: the heads' calibrated thresholds, else 0.8
  int min_exit_layer = 1;
  int threads = 0;
  std::string device = "cpu";
  std::string kv_dtype = "f32";
  bool json = false;
};

/// The text of `token` after `prev` as it is shown: a control token other
/// than the end of text (a generated start-of-text, say) as its own text
/// ("<s>"), where decoding would show nothing.
std::string visible_piece(const tokenizer& vocab, int32_t prev, int32_t token) {
  auto piece = vocab.decode_piece(prev, token);
  if (piece.empty() && token >= 0 && token < vocab.vocab_size() && token != vocab.eos() &&
      vocab.kind(token) == token_kind::control)
    return vocab.token_text(token);
  return piece;
}

/// The whole of a file, or of stdin for "-", less one final line break.
std::string read_prompt_file(const std::string& path) {
  std::string text;
  if (path == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), {});
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in)
      throw model_error(fmt::format("--prompt-file {}: cannot open", path));
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  if (!text.empty() && text.back() == '\n')
    text.pop_back();
  if (!text.empty() && text.back() == '\r')
    text.pop_back();
  if (text.empty())
    throw model_error(fmt::format("--prompt-file {}: empty, expected the prompt's text",
                                  path == "-" ? std::string("- (stdin)") : path));
  return text;
}

void print_exit_report(const generation_result& r, const exit_heads& heads,
                       const generate_args& a, const tokenizer& vocab) {
  auto layers = heads.layers();
  fmt::print(stderr, "\nexit trace, thresholds: {} (heads: {}):\n",
             heads.describe_thresholds(a.threshold), heads.source());
  std::string header = fmt::format("{:>5}  {:<14} {:>5}  {:>6}", "step", "token", "exit", "agrees");
  for (int l : layers)
    header += fmt::format("  conf@{:<2}", l);
  fmt::print(stderr, "{}\n", header);
  for (size_t i = 0; i < r.exit_trace.size(); ++i) {
    const auto& s = r.exit_trace[i];
    auto text = visible_piece(vocab, -1, r.tokens[i]);
    for (auto& ch : text)
      if (ch == '\n') ch = ' ';
    std::string line = fmt::format("{:>5}  {:<14} {:>5}  {:>6}", i, fmt::format("{:?}", text).substr(0, 14),
                                   s.exit_layer < 0 ? "-" : std::to_string(s.exit_layer),
                                   s.agrees ? "yes" : "no");
    for (float c : s.confidence)
      line += fmt::format("  {:7.3f}", c);
    fmt::print(stderr, "{}\n", line);
  }
  size_t n = r.exit_trace.size();
  fmt::print(stderr, "\n{:>6}  {:>8}  {:>9}\n", "exit", "tokens", "agreement");
  size_t total_exited = 0, total_agree = 0;
  for (int l : layers) {
    size_t fired = 0, agree = 0;
    for (auto& s : r.exit_trace)
      if (s.exit_layer == l) {
        ++fired;
        agree += s.agrees;
      }
    total_exited += fired;
    total_agree += agree;
    fmt::print(stderr, "{:>6}  {:>8}  {:>9}\n", l, fired,
               fired ? fmt::format("{:.1f}%", 100.0 * double(agree) / double(fired)) : "-");
  }
  fmt::print(stderr, "exited on the edge: {} of {} tokens ({:.1f}%), {:.1f}% of them agree with "
                     "the final layer\n",
             total_exited, n, n ? 100.0 * double(total_exited) / double(n) : 0.0,
             total_exited ? 100.0 * double(total_agree) / double(total_exited) : 0.0);
}

void run_generate(generate_args a) {
  if (!a.prompt_file.empty())
    a.prompt = read_prompt_file(a.prompt_file);
  set_compute_threads(a.threads);
  auto device = parse_device(a.device);
  auto m = load_model(a.model.empty() ? default_model_path() : a.model, a.tokenizer);
  transformer model(m.config, std::move(m.weights), device);
  model.set_kv_dtype(parse_kv_dtype(a.kv_dtype, "--kv-dtype"));

  exit_heads heads;
  std::string heads_file = a.exit_heads_file;
  if (heads_file.empty() && a.model.empty() && !a.exits.empty())
    heads_file = default_exit_heads_path();  // the default model's tuned heads
  if (heads_file == "none")
    heads_file.clear();
  if (!heads_file.empty())
    heads = exit_heads::load(heads_file, model, a.exits);
  else if (!a.exits.empty())
    heads = exit_heads::untrained(model, a.exits);

  generation_options opts;
  opts.max_tokens = a.max_tokens;
  opts.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  opts.eos = m.vocab.eos();
  opts.exits = heads.empty() ? nullptr : &heads;
  opts.threshold = a.threshold;
  opts.min_exit_layer = a.min_exit_layer;

  auto prompt = m.vocab.encode(a.prompt, true);
  {
    // Warm-up, so that the prefill speed is the prefill's: the first pass
    // faults the weights in and starts the threads. A few prompt tokens and
    // one decoded token, untimed.
    generation_options warm;
    warm.max_tokens = 1;
    warm.stop_at_eos = false;
    std::vector<int32_t> head(prompt.begin(),
                              prompt.begin() + std::min<std::ptrdiff_t>(8, std::ptrdiff_t(prompt.size())));
    generate(model, head, warm);
  }
  int32_t prev = prompt.back();
  if (!a.json) {
    fmt::print("{}", a.prompt);
    std::fflush(stdout);
  }
  auto on_token = [&](int32_t t) {
    if (!a.json) {
      fmt::print("{}", visible_piece(m.vocab, prev, t));
      std::fflush(stdout);
    }
    prev = t;
  };
  auto r = generate(model, prompt, opts, on_token);
  auto text = m.vocab.decode(r.tokens, prompt.back());

  if (a.json) {
    nlohmann::json j;
    j["model"] = m.path;
    j["prompt"] = a.prompt;
    j["text"] = text;
    j["prompt_tokens"] = r.prompt;
    j["tokens"] = r.tokens;
    j["n_prompt"] = r.prompt.size();
    j["n_generated"] = r.tokens.size();
    j["stop_reason"] = r.stop_reason;
    j["prefill_ms"] = r.prefill_ms;
    j["decode_ms"] = r.decode_ms;
    j["prefill_tokens_per_s"] = r.prefill_tokens_per_s();
    j["decode_tokens_per_s"] = r.decode_tokens_per_s();
    if (opts.exits) {
      j["exits"] = heads.layers();
      j["exit_heads"] = heads.source();
      // "auto" unless --threshold was given; `thresholds` are the ones used, one per exit.
      j["threshold"] = a.threshold ? nlohmann::json(*a.threshold) : nlohmann::json("auto");
      j["thresholds"] = heads.thresholds(a.threshold);
      j["thresholds_from"] = heads.threshold_origin(a.threshold);
      j["min_exit_layer"] = a.min_exit_layer;
      auto trace = nlohmann::json::array();
      for (auto& s : r.exit_trace) {
        nlohmann::json e;
        e["exit"] = s.exit_layer < 0 ? nlohmann::json(nullptr) : nlohmann::json(s.exit_layer);
        e["agrees"] = s.agrees;
        e["confidence"] = s.confidence;
        e["exit_tokens"] = s.tokens;
        trace.push_back(e);
      }
      j["exit_trace"] = trace;
    }
    std::cout << json_text(j) << "\n";
    return;
  }
  fmt::print("\n");
  fmt::print(stderr, "\n{} prompt tokens, {} generated ({}); prefill {:.1f} tokens/s, decode "
                     "{:.1f} tokens/s\n",
             r.prompt.size(), r.tokens.size(), r.stop_reason, r.prefill_tokens_per_s(),
             r.decode_tokens_per_s());
  if (opts.exits)
    print_exit_report(r, heads, a, m.vocab);
}

} // namespace

void add_generate_command(CLI::App& app) {
  auto a = std::make_shared<generate_args>();
  auto* cmd = app.add_subcommand("generate", "run the whole model and stream its text; "
                                             "optionally trace early exits");
  cmd->add_option("--model", a->model,
                  "checkpoint: a GGUF file, a llama2.c .bin, a Hugging Face folder (config.json, "
                  "*.safetensors, tokenizer.json) or a folder holding a GGUF or .bin "
                  "(default: $CECO_MODEL, else " + default_model_path() + ")");
  cmd->add_option("--tokenizer", a->tokenizer,
                  "llama2.c tokenizer.bin for a .bin model (default: tok<vocab>.bin or "
                  "tokenizer.bin beside it)");
  auto* prompt = cmd->add_option("--prompt", a->prompt, "text to continue")->capture_default_str();
  cmd->add_option("--prompt-file", a->prompt_file,
                  "read the prompt from this file (all of it, less a final line break); - reads "
                  "it from stdin")
    ->excludes(prompt);
  cmd->add_option("--max-tokens", a->max_tokens, "most tokens to generate")
    ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--temperature", a->temperature, "sampling temperature; 0 = greedy")
    ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", a->top_p, "nucleus sampling mass; 1 = off")
    ->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--top-k", a->top_k, "sample among the k likeliest; 0 = off")
    ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", a->seed, "random seed for sampling")->capture_default_str();
  cmd->add_option("--exits", a->exits,
                  "trace exits after these layers, e.g. 2,3 (default: none, or the layers of "
                  "--exit-heads)")
    ->delimiter(',');
  cmd->add_option("--exit-heads", a->exit_heads_file,
                  "trained exit heads (GGUF, from ceco tune-exits), or none for untrained heads "
                  "(the model's final norm and classifier); default: the tuned heads of the "
                  "default model (" + default_exit_heads_path() + ") when --model is not given, "
                  "else untrained")
    ->check(CLI::ExistingFile | CLI::IsMember({"none"}));
  auto theta = std::make_shared<float>(0.8f);
  auto* theta_opt = cmd->add_option(
    "--threshold", *theta,
    "confidence an exit needs to fire (its confidence classifier's estimate of agreement, "
    "else its max softmax), the same for every exit; default: each "
    "exit's calibrated threshold when the heads file has them (ceco calibrate-exits), else 0.8");
  theta_opt->check(CLI::NonNegativeNumber)->default_str("auto");
  cmd->add_option("--min-exit-layer", a->min_exit_layer,
                  "exits before this layer never fire (shallow untrained exits echo the "
                  "input token)")
    ->capture_default_str();
  cmd->add_option("--threads", a->threads, "compute threads; 0 = all cores")
    ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--kv-dtype", a->kv_dtype,
                  "what the KV cache holds keys and values in: f16 (half the bytes each "
                  "decoded token's attention reads) or f32 (unrounded)")
    ->capture_default_str()->check(CLI::IsMember({"f16", "f32"}));
  cmd->add_flag("--json", a->json,
                "print one JSON object (text, tokens, n_prompt, n_generated, "
                "decode_tokens_per_s, exit_trace) instead of streaming text");
  cmd->callback([a, theta, theta_opt] {
    if (theta_opt->count() > 0)
      a->threshold = *theta;
    run_generate(*a);
  });
}

} // namespace ceco::app
