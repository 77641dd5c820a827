#pragma once

// GGUF v2/v3 reader (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).
//
// File layout: magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv |
// n_kv x (string key | u32 type | value) | n_tensors x (string name |
// u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset) | padding to
// `general.alignment` (32) | tensor data. Strings are u64 length + bytes.
// Every read is bounds-checked: a truncated or corrupt file raises
// model_error naming the file and what was being read, never a crash. Tensor
// data must be laid out as ggml writes it: each offset aligned, each tensor
// starting where the one before ends (padded), so a wrong offset or a type
// that disagrees with the data is refused naming the tensor.

#include "model/half.hpp"
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "model/config.hpp"
#include "model/gguf_format.hpp"
#include "model/mapped_file.hpp"

namespace ceco {

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

/// A metadata entry as the file encodes it, for copying it unchanged:
/// `value` points at its n_bytes in the mapped file (an array: element
/// type, count, elements).
struct gguf_encoded_kv {
  std::string key;
  uint32_t type = 0;  // gguf_format::value_type
  const uint8_t* value = nullptr;
  size_t n_bytes = 0;
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

  /// Every metadata entry in file order, as encoded (valid while this
  /// file is open).
  const std::vector<gguf_encoded_kv>& encoded_metadata() const { return encoded_; }

  const std::vector<gguf_tensor>& tensors() const { return tensors_; }
  /// nullptr when absent.
  const gguf_tensor* find(const std::string& name) const;
  /// Throws model_error naming the tensor when absent.
  const gguf_tensor& get(const std::string& name) const;

  /// Converts a tensor of any supported type (model/quant.hpp) to fp32 into
  /// `out`, which must hold n_elements() floats.
  void dequantize(const gguf_tensor& t, float* out) const;

private:
  void parse();
  /// Offsets aligned, tensors neither overlapping nor leaving gaps.
  void check_layout(uint64_t alignment) const;
  std::string path_;
  mapped_file map_;
  const uint8_t* base_ = nullptr;  // map_'s bytes
  size_t size_ = 0;
  uint32_t version_ = 0;
  std::map<std::string, gguf_value> kv_;
  std::vector<gguf_encoded_kv> encoded_;
  std::vector<gguf_tensor> tensors_;
};


} // namespace ceco
