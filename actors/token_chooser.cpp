#include "actors/token_chooser.hpp"

#include <ATen/ATen.h>

#include "model/transformer.hpp"

namespace ceco {

at::Tensor token_chooser::rows(const transformer& m, int64_t n) {
  const auto& cfg = m.config();
  if (!hidden_.defined() || hidden_.size(0) < n) {
    auto opts = at::TensorOptions().dtype(at::kFloat).device(m.device());
    hidden_ = at::empty({n, cfg.n_embd}, opts);
    logits_ = at::empty({n, cfg.vocab_size}, opts);
  }
  return hidden_.narrow(0, 0, n);
}

void token_chooser::choose(const transformer& m, const std::vector<ask>& asks,
                           std::vector<int32_t>& tokens) {
  const auto n = int64_t(asks.size());
  if (n == 0)
    return;
  const int vocab = m.config().vocab_size;
  auto logits = logits_.narrow(0, 0, n);
  m.logits_rows_into(hidden_.narrow(0, 0, n), logits);
  auto cpu = logits.is_cpu() ? logits : logits.to(at::kCPU);
  const float* row = cpu.data_ptr<float>();
  static const sampler_options greedy;
  for (const auto& a : asks) {
    tokens.push_back(cloud_choice(row, vocab, a.sampling ? *a.sampling : greedy, a.position,
                                  a.draft, a.q, probs_, scratch_));
    row += vocab;
  }
}

} // namespace ceco
