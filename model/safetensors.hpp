#pragma once

// safetensors reader (https://huggingface.co/docs/safetensors): the weight
// files of a Hugging Face checkpoint.
//
// File layout: u64 little-endian header length N | N bytes of JSON
// {"name": {"dtype": "F16", "shape": [rows, cols], "data_offsets": [begin,
// end]}, ..., "__metadata__": {string: string}} | tensor data, offsets
// relative to the end of the header. Every size is checked: a truncated file,
// a header beyond the file, a byte range outside the data or one that
// disagrees with dtype x shape, overlapping tensors and dtypes outside the
// format raise model_error naming the file, the tensor and both values.
//
// A checkpoint is one file (model.safetensors) or shards listed by
// model.safetensors.index.json ({"weight_map": {tensor: shard file}}).

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/config.hpp"
#include "model/mapped_file.hpp"
#include "model/quant.hpp"

namespace ceco {

class safetensors_file;

struct safetensors_tensor {
  std::string name;
  std::string dtype;           // as written: "F32", "BF16", "I64", ...
  std::vector<int64_t> shape;  // row-major, the last dimension contiguous
  const uint8_t* data = nullptr;  // into the mapped file
  uint64_t n_bytes = 0;
  const safetensors_file* file = nullptr;

  int64_t n_elements() const;
  /// "F16 [64, 512]".
  std::string describe() const;
  /// The ggml type ceco computes F32, F16 and BF16 weights in; model_error
  /// naming the file, the tensor and its dtype for any other dtype.
  quant::ggml_type weight_type() const;
};

/// A read-only, memory-mapped safetensors file.
class safetensors_file {
public:
  explicit safetensors_file(const std::string& path);
  ~safetensors_file();
  safetensors_file(const safetensors_file&) = delete;
  safetensors_file& operator=(const safetensors_file&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<safetensors_tensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

private:
  void parse();
  std::string path_;
  mapped_file map_;
  const uint8_t* base_ = nullptr;  // map_'s bytes
  size_t size_ = 0;
  std::vector<safetensors_tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// The tensors of one checkpoint over its files.
class safetensors_checkpoint {
public:
  /// `path`: a .safetensors file, a model.safetensors.index.json, or a folder
  /// holding either (the index first).
  explicit safetensors_checkpoint(const std::string& path);

  /// The file(s) read, comma-separated: for error messages.
  const std::string& describe() const { return describe_; }
  const std::vector<std::shared_ptr<const safetensors_file>>& files() const { return files_; }
  /// nullptr when absent.
  const safetensors_tensor* find(const std::string& name) const;
  /// Throws model_error naming the file(s) and the tensor when absent.
  const safetensors_tensor& get(const std::string& name) const;
  /// The file holding `t`, shared (to keep its mapping alive).
  std::shared_ptr<const safetensors_file> owner(const safetensors_tensor& t) const;

private:
  void add(const std::string& path);
  std::string describe_;
  std::vector<std::shared_ptr<const safetensors_file>> files_;
  std::map<std::string, const safetensors_tensor*> by_name_;
};

/// Whether `path` is a safetensors checkpoint: a .safetensors file, an index,
/// or a folder holding model.safetensors, its index or any .safetensors file.
bool is_safetensors_checkpoint(const std::string& path);

} // namespace ceco
