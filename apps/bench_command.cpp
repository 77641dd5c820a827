// ceco bench: prefill and decode speed of the forward pass, on a real
// checkpoint or on seeded random weights of a named shape.

#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <iostream>
#include <random>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "model/generation.hpp"
#include "model/loader.hpp"
#include "model/quant.hpp"
#include "model/random_weights.hpp"
#include "model/sampler.hpp"
#include "model/transformer.hpp"

namespace ceco::app {

namespace {

struct bench_args {
  std::string model;
  std::string tokenizer;
  std::string shape;
  std::string type;  // --type of the random weights; empty: F32
  std::string save;  // write the --shape model to this GGUF file instead of measuring
  // llama-bench's pp512 / tg128; where the model's context is shorter and
  // neither is given, the prompt is shortened (then the decode) to fit.
  int tokens = 128;
  int prompt_tokens = 512;
  bool tokens_given = false;
  bool prompt_tokens_given = false;
  int threads = 0;  // all cores, as generate
  uint64_t seed = 1;
  std::string device = "cpu";
  std::string kv_dtype = "f32";
  int sessions = 1;
  bool json = false;
};

using bench_clock = std::chrono::steady_clock;

/// A "VmRSS"/"VmHWM" line of /proc/self/status in bytes (0 where there is none).
uint64_t resident_bytes(const std::string& field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind(field + ":", 0) == 0)
      return std::stoull(line.substr(field.size() + 1)) * 1024;  // "VmRSS:   1234 kB"
  return 0;
}

double seconds_since(bench_clock::time_point t0) {
  return std::chrono::duration<double>(bench_clock::now() - t0).count();
}

/// Decode speed of `sessions` sequences stepped one after another and
/// stepped together (the cloud's multi-session step), in tokens/s.
std::pair<double, double> measure_sessions(const transformer& model, const bench_args& a,
                                           std::mt19937& rng) {
  c10::InferenceMode guard;
  const auto& cfg = model.config();
  const int L = cfg.n_layer;
  const auto n = size_t(a.sessions);
  auto run = [&](bool together) {
    std::vector<kv_cache> caches;
    std::vector<at::Tensor> xs;
    std::vector<int32_t> next(n);
    auto fp32 = at::TensorOptions().dtype(at::kFloat).device(model.device());
    auto out = at::empty({cfg.vocab_size}, fp32);
    auto hidden = at::empty({int64_t(n), cfg.n_embd}, fp32);
    auto logits = at::empty({int64_t(n), cfg.vocab_size}, fp32);
    for (size_t i = 0; i < n; ++i) {
      std::vector<int32_t> prompt{1};
      while (int(prompt.size()) < a.prompt_tokens)
        prompt.push_back(int32_t(rng() % uint32_t(cfg.vocab_size)));
      caches.push_back(model.make_cache(0, L));
      auto x = model.embed(prompt);
      model.forward_layers(x, 0, 0, L, caches.back());
      model.logits_into(x, out);
      auto cpu = out.to(at::kCPU);
      next[i] = argmax(cpu.data_ptr<float>(), cfg.vocab_size);
      xs.push_back(at::empty({1, cfg.n_embd}, out.options()));
    }
    std::vector<transformer::sequence_step> steps;
    for (size_t i = 0; i < n; ++i)
      steps.push_back({&xs[i], 0, &caches[i]});
    auto t0 = bench_clock::now();
    for (int t = 0; t < a.tokens; ++t) {
      const int64_t pos = a.prompt_tokens + t;
      for (size_t i = 0; i < n; ++i) {
        model.embed_into(next[i], xs[i]);
        steps[i].pos = pos;
      }
      if (together) {
        model.forward_sequences(steps, 0, L);
        for (size_t i = 0; i < n; ++i)
          hidden[int64_t(i)].copy_(xs[i][0]);
        model.logits_rows_into(hidden, logits);
        auto cpu = logits.to(at::kCPU);
        for (size_t i = 0; i < n; ++i)
          next[i] = argmax(cpu.data_ptr<float>() + int64_t(i) * cfg.vocab_size, cfg.vocab_size);
      } else {
        for (size_t i = 0; i < n; ++i) {
          model.forward_layers(xs[i], pos, 0, L, caches[i]);
          model.logits_into(xs[i], out);
          auto cpu = out.to(at::kCPU);
          next[i] = argmax(cpu.data_ptr<float>(), cfg.vocab_size);
        }
      }
    }
    return double(n) * a.tokens / seconds_since(t0);
  };
  run(true);  // warm-up
  double alone = run(false);
  double together = run(true);
  return {alone, together};
}

/// The defaults of --prompt-tokens and --tokens that were not given, made to
/// fit a context of max_seq positions (prompt + decode + 1).
void fit_defaults(bench_args& a, int max_seq) {
  if (a.prompt_tokens + a.tokens < max_seq)
    return;
  if (!a.tokens_given)
    a.tokens = std::max(1, std::min(a.tokens, (max_seq - 1) / 2));
  if (!a.prompt_tokens_given)
    a.prompt_tokens = std::max(1, std::min(a.prompt_tokens, max_seq - 1 - a.tokens));
  if (!a.json && (!a.tokens_given || !a.prompt_tokens_given))
    fmt::print(stderr, "bench: {} prompt and {} decoded tokens, to fit the model's context of {}\n",
               a.prompt_tokens, a.tokens, max_seq);
}

/// The shape's name as shape_names() spells it ("260k" -> "260K").
std::string shape_name(const std::string& given) {
  auto lower = [](std::string x) {
    for (auto& ch : x)
      ch = char(std::tolower(static_cast<unsigned char>(ch)));
    return x;
  };
  std::string names = shape_names() + ", ";
  for (size_t at = 0, end; (end = names.find(", ", at)) != std::string::npos; at = end + 2)
    if (lower(names.substr(at, end - at)) == lower(given))
      return names.substr(at, end - at);
  return given;
}

void run_bench(bench_args a) {
  set_compute_threads(a.threads);
  auto device = parse_device(a.device);
  model_config cfg;
  model_weights weights;
  std::string source;
  double build_s = 0;
  if (!a.shape.empty()) {
    auto shape = shape_preset(a.shape);
    random_weights_options opts;
    opts.type = quant::parse_file_type(a.type.empty() ? "F32" : a.type, "--type");
    opts.tied_output = shape.tied_output;
    cfg = shape.config;
    cfg.max_seq = std::max(cfg.max_seq, a.prompt_tokens + a.tokens + 1);
    const int64_t d = cfg.n_embd;
    const int64_t n_matrix_weights =
      int64_t(cfg.vocab_size) * d * (shape.tied_output ? 1 : 2) +
      int64_t(cfg.n_layer) * (2 * d * d + 2 * d * cfg.n_embd_kv() + 3 * d * cfg.n_ff);
    if (!a.json)
      fmt::print(stderr, "{} random {} model in {} (seed {})...\n",
                 a.save.empty() ? "building" : "writing", a.shape, opts.type.name, a.seed);
    if (!a.json && n_matrix_weights > 100'000'000) {  // seconds: show the layers
      const char* end = isatty(STDERR_FILENO) ? "\r" : "\n";
      opts.on_layer = [end](int done, int n) {
        fmt::print(stderr, "  layer {}/{}{}", done, n, done == n ? "\n" : end);
      };
    }
    auto t0 = bench_clock::now();
    source = fmt::format("random {} {}", shape_name(a.shape), opts.type.name);
    if (!a.save.empty()) {
      write_random_gguf(a.save, fmt::format("ceco {} (seed {})", source, a.seed), cfg, a.seed,
                        opts);
      const auto bytes = std::filesystem::file_size(a.save);
      if (a.json) {
        nlohmann::json j;
        j["model"] = source;
        j["saved"] = a.save;
        j["bytes"] = bytes;
        j["context_length"] = cfg.max_seq;
        j["build_s"] = seconds_since(t0);
        std::cout << j.dump() << "\n";
      } else {
        fmt::print("wrote {}: {} (seed {}), {:.1f} MiB, context {}, in {:.1f} s\n", a.save,
                   source, a.seed, double(bytes) / (1 << 20), cfg.max_seq, seconds_since(t0));
      }
      return;
    }
    weights = random_weights(cfg, a.seed, opts);
    build_s = seconds_since(t0);
  } else {
    if (!a.save.empty())
      throw model_error(fmt::format(
        "bench: --save {} writes a --shape model; give --shape (a --model file is already a file)",
        a.save));
    if (!a.type.empty())
      throw model_error(fmt::format(
        "bench: --type {} applies to --shape only; a --model file keeps its own weight types",
        a.type));
    auto m = load_model(a.model.empty() ? default_model_path() : a.model, a.tokenizer);
    cfg = m.config;
    weights = std::move(m.weights);
    source = m.path;
    fit_defaults(a, cfg.max_seq);
  }
  if (a.prompt_tokens + a.tokens >= cfg.max_seq)
    throw model_error(fmt::format(
      "bench: --prompt-tokens {} + --tokens {} exceed the model's context of {}",
      a.prompt_tokens, a.tokens, cfg.max_seq));
  int64_t n_params = 0;
  size_t weight_bytes = 0;
  std::map<std::string, int> matrix_types;  // "Q4_K" -> how many matrices
  auto count = [&](const weight_matrix& m) {
    n_params += m.numel();
    weight_bytes += m.n_bytes();
    ++matrix_types[quant::type_name(m.type())];
  };
  for (auto& l : weights.layers) {
    n_params += l.attn_norm.numel() + l.ffn_norm.numel();
    for (auto* m : l.matrices())
      count(*m);
  }
  n_params += weights.output_norm.numel();
  count(weights.tok_embd);
  if (!weights.output.same_as(weights.tok_embd))
    count(weights.output);
  std::string types;
  for (const auto& [name, n] : matrix_types)
    types += fmt::format("{}{} {}", types.empty() ? "" : ", ", n, name);
  transformer model(cfg, std::move(weights), device);
  model.set_kv_dtype(parse_kv_dtype(a.kv_dtype, "--kv-dtype"));
  // generate()'s cache: every layer, sized for the model's context.
  const int64_t kv_bytes = kv_cache::bytes_for(cfg, 0, cfg.n_layer, cfg.max_seq, model.cache_dtype());

  std::mt19937 rng(uint32_t(a.seed));
  std::vector<int32_t> prompt{1};
  while (int(prompt.size()) < std::max(1, a.prompt_tokens))
    prompt.push_back(int32_t(rng() % uint32_t(cfg.vocab_size)));

  if (a.sessions > 1) {
    auto [alone, together] = measure_sessions(model, a, rng);
    if (a.json) {
      nlohmann::json j;
      j["model"] = source;
      j["n_params"] = n_params;
      j["threads"] = at::get_num_threads();
      j["sessions"] = a.sessions;
      j["kv_dtype"] = kv_dtype_name(model.cache_dtype());
      j["kv_bytes_per_session"] = kv_bytes;
      j["decode_tokens_per_s_one_at_a_time"] = alone;
      j["decode_tokens_per_s_together"] = together;
      std::cout << j.dump() << "\n";
      return;
    }
    fmt::print("model     {} ({:.2f}M parameters, dim {}, {} layers, vocab {})\n", source,
               double(n_params) / 1e6, cfg.n_embd, cfg.n_layer, cfg.vocab_size);
    fmt::print("threads   {} on {}\n", at::get_num_threads(), a.device);
    fmt::print("kv cache  {:.1f} MiB per session ({}, {} positions)\n", double(kv_bytes) / (1 << 20),
               kv_dtype_name(model.cache_dtype()), cfg.max_seq);
    fmt::print("decode of {} sessions, {} tokens each after {} prompt tokens:\n", a.sessions,
               a.tokens, a.prompt_tokens);
    fmt::print("  one session at a time  {:>9.1f} tokens/s\n", alone);
    fmt::print("  all in one step        {:>9.1f} tokens/s  ({:.2f}x)\n", together,
               together / alone);
    return;
  }

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
    j["blas"] = blas_kernels();
    j["kernels"] = quant::kernel_level_name(quant::active_kernel_level());
    j["n_prompt"] = r.prompt.size();
    j["n_generated"] = r.tokens.size();
    j["prefill_ms"] = r.prefill_ms;
    j["decode_ms"] = r.decode_ms;
    j["prefill_tokens_per_s"] = r.prefill_tokens_per_s();
    j["decode_tokens_per_s"] = r.decode_tokens_per_s();
    j["weight_bytes"] = weight_bytes;
    j["kv_dtype"] = kv_dtype_name(model.cache_dtype());
    j["kv_bytes"] = kv_bytes;
    j["kv_positions"] = cfg.max_seq;
    j["matrix_types"] = matrix_types;
    j["rss_bytes"] = resident_bytes("VmRSS");
    j["peak_rss_bytes"] = resident_bytes("VmHWM");
    if (!a.shape.empty())
      j["build_s"] = build_s;
    std::cout << j.dump() << "\n";
    return;
  }
  fmt::print("model     {} ({:.2f}M parameters, dim {}, {} layers, vocab {})\n", source,
             double(n_params) / 1e6, cfg.n_embd, cfg.n_layer, cfg.vocab_size);
  fmt::print("threads   {} on {} (prefill products: {}; dot products: {})\n",
             at::get_num_threads(), a.device, blas_kernels(),
             quant::kernel_level_name(quant::active_kernel_level()));
  fmt::print("prefill   {:>5} tokens  {:>9.1f} tokens/s\n", r.prompt.size(),
             r.prefill_tokens_per_s());
  fmt::print("decode    {:>5} tokens  {:>9.1f} tokens/s\n", r.decode_steps,
             r.decode_tokens_per_s());
  fmt::print("weights   {:.1f} MiB in matrices ({})\n", double(weight_bytes) / (1 << 20), types);
  fmt::print("kv cache  {:.1f} MiB ({}, {} positions of {} layers)\n", double(kv_bytes) / (1 << 20),
             kv_dtype_name(model.cache_dtype()), cfg.max_seq, cfg.n_layer);
  if (!a.shape.empty())
    fmt::print("built     in {:.1f} s\n", build_s);
  fmt::print("resident  {:.1f} MiB, peak {:.1f} MiB\n", double(resident_bytes("VmRSS")) / (1 << 20),
             double(resident_bytes("VmHWM")) / (1 << 20));
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
                  "measure seeded random weights of a named shape instead: " +
                    shape_names() +
                    " (the first four llama2.c's tinyllamas, vocabulary 32000 "
                    "above 260K; the others those models' shapes)")
    ->excludes(model);
  cmd->add_option("--type", a->type,
                  "weight type of the --shape model (default F32): " + quant::file_type_names() +
                    " (case-blind); the _S/_M/_L mixes and Q2_K assign types per matrix as llama-quantize "
                    "does");
  cmd->add_option("--save", a->save,
                  "write the --shape model (its --type and --seed) to this GGUF file instead of "
                  "measuring it, one tensor at a time: architecture llama, tensors named as "
                  "llama.cpp names them, a synthetic SentencePiece vocabulary, context of "
                  "--prompt-tokens + --tokens + 1 (at least the shape's own). `ceco bench --model "
                  "FILE` and the reference's llama-bench -m FILE then measure the same weights");
  auto* tokens = cmd->add_option("--tokens", a->tokens,
                                 "tokens to decode (llama-bench's tg128; unless given, fewer "
                                 "where the model's context is shorter)")
    ->capture_default_str()->check(CLI::PositiveNumber);
  auto* prompt_tokens = cmd->add_option("--prompt-tokens", a->prompt_tokens,
                                        "prompt length for the prefill (llama-bench's pp512; "
                                        "unless given, shortened to fit the model's context)")
    ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--threads", a->threads, "compute threads; 0 = all cores (as generate)")
    ->capture_default_str()->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", a->seed, "seed of the random weights and prompt")
    ->capture_default_str();
  cmd->add_option("--sessions", a->sessions,
                  "decode this many sequences, first one at a time, then all in one step as "
                  "the cloud does for concurrent sessions, and compare")
    ->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--device", a->device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--kv-dtype", a->kv_dtype,
                  "what the KV cache holds keys and values in: f16 (half the bytes each decoded "
                  "token's attention reads) or f32")
    ->capture_default_str()->check(CLI::IsMember({"f16", "f32"}));
  cmd->add_flag("--json", a->json, "print one JSON object (decode_tokens_per_s, ...)");
  cmd->callback([a, tokens, prompt_tokens] {
    a->tokens_given = tokens->count() > 0;
    a->prompt_tokens_given = prompt_tokens->count() > 0;
    run_bench(*a);
  });
}

} // namespace ceco::app
