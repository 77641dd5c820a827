#pragma once

// Early-exit heads. The head after layer `layer` maps that layer's hidden
// state h to logits:
//     n = rmsnorm(h) ⊙ norm
//     n = n + B · silu(A · n + c)          (optional residual adapter)
//     logits = W · n                       (W: own matrix, or the model's)
// Untrained heads reuse the model's final norm and classifier ("logit lens").
// Confidence is max softmax(logits), or, for a head with a confidence
// classifier (CALM's early-exit classifier, trained by ceco tune-exits), its
// estimate that the head's argmax equals the final layer's:
//     f = [rmsnorm(h) without weight, log max softmax, top-1 − top-2 logit,
//          entropy of softmax]                                   [n_embd + 3]
//     confidence = sigmoid(b · silu(A · f + c) + d)
// An exit fires when confidence >= its θ
// (docs/design.md §1): policy.threshold when set, else the exit's calibrated
// threshold from the heads file, else default_exit_threshold.
//
// File format: GGUF v3 with
//   ceco.exit_heads.version       uint32: 3 (2 before confidence classifiers, absent
//                                 in files before thresholds: 1)
//   ceco.exit_heads.layers        int32 array: the exits, ascending
//   ceco.exit_heads.n_embd        uint32
//   ceco.exit_heads.vocab_size    uint32
//   ceco.exit_heads.thresholds    float32 array, one per exit in layers' order
//                                 (optional: calibrated, model/exit_calibration.hpp)
//   ceco.exit_heads.calibration.tokens            int32 array: positions each rests on
//   ceco.exit_heads.calibration.target_agreement  float32
//   ceco.exit_heads.calibration.min_exit_layer    uint32
//   ceco.exit_heads.calibration.data              string: what it was calibrated on
//   ceco.exit_heads.calibration.joint             uint32: 1 = for the file's exits together
//                                                 only (a load of other exits ignores them)
//   ceco.exit_heads.sampling_temperatures  float32 array, one per exit (optional, 1 when
//                                 absent): the head's logits are divided by it before an
//                                 exit's token or draft is sampled (fitted by tune-exits)
//   exit.<L>.norm.weight          [n_embd]
//   exit.<L>.output.weight        [n_embd, vocab] (ggml order; optional)
//   exit.<L>.adapter_a.weight     [n_embd, hidden]  (optional, with the two below)
//   exit.<L>.adapter_a.bias       [hidden]
//   exit.<L>.adapter_b.weight     [hidden, n_embd]
//   exit.<L>.confidence_a.weight  [n_embd + 3, units]  (optional, with the three below)
//   exit.<L>.confidence_a.bias    [units]
//   exit.<L>.confidence_b.weight  [units]
//   exit.<L>.confidence_b.bias    [1]

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/config.hpp"
#include "model/sampler.hpp"
#include "model/weight_matrix.hpp"

namespace ceco {

class transformer;

/// The θ of every exit when neither policy.threshold nor the heads file says.
constexpr float default_exit_threshold = 0.8f;
/// The heads file's format version this build writes (and the newest it reads).
constexpr uint32_t exit_heads_file_version = 3;
/// Inputs of a confidence classifier beyond the hidden state (see above).
constexpr int64_t confidence_extra_features = 3;

/// How the thresholds in a heads file were calibrated.
struct exit_heads_calibration {
  double target_agreement = 0;  // share of emitted tokens equal to the final layer's
  int min_exit_layer = 1;
  std::string data;             // what the positions were
  bool joint = false;           // thresholds for these exits together only (lookahead)
};

struct exit_head {
  int layer = 0;          // exit after this many layers
  at::Tensor norm;        // [n_embd]
  weight_matrix output;   // [vocab, n_embd]
  at::Tensor adapter_a;   // [hidden, n_embd] or undefined
  at::Tensor adapter_c;   // [hidden]
  at::Tensor adapter_b;   // [n_embd, hidden]
  at::Tensor confidence_a;  // [units, n_embd + 3] or undefined: confidence is max softmax
  at::Tensor confidence_c;  // [units]
  at::Tensor confidence_b;  // [units]
  at::Tensor confidence_d;  // [1]
  bool own_output = false;  // false: `output` is the model's classifier
  std::optional<float> threshold;  // calibrated θ of this exit, when the file has one
  /// Divides the logits before sampling: fitted so that softmax(logits / it)
  /// overlaps most with the final layer's distribution (Σ min(p, q)). The
  /// exit decision and its argmax do not use it.
  float sampling_temperature = 1.0f;
  int64_t calibration_tokens = 0;  // positions at or above it in the calibration

