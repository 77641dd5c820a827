#pragma once

// The AVX-512 (F, BW, VL) and VNNI variants of the quantized dot products
// (model/quant_avx512.cpp, the one file compiled with those instruction
// sets), chosen at run time where the CPU has them.

#include <cstdint>

#include "model/quant.hpp"

namespace ceco::quant::avx512 {

/// w: one row of `cols` weights in its GGML type; act: the row's activation
/// blocks (quant::quantize_activation).
using dot_fn = float (*)(const uint8_t* w, const void* act, int64_t cols);

/// The AVX-512/VNNI dot product of a weight type; null where there is none
/// (the AVX2 one serves), or where this build has no AVX-512 kernels. Call
/// only where the CPU has AVX-512 F, BW, VL and VNNI (quant.cpp checks).
dot_fn dot(ggml_type t);

/// Four rows at once: out[r] = dot(t)(w[r], act, cols), bit for bit.
using dot4_fn = void (*)(const uint8_t* const* w, const void* act, int64_t cols, float* out);
/// The four-row dot product of a weight type; null where there is none.
dot4_fn dot4(ggml_type t);

} // namespace ceco::quant::avx512
