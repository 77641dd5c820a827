#pragma once

// The AVX2/FMA variants of the quantized dot products (model/quant_avx2.cpp),
// kept apart from the portable kernels as each instruction set's code is.

#include <cstdint>

#include "model/quant.hpp"

namespace ceco::quant::avx2 {

/// w: one row of `cols` weights in its GGML type; act: the row's activation
/// blocks (quant::quantize_activation), or floats for F16.
using dot_fn = float (*)(const uint8_t* w, const void* act, int64_t cols);

/// Whether this CPU has AVX2, FMA and F16C.
bool available();
/// The AVX2 dot product of a weight type; null where there is none (or on
/// another architecture).
dot_fn dot(ggml_type t);

/// Four rows at once: out[r] = dot(t)(w[r], act, cols), bit for bit.
using dot4_fn = void (*)(const uint8_t* const* w, const void* act, int64_t cols, float* out);
/// The four-row AVX2 dot product of a weight type; null where there is none.
dot4_fn dot4(ggml_type t);

} // namespace ceco::quant::avx2
