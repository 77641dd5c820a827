#pragma once

// Checkpoint loaders. Every size and shape is checked against the header;
// a truncated or corrupt file raises model_error naming the file, the
// tensor, and the expected and actual values.
//
// Formats:
//  - GGUF v2/v3, architecture "llama"; weight matrices of any type of
//    model/quant.hpp stay in the memory-mapped file in their own type (F32
//    ones are copied), norms become fp32; the tokenizer comes from its
//    metadata (SentencePiece 'llama' or byte-level BPE 'gpt2', see
//    tokenizer.hpp).
//  - llama2.c legacy `.bin` (7 x int32 header; a negative vocab_size means a
//    separate classifier) with a llama2.c `tokenizer.bin`.
//  - Hugging Face checkpoints (model/hf_checkpoint.hpp): config.json,
//    model.safetensors or its shards (model/safetensors.hpp), tokenizer.json;
//    LlamaForCausalLM and Qwen2ForCausalLM, F32/F16/BF16 matrices kept in
//    the mapped file as GGUF's are.
// A folder is accepted too: its .gguf file, else its Hugging Face
// checkpoint, else its .bin model with the tok*.bin / tokenizer.bin beside it.
// A .safetensors file or model.safetensors.index.json means its folder.

#include <cstdint>
#include <string>

#include "model/config.hpp"
#include "model/tokenizer.hpp"
#include "model/weights.hpp"

namespace ceco {

struct loaded_model {
  model_config config;
  model_weights weights;
  tokenizer vocab;
  std::string path;    // the checkpoint file actually read (a Hugging Face folder)
  std::string format;  // "gguf", "safetensors" or "llama2c"
};

/// `tokenizer_path` is required only for a llama2.c .bin whose folder holds
/// no tokenizer file.
loaded_model load_model(const std::string& path, const std::string& tokenizer_path = {});

/// Only the vocabulary of a checkpoint, without reading weights: a GGUF's
/// tokenizer metadata (a vocabulary-only GGUF is fine), a Hugging Face
/// folder's tokenizer.json, or the llama2.c tokenizer of a .bin as
/// load_model finds it.
tokenizer load_tokenizer(const std::string& path, const std::string& tokenizer_path = {});

class gguf_file;
/// Tensor `name` of a GGUF file as fp32 with torch shape `shape` (its ggml
/// shape reversed); throws model_error naming both shapes when they differ.
at::Tensor read_gguf_tensor(const gguf_file& f, const std::string& name,
                            const std::vector<int64_t>& shape);

/// FNV-1a over the shape and every weight: equal for the same checkpoint in
/// any format (both loaders produce the same fp32 weights); matrices held as
/// GGML blocks hash as their type and bytes.
uint64_t model_fingerprint(const model_config& cfg, const model_weights& w);
/// A hash of what two quantizations of one model share: the shape, the RoPE
/// settings and the tokenizer's pieces, not the weights.
uint64_t shape_fingerprint(const model_config& cfg, const tokenizer& vocab);
/// The weight matrices' types, most frequent first: "Q4_K+Q6_K", "F32".
std::string describe_weight_types(const model_weights& w);

} // namespace ceco
