#pragma once

// Rows of hidden states on their way from the edge layers to the cloud
// layers, and their wire form. One owned buffer (docs/design.md §2):
//
//   edge layers   tensor [T, n_embd] ─encode_tensor─▶ tensor_blob in the
//                 session's wire dtype (edge_output.split)
//   session       moves it to the uploader; keeps a copy (its context) only
//                 to send again: naive, and after losing the cloud
//   uploader      passes it on (converts only rows of another dtype: an
//                 uploader placed on the cloud gets f32)
//   link, front,  move it (a remote cloud: encoded once into its frame,
//   context mgr   decoded once from it)
//   cloud layers  decode_rows ─▶ the step's stacked input, in place
//
// No torch in this header: at::Tensor is only declared.

#include <cstdint>
#include <vector>

#include "actors/messages.hpp"

namespace at {
class Tensor;
}

namespace ceco {

/// A row-major [rows, cols] matrix of f32 hidden states.
struct hidden_rows {
  int32_t rows = 0;
  int32_t cols = 0;
  std::vector<float> data;

  /// The rows of a 2-D tensor (any device, f32).
  static hidden_rows from_tensor(const at::Tensor& x);
  /// The rows of a blob that passed check().
  static hidden_rows decode(const tensor_blob& b);

  /// Appends the rows of a checked blob (any dtype) with the same width.
  void append(const tensor_blob& b);
  /// Keeps the first `n` rows (a rollback).
  void truncate(int32_t n);
  /// These rows as a blob of `dtype` (f16 rounds to nearest even).
  tensor_blob encode(wire_dtype dtype) const;
};

/// The rows of every part, in order, as f32 into out[rows.rows * rows.cols].
void decode_rows(const uploaded_rows& rows, float* out);
/// Appends the rows of a checked blob to `rows` (same width) in `rows`'
/// dtype; an empty `rows` takes the blob's.
void append_rows(tensor_blob& rows, const tensor_blob& more);
/// Keeps the first `n` rows of a blob (a rollback).
void keep_rows(tensor_blob& rows, int32_t n);
/// Drops the first `n` rows of a blob (rows another upload or the cloud
/// itself already gave).
void drop_rows(tensor_blob& rows, int32_t n);

/// A 2-D f32 tensor (any device) straight into a blob of `dtype`.
tensor_blob encode_tensor(const at::Tensor& x, wire_dtype dtype);
/// A checked blob as an f32 [rows, cols] CPU tensor.
at::Tensor to_tensor(const tensor_blob& b);
/// A checked blob in another dtype, through `scratch` (reused, so converting
/// allocates nothing once it has grown); the blob itself when the dtype
/// already matches.
tensor_blob transcode(tensor_blob b, wire_dtype dtype, std::vector<float>& scratch);

} // namespace ceco
