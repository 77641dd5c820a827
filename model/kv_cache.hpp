#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/config.hpp"

namespace ceco {

/// Per-sequence state for the layers [first, last) one node runs: keys and
/// values for every position so far, preallocated to `capacity` positions,
/// plus the attention scratch of one-token decoding. Never shared between
/// sequences; the weights live elsewhere.
class kv_cache {
public:
  kv_cache(const model_config& cfg, int first_layer, int last_layer, int capacity,
           c10::Device device);

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

  at::Tensor& keys(int il) { return k_[size_t(il - first_)]; }    // [capacity, n_embd_kv]
  at::Tensor& values(int il) { return v_[size_t(il - first_)]; }  // [capacity, n_embd_kv]

  /// Bytes held by keys and values.
  int64_t bytes() const;

  /// Scratch for the CPU attention: a score per head and position, and a
  /// float per head.
  float* scores() { return scores_.data(); }

private:
  int first_;
  int last_;
  int capacity_;
  std::vector<at::Tensor> k_;
  std::vector<at::Tensor> v_;
  std::vector<int> length_;
  std::vector<float> scores_;  // [n_head * capacity + n_head]
};

} // namespace ceco
