#include "model/sampler.hpp"

#include <algorithm>
#include <cmath>

namespace ceco {

int32_t argmax(const float* values, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; ++i)
    if (values[i] > values[best])
      best = i;
  return best;
}

float max_probability(const float* logits, int n) {
  float m = logits[argmax(logits, n)];
  double sum = 0.0;
  for (int i = 0; i < n; ++i)
    sum += std::exp(double(logits[i] - m));
  return float(1.0 / sum);
}

sampler::sampler(sampler_options opts) : opts_(opts), rng_(opts.seed) {
  // nop
}

int32_t sampler::sample(const float* logits, int n) {
  if (opts_.temperature <= 0.0f)
    return argmax(logits, n);
  candidates_.resize(size_t(n));
  for (int i = 0; i < n; ++i)
    candidates_[size_t(i)] = {logits[i] / opts_.temperature, i};
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = size_t(n);
  if (opts_.top_k > 0 && opts_.top_k < n) {
    keep = size_t(opts_.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + std::ptrdiff_t(keep),
                      candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  // Softmax over the kept candidates, in place: first -> probability.
  float m = candidates_[0].first;
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    candidates_[i].first = std::exp(candidates_[i].first - m);
    total += candidates_[i].first;
  }
  if (opts_.top_p < 1.0f) {
    double cum = 0.0;
    for (size_t i = 0; i < keep; ++i) {
      cum += candidates_[i].first / total;
      if (cum >= opts_.top_p) {
        keep = i + 1;
        break;
      }
    }
    total = 0.0;
    for (size_t i = 0; i < keep; ++i)
      total += candidates_[i].first;
  }
  double r = std::uniform_real_distribution<double>(0.0, total)(rng_);
  double cum = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    cum += candidates_[i].first;
    if (r < cum)
      return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

} // namespace ceco
