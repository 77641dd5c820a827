#include "model/exit_training.hpp"

#include <fstream>
#include <random>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <torch/optim/adamw.h>

#include "model/generation.hpp"
#include "model/tokenizer.hpp"
#include "model/transformer.hpp"

namespace ceco {

namespace {

/// Throws model_error unless `heads` are for exactly `data`'s exits.
void check_same_exits(const exit_heads& heads, const exit_dataset& data, const char* what) {
  if (heads.layers() != data.exits)
    throw model_error(fmt::format("{}: heads for exits [{}], data for [{}]", what,
                                  fmt::join(heads.layers(), ","), fmt::join(data.exits, ",")));
}

} // namespace

exit_dataset exit_dataset::slice(int64_t begin, int64_t end) const {
  exit_dataset out;
  out.exits = exits;
  for (auto& h : hidden)
    out.hidden.push_back(h.slice(0, begin, end));
  out.teacher = teacher.slice(0, begin, end);
  out.next_token = next_token.slice(0, begin, end);
  return out;
}

std::vector<std::vector<int32_t>> self_generated_sequences(const transformer& model, int64_t n_tokens,
                                                           int seq_len, int32_t bos, uint64_t seed,
                                                           const std::vector<float>& temperatures) {
  if (temperatures.empty())
    throw model_error("self-generated text: no sampling temperature given");
  for (float t : temperatures)
    if (!(t >= 0.0f))
      throw model_error(fmt::format("self-generated text: temperature {} is not >= 0", t));
  std::vector<std::vector<int32_t>> out;
  int64_t total = 0;
  const int length = std::min(seq_len, model.config().max_seq - 2);
  generation_options opts;
  opts.stop_at_eos = true;
  for (uint64_t i = 0; total < n_tokens; ++i) {
    const float temperature = temperatures[i % temperatures.size()];
    std::vector<int32_t> seq{bos};
    opts.sampling.seed = seed * 1000003 + i;
    bool ended = false;
    if (temperature == 0.0f) {
      opts.sampling.temperature = 1.0f;
      std::mt19937_64 rng(opts.sampling.seed);
      const int most = std::max(greedy_opening_tokens, length / 4);
      opts.max_tokens = std::min(std::uniform_int_distribution<int>(greedy_opening_tokens, most)(rng), length);
      auto opening = generate(model, seq, opts);
      seq.insert(seq.end(), opening.tokens.begin(), opening.tokens.end());
      ended = opening.stop_reason != "max_tokens";
    }
    opts.sampling.temperature = temperature;
    opts.max_tokens = length - int(seq.size() - 1);
    if (!ended && opts.max_tokens > 0) {
      auto r = generate(model, seq, opts);
      seq.insert(seq.end(), r.tokens.begin(), r.tokens.end());
    }
    if (seq.size() < 2)
      continue;
    total += int64_t(seq.size() - 1);
    out.push_back(std::move(seq));
  }
  return out;
}

std::vector<std::vector<int32_t>> text_file_sequences(const tokenizer& vocab,
                                                      const std::string& path, int seq_len,
                                                      const char* flag) {
  std::ifstream in(path);
  if (!in)
    throw model_error(fmt::format("{} {}: cannot open", flag, path));
  std::stringstream text;
  text << in.rdbuf();
  return text_sequences(vocab, text.str(), seq_len);
}

std::vector<std::vector<int32_t>> text_sequences(const tokenizer& vocab, const std::string& text,
                                                 int seq_len) {
  auto ids = vocab.encode(text, false);
  std::vector<std::vector<int32_t>> out;
  for (size_t at = 0; at < ids.size(); at += size_t(seq_len)) {
    std::vector<int32_t> seq{vocab.bos()};
    auto end = std::min(ids.size(), at + size_t(seq_len));
    seq.insert(seq.end(), ids.begin() + std::ptrdiff_t(at), ids.begin() + std::ptrdiff_t(end));
    if (seq.size() > 2)
      out.push_back(std::move(seq));
  }
  return out;
}

exit_dataset collect_exit_data(const transformer& model,
                               const std::vector<std::vector<int32_t>>& sequences,
                               const std::vector<int>& exits) {
  exit_heads::check_layers(exits, model.config().n_layer, "exits");
  const int L = model.config().n_layer;
  std::vector<std::vector<at::Tensor>> hidden(exits.size());
  std::vector<at::Tensor> teacher, next;
  {
    c10::InferenceMode guard;
    for (auto& seq : sequences) {
      auto cache = model.make_cache(0, L, int(seq.size()));
      auto x = model.embed(seq);
      model.forward_to_exits(x, 0, 0, L, cache, exits, [&](size_t i, const at::Tensor& h) {
        hidden[i].push_back(h.to(at::kCPU).clone());
      });
      teacher.push_back(model.logits(x).to(at::kCPU));
      std::vector<int64_t> nt(seq.begin() + 1, seq.end());
      nt.push_back(-1);
      next.push_back(at::tensor(nt, at::kLong));
    }
  }
  // Outside inference mode, so that training may use them in autograd.
  exit_dataset d;
  d.exits = exits;
  for (auto& h : hidden)
    d.hidden.push_back(at::cat(h).clone());
  d.teacher = at::cat(teacher).clone();
  d.next_token = at::cat(next).clone();
  return d;
}

exit_heads train_exit_heads(const transformer& model, const exit_dataset& data,
                            const exit_training_options& opts,
                            const std::function<void(size_t, int, float)>& progress) {
  if (opts.loss != "kl" && opts.loss != "ce" && opts.loss != "mix" && opts.loss != "next")
    throw model_error(fmt::format("--loss: '{}' is not a loss; expected kl, ce, mix or next", opts.loss));
  if (data.size() == 0)
    throw model_error("tune-exits: no training positions");
  const auto& cfg = model.config();
  const float eps = cfg.norm_eps;
  auto heads = exit_heads::untrained(model, data.exits);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(opts.seed);

  // Targets, computed once.
  at::Tensor teacher_logp, teacher_p, teacher_top, next = data.next_token;
  {
    at::NoGradGuard no_grad;
    teacher_logp = at::log_softmax(data.teacher, -1);
    teacher_p = teacher_logp.exp();
    teacher_top = data.teacher.argmax(-1);
  }
  const int64_t n = data.size();

  for (size_t i = 0; i < data.exits.size(); ++i) {
    auto norm = model.weights().output_norm.to(at::kCPU).clone().set_requires_grad(true);
    // fp32 even for a quantized classifier: gradients flow through it.
    auto w = model.weights().output.to_tensor().to(at::kCPU).clone().set_requires_grad(opts.own_output);
    at::Tensor a, c, b;
    std::vector<at::Tensor> params;
    params.reserve(5);
    params.push_back(norm);
    if (opts.own_output)
      params.push_back(w);
    if (opts.adapter_hidden > 0) {
      double scale = 1.0 / std::sqrt(double(cfg.n_embd));
      a = at::normal(0.0, scale, {opts.adapter_hidden, cfg.n_embd}, gen).set_requires_grad(true);
      c = at::zeros({opts.adapter_hidden}).set_requires_grad(true);
      b = at::zeros({cfg.n_embd, opts.adapter_hidden}).set_requires_grad(true);  // starts as identity
      params.insert(params.end(), {a, c, b});
    }
    exit_head head;  // the trained tensors, in the inference formula
    head.norm = norm;
    head.output = w;
    head.adapter_a = a;
    head.adapter_c = c;
    head.adapter_b = b;
    torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(opts.lr).weight_decay(0.0));
    const auto& hidden = data.hidden[i];
    for (int step = 0; step < opts.steps; ++step) {
      auto idx = at::randint(0, n, {std::min<int64_t>(opts.batch, n)}, gen, at::kLong);
      if (opts.loss == "next") {
        idx = idx.index_select(0, at::nonzero(next.index_select(0, idx) >= 0).flatten());
        if (idx.numel() == 0)
          continue;
      }
      auto logp = at::log_softmax(head.logits(hidden.index_select(0, idx), eps), -1);
      at::Tensor loss;
      auto kl = [&] {
        return (teacher_p.index_select(0, idx) * (teacher_logp.index_select(0, idx) - logp))
          .sum(-1)
          .mean();
      };
      auto ce = [&] { return at::nll_loss(logp, teacher_top.index_select(0, idx)); };
      if (opts.loss == "kl")
        loss = kl();
      else if (opts.loss == "ce")
        loss = ce();
      else if (opts.loss == "mix")
        loss = opts.kl_weight * kl() + (1.0f - opts.kl_weight) * ce();
      else
        loss = at::nll_loss(logp, next.index_select(0, idx));
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      if (progress && (step % 10 == 0 || step + 1 == opts.steps))
        progress(i, step + 1, loss.item<float>());
    }
    auto& h = heads[i];
    auto dev = model.device();
    h.norm = norm.detach().to(dev);
    if (opts.own_output) {
      h.output = w.detach().to(dev);
      h.own_output = true;
    }
    if (a.defined()) {
      h.adapter_a = a.detach().to(dev);
      h.adapter_c = c.detach().to(dev);
      h.adapter_b = b.detach().to(dev);
    }
  }
  if (opts.confidence_units > 0)
    train_confidence_classifiers(heads, data, opts);
  return heads;
}

