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

namespace {

/// The kept candidates of `opts` over `logits` into `c[0, keep)`, each
/// `first` an unnormalised probability; returns keep and their total.
size_t candidates(const float* logits, int n, const sampler_options& opts,
                  std::vector<std::pair<float, int32_t>>& c, double& total) {
  c.resize(size_t(n));
  for (int i = 0; i < n; ++i)
    c[size_t(i)] = {logits[i] / opts.temperature, i};
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = size_t(n);
  if (opts.top_k > 0 && opts.top_k < n) {
    keep = size_t(opts.top_k);
    std::partial_sort(c.begin(), c.begin() + std::ptrdiff_t(keep), c.end(), by_logit);
  } else {
    std::sort(c.begin(), c.end(), by_logit);
  }
  // Softmax over the kept candidates, in place: first -> probability.
  float m = c[0].first;
  total = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    c[i].first = std::exp(c[i].first - m);
    total += c[i].first;
  }
  if (opts.top_p < 1.0f) {
    double cum = 0.0;
    for (size_t i = 0; i < keep; ++i) {
      cum += c[i].first / total;
      if (cum >= opts.top_p) {
        keep = i + 1;
        break;
      }
    }
    total = 0.0;
    for (size_t i = 0; i < keep; ++i)
      total += c[i].first;
  }
  return keep;
}

/// The candidate at `r` in [0, total) of the cumulative weights.
int32_t pick(const std::vector<std::pair<float, int32_t>>& c, size_t keep, double r) {
  double cum = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    cum += c[i].first;
    if (r < cum)
      return c[i].second;
  }
  return c[keep - 1].second;
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

} // namespace

double position_uniform(uint64_t seed, sample_stream stream, int64_t position) {
  uint64_t h = splitmix64(seed);
  h = splitmix64(h ^ (uint64_t(stream) << 56) ^ uint64_t(position));
  return double(h >> 11) * (1.0 / 9007199254740992.0);  // 53 bits: [0, 1)
}

int32_t sample_at(const float* logits, int n, const sampler_options& opts, double u,
                  std::vector<std::pair<float, int32_t>>& scratch) {
  if (!samples(opts))
    return argmax(logits, n);
  double total = 0.0;
  size_t keep = candidates(logits, n, opts, scratch, total);
  return pick(scratch, keep, u * total);
}

void sampling_probabilities(const float* logits, int n, const sampler_options& opts,
                            std::vector<double>& probs,
                            std::vector<std::pair<float, int32_t>>& scratch) {
  double total = 0.0;
  size_t keep = candidates(logits, n, opts, scratch, total);
  probs.assign(size_t(n), 0.0);
  for (size_t i = 0; i < keep; ++i)
    probs[size_t(scratch[i].second)] = scratch[i].first / total;
}

exit_sample sample_with_draft(const float* logits, int n, const sampler_options& opts,
                              int max_candidates, double u, std::vector<int32_t>& tokens,
                              std::vector<float>& weights,
                              std::vector<std::pair<float, int32_t>>& scratch) {
  double total = 0.0;
  const size_t all = candidates(logits, n, opts, scratch, total);
  exit_sample out;
  out.token = pick(scratch, all, u * total);
  const size_t keep = std::min(all, size_t(std::clamp(max_candidates, 1, max_draft_candidates)));
  tokens.clear();
  weights.clear();
  double kept = 0.0;
  for (size_t i = 0; i < keep; ++i)
    kept += scratch[i].first;
  double sum = 0.0;  // of the f32 weights, in order: as the cloud adds them
  for (size_t i = 0; i < keep; ++i) {
    tokens.push_back(scratch[i].second);
    weights.push_back(float(scratch[i].first / kept));
    sum += weights.back();
  }
  const double r = u * sum;
  double cum = 0.0;
  out.draft = tokens[keep - 1];
  for (size_t i = 0; i < keep; ++i)
    if (r < (cum += weights[i])) {
      out.draft = tokens[i];
      break;
    }
  return out;
}

