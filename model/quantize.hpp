#pragma once

// The weight type each matrix of a model gets under a file type, as the
// reference implementation's llama-quantize names and assigns them: one type
// for every matrix (Q8_0, Q4_K, ...) or a mix (Q4_K_M, Q5_K_M). The row
// quantizer itself is quant::quantize_row (model/quant.hpp).

#include <cstdint>
#include <string>

#include "model/quant.hpp"

namespace ceco::quant {

/// A model's weight type as `--type` names it.
struct file_type {
  std::string name = "F32";          // "Q4_K_M"
  ggml_type base = ggml_type::f32;   // Q4_K for Q4_K_M
  bool mixed = false;                // the _M rules apply
};

/// Throws model_error naming `flag`, the value and the accepted names.
file_type parse_file_type(const std::string& name, const std::string& flag);
/// "F32, F16, BF16, Q8_0, ..., Q4_K_M, Q5_K_M".
std::string file_type_names();

/// A matrix of a LLaMA block or the model's ends. A tied output is the
/// embedding: it takes the output's type.
enum class matrix_role { token_embd, output, attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_down, ffn_up };

/// The type of a matrix with rows of `cols` in layer `il` of `n_layer`:
///  - the output matrix: Q6_K under every block type but Q8_0 (whose output
///    stays Q8_0); F32, F16 and BF16 keep their type;
///  - _M mixes: attn_v and ffn_down in Q6_K in the layers where il < n/8,
///    il >= 7n/8 or (il - n/8) % 3 == 2;
///  - every other matrix: the base type;
///  - rows K-quants cannot hold (cols % 256 != 0) fall back as the reference
///    does: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0; rows no block type can
///    hold (cols % 32 != 0) are F16.
ggml_type matrix_type(const file_type& ft, matrix_role role, int il, int n_layer, int64_t cols);

} // namespace ceco::quant
