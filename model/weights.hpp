#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

#include "model/weight_matrix.hpp"

namespace ceco {

/// One transformer block; names follow llama2.c, shapes are [out, in]. The
/// matrices are fp32 tensors or GGML blocks of the checkpoint file
/// (model/weight_matrix.hpp); the norms are fp32 tensors.
struct layer_weights {
  at::Tensor attn_norm;  // [n_embd]
  weight_matrix wq;      // [n_embd, n_embd]
  weight_matrix wk;      // [n_embd_kv, n_embd]
  weight_matrix wv;      // [n_embd_kv, n_embd]
  weight_matrix wo;      // [n_embd, n_embd]
  at::Tensor ffn_norm;   // [n_embd]
  weight_matrix w1;      // [n_ff, n_embd]  gate
  weight_matrix w2;      // [n_embd, n_ff]  down
  weight_matrix w3;      // [n_ff, n_embd]  up
  at::Tensor bq, bk, bv;  // qwen2's biases [n_embd], [n_embd_kv] x2; undefined for llama

  /// The seven matrices, in the order above.
  std::vector<weight_matrix*> matrices() { return {&wq, &wk, &wv, &wo, &w1, &w2, &w3}; }
  std::vector<const weight_matrix*> matrices() const {
    return {&wq, &wk, &wv, &wo, &w1, &w2, &w3};
  }
};

/// Immutable after load. Layers outside the range a node serves may be left
/// undefined (a node loads only what it runs).
struct model_weights {
  weight_matrix tok_embd;  // [vocab, n_embd]
  std::vector<layer_weights> layers;
  at::Tensor output_norm;  // [n_embd]
  weight_matrix output;    // [vocab, n_embd]; may share storage with tok_embd
};

} // namespace ceco
