#include "model/generation_batch.hpp"

#include <algorithm>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include "model/sampler.hpp"

namespace ceco {

generation_batch::generation_batch(std::shared_ptr<const transformer> model)
    : model_(std::move(model)) {
  const auto& cfg = model_->config();
  one_logits_ = at::empty({cfg.vocab_size},
                          at::TensorOptions().dtype(at::kFloat).device(model_->device()));
}

uint64_t generation_batch::add(std::vector<int32_t> prompt, int max_tokens, int32_t eos,
                               sampler_options sampling) {
  const auto& cfg = model_->config();
  if (prompt.empty())
    throw model_error("generation: the prompt has no tokens");
  if (int(prompt.size()) >= cfg.max_seq)
    throw model_error(fmt::format("generation: the prompt has {} tokens, the model's context "
                                  "holds {}",
                                  prompt.size(), cfg.max_seq));
  c10::InferenceMode guard;
  auto s = std::make_unique<sequence>(sequence{next_id_++, std::move(prompt), max_tokens, eos,
                                               model_->make_cache(0, cfg.n_layer), at::Tensor(),
                                               {}, sampling});
  s->tokens.reserve(size_t(std::max(max_tokens, 0)));
  sequences_.push_back(std::move(s));
  return sequences_.back()->id;
}

int32_t generation_batch::choose(sequence& s, const float* logits) {
  const auto pos = int64_t(s.prompt.size() + s.tokens.size()) - 1;
  return cloud_choice(logits, model_->config().vocab_size, s.sampling, pos, -1, {}, probs_, scratch_);
}

bool generation_batch::emit(sequence& s, int32_t next) const {
  if (next == s.eos)
    return false;
  s.tokens.push_back(next);
  return int(s.tokens.size()) < s.max_tokens
         && int(s.prompt.size() + s.tokens.size()) < model_->config().max_seq;
}

generation_batch::step_work generation_batch::step(std::vector<finished>& done) {
  c10::InferenceMode guard;
  const auto& m = *model_;
  const auto& cfg = m.config();
  const int L = cfg.n_layer;
  step_work work;
  auto& more = more_;
  more.assign(sequences_.size(), 1);
  decoding_.clear();
  // Newcomers: each prompt in one forward pass of its own, as generate() does.
  for (size_t i = 0; i < sequences_.size(); ++i) {
    auto& s = *sequences_[i];
    if (!s.x.defined()) {
      s.x = at::empty({1, cfg.n_embd}, one_logits_.options());
      if (s.max_tokens <= 0) {
        more[i] = 0;
        continue;
      }
      auto x = m.embed(s.prompt);
      m.forward_layers(x, 0, 0, L, s.cache);
      m.logits_into(x, one_logits_);
      auto cpu = one_logits_.is_cpu() ? one_logits_ : one_logits_.to(at::kCPU);
      more[i] = emit(s, choose(s, cpu.data_ptr<float>()));
      work.rows += int64_t(s.prompt.size());
      ++work.tokens;
    } else {
      decoding_.push_back(&s);
    }
  }
  // Everyone else: one token each, in one pass over the weights.
  const auto n = int64_t(decoding_.size());
  if (n > 0) {
    steps_.clear();
    for (auto* s : decoding_) {
      m.embed_into(s->tokens.back(), s->x);
      steps_.push_back({&s->x, int64_t(s->prompt.size() + s->tokens.size()) - 1, &s->cache});
    }
    auto& next = next_;
    next.resize(size_t(n));
    if (n == 1) {
      // The one-token path generate() takes.
      m.forward_layers(*steps_[0].x, steps_[0].pos, 0, L, *steps_[0].cache);
      m.logits_into(*steps_[0].x, one_logits_);
      auto cpu = one_logits_.is_cpu() ? one_logits_ : one_logits_.to(at::kCPU);
      next[0] = choose(*decoding_[0], cpu.data_ptr<float>());
    } else {
      m.forward_sequences(steps_, 0, L);
      if (!hidden_.defined() || hidden_.size(0) < n) {
        hidden_ = at::empty({n, cfg.n_embd}, one_logits_.options());
        logits_ = at::empty({n, cfg.vocab_size}, one_logits_.options());
      }
      auto hidden = hidden_.narrow(0, 0, n);
      auto logits = logits_.narrow(0, 0, n);
      if (hidden.is_cpu()) {  // no tensor views per sequence on the decode path
        const int64_t d = cfg.n_embd;
        float* rows = hidden.data_ptr<float>();
        for (int64_t r = 0; r < n; ++r)
          std::copy_n(decoding_[size_t(r)]->x.data_ptr<float>(), d, rows + r * d);
      } else {
        for (int64_t r = 0; r < n; ++r)
          hidden[r].copy_(decoding_[size_t(r)]->x[0]);
      }
      m.logits_rows_into(hidden, logits);
      auto cpu = logits.is_cpu() ? logits : logits.to(at::kCPU);
      for (int64_t r = 0; r < n; ++r)
        next[size_t(r)] = choose(*decoding_[size_t(r)], cpu.data_ptr<float>() + r * cfg.vocab_size);
    }
    work.rows += n;
    work.tokens += n;
    for (size_t i = 0, r = 0; i < sequences_.size(); ++i)
      if (sequences_[i].get() == decoding_[r]) {
        more[i] = emit(*sequences_[i], next[r]);
        if (++r == decoding_.size())
          break;
      }
  }
  // The finished leave, in the order they came.
  size_t kept = 0;
  for (size_t i = 0; i < sequences_.size(); ++i) {
    if (more[i])
      sequences_[kept++] = std::move(sequences_[i]);
    else
      done.push_back({sequences_[i]->id, std::move(sequences_[i]->tokens)});
  }
  sequences_.resize(kept);
  return work;
}

std::vector<uint64_t> generation_batch::clear() {
  std::vector<uint64_t> ids;
  for (auto& s : sequences_)
    ids.push_back(s->id);
  sequences_.clear();
  return ids;
}

const std::vector<int32_t>* generation_batch::tokens_of(uint64_t id) const {
  for (auto& s : sequences_)
    if (s->id == id)
      return &s->tokens;
  return nullptr;
}

} // namespace ceco
