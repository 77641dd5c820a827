#pragma once

// Training a small LLaMA-shaped model from scratch (its vocabulary comes
// from model/bpe_learner.hpp), with its exit heads trained jointly (loss =
// final cross-entropy + exit_weight · mean of the exits' losses, as
// early-exit LLM training does). Two LayerSkip-style options make shallow
// exits closer to the final layer: an exit's loss may be partly a
// distillation of the final layer's distribution (exit_distill), and layers
// may be skipped at random during training, more often the deeper they are
// (layer_dropout), so that later layers learn to refine what earlier ones
// already predict rather than to rewrite it. The training forward is the reference
// layer of model/layer.hpp under autograd, so it computes what
// transformer::forward_layers computes; a test checks the two agree on the
// written checkpoint.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/config.hpp"
#include "model/tokenizer.hpp"

namespace ceco {

struct training_options {
  std::vector<int> exits;  // exit layers trained with the model
  float exit_weight = 0.5f;
  /// Share of each exit's loss that is the KL divergence from the final
  /// layer's distribution (detached) to the exit's, the rest its
  /// cross-entropy on the next token: 0..1.
  float exit_distill = 0.0f;
  /// Layer l (0-based, of L) is skipped (its residual update left out) for
  /// a sequence of the batch with probability layer_dropout · l / (L - 1):
  /// never the first, most often the last. 0..0.9; training only.
  float layer_dropout = 0.0f;
  int steps = 1000;
  int batch = 32;
  int seq_len = 128;
  float lr = 3e-3f;
  int warmup = 50;
  uint64_t seed = 1;
};

class model_trainer {
public:
  model_trainer(model_config cfg, training_options opts);
  ~model_trainer();

  /// Runs the optimisation on `tokens`; `progress(step, loss)` after each step.
  void train(const std::vector<int32_t>& tokens,
             const std::function<void(int, float)>& progress = {});
  /// Mean cross-entropy of the final layer on windows of `tokens`.
  float evaluate(const std::vector<int32_t>& tokens, int windows);
  /// Final-layer logits [T, vocab] of one sequence, by the training forward.
  at::Tensor logits(const std::vector<int32_t>& ids);

  /// The model (GGUF, with `vocab`) and its exit heads (ceco's heads GGUF).
  void save(const std::string& model_path, const std::string& heads_path,
            const tokenizer& vocab) const;

  const model_config& config() const { return cfg_; }

  struct params;  // the trainable tensors (training.cpp)

private:
  model_config cfg_;
  training_options opts_;
  std::unique_ptr<params> p_;
};

} // namespace ceco
