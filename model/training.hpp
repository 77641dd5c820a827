#pragma once

// Training a small LLaMA-shaped model from scratch, with its own BPE
// vocabulary and its exit heads trained jointly (loss = final cross-entropy
// + exit_weight · mean of the exits' cross-entropies, as early-exit LLM
// training does). The training forward is written with autograd-friendly
// ops but computes exactly what transformer::forward_layers computes; a
// test checks the two agree on the written checkpoint.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/config.hpp"
#include "model/tokenizer.hpp"

namespace ceco {

/// SentencePiece-style BPE learned from `text`: <unk>, <s>, </s>, the 256
/// byte pieces, every character seen at least `min_char_count` times, then
/// merges (scored by their order) up to `vocab_size` pieces.
tokenizer train_bpe(const std::string& text, int vocab_size, int min_char_count = 2);

/// Token stream for training: every non-empty line as BOS, its tokens, and
/// the newline piece.
std::vector<int32_t> encode_corpus(const tokenizer& vocab, const std::string& text);

struct training_options {
  std::vector<int> exits;  // exit layers trained with the model
  float exit_weight = 0.5f;
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
