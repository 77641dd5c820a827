#pragma once

// Greedy generations of several sequences advanced together, one step at a
// time: the cloud strategy's continuous batching. A step prefills, one by
// one, the prompts added since the step before, and decodes one token of
// every other sequence in one forward_sequences call, so the weights are
// read once per layer for all of them. A sequence joins at the next step and
// leaves when it is done; each one's tokens are generate()'s for it alone.

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/kv_cache.hpp"
#include "model/sampler.hpp"
#include "model/transformer.hpp"

namespace ceco {

class generation_batch {
public:
  explicit generation_batch(std::shared_ptr<const transformer> model);

  /// Adds a sequence (greedy unless `sampling` samples: then the token
  /// after position i is sample_at with position_uniform(seed, cloud, i);
  /// stops at `eos`, after `max_tokens`, or when the context is full);
  /// returns its id. model_error for an empty prompt or one the context
  /// cannot hold.
  uint64_t add(std::vector<int32_t> prompt, int max_tokens, int32_t eos,
               sampler_options sampling = {});

  struct finished {
    uint64_t id = 0;
    std::vector<int32_t> tokens;
  };
  /// The work one step did, for a cost model.
  struct step_work {
    int64_t rows = 0;    // rows through every layer (prompts and decoded tokens)
    int64_t tokens = 0;  // classifier rows (one per sequence stepped)
  };
  /// Steps every sequence once; those that finish leave the batch and are
  /// appended to `done`.
  step_work step(std::vector<finished>& done);

  /// Drops every sequence (after a failed step); their ids.
  std::vector<uint64_t> clear();

  /// The tokens made so far by a sequence still in the batch; null for
  /// one that is not (finished, or never added).
  const std::vector<int32_t>* tokens_of(uint64_t id) const;

  bool empty() const { return sequences_.empty(); }
  size_t size() const { return sequences_.size(); }

private:
  struct sequence {
    uint64_t id = 0;
    std::vector<int32_t> prompt;
    int max_tokens = 0;
    int32_t eos = 0;
    kv_cache cache;
    at::Tensor x;  // [1, n_embd]: the next token's row while decoding
    std::vector<int32_t> tokens;
    sampler_options sampling;
  };
  /// The sequence's next token from its logits row.
  int32_t choose(sequence& s, const float* logits);
  /// Appends `next` unless it ends the sequence; false when it is done.
  bool emit(sequence& s, int32_t next) const;

  std::shared_ptr<const transformer> model_;
  std::vector<std::unique_ptr<sequence>> sequences_;
  uint64_t next_id_ = 0;
  // Reused by every step: no allocation per token once grown.
  std::vector<transformer::sequence_step> steps_;
  std::vector<sequence*> decoding_;
  std::vector<char> more_;     // per sequence: not done after this step
  std::vector<int32_t> next_;  // per decoding sequence: its token
  at::Tensor hidden_;  // [rows, n_embd]
  at::Tensor logits_;  // [rows, vocab]
  at::Tensor one_logits_;  // [vocab]
  std::vector<std::pair<float, int32_t>> scratch_;  // sampling's candidates
  std::vector<double> probs_;                        // cloud_choice's (unused without a draft)
};

} // namespace ceco
