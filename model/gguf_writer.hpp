#pragma once

// GGUF v3 writer: builds a file in memory and writes it. Used for exit
// heads, trained models and test fixtures; model/gguf.hpp reads them.

#include <cstdint>
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

  /// `ne` in ggml order; `data` is row-major fp32 with ne[0] contiguous.
  /// Stored as F32, or F16 when `as_f16`.
  void add_tensor(const std::string& name, std::vector<int64_t> ne,
                  const float* data, bool as_f16 = false);

  /// Throws model_error if the file cannot be written.
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
    std::vector<uint8_t> bytes;
  };
  std::vector<entry> kv_;
  std::vector<tensor> tensors_;
};

} // namespace ceco
