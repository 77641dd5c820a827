#pragma once

// Seeded random models of named shapes, in any weight type ceco computes
// with (model/quantize.hpp's file types): what `ceco bench --shape` measures
// without a checkpoint, and what tests build models from.

#include <cstdint>
#include <functional>
#include <string>

#include "model/config.hpp"
#include "model/quantize.hpp"
#include "model/weights.hpp"

namespace ceco {

/// A named shape: llama2.c's tinyllamas "260K", "15M", "42M", "110M" (15M
/// and up with a 32000-token vocabulary), and the shapes of
/// "SmolLM2-135M", "TinyLlama-1.1B" and "Llama-3.2-1B".
struct named_shape {
  model_config config;
  bool tied_output = false;  // the output matrix is the embedding
};
/// Throws model_error naming --shape, the value and the known names.
named_shape shape_preset(const std::string& name);
/// "260K, 15M, ..., Llama-3.2-1B".
std::string shape_names();

struct random_weights_options {
  quant::file_type type;     // F32 (fp32 tensors) unless set
  bool tied_output = false;  // output shares the embedding's storage
  /// Called after each layer is built with (layers done, n_layer).
  std::function<void(int, int)> on_layer;
};

/// Seeded random weights: every matrix element approximately normal with
/// std 0.02 (a sum of four uniforms), norms 1. An element's value depends
/// only on the seed, the matrix and its position, so one seed gives the
/// same model in every type, quantized. Matrices are generated a row at a
/// time and quantized straight into their type (rows split over the compute
/// threads): peak memory stays near the quantized size. Each matrix's type
/// is quant::matrix_type of its role.
model_weights random_weights(const model_config& cfg, uint64_t seed,
                             const random_weights_options& opts = {});

/// The model random_weights(cfg, seed, opts) builds, written as a GGUF v3
/// file at `path` that ceco's loader and the reference implementation's
/// both read: architecture "llama" with its metadata (context_length is
/// cfg.max_seq), tensors named as llama.cpp names them (no output.weight
/// when tied), norms F32, general.file_type as llama-quantize sets it, and
/// a synthetic SentencePiece vocabulary of cfg.vocab_size pieces (<unk>,
/// <s>, </s>, the 256 byte pieces, then made-up words; at least 259).
/// General.name is `name`. Each matrix is generated while the file is
/// written, one at a time, so the model is never whole in memory; on_layer
/// reports the layers written. Written under a temporary name and renamed
/// when complete; throws model_error naming `path`.
void write_random_gguf(const std::string& path, const std::string& name,
                       const model_config& cfg, uint64_t seed,
                       const random_weights_options& opts = {});

} // namespace ceco
