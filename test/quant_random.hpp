#pragma once

// Random weight rows of every weight type for the kernel tests: the native
// quant_test and the aarch64 kernel test (test/aarch64/). No torch.

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "model/half.hpp"
#include "model/quant.hpp"

namespace ceco::test {

using wtype = quant::ggml_type;

inline const std::vector<wtype> weight_types = {
  wtype::f32,  wtype::f16,  wtype::bf16, wtype::q4_0, wtype::q4_1,
  wtype::q5_0, wtype::q5_1, wtype::q8_0, wtype::q2_k, wtype::q3_k,
  wtype::q4_k, wtype::q5_k, wtype::q6_k};

/// Byte offsets of the f16 scale fields in one block of each type.
inline std::vector<int> half_fields(wtype t) {
  switch (t) {
    case wtype::q4_0:
    case wtype::q5_0:
    case wtype::q8_0: return {0};
    case wtype::q4_1:
    case wtype::q5_1:
    case wtype::q4_k:
    case wtype::q5_k: return {0, 2};
    case wtype::q2_k: return {80, 82};
    case wtype::q3_k: return {108};
    case wtype::q6_k: return {208};
    default: return {};
  }
}

/// rows x cols weights of type t: random quant bits, finite random scales.
inline std::vector<uint8_t> random_weights(wtype t, int64_t rows, int64_t cols, std::mt19937& rng) {
  const auto& info = *quant::find_info(t);
  const size_t n_blocks = size_t(rows * cols / info.block_size);
  std::vector<uint8_t> bytes(n_blocks * size_t(info.block_bytes));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  if (t == wtype::f32) {
    for (size_t i = 0; i < n_blocks; ++i) {
      float v = normal(rng);
      std::memcpy(bytes.data() + 4 * i, &v, 4);
    }
    return bytes;
  }
  if (t == wtype::f16 || t == wtype::bf16) {
    for (size_t i = 0; i < n_blocks; ++i) {
      float v = normal(rng);
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      uint16_t h = t == wtype::f16 ? float_to_half(v) : uint16_t(bits >> 16);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
    return bytes;
  }
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : bytes)
    b = uint8_t(byte(rng));
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (size_t b = 0; b < n_blocks; ++b)
    for (int off : half_fields(t)) {
      uint16_t h = float_to_half((byte(rng) & 1 ? -1.0f : 1.0f) * scale(rng));
      std::memcpy(bytes.data() + b * size_t(info.block_bytes) + size_t(off), &h, 2);
    }
  return bytes;
}

} // namespace ceco::test
