#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

namespace ceco {

/// One transformer block; names follow llama2.c, shapes are [out, in].
struct layer_weights {
  at::Tensor attn_norm;  // [n_embd]
  at::Tensor wq;         // [n_embd, n_embd]
  at::Tensor wk;         // [n_embd_kv, n_embd]
  at::Tensor wv;         // [n_embd_kv, n_embd]
  at::Tensor wo;         // [n_embd, n_embd]
  at::Tensor ffn_norm;   // [n_embd]
  at::Tensor w1;         // [n_ff, n_embd]  gate
  at::Tensor w2;         // [n_embd, n_ff]  down
  at::Tensor w3;         // [n_ff, n_embd]  up
};

/// Immutable after load. Layers outside the range a node serves may be left
/// undefined (a node loads only what it runs).
struct model_weights {
  at::Tensor tok_embd;     // [vocab, n_embd]
  std::vector<layer_weights> layers;
  at::Tensor output_norm;  // [n_embd]
  at::Tensor output;       // [vocab, n_embd]; may share storage with tok_embd
};

} // namespace ceco
