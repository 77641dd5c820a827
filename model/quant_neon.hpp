#pragma once

// The aarch64 Advanced SIMD (NEON) variants of the quantized dot products
// (model/quant_neon.cpp), with and without the dot-product extension
// (SDOT, ARMv8.2-A), chosen at run time in model/quant.cpp.

#include <cstdint>

#include "model/quant.hpp"

namespace ceco::quant::neon {

/// w: one row of `cols` weights in its GGML type; act: the row's activation
/// blocks (quant::quantize_activation), or floats for F16 and BF16.
using dot_fn = float (*)(const uint8_t* w, const void* act, int64_t cols);

/// Whether this build has the NEON kernels (an aarch64 build: every
/// ARMv8-A core has Advanced SIMD).
bool available();
/// Whether the CPU also has the dot-product instructions (the kernel's
/// HWCAP_ASIMDDP bit).
bool has_dotprod();
/// The plain NEON dot product of a weight type; null where there is none
/// (or on another architecture).
dot_fn dot(ggml_type t);
/// The SDOT variant; null where there is none. Call only where
/// has_dotprod().
dot_fn dot_dotprod(ggml_type t);

} // namespace ceco::quant::neon
