#pragma once

// GGUF v2/v3 reader and writer (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).
//
// File layout: magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv |
// n_kv x (string key | u32 type | value) | n_tensors x (string name |
// u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset) | padding to
// `general.alignment` (32) | tensor data. Strings are u64 length + bytes.
// Every read is bounds-checked: a truncated or corrupt file raises
// model_error naming the file and what was being read, never a crash.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "model/config.hpp"

namespace ceco {

enum class ggml_type : uint32_t {
  f32 = 0,
  f16 = 1,
  q8_0 = 8,
  bf16 = 30,
};

/// A metadata value: scalars widen to the variant's types; arrays hold
/// scalars or strings.
using gguf_scalar = std::variant<uint64_t, int64_t, double, bool, std::string>;
struct gguf_value {
  gguf_scalar scalar;
  std::vector<gguf_scalar> array;
  bool is_array = false;
};

struct gguf_tensor {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the contiguous dimension
  ggml_type type = ggml_type::f32;
  uint64_t offset = 0;      // from the start of the data section
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // into the mapped file

  int64_t n_elements() const;
  /// "[64, 512]" in ggml order.
  std::string shape_string() const;
};

/// A read-only, memory-mapped GGUF file.
class gguf_file {
public:
  /// Maps and parses `path`; throws model_error on any inconsistency.
  explicit gguf_file(const std::string& path);
  ~gguf_file();
  gguf_file(const gguf_file&) = delete;
  gguf_file& operator=(const gguf_file&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }

  bool has(const std::string& key) const;
  /// Typed getters throw model_error naming the key when it is missing or
  /// of another type; the `_or` forms return a default when missing.
  uint64_t get_uint(const std::string& key) const;
  uint64_t get_uint_or(const std::string& key, uint64_t fallback) const;
  double get_float_or(const std::string& key, double fallback) const;
  bool get_bool_or(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key) const;
  std::string get_string_or(const std::string& key, std::string fallback) const;
  std::vector<std::string> get_string_array(const std::string& key) const;
  std::vector<double> get_float_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;

  const std::vector<gguf_tensor>& tensors() const { return tensors_; }
  /// nullptr when absent.
  const gguf_tensor* find(const std::string& name) const;
  /// Throws model_error naming the tensor when absent.
  const gguf_tensor& get(const std::string& name) const;

  /// Converts a tensor of any supported type to fp32 into `out`, which must
  /// hold n_elements() floats.
  void dequantize(const gguf_tensor& t, float* out) const;

private:
  void parse();
  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  uint32_t version_ = 0;
  std::map<std::string, gguf_value> kv_;
  std::vector<gguf_tensor> tensors_;
};

/// Builds a GGUF v3 file in memory and writes it. Used for exit heads,
/// trained models and test fixtures.
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

/// IEEE half <-> float, exact for every half value.
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);

} // namespace ceco
