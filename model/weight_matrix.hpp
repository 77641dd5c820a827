#pragma once

// A weight matrix [rows, cols] as the layers use it: fp32 in a tensor
// (llama2.c checkpoints, F32 GGUF tensors, trained or random weights), or
// GGML blocks inside a memory-mapped GGUF file, computed with in their own
// type by model/quant.hpp and never copied.

#include <cstdint>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "model/quant.hpp"

namespace ceco {

class weight_matrix {
public:
  weight_matrix() = default;
  /// fp32 [rows, cols] on any device.
  weight_matrix(at::Tensor f32);  // NOLINT: a tensor is a weight matrix
  /// GGML blocks; `owner` keeps their bytes alive (the mapped file).
  weight_matrix(quant::matrix blocks, std::shared_ptr<const void> owner);

  bool defined() const { return f32_.defined() || blocks_.data != nullptr; }
  /// Held as an fp32 tensor (rather than as blocks).
  bool is_tensor() const { return f32_.defined(); }
  int64_t rows() const;
  int64_t cols() const;
  int64_t numel() const { return rows() * cols(); }
  /// F32 for a tensor, else the blocks' type.
  quant::ggml_type type() const { return is_tensor() ? quant::ggml_type::f32 : blocks_.type; }
  /// Bytes the weights occupy in memory.
  size_t n_bytes() const;
  /// The fp32 tensor; throws model_error naming `what` and the type when the
  /// weights are held as blocks.
  const at::Tensor& tensor(const std::string& what) const;
  const quant::matrix& blocks() const { return blocks_; }
  /// The same weights (shared storage), as tied embeddings are.
  bool same_as(const weight_matrix& other) const;

  /// y[rows] = W · x[cols], on CPU. The activation scratch is per thread and
  /// grown once, so the decode path does not allocate.
  void matvec(const float* x, float* y) const;
  /// y[n, rows]: row j is exactly matvec(x[j]) for x[n, cols] (one decode
  /// step of several sequences); each weight is read once for all n.
  void matvec_rows(const float* x, float* y, int64_t n) const;
  /// x [N, cols] -> x · Wᵀ [N, rows] (prefill, catch-up). For blocks, a
  /// few rows take the decode path's 8-bit products (each input row exactly
  /// as matvec computes it): fewer than integer_matmat_rows_min where
  /// quant::matmat forms integer products against weights unpacked once for
  /// all rows, else fewer than integer_rows_max; more take matmat (those
  /// products, or BLAS over dequantized tiles with fp32 activations).
  at::Tensor project(const at::Tensor& x) const;
  /// Where matmat is integer products it costs about one unpacking of the
  /// weights plus little per row, and pays from about 6 rows (measured on
  /// 2048 x 2048 Q4_K, Q6_K and Q8_0: equal at 3-6 rows, 1.3-1.9x faster at
  /// 8, 2.1-2.8x at 16); BLAS over dequantized tiles pays from about 32.
  static constexpr int64_t integer_matmat_rows_min = 6;
  static constexpr int64_t integer_rows_max = 32;
  /// Row r in fp32 into out[cols] (an embedding lookup).
  void row_into(int64_t r, float* out) const;
  /// The whole matrix in fp32 [rows, cols] (small matrices, tests).
  at::Tensor to_tensor() const;

private:
  at::Tensor f32_;
  quant::matrix blocks_;
  std::shared_ptr<const void> owner_;
};

} // namespace ceco