std::vector<std::pair<double, double>> fit_sampling_temperatures(exit_heads& heads,
                                                                 const exit_dataset& data) {
  check_same_exits(heads, data, "sampling temperature");
  const int64_t n = data.size();
  if (n == 0)
    throw model_error("sampling temperature: no positions to fit on");
  c10::InferenceMode guard;
  const int64_t used = std::min<int64_t>(n, 16384);
  auto rows = at::linspace(0, double(n - 1), used).to(at::kLong);
  auto teacher_p = at::softmax(data.teacher.index_select(0, rows).to(at::kFloat), -1);
  std::vector<std::pair<double, double>> out;
  for (size_t i = 0; i < heads.size(); ++i) {
    const auto dev = heads[i].norm.device();
    auto z = heads.logits(i, data.hidden[i].index_select(0, rows).to(dev)).to(at::kCPU).to(at::kFloat);
    // Σ min(p, q): the share of drafts from q that speculative sampling
    // accepts against p, 1 − their total variation distance.
    auto overlap = [&](double t) {
      return at::minimum(teacher_p, at::softmax(z / t, -1)).sum(-1).mean().item<double>();
    };
    const double at_one = overlap(1.0);
    double best_t = 1.0, best = at_one;
    for (int k = 10; k <= 80; ++k) {
      const double t = 0.05 * k;
      if (const double v = overlap(t); v > best)
        best = v, best_t = t;
    }
    heads[i].sampling_temperature = float(best_t);
    out.emplace_back(at_one, best);
  }
  return out;
}

