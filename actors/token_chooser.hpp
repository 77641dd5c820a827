#pragma once

// The cloud's last piece of work for a step: the final norm and classifier
// over the final states of every position a token is asked after, in one
// product, then the cloud's choice per row (model/sampler.hpp cloud_choice:
// argmax, a sample, or a draft's lossless verification). The cloud layers
// and the last layer stage both end this way. Includes ATen: for .cpp files
// only.

#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/sampler.hpp"
#include "proto/messages.hpp"

namespace ceco {

class transformer;

/// Entry `i` of `q` for the sampler, the entries before it holding `offset`
/// candidates; moves `offset` past it. No counts: a point mass.
inline draft_q entry_q(const draft_distributions& q, size_t i, size_t& offset) {
  if (i >= q.counts.size() || q.counts[i] == 0)
    return {};
  draft_q out{q.tokens.data() + offset, q.weights.data() + offset, q.counts[i]};
  offset += size_t(q.counts[i]);
  return out;
}

class token_chooser {
public:
  /// One row's question: the token after `position`, verifying `draft`
  /// when it is a token (-1: none), under `sampling`.
  struct ask {
    int64_t position = 0;
    int32_t draft = -1;
    const sampler_options* sampling = nullptr;
    draft_q q;  // the draft's distribution (count 0: the point mass)
  };

  /// Room for the final states of `n` rows, [n, n_embd] on the model's
  /// device: fill row i for asks[i], then call choose. Grows to the largest
  /// step and is reused.
  at::Tensor rows(const transformer& m, int64_t n);
  /// The token for each ask, from the rows filled since rows(); appended to
  /// `tokens`.
  void choose(const transformer& m, const std::vector<ask>& asks, std::vector<int32_t>& tokens);

private:
  at::Tensor hidden_;  // [capacity, n_embd]
  at::Tensor logits_;  // [capacity, vocab]
  std::vector<double> probs_;
  std::vector<std::pair<float, int32_t>> scratch_;
};

} // namespace ceco