  /// The head formula above: h [..., n_embd] -> logits [..., vocab]. Plain
  /// tensor ops, so the trainers run it under autograd.
  at::Tensor logits(const at::Tensor& h, float norm_eps) const;
  /// The classifier's input f (above) for h [..., n_embd] and its logits.
  static at::Tensor confidence_features(const at::Tensor& h, const at::Tensor& logits,
                                        float norm_eps);
  /// Confidence [...] of h [..., n_embd] with its logits [..., vocab]: the
  /// classifier's when the head has one, else max softmax.
  at::Tensor confidence(const at::Tensor& h, const at::Tensor& logits, float norm_eps) const;
  bool has_confidence_classifier() const { return confidence_a.defined(); }
};

/// What one head says about one position.
struct exit_reading {
  float confidence = 0;  // the head's confidence (classifier, else max softmax)
  int32_t token = 0;     // argmax
};

class exit_heads {
public:
  exit_heads() = default;

  /// Logit-lens heads (final norm + classifier) after each of `layers`.
  static exit_heads untrained(const transformer& model, std::vector<int> layers);
  /// Heads from a file; `layers`, when not empty, selects and orders them
  /// and each must be in the file.
  static exit_heads load(const std::string& path, const transformer& model,
                         std::vector<int> layers = {});
  void save(const std::string& path) const;

  /// Rejects layers outside 1 .. n_layer-1 or not strictly ascending.
  static void check_layers(const std::vector<int>& layers, int n_layer, const std::string& what);

  bool empty() const { return heads_.empty(); }
  size_t size() const { return heads_.size(); }
  const exit_head& operator[](size_t i) const { return heads_[i]; }
  exit_head& operator[](size_t i) { return heads_[i]; }
  std::vector<int> layers() const;
  const std::string& source() const { return source_; }

  /// Whether every head has a calibrated threshold.
  bool calibrated() const;
  /// The θ of each exit, in order: `theta` for all when set (policy.threshold,
  /// --threshold: the override), else each head's calibrated threshold, else
  /// default_exit_threshold for all.
  std::vector<float> thresholds(std::optional<float> theta) const;
  /// Where thresholds(theta) come from: "set", "calibrated" or "default".
  std::string threshold_origin(std::optional<float> theta) const;
  /// One line for reports: the thresholds and where they come from.
  std::string describe_thresholds(std::optional<float> theta) const;
  const exit_heads_calibration& calibration() const { return calibration_; }
  /// Stores calibrated thresholds (one per head, with the positions each
  /// rests on); save() writes them.
  void set_calibration(const std::vector<float>& thresholds, const std::vector<int64_t>& tokens,
                       const exit_heads_calibration& info);

  /// h [T, n_embd] -> logits [T, vocab] of head i.
  at::Tensor logits(size_t i, const at::Tensor& h) const;
  /// How head i's token or draft is sampled at `o`: o with its temperature
  /// times the head's sampling_temperature, i.e. from softmax(logits / τ)
  /// at o's temperature, without a divided copy of the logits.
  sampler_options sampling_options(size_t i, sampler_options o) const;
  /// Confidence [T] of head i for h [T, n_embd] and its logits [T, vocab].
  at::Tensor confidence(size_t i, const at::Tensor& h, const at::Tensor& logits) const;
  /// Head i on one row h [1, n_embd] (on the heads' device); `logits`, when
  /// given, receives the row's logits (f32, on the CPU, contiguous), for a
  /// caller that samples from them.
  exit_reading read(size_t i, const at::Tensor& h, at::Tensor* logits = nullptr) const;
  float norm_eps() const { return norm_eps_; }

private:
  std::vector<exit_head> heads_;
  float norm_eps_ = 1e-5f;
  std::string source_ = "untrained";
  exit_heads_calibration calibration_;
  std::string threshold_note_;  // why the file's thresholds were not taken
};

/// Index of the first exit at or after `min_layer` whose confidence reaches
/// its threshold (`thresholds`, one per exit), or -1 when none does.
int first_confident_exit(const std::vector<int>& layers, const std::vector<float>& confidence,
                         const std::vector<float>& thresholds, int min_layer);

/// The exit decision for one position, from each exit's reading in order.
struct exit_choice {
  int index = -1;     // the exit that fires, -1 when none does
  int layer = -1;     // its layer, -1 when none fires
  int32_t token = 0;  // its token; the deepest exit's when none fires
};
exit_choice decide_exit(const std::vector<int>& layers, const std::vector<float>& confidence,
                        const std::vector<int32_t>& tokens, const std::vector<float>& thresholds,
                        int min_layer);

} // namespace ceco
