#pragma once

// A GGUF model quantized into another GGUF file, as llama-quantize does:
// every metadata entry copied unchanged but general.file_type (llama.cpp's
// number for the file type) and general.quantization_version (2); the
// matrices (2-D and larger tensors named *weight, norms aside) in the type
// quant::matrix_type gives their role; every other tensor (norms, rope
// factors, biases) copied as it is; tensor data aligned per the input's
// general.alignment. `ceco quantize` (apps/quantize_command.cpp) is its
// command line.

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/quantize.hpp"

namespace ceco {

/// One tensor as it is written.
struct quantized_tensor {
  int index = 0;  // 1-based
  int count = 0;
  std::string name;
  std::vector<int64_t> ne;  // ggml order
  quant::ggml_type from = quant::ggml_type::f32;
  quant::ggml_type to = quant::ggml_type::f32;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
};

struct gguf_quantize_options {
  quant::file_type type;
  /// Dequantize matrices already in a block type (Q8_0, Q4_K, ...) and
  /// quantize them again, which adds both errors; otherwise such an input is
  /// refused.
  bool allow_requantize = false;
  /// Called after each tensor is written.
  std::function<void(const quantized_tensor&)> on_tensor;
};

struct gguf_quantize_summary {
  uint64_t input_bytes = 0;   // the files' sizes
  uint64_t output_bytes = 0;
  int tensors = 0;
  std::map<std::string, int> types;  // "Q4_K" -> tensors written in it
};

/// Quantizes `input` into `output` (written under a temporary name and
/// renamed when complete, so a failure leaves no partial file). Rows are
/// split over ATen's threads. Throws model_error naming the file, and the
/// tensor where one is at fault: an unreadable input, a matrix in a type
/// it cannot convert, an output that cannot be written, or output = input.
gguf_quantize_summary quantize_gguf(const std::string& input, const std::string& output,
                                    const gguf_quantize_options& options);

} // namespace ceco
