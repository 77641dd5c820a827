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
