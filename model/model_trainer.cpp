#include "model/model_trainer.hpp"

#include <algorithm>
#include <cmath>
#include <random>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/types.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include "model/exit_heads.hpp"
#include "model/gguf_writer.hpp"
#include "model/layer.hpp"

namespace ceco {

struct model_trainer::params {
  at::Tensor emb;  // [V, d], tied classifier
  std::vector<layer_weights> layers;
  at::Tensor out_norm;
  std::vector<at::Tensor> exit_norms;  // one per exit
  rope_table rope;                     // constants, as inference's

  std::vector<at::Tensor> all() {
    std::vector<at::Tensor> v{emb, out_norm};
    for (auto& l : layers)
      v.insert(v.end(), {l.attn_norm, l.wq.tensor("training"), l.wk.tensor("training"),
                         l.wv.tensor("training"), l.wo.tensor("training"), l.ffn_norm,
                         l.w1.tensor("training"), l.w2.tensor("training"), l.w3.tensor("training")});
    v.insert(v.end(), exit_norms.begin(), exit_norms.end());
    return v;
  }
};

namespace {

/// Final logits and each exit's, for tokens [B, T]: the reference layer
/// (model/layer.hpp) over whole windows, under autograd. With `dropout`
/// (training), layer il is skipped for each sequence with probability
/// dropout · il / (n_layer - 1), drawn from `gen`.
std::vector<at::Tensor> forward(model_trainer::params& p, const model_config& c,
                                const std::vector<int>& exits, const at::Tensor& tokens,
                                float dropout = 0, at::Generator* gen = nullptr) {
  const int64_t B = tokens.size(0), T = tokens.size(1);
  auto x = p.emb.index_select(0, tokens.flatten()).view({B, T, c.n_embd});
  auto attend = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    return causal_attention(rope(q, p.rope, 0, c.n_head), rope(k, p.rope, 0, c.n_head_kv), v, 0,
                            c);
  };
  std::vector<at::Tensor> out;
  for (int il = 0; il < c.n_layer; ++il) {
    const double skip = c.n_layer > 1 ? double(dropout) * il / (c.n_layer - 1) : 0.0;
    if (skip > 0 && gen) {
      // keep [B, 1, 1]: 1 where the sequence runs this layer
      auto keep = at::bernoulli(at::full({B, 1, 1}, 1.0 - skip), *gen);
      x = x + keep * (layer_forward(x, p.layers[size_t(il)], c.norm_eps, attend) - x);
    } else {
      x = layer_forward(x, p.layers[size_t(il)], c.norm_eps, attend);
    }
    for (size_t e = 0; e < exits.size(); ++e)
      if (exits[e] == il + 1) {
        exit_head head;  // the logit lens with its own norm, tied classifier
        head.norm = p.exit_norms[e];
        head.output = p.emb;
        out.push_back(head.logits(x, c.norm_eps));
      }
  }
  out.insert(out.begin(), project(rms_norm(x, p.out_norm, c.norm_eps), p.emb));
  return out;
}

} // namespace

model_trainer::model_trainer(model_config cfg, training_options opts)
  : cfg_(cfg), opts_(std::move(opts)), p_(std::make_unique<params>()) {
  cfg_.validate("train");
  for (int e : opts_.exits)
    if (e < 1 || e >= cfg_.n_layer)
      throw model_error(fmt::format("--exits: exit after layer {} is outside 1..{}", e, cfg_.n_layer - 1));
  if (!(opts_.exit_distill >= 0 && opts_.exit_distill <= 1))
    throw model_error(fmt::format("train: exit_distill is {}; expected 0..1", opts_.exit_distill));
  if (!(opts_.layer_dropout >= 0 && opts_.layer_dropout <= 0.9f))
    throw model_error(fmt::format("train: layer_dropout is {}; expected 0..0.9", opts_.layer_dropout));
  auto gen = at::make_generator<at::CPUGeneratorImpl>(opts_.seed);
  const int64_t d = cfg_.n_embd, dkv = cfg_.n_embd_kv(), ff = cfg_.n_ff;
  const double std_out = 0.02 / std::sqrt(2.0 * cfg_.n_layer);
  auto init = [&](std::vector<int64_t> shape, double sd) {
    return at::normal(0.0, sd, shape, gen).set_requires_grad(true);
  };
  auto ones = [&](int64_t n) { return at::ones({n}).set_requires_grad(true); };
  p_->emb = init({cfg_.vocab_size, d}, 0.02);
  p_->out_norm = ones(d);
  for (int il = 0; il < cfg_.n_layer; ++il)
    p_->layers.push_back(layer_weights{ones(d), init({d, d}, 0.02), init({dkv, d}, 0.02), init({dkv, d}, 0.02),
                          init({d, d}, std_out), ones(d), init({ff, d}, 0.02),
                          init({d, ff}, std_out), init({ff, d}, 0.02)});
  for (size_t e = 0; e < opts_.exits.size(); ++e)
    p_->exit_norms.push_back(ones(d));
  p_->rope = rope_table::build(cfg_);
}

