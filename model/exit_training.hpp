#pragma once

// Tuning exit heads on a frozen model (EE-Tuning style): the backbone never
// changes; each head learns to predict what the final layer predicts from
// the hidden state after its layer.
//
// Data: positions of token sequences (sampled from the model itself, or a
// text), with each exit layer's hidden state and the final layer's logits.
// Loss per head, over a batch of positions:
//   kl    KL(final ‖ head), distilling the whole distribution
//   ce    cross-entropy to the final layer's argmax
//   mix   kl_weight · kl + (1 - kl_weight) · ce        (default)
//   next  cross-entropy to the true next token (text only)

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/exit_calibration.hpp"
#include "model/exit_heads.hpp"

namespace ceco {

class transformer;
class tokenizer;

/// Hidden states at each exit and the final layer's logits, per position.
struct exit_dataset {
  std::vector<int> exits;
  std::vector<at::Tensor> hidden;  // per exit: [N, n_embd]
  at::Tensor teacher;              // [N, vocab] final-layer logits
  at::Tensor next_token;           // [N] the following token, -1 at a sequence's end
  int64_t size() const { return teacher.defined() ? teacher.size(0) : 0; }
  /// Rows [begin, end) of everything.
  exit_dataset slice(int64_t begin, int64_t end) const;
};

/// Fewest tokens a greedy self-generated sequence samples (at temperature
/// 1) before it continues greedily: greedy decoding from BOS alone would
/// give the same sequence every time, and a short opening often does too
/// ("Once upon a time").
constexpr int greedy_opening_tokens = 4;
/// Samples sequences from the model itself, `seq_len` tokens each after
/// BOS, until `n_tokens` tokens are collected. Sequence i is sampled at
/// temperatures[i % size] (at least one), so held-out tails hold each
/// temperature; 0 is greedy after a sampled opening of
/// greedy_opening_tokens .. max(that, seq_len / 4) tokens (drawn per
/// sequence).
std::vector<std::vector<int32_t>> self_generated_sequences(const transformer& model, int64_t n_tokens,
                                                           int seq_len, int32_t bos, uint64_t seed,
                                                           const std::vector<float>& temperatures = {1.0f});
/// A text cut into sequences of `seq_len` tokens, each starting with BOS.
std::vector<std::vector<int32_t>> text_sequences(const tokenizer& vocab, const std::string& text,
                                                 int seq_len);
/// text_sequences of the file at `path`; model_error naming `flag` and the
/// path when it cannot be read.
std::vector<std::vector<int32_t>> text_file_sequences(const tokenizer& vocab,
                                                      const std::string& path, int seq_len,
                                                      const char* flag);
exit_dataset collect_exit_data(const transformer& model,
                               const std::vector<std::vector<int32_t>>& sequences,
                               const std::vector<int>& exits);

struct exit_training_options {
  int adapter_hidden = 128;  // residual adapter units; 0 = none
  bool own_output = true;    // train a classifier per head (starts as the model's)
  std::string loss = "mix";
  float kl_weight = 0.5f;
  int steps = 600;
  int batch = 256;
  float lr = 3e-3f;
  uint64_t seed = 1;
  /// Units of each head's confidence classifier (model/exit_heads.hpp),
  /// trained after the head to tell whether its argmax equals the final
  /// layer's; 0 = none (confidence is max softmax).
  int confidence_units = 64;
  int confidence_steps = 3000;
};

/// Trains one head per exit of `data`, then (opts.confidence_units > 0)
/// its confidence classifier; `progress(exit_index, step, loss)` is called
/// every few steps of each head.
exit_heads train_exit_heads(const transformer& model, const exit_dataset& data,
                            const exit_training_options& opts,
                            const std::function<void(size_t, int, float)>& progress = {});

/// Sets each head's sampling_temperature to the one on a grid (0.5 .. 4,
/// step 0.05) whose softmax(logits / it) overlaps most with the final
/// layer's distribution over `data` (mean Σ min(p, q), the rate at which
/// speculative sampling accepts its drafts; at most 16,384 positions,
/// evenly spaced); returns that overlap at 1 and at the fitted temperature,
/// per head.
std::vector<std::pair<double, double>> fit_sampling_temperatures(exit_heads& heads,
                                                                 const exit_dataset& data);

/// Trains a confidence classifier for each head (replacing any it has) on
/// `data`: binary cross-entropy against whether the head's argmax equals the
/// final layer's.
void train_confidence_classifiers(exit_heads& heads, const exit_dataset& data,
                                  const exit_training_options& opts);

struct exit_quality {
  struct at_threshold {
    float threshold;
    double exit_rate;   // share of positions whose confidence reaches it
    double agreement;   // among those, share whose token equals the final's
  };
  int layer = 0;           // 0 for the combined decision over all exits
  double agreement = 0;    // argmax equals the final argmax, over all positions
  std::vector<at_threshold> thresholds;
};

/// Per exit, then the combined decision (first confident exit in order at
/// or after min_exit_layer) as the last entry.
std::vector<exit_quality> evaluate_exit_heads(const exit_heads& heads, const exit_dataset& data,
                                              const std::vector<float>& thresholds,
                                              int min_exit_layer = 1);

/// Each head's confidence and agreement with the final layer at every
/// position of `data` (the heads' layers must be data's exits), for
/// calibrate_exit_thresholds.
exit_calibration_data calibration_data(const exit_heads& heads, const exit_dataset& data);

} // namespace ceco
