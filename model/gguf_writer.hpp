#pragma once

// GGUF v3 writer: collects metadata and tensors, then writes the file. Used
// for exit heads, trained models, quantized models and test fixtures;
// model/gguf.hpp reads them.

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "model/gguf_format.hpp"

namespace ceco {

class gguf_writer {
public:
  void set_uint32(const std::string& key, uint32_t v);
  void set_float32(const std::string& key, float v);
  void set_string(const std::string& key, const std::string& v);
  void set_string_array(const std::string& key, const std::vector<std::string>& v);
  void set_float32_array(const std::string& key, const std::vector<float>& v);
  void set_int32_array(const std::string& key, const std::vector<int32_t>& v);
  /// A value of any type as a GGUF file encodes it (gguf_file's
  /// encoded_metadata): copies metadata unchanged, arrays of strings
  /// included. A "general.alignment" set here or with set_uint32 aligns the
  /// tensor data (default 32).
  void set_encoded(const std::string& key, uint32_t type, const uint8_t* value, size_t n_bytes);

  /// `ne` in ggml order; `data` is row-major fp32 with ne[0] contiguous.
  /// Stored as F32, or F16 when `as_f16`.
  void add_tensor(const std::string& name, std::vector<int64_t> ne,
                  const float* data, bool as_f16 = false);

  /// Writes a tensor's data of the size its type and shape take.
  using tensor_fill = std::function<void(uint8_t* data, size_t n_bytes)>;
  /// A tensor of any ggml type whose data `fill` writes while the file is
  /// written, one tensor at a time: a whole model is never in memory.
  /// Throws model_error naming the tensor when its rows are not whole
  /// blocks of the type.
  void add_tensor(const std::string& name, std::vector<int64_t> ne, ggml_type type, tensor_fill fill);

  /// Writes a temporary file next to `path` and renames it to `path` once
  /// complete: a failure (here or in a tensor's fill, whose exception goes
  /// on) leaves no partial file and an older `path` untouched. Throws
  /// model_error naming the file when it cannot be written.
  void write(const std::string& path) const;

private:
  struct entry {
    std::string key;
    uint32_t type;
    std::vector<uint8_t> bytes;  // encoded value
  };
  struct tensor {
    std::string name;
    std::vector<int64_t> ne;
    ggml_type type;
    std::vector<uint8_t> bytes;  // when fill is empty
    size_t n_bytes = 0;
    tensor_fill fill;
  };
  uint64_t alignment() const;
  void write_to(std::FILE* out, const std::string& path) const;
  std::vector<entry> kv_;
  std::vector<tensor> tensors_;
};

} // namespace ceco