model_trainer::~model_trainer() = default;

void model_trainer::train(const std::vector<int32_t>& tokens,
                          const std::function<void(int, float)>& progress) {
  const int64_t T = std::min(opts_.seq_len, cfg_.max_seq);
  if (int64_t(tokens.size()) < T + 2)
    throw model_error(fmt::format("train: {} tokens of text, need more than {}", tokens.size(), T + 1));
  auto data = at::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()), at::kLong);
  auto params = p_->all();
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(opts_.lr).betas({0.9, 0.95}).weight_decay(0.01));
  std::mt19937_64 rng(opts_.seed);
  // Layer dropout's draws, apart from the initialisation's.
  auto dropout_gen = at::make_generator<at::CPUGeneratorImpl>(opts_.seed ^ 0x5eed'dd0f'0ca7'1a7eULL);
  std::uniform_int_distribution<int64_t> start(0, int64_t(tokens.size()) - T - 1);
  for (int step = 0; step < opts_.steps; ++step) {
    // Warmup, then cosine decay to a tenth.
    double lr = opts_.lr;
    if (step < opts_.warmup)
      lr *= double(step + 1) / double(opts_.warmup);
    else
      lr *= 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * double(step - opts_.warmup) /
                                          double(std::max(1, opts_.steps - opts_.warmup))));
    for (auto& g : opt.param_groups())
      static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    std::vector<at::Tensor> xs, ys;
    for (int b = 0; b < opts_.batch; ++b) {
      auto s = start(rng);
      xs.push_back(data.narrow(0, s, T));
      ys.push_back(data.narrow(0, s + 1, T));
    }
    auto x = at::stack(xs), y = at::stack(ys).flatten();
    auto outs = forward(*p_, cfg_, opts_.exits, x, opts_.layer_dropout, &dropout_gen);
    auto ce = [&](const at::Tensor& logits) {
      return at::cross_entropy_loss(logits.reshape({-1, cfg_.vocab_size}), y);
    };
    auto loss = ce(outs[0]);
    auto final_loss = loss.item<float>();
    if (outs.size() > 1) {
      at::Tensor teacher;  // the final layer's log-probabilities [B·T, V], no gradient
      if (opts_.exit_distill > 0)
        teacher = at::log_softmax(outs[0].detach().reshape({-1, cfg_.vocab_size}), -1);
      auto exit_loss = [&](const at::Tensor& logits) {
        auto l = ce(logits);
        if (opts_.exit_distill <= 0)
          return l;
        auto student = at::log_softmax(logits.reshape({-1, cfg_.vocab_size}), -1);
        // KL(teacher || student), averaged over positions
        auto kl = (teacher.exp() * (teacher - student)).sum(-1).mean();
        return (1 - opts_.exit_distill) * l + opts_.exit_distill * kl;
      };
      auto exits_loss = exit_loss(outs[1]);
      for (size_t i = 2; i < outs.size(); ++i)
        exits_loss = exits_loss + exit_loss(outs[i]);
      loss = loss + opts_.exit_weight * exits_loss / double(outs.size() - 1);
    }
    opt.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(params, 1.0);
    opt.step();
    if (progress)
      progress(step + 1, final_loss);
  }
}

float model_trainer::evaluate(const std::vector<int32_t>& tokens, int windows) {
  at::NoGradGuard no_grad;
  const int64_t T = std::min(opts_.seq_len, cfg_.max_seq);
  auto data = at::tensor(std::vector<int64_t>(tokens.begin(), tokens.end()), at::kLong);
  double total = 0;
  int n = 0;
  for (int64_t s = 0; s + T + 1 < int64_t(tokens.size()) && n < windows; s += T, ++n) {
    auto logits = forward(*p_, cfg_, {}, data.narrow(0, s, T).unsqueeze(0))[0];
    total += at::cross_entropy_loss(logits.reshape({-1, cfg_.vocab_size}), data.narrow(0, s + 1, T))
               .item<double>();
  }
  return n ? float(total / n) : 0.0f;
}

