#pragma once

// What model/quant_matrix.cpp takes from the kernel table of
// model/quant.cpp: the dot product and the dequantizer of a weight type.
// Internal to model/. The kernels (quant.cpp and the per-ISA files) need
// neither torch nor BLAS, so they build alone (the aarch64 kernel test,
// test/aarch64/); the matrix products, with threads and BLAS, sit on top.

#include <cstdint>

#include "model/quant.hpp"

namespace ceco::quant {

/// w: one row of `cols` weights in its GGML type; act: the row's
/// activation blocks (quantize_activation), or floats for the float types.
using dot_fn = float (*)(const uint8_t* w, const void* act, int64_t cols);
/// Four rows w[0..3] · one activation row: out[r] is what the dot_fn of
/// the same type and level gives for w[r], bit for bit.
using dot4_fn = void (*)(const uint8_t* const* w, const void* act, int64_t cols, float* out);
using dequantize_fn = void (*)(const uint8_t* src, float* dst, int64_t n);

/// The dot product of weight type t at the active kernel level; throws
/// model_error for a type without kernels.
dot_fn active_dot(ggml_type t);
/// The four-row dot product of weight type t at the active kernel level:
/// null where that level has none (call the dot_fn per row).
dot4_fn active_dot4(ggml_type t);
namespace gemm {
struct kernels;
}
/// The integer matrix product of weight type t at the active kernel level
/// (model/quant_gemm.hpp): null where that level has none, and matmat
/// multiplies tiles of dequantized rows with BLAS.
const gemm::kernels* active_gemm(ggml_type t);
/// dst[n] = the f32 values of n elements of type t; throws as active_dot.
dequantize_fn dequantizer(ggml_type t);

/// F32, F16 and BF16 take the f32 activation row as it is.
inline bool is_float(ggml_type t) {
  return t == ggml_type::f32 || t == ggml_type::f16 || t == ggml_type::bf16;
}

} // namespace ceco::quant
