#pragma once

// The weight type each matrix of a model gets under a file type, as the
// reference implementation's llama-quantize names and assigns them: one type
// for every matrix (Q8_0, Q4_K, ...) or a mix (Q4_K_M, Q3_K_L, ...). The row
// quantizer itself is quant::quantize_row (model/quant.hpp).

#include <cstdint>
#include <string>

#include "model/quant.hpp"

namespace ceco::quant {

/// llama-quantize's per-matrix rules of a file type (model/quantize.cpp).
enum class mix_rule { none, q2_k, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_m };

/// A model's weight type as `--type` names it.
struct file_type {
  std::string name = "F32";           // "Q4_K_M"
  ggml_type base = ggml_type::f32;    // Q4_K for Q4_K_M
  mix_rule mix = mix_rule::none;
  uint32_t llama_ftype = 0;           // general.file_type: llama.cpp's llama_ftype (15 for Q4_K_M)
};

/// Throws model_error naming `flag`, the value and the accepted names.
/// Case does not matter ("q4_k_m").
file_type parse_file_type(const std::string& name, const std::string& flag);
/// "F32, F16, BF16, Q8_0, ..., Q4_K_M, Q5_K_M".
std::string file_type_names();

/// A matrix of a LLaMA block or the model's ends; `other` for any further
/// matrix a file holds. A tied output is the embedding: it takes the
/// output's type.
enum class matrix_role {
  token_embd, output, attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_down, ffn_up, other
};

/// The type of a matrix with rows of `cols` in layer `il` of `n_layer`, in
/// a model of `gqa` query heads per KV head, as llama-quantize assigns them
/// (without its rules for 70B and mixture-of-experts models):
///  - the output matrix: Q6_K under every block type but Q8_0 (whose output
///    stays Q8_0); F32, F16 and BF16 keep their type;
///  - Q4_K_M, Q5_K_M: attn_v and ffn_down in Q6_K in the layers where
///    il < n/8, il >= 7n/8 or (il - n/8) % 3 == 2;
///  - Q4_K_S: attn_v in Q5_K in layers 0-3, ffn_down in the first n/8;
///  - Q3_K_M: attn_v in Q5_K in layers 0-1 and Q4_K after, ffn_down in Q5_K
///    in the first n/16 and Q4_K after, attn_output in Q4_K;
///  - Q3_K_L: attn_v, ffn_down and attn_output in Q5_K;
///  - Q2_K: attn_v in Q4_K when gqa >= 4 (else Q3_K), ffn_down and
///    attn_output in Q3_K;
///  - Q3_K_S, Q5_K_S and every other matrix: the base type;
///  - rows K-quants cannot hold (cols % 256 != 0) fall back as the reference
///    does: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and Q2_K, Q3_K -> Q4_0
///    (the reference's IQ4_NL, which ceco has no kernels for, is Q4_0's
///    size); rows no block type can hold (cols % 32 != 0) are F16.
ggml_type matrix_type(const file_type& ft, matrix_role role, int il, int n_layer, int64_t cols,
                      int gqa = 1);

} // namespace ceco::quant
