#pragma once

// IEEE half (fp16) and bfloat16 <-> float: what GGUF weights and the f16
// wire dtype are stored in. Its own unit, so the wire does not depend on the
// GGUF reader.

#include <cstdint>

namespace ceco {

/// IEEE half -> float, exact for every half value.
float half_to_float(uint16_t h);
/// float -> IEEE half, rounding to nearest even (overflow gives infinity).
uint16_t float_to_half(float f);
/// bfloat16 -> float, exact (the top half of a float's bits).
float bf16_to_float(uint16_t h);

} // namespace ceco
