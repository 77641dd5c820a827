#include "model/generation.hpp"

#include <chrono>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include "model/exit_heads.hpp"
#include "model/transformer.hpp"

namespace ceco {

double generation_result::prefill_tokens_per_s() const {
  return prefill_ms > 0 ? double(prompt.size()) / (prefill_ms / 1000.0) : 0.0;
}

double generation_result::decode_tokens_per_s() const {
  return decode_ms > 0 ? double(decode_steps) / (decode_ms / 1000.0) : 0.0;
}

namespace {

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

/// Runs all layers on x [T, d] at `pos`, reading each exit's head on the
/// last row when tracing.
void run_layers(const transformer& model, at::Tensor& x, int64_t pos, kv_cache& cache,
                const generation_options& opts, const std::vector<int>& exit_layers,
                exit_step* step) {
  const int n_layer = model.config().n_layer;
  if (!step) {
    model.forward_layers(x, pos, 0, n_layer, cache);
    return;
  }
  model.forward_to_exits(x, pos, 0, n_layer, cache, exit_layers,
                         [&](size_t i, const at::Tensor& h) {
                           auto r = opts.exits->read(i, h.narrow(0, h.size(0) - 1, 1));
                           step->confidence.push_back(r.confidence);
                           step->tokens.push_back(r.token);
                         });
}

void judge_exits(const generation_options& opts, const std::vector<int>& layers,
                 const std::vector<float>& thresholds, int32_t final_token, exit_step& step) {
  // Standalone measures the deepest exit's token when none fires.
  auto choice = decide_exit(layers, step.confidence, step.tokens, thresholds,
                            opts.min_exit_layer);
  step.exit_layer = choice.layer;
  step.agrees = choice.token == final_token;
}

} // namespace

generation_result generate(const transformer& model, const std::vector<int32_t>& prompt,
                           const generation_options& opts,
                           const std::function<void(int32_t)>& on_token) {
  const auto& cfg = model.config();
  if (prompt.empty())
    throw model_error("generate: the prompt has no tokens");
  if (int(prompt.size()) >= cfg.max_seq)
    throw model_error(fmt::format(
      "generate: the prompt has {} tokens, the model's context holds {}", prompt.size(),
      cfg.max_seq));
  const bool tracing = opts.exits && !opts.exits->empty();
  const auto exit_layers = tracing ? opts.exits->layers() : std::vector<int>{};
  const auto thresholds = tracing ? opts.exits->thresholds(opts.threshold) : std::vector<float>{};

  c10::InferenceMode guard;
  generation_result r;
  r.prompt = prompt;
  r.tokens.reserve(size_t(opts.max_tokens));
  sampler pick(opts.sampling);
  auto cache = model.make_cache(0, cfg.n_layer);
  auto logits = at::empty({cfg.vocab_size}, at::TensorOptions().dtype(at::kFloat));
  auto x_one = at::empty({1, cfg.n_embd}, at::TensorOptions().dtype(at::kFloat).device(model.device()));
  auto logits_dev = model.device().is_cpu()
                      ? logits
                      : at::empty({cfg.vocab_size}, x_one.options());

  // Emits the token chosen from `logits`; false when generation must stop.
  auto emit = [&](exit_step* step) {
    if (!model.device().is_cpu())
      logits.copy_(logits_dev);
    int32_t next = pick.sample(logits.data_ptr<float>(), cfg.vocab_size);
    if (opts.stop_at_eos && next == opts.eos) {
      r.stop_reason = "eos";
      return false;
    }
    if (step) {
      judge_exits(opts, exit_layers, thresholds, next, *step);
      r.exit_trace.push_back(std::move(*step));
    }
    r.tokens.push_back(next);
    if (on_token)
      on_token(next);
    if (int(r.tokens.size()) >= opts.max_tokens) {
      r.stop_reason = "max_tokens";
      return false;
    }
    if (int(prompt.size() + r.tokens.size()) >= cfg.max_seq) {
      r.stop_reason = "context_full";
      return false;
    }
    return true;
  };

  if (opts.max_tokens <= 0) {
    r.stop_reason = "max_tokens";
    return r;
  }

  // -- prefill: the whole prompt in one batch
  auto t0 = clock_type::now();
  auto x = model.embed(prompt);
  exit_step step;
  run_layers(model, x, 0, cache, opts, exit_layers, tracing ? &step : nullptr);
  model.logits_into(x, logits_dev);
  bool more = emit(tracing ? &step : nullptr);
  r.prefill_ms = ms_since(t0);

  // -- decode: one token per step, nothing allocated but the exit trace
  t0 = clock_type::now();
  while (more) {
    int64_t pos = int64_t(prompt.size() + r.tokens.size()) - 1;
    model.embed_into(r.tokens.back(), x_one);
    exit_step s;
    run_layers(model, x_one, pos, cache, opts, exit_layers, tracing ? &s : nullptr);
    model.logits_into(x_one, logits_dev);
    ++r.decode_steps;
    more = emit(tracing ? &s : nullptr);
  }
  r.decode_ms = ms_since(t0);
  return r;
}

} // namespace ceco
