#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/config.hpp"

namespace ceco {

/// What a cache holds its keys and values in. f16 halves the bytes that
/// attention reads at every decoded token (and the memory of each session);
/// f32 keeps the projections' values unrounded.
enum class kv_dtype { f16, f32 };
/// "f16" or "f32".
const char* kv_dtype_name(kv_dtype t);
/// "f16" or "f32" into a kv_dtype; throws model_error naming `where` (an
/// option or a settings key) for any other text.
kv_dtype parse_kv_dtype(const std::string& text, const std::string& where);

/// Per-sequence state for the layers [first, last) one node runs: keys and
/// values for every position so far, preallocated to `capacity` positions,
/// plus the attention scratch of one-token decoding. Never shared between
/// sequences; the weights live elsewhere.
class kv_cache {
public:
  kv_cache(const model_config& cfg, int first_layer, int last_layer, int capacity,
           c10::Device device, kv_dtype dtype = kv_dtype::f32);

  /// Bytes of keys and values that `capacity` positions of layers
  /// [first_layer, last_layer) take in `dtype`.
  static int64_t bytes_for(const model_config& cfg, int first_layer, int last_layer,
                           int capacity, kv_dtype dtype);

  int first_layer() const { return first_; }
  int last_layer() const { return last_; }
  int capacity() const { return capacity_; }
  /// Positions computed so far by layer `il` (absolute layer index).
  int length(int il) const { return length_[size_t(il - first_)]; }
  /// Positions computed by every layer of the range.
  int length() const;
  void set_length(int il, int n) { length_[size_t(il - first_)] = n; }
  /// Forgets positions >= n (all layers); the next forward may start at n.
  void truncate(int n);

  kv_dtype dtype() const { return dtype_; }
  // [capacity, n_embd_kv], at::kHalf or at::kFloat as dtype() says
  at::Tensor& keys(int il) { return k_[size_t(il - first_)]; }
  at::Tensor& values(int il) { return v_[size_t(il - first_)]; }

  /// Bytes held by keys and values.
  int64_t bytes() const;

  /// Scratch for the CPU attention: a score per head and position, and a
  /// float per head.
  float* scores() { return scores_.data(); }

private:
  int first_;
  int last_;
  int capacity_;
  kv_dtype dtype_;
  std::vector<at::Tensor> k_;
  std::vector<at::Tensor> v_;
  std::vector<int> length_;
  std::vector<float> scores_;  // [n_head * capacity + n_head]
};

} // namespace ceco
