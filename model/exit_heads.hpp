#pragma once

// Early-exit heads. The head after layer `layer` maps that layer's hidden
// state h to logits:
//     n = rmsnorm(h) ⊙ norm
//     n = n + B · silu(A · n + c)          (optional residual adapter)
//     logits = W · n                       (W: own matrix, or the model's)
// Untrained heads reuse the model's final norm and classifier ("logit lens").
// Confidence is max softmax(logits); an exit fires when confidence >= θ.
//
// File format: GGUF v3 with
//   ceco.exit_heads.layers        int32 array: the exits, ascending
//   ceco.exit_heads.n_embd        uint32
//   ceco.exit_heads.vocab_size    uint32
//   exit.<L>.norm.weight          [n_embd]
//   exit.<L>.output.weight        [n_embd, vocab] (ggml order; optional)
//   exit.<L>.adapter_a.weight     [n_embd, hidden]  (optional, with the two below)
//   exit.<L>.adapter_a.bias       [hidden]
//   exit.<L>.adapter_b.weight     [hidden, n_embd]

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/config.hpp"
#include "model/weight_matrix.hpp"

namespace ceco {

class transformer;

struct exit_head {
  int layer = 0;          // exit after this many layers
  at::Tensor norm;        // [n_embd]
  weight_matrix output;   // [vocab, n_embd]
  at::Tensor adapter_a;   // [hidden, n_embd] or undefined
  at::Tensor adapter_c;   // [hidden]
  at::Tensor adapter_b;   // [n_embd, hidden]
  bool own_output = false;  // false: `output` is the model's classifier

  /// The head formula above: h [..., n_embd] -> logits [..., vocab]. Plain
  /// tensor ops, so the trainers run it under autograd.
  at::Tensor logits(const at::Tensor& h, float norm_eps) const;
};

/// What one head says about one position.
struct exit_reading {
  float confidence = 0;  // max softmax probability
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

  /// h [T, n_embd] -> logits [T, vocab] of head i.
  at::Tensor logits(size_t i, const at::Tensor& h) const;
  /// Head i on one row h [1, n_embd] (on the heads' device).
  exit_reading read(size_t i, const at::Tensor& h) const;

private:
  std::vector<exit_head> heads_;
  float norm_eps_ = 1e-5f;
  std::string source_ = "untrained";
};

/// Index of the first exit at or after `min_layer` whose confidence reaches
/// `threshold`, or -1 when none does.
int first_confident_exit(const std::vector<int>& layers, const std::vector<float>& confidence,
                         float threshold, int min_layer);

/// The exit decision for one position, from each exit's reading in order.
struct exit_choice {
  int index = -1;     // the exit that fires, -1 when none does
  int layer = -1;     // its layer, -1 when none fires
  int32_t token = 0;  // its token; the deepest exit's when none fires
};
exit_choice decide_exit(const std::vector<int>& layers, const std::vector<float>& confidence,
                        const std::vector<int32_t>& tokens, float threshold, int min_layer);

} // namespace ceco
