#pragma once

// Picks the next token from a row of logits: greedy when temperature is 0,
// else softmax(logits / temperature) restricted to the top-k and then to the
// smallest set whose probability reaches top-p, sampled with a seeded RNG.

#include <cstdint>
#include <random>
#include <vector>

namespace ceco {

struct sampler_options {
  float temperature = 0.0f;  // 0 = greedy (argmax)
  int top_k = 0;             // 0 = no limit
  float top_p = 1.0f;        // 1 = no nucleus cut
  uint64_t seed = 0;
};

/// Whether `o` samples (temperature > 0); else tokens are argmax.
inline bool samples(const sampler_options& o) { return o.temperature > 0.0f; }

/// Where a response's random numbers are used (docs/design.md §5): each
/// site's draw for a position comes from its own stream.
enum class sample_stream : uint32_t {
  cloud = 1,   // a token the cloud decides (and a rejected draft's correction)
  edge = 2,    // a token an edge exit decides or drafts
  accept = 3,  // the cloud's accept/reject draw for a draft
};

/// A uniform number in [0, 1) that depends only on (seed, stream, position):
/// a position's token is the same whenever and however often it is
/// computed (rollbacks, catch-up batches, the cloud strategy's batch), so a
/// seed reproduces a response, and the cloud strategy, naive and
/// collaborative's cloud tokens agree for one seed.
double position_uniform(uint64_t seed, sample_stream stream, int64_t position);

/// The token at cumulative probability `u` in [0, 1) of the distribution
/// `opts` makes of `logits` (temperature, top-k, top-p); argmax when
/// `opts` is greedy. `scratch` is reused between calls.
int32_t sample_at(const float* logits, int n, const sampler_options& opts, double u,
                  std::vector<std::pair<float, int32_t>>& scratch);

/// The probability of each token under `opts` (temperature, top-k, top-p,
/// renormalised; 0 outside the kept candidates) into `probs` (n entries).
/// `opts` must sample.
void sampling_probabilities(const float* logits, int n, const sampler_options& opts,
                            std::vector<double>& probs,
                            std::vector<std::pair<float, int32_t>>& scratch);

/// The distribution a draft was drawn from, as the cloud receives it: q(y)
/// = weights[i] / (the sum of weights, added in order) for y = tokens[i],
/// 0 for every other token. `count` 0: unknown, taken as the point mass at
/// the draft.
struct draft_q {
  const int32_t* tokens = nullptr;
  const float* weights = nullptr;
  int count = 0;
};

/// The most candidates a draft distribution carries (policy.draft_candidates).
constexpr int max_draft_candidates = 64;

/// An edge exit's two tokens at `u` in [0, 1), from one sort of `logits`
/// (`opts` must sample): `token`, sample_at's (the exit's own choice), and
/// `draft` (docs/design.md §5), drawn from the sampling distribution cut to
/// its `max_candidates` likeliest tokens (and to what top-k and top-p keep)
/// and renormalised, which go into `tokens` and `weights` (f32: the very
/// numbers the draft is drawn from, which the cloud verifies with).
struct exit_sample {
  int32_t token = 0;
  int32_t draft = 0;
};
exit_sample sample_with_draft(const float* logits, int n, const sampler_options& opts,
                              int max_candidates, double u, std::vector<int32_t>& tokens,
                              std::vector<float>& weights,
                              std::vector<std::pair<float, int32_t>>& scratch);

/// Speculative sampling's verification of one draft (docs/design.md §5):
/// the draft x was drawn by the edge from `q`; the cloud, whose distribution
/// is `p` (`logits` under `opts`), keeps x with probability min(1, p(x) /
/// q(x)) and otherwise draws from the normalised residual max(0, p - q)
/// (the rule of Leviathan et al.). With q unknown (count 0) it is taken as
/// the point mass at x, which is lossless for any draft: x is kept with
/// probability p(x), else a token is drawn from p without x. Returns the
/// token: x when accepted. `u_accept` and `u_resample` are independent
/// uniforms in [0, 1).
int32_t verify_draft(const float* logits, int n, const sampler_options& opts, int32_t draft,
                     const draft_q& q, double u_accept, double u_resample,
                     std::vector<double>& probs,
                     std::vector<std::pair<float, int32_t>>& scratch);

/// The cloud's token after `position` (docs/design.md §5): argmax when
/// `opts` is greedy; else, for a position without a draft (`draft` < 0), a
/// sample with the cloud's draw for the position, and for a drafted one
/// verify_draft with the position's accept and cloud draws. A draft is
/// accepted exactly when the result equals it.
int32_t cloud_choice(const float* logits, int n, const sampler_options& opts, int64_t position,
                     int32_t draft, const draft_q& q, std::vector<double>& probs,
                     std::vector<std::pair<float, int32_t>>& scratch);

class sampler {
public:
  explicit sampler(sampler_options opts = {});
  /// `logits` has n entries; it is read, not modified.
  int32_t sample(const float* logits, int n);
  const sampler_options& options() const { return opts_; }

private:
  sampler_options opts_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // reused between calls
};

/// Index of the largest entry; ties go to the lowest index.
int32_t argmax(const float* values, int n);
/// max_i softmax(z)_i, computed stably: 1 / sum_j exp(z_j - max z).
float max_probability(const float* logits, int n);

} // namespace ceco
