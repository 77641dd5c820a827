#pragma once

// The reference LLaMA layer, written once over tensors:
//     h  = rms_norm(x) ⊙ attn_norm
//     x += Wo · attention(rope(Wq h), rope(Wk h), Wv h)       (causal, GQA)
//     h  = rms_norm(x) ⊙ ffn_norm
//     x += W2 · (silu(W1 h) ⊙ W3 h)                           (SwiGLU)
// Every tensor path uses these blocks: the batched and multi-sequence
// inference path (transformer::forward_stacked, which supplies an attention
// over its KV cache) and the trainer (through autograd, attention over the
// whole window). The one-token CPU path (transformer::forward_rows_cpu) runs
// the same steps in plain loops over model/cpu_kernels.hpp; tests hold the
// two to each other.
//
// Shapes: x [..., T, n_embd]; leading dimensions are batches (the trainer's
// [B, T, d]); inference passes [T, d].

#include <cstdint>
#include <functional>

#include <ATen/core/Tensor.h>

#include "model/config.hpp"
#include "model/weights.hpp"

namespace ceco {

/// llama2.c's RoPE angles, angle(pos, i) = pos · theta^(-2i / head_dim), in
/// fp32: cos and sin [max_seq, head_dim / 2] each, on the CPU. `stepwise`:
/// the same angles rounded as the reference implementation (llama.cpp)
/// rounds them (see transformer::set_reference_numerics).
struct rope_table {
  at::Tensor cos;
  at::Tensor sin;
  bool halves = false;  // model_config::rope_halves
  static rope_table build(const model_config& cfg, bool stepwise = false);
};

/// x ⊙ w / sqrt(mean(x²) + eps) over the last dimension.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, float eps);

/// x · Wᵀ: the product of activations [..., in] with a weight [out, in]
/// (an fp32 tensor, under autograd when training, or GGML blocks).
/// Every weight matrix of the tensor path is applied here.
at::Tensor project(const at::Tensor& x, const weight_matrix& w);

/// x [..., T, n_heads · head_dim] rotated at positions pos .. pos+T-1, by
/// interleaved pairs or by halves (table.halves).
at::Tensor rope(const at::Tensor& x, const rope_table& table, int64_t pos, int64_t n_heads);

/// Causal attention of rotated queries q [..., T, n_head · hd] over keys and
/// values [..., S, n_kv · hd] of positions 0 .. S-1, S = pos + T: row t
/// (position pos + t) sees positions 0 .. pos + t. Query head h reads
/// key/value head h / kv_group. Returns [..., T, n_head · hd].
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            int64_t pos, const model_config& cfg);

/// The attention step of one layer: raw projections q [..., T, d],
/// k and v [..., T, d_kv] -> attention output [..., T, d] (before Wo).
using attention_fn =
  std::function<at::Tensor(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v)>;

/// One layer on x [..., T, n_embd]; returns the new hidden states (x itself
/// is left alone, so autograd may keep it).
at::Tensor layer_forward(const at::Tensor& x, const layer_weights& w, float eps,
                         const attention_fn& attend);

} // namespace ceco