void train_confidence_classifiers(exit_heads& heads, const exit_dataset& data,
                                  const exit_training_options& opts) {
  if (opts.confidence_units <= 0)
    throw model_error(fmt::format("confidence classifier: {} units, need at least one",
                                  opts.confidence_units));
  check_same_exits(heads, data, "confidence classifier");
  const int64_t n = data.size();
  if (n == 0)
    throw model_error("confidence classifier: no training positions");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(opts.seed + 7919);
  at::Tensor final_top;
  {
    at::NoGradGuard no_grad;
    final_top = data.teacher.argmax(-1);
  }
  for (size_t i = 0; i < heads.size(); ++i) {
    auto& head = heads[i];
    // The inputs and targets, computed once, in slices: a [slice, vocab]
    // logits block at a time.
    std::vector<at::Tensor> f, t;
    {
      c10::InferenceMode guard;
      const int64_t slice = 4096;
      const auto dev = head.norm.device();
      for (int64_t from = 0; from < n; from += slice) {
        auto h = data.hidden[i].narrow(0, from, std::min(slice, n - from)).to(dev);
        auto z = heads.logits(i, h);
        f.push_back(exit_head::confidence_features(h, z, heads.norm_eps()).to(at::kCPU));
        t.push_back((z.argmax(-1).to(at::kCPU) == final_top.narrow(0, from, h.size(0)))
                      .to(at::kFloat));
      }
    }
    // Outside inference mode, so that autograd may read them.
    auto features = at::cat(f).clone();
    auto target = at::cat(t).clone();
    const int64_t d = features.size(1), units = opts.confidence_units;
    auto a = at::normal(0.0, 1.0 / std::sqrt(double(d)), {units, d}, gen).set_requires_grad(true);
    auto c = at::zeros({units}).set_requires_grad(true);
    auto b = at::zeros({units}).set_requires_grad(true);
    auto bias = at::zeros({1}).set_requires_grad(true);
    torch::optim::AdamW optimizer({a, c, b, bias},
                                  torch::optim::AdamWOptions(opts.lr).weight_decay(0.0));
    for (int step = 0; step < opts.confidence_steps; ++step) {
      auto idx = at::randint(0, n, {std::min<int64_t>(2 * int64_t(opts.batch), n)}, gen, at::kLong);
      auto units_out = at::silu(at::matmul(features.index_select(0, idx), a.t()) + c);
      auto z = at::matmul(units_out, b) + bias;
      auto loss = at::binary_cross_entropy_with_logits(z, target.index_select(0, idx));
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
    }
    const auto dev = head.norm.device();
    head.confidence_a = a.detach().to(dev);
    head.confidence_c = c.detach().to(dev);
    head.confidence_b = b.detach().to(dev);
    head.confidence_d = bias.detach().to(dev);
  }
}

