#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ceco {

/// The longest context ceco sizes caches for (2^20 positions): beyond any
/// model in use, and small enough that a file cannot claim terabytes.
constexpr int max_context_length = 1 << 20;

/// Shape of a LLaMA-family decoder. Plain data: no tensors, safe to copy
/// between actors and to describe in messages.
struct model_config {
  int n_embd = 0;        // hidden size d
  int n_ff = 0;          // SwiGLU inner size
  int n_layer = 0;       // transformer blocks
  int n_head = 0;        // query heads
  int n_head_kv = 0;     // key/value heads (GQA when < n_head)
  int vocab_size = 0;    // rows of the embedding and of the classifier
  int max_seq = 0;       // context length the KV cache is sized for
  float rope_theta = 10000.0f;  // RoPE base, interleaved pairs as llama2.c
  float norm_eps = 1e-5f;       // RMSNorm epsilon
  /// RoPE pairs: false rotates adjacent pairs (2i, 2i+1) as llama2.c and
  /// `llama`; true rotates (i, i + head_dim/2) as `qwen2` (GGML's NEOX).
  bool rope_halves = false;
  /// Llama 3's rope_freqs: pair i's angle divided by factor i
  /// (head_dim / 2 values), or empty.
  std::vector<float> rope_freq_factors;

  int head_dim() const { return n_embd / n_head; }
  int n_embd_kv() const { return head_dim() * n_head_kv; }
  int kv_group() const { return n_head / n_head_kv; }

  /// Throws model_error naming `source` if the shape is impossible.
  void validate(const std::string& source) const;
};

/// Bad input: a checkpoint, a tokenizer, a heads file or an argument. The
/// message names the file or field, and the expected and actual values.
struct model_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

} // namespace ceco
