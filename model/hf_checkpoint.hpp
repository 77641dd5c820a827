#pragma once

// Hugging Face checkpoint folders: config.json, model.safetensors (or the
// shards of model.safetensors.index.json, see safetensors.hpp) and
// tokenizer.json, for LlamaForCausalLM and Qwen2ForCausalLM.
//
// config.json gives the shape (hidden_size, intermediate_size,
// num_hidden_layers, num_attention_heads, num_key_value_heads,
// vocab_size, max_position_embeddings; rms_norm_eps, rope_theta,
// tie_word_embeddings, bos/eos_token_id with defaults) and Llama 3's
// rope_scaling, turned into the per-pair frequency factors GGUF's
// rope_freqs.weight holds. Tensors are model.embed_tokens, model.layers.N.*,
// model.norm and lm_head (absent when tied). F16 and BF16 matrices stay in
// the mapped file in their type; F32 ones are copied; norms become fp32.
//
// RoPE: Hugging Face's llama rotates halves (i, i + head_dim/2); ceco runs
// llama as GGUF's converter writes it, rows of q_proj and k_proj permuted per
// head so that pairs are adjacent. The loader applies that permutation (a
// copy of those two matrices), so a llama checkpoint computes exactly what
// its GGUF conversion does. Qwen2 rotates halves in both formats.

#include <string>

#include "model/loader.hpp"

namespace ceco {

/// `path`: the folder, or one of its .safetensors files or its index.
loaded_model load_hf_checkpoint(const std::string& path);
/// Only the vocabulary: tokenizer.json with config.json's vocab_size,
/// bos_token_id and eos_token_id.
tokenizer load_hf_tokenizer(const std::string& path);
/// The folder of a checkpoint path as load_hf_checkpoint takes it.
std::string hf_checkpoint_folder(const std::string& path);

} // namespace ceco