std::vector<exit_quality> evaluate_exit_heads(const exit_heads& heads, const exit_dataset& data,
                                              const std::vector<float>& thresholds,
                                              int min_exit_layer) {
  c10::InferenceMode guard;
  const int64_t n = data.size();
  auto final_top = data.teacher.argmax(-1);
  std::vector<at::Tensor> conf, agree;
  std::vector<exit_quality> out;
  for (size_t i = 0; i < heads.size(); ++i) {
    auto dev = heads[i].norm.device();
    auto h = data.hidden[i].to(dev);
    auto logits_dev = heads.logits(i, h);
    conf.push_back(heads.confidence(i, h, logits_dev).to(at::kCPU));
    auto logits = logits_dev.to(at::kCPU);
    agree.push_back(logits.argmax(-1) == final_top);
    exit_quality q;
    q.layer = heads[i].layer;
    q.agreement = agree.back().to(at::kDouble).mean().item<double>();
    for (float t : thresholds) {
      auto fired = conf.back() >= t;
      auto k = fired.sum().item<int64_t>();
      q.thresholds.push_back({t, double(k) / double(n),
                              k ? (agree.back() & fired).sum().item<double>() / double(k) : 0.0});
    }
    out.push_back(q);
  }
  // The combined decision: the first eligible confident exit in order.
  exit_quality all;
  all.layer = 0;
  for (float t : thresholds) {
    auto taken = at::zeros({n}, at::kBool);
    auto good = at::zeros({n}, at::kBool);
    for (size_t i = 0; i < heads.size(); ++i) {
      if (heads[i].layer < min_exit_layer)
        continue;
      auto now = (conf[i] >= t) & ~taken;
      good = good | (now & agree[i]);
      taken = taken | now;
    }
    auto k = taken.sum().item<int64_t>();
    all.thresholds.push_back({t, double(k) / double(n), k ? good.sum().item<double>() / double(k) : 0.0});
  }
  out.push_back(all);
  return out;
}

} // namespace ceco

namespace ceco {

exit_calibration_data calibration_data(const exit_heads& heads, const exit_dataset& data) {
  check_same_exits(heads, data, "exit calibration");
  c10::InferenceMode guard;
  exit_calibration_data out;
  out.layers = data.exits;
  const auto final_top = data.teacher.argmax(-1);
  for (size_t i = 0; i < heads.size(); ++i) {
    auto dev = heads[i].norm.device();
    auto h = data.hidden[i].to(dev);
    auto logits_dev = heads.logits(i, h);
    auto conf = heads.confidence(i, h, logits_dev).to(at::kCPU).to(at::kFloat).contiguous();
    auto logits = logits_dev.to(at::kCPU).to(at::kFloat);
    auto agree = (logits.argmax(-1) == final_top).to(at::kByte).contiguous();
    out.confidence.emplace_back(conf.data_ptr<float>(), conf.data_ptr<float>() + conf.numel());
    out.agrees.emplace_back(agree.data_ptr<uint8_t>(), agree.data_ptr<uint8_t>() + agree.numel());
  }
  return out;
}

} // namespace ceco