namespace {

/// q(token) of a draft distribution with `count` > 0.
double q_of(const draft_q& q, double total, int32_t token) {
  for (int i = 0; i < q.count; ++i)
    if (q.tokens[i] == token)
      return double(q.weights[i]) / total;
  return 0.0;
}

/// Leviathan et al.'s rule with the draft's distribution known: keep x with
/// probability min(1, p(x) / q(x)), else draw from max(0, p - q).
int32_t verify_with_q(int n, int32_t draft, const draft_q& q, double u_accept, double u_resample,
                      std::vector<double>& probs) {
  double total = 0.0;
  for (int i = 0; i < q.count; ++i)
    total += q.weights[i];
  const double px = probs[size_t(draft)], qx = q_of(q, total, draft);
  if (u_accept * qx < px)
    return draft;
  // The residual, in place: p(y) - q(y) where positive.
  for (int i = 0; i < q.count; ++i)
    if (q.tokens[i] >= 0 && q.tokens[i] < n)
      probs[size_t(q.tokens[i])] = std::max(0.0, probs[size_t(q.tokens[i])] - q.weights[i] / total);
  double rest = 0.0;
  for (int i = 0; i < n; ++i)
    rest += probs[size_t(i)];
  if (rest <= 0.0)
    return draft;
  const double r = u_resample * rest;
  double cum = 0.0;
  int32_t last = draft;
  for (int i = 0; i < n; ++i) {
    if (probs[size_t(i)] <= 0.0)
      continue;
    last = i;
    if (r < (cum += probs[size_t(i)]))
      return i;
  }
  return last;
}

} // namespace

int32_t verify_draft(const float* logits, int n, const sampler_options& opts, int32_t draft,
                     const draft_q& q, double u_accept, double u_resample,
                     std::vector<double>& probs,
                     std::vector<std::pair<float, int32_t>>& scratch) {
  if (!samples(opts))
    return argmax(logits, n);
  sampling_probabilities(logits, n, opts, probs, scratch);
  if (q.count > 0 && draft >= 0 && draft < n)
    return verify_with_q(n, draft, q, u_accept, u_resample, probs);
  const double px = draft >= 0 && draft < n ? probs[size_t(draft)] : 0.0;
  if (u_accept < px)
    return draft;
  // The residual max(0, p - q) with q the point mass at the draft: p
  // without the draft, renormalised.
  const double rest = 1.0 - px;
  if (rest <= 0.0)
    return draft;
  double r = u_resample * rest, cum = 0.0;
  int32_t last = -1;
  for (int i = 0; i < n; ++i) {
    if (i == draft || probs[size_t(i)] <= 0.0)
      continue;
    last = i;
    cum += probs[size_t(i)];
    if (r < cum)
      return i;
  }
  return last >= 0 ? last : draft;
}

int32_t cloud_choice(const float* logits, int n, const sampler_options& opts, int64_t position,
                     int32_t draft, const draft_q& q, std::vector<double>& probs,
                     std::vector<std::pair<float, int32_t>>& scratch) {
  if (!samples(opts))
    return argmax(logits, n);
  const double u_cloud = position_uniform(opts.seed, sample_stream::cloud, position);
  if (draft < 0)
    return sample_at(logits, n, opts, u_cloud, scratch);
  return verify_draft(logits, n, opts, draft, q,
                      position_uniform(opts.seed, sample_stream::accept, position), u_cloud, probs,
                      scratch);
}

int32_t sampler::sample(const float* logits, int n) {
  if (!samples(opts_))
    return argmax(logits, n);
  double total = 0.0;
  size_t keep = candidates(logits, n, opts_, candidates_, total);
  double r = std::uniform_real_distribution<double>(0.0, total)(rng_);
  return pick(candidates_, keep, r);
}

} // namespace ceco