at::Tensor model_trainer::logits(const std::vector<int32_t>& ids) {
  at::NoGradGuard no_grad;
  auto x = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong).unsqueeze(0);
  return forward(*p_, cfg_, {}, x)[0][0];
}

void model_trainer::save(const std::string& model_path, const std::string& heads_path,
                         const tokenizer& vocab) const {
  if (vocab.vocab_size() != cfg_.vocab_size)
    throw model_error(fmt::format("train: the vocabulary has {} pieces, the model {}",
                                  vocab.vocab_size(), cfg_.vocab_size));
  at::NoGradGuard no_grad;
  gguf_writer w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", "ceco");
  w.set_uint32("llama.context_length", uint32_t(cfg_.max_seq));
  w.set_uint32("llama.embedding_length", uint32_t(cfg_.n_embd));
  w.set_uint32("llama.feed_forward_length", uint32_t(cfg_.n_ff));
  w.set_uint32("llama.block_count", uint32_t(cfg_.n_layer));
  w.set_uint32("llama.attention.head_count", uint32_t(cfg_.n_head));
  w.set_uint32("llama.attention.head_count_kv", uint32_t(cfg_.n_head_kv));
  w.set_uint32("llama.rope.dimension_count", uint32_t(cfg_.head_dim()));
  w.set_float32("llama.rope.freq_base", cfg_.rope_theta);
  w.set_float32("llama.attention.layer_norm_rms_epsilon", cfg_.norm_eps);
  w.set_string("tokenizer.ggml.model", "llama");
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int32_t> types;
  for (int i = 0; i < vocab.vocab_size(); ++i) {
    auto piece = vocab.piece(i);
    std::string spm;
    for (char ch : piece)
      spm += ch == ' ' ? std::string("\xe2\x96\x81") : std::string(1, ch);
    pieces.push_back(spm);
    scores.push_back(vocab.score(i));
    switch (vocab.kind(i)) {
      case token_kind::unknown: types.push_back(2); break;
      case token_kind::control: types.push_back(3); break;
      case token_kind::byte: types.push_back(6); break;
      case token_kind::unused: types.push_back(5); break;
      default: types.push_back(1);
    }
  }
  w.set_string_array("tokenizer.ggml.tokens", pieces);
  w.set_float32_array("tokenizer.ggml.scores", scores);
  w.set_int32_array("tokenizer.ggml.token_type", types);
  w.set_uint32("tokenizer.ggml.bos_token_id", uint32_t(vocab.bos()));
  w.set_uint32("tokenizer.ggml.eos_token_id", uint32_t(vocab.eos()));
  auto put = [&](const std::string& name, const at::Tensor& t) {
    auto c = t.detach().contiguous();
    std::vector<int64_t> ne(c.sizes().rbegin(), c.sizes().rend());
    w.add_tensor(name, ne, c.data_ptr<float>());
  };
  put("token_embd.weight", p_->emb);
  put("output_norm.weight", p_->out_norm);
  for (int il = 0; il < cfg_.n_layer; ++il) {
    auto& l = p_->layers[size_t(il)];
    auto n = [&](const char* s) { return fmt::format("blk.{}.{}.weight", il, s); };
    put(n("attn_norm"), l.attn_norm);
    put(n("attn_q"), l.wq.tensor("saving"));
    put(n("attn_k"), l.wk.tensor("saving"));
    put(n("attn_v"), l.wv.tensor("saving"));
    put(n("attn_output"), l.wo.tensor("saving"));
    put(n("ffn_norm"), l.ffn_norm);
    put(n("ffn_gate"), l.w1.tensor("saving"));
    put(n("ffn_down"), l.w2.tensor("saving"));
    put(n("ffn_up"), l.w3.tensor("saving"));
  }
  w.write(model_path);

  if (opts_.exits.empty() || heads_path.empty())
    return;
  gguf_writer h;
  h.set_string("general.architecture", "ceco-exit-heads");
  h.set_int32_array("ceco.exit_heads.layers",
                    std::vector<int32_t>(opts_.exits.begin(), opts_.exits.end()));
  h.set_uint32("ceco.exit_heads.n_embd", uint32_t(cfg_.n_embd));
  h.set_uint32("ceco.exit_heads.vocab_size", uint32_t(cfg_.vocab_size));
  for (size_t e = 0; e < opts_.exits.size(); ++e) {
    auto c = p_->exit_norms[e].detach().contiguous();
    h.add_tensor(fmt::format("exit.{}.norm.weight", opts_.exits[e]), {cfg_.n_embd}, c.data_ptr<float>());
  }
  h.write(heads_path);
}

} // namespace ceco
