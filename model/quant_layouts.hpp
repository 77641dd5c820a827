#pragma once

// The GGML block types as layouts: each unpacks one block into signed 8-bit
// values and, per sub-block, a scale and an offset. Dequantization, the dot
// products (model/quant.cpp) and the repacking of the integer matrix
// products (model/quant_gemm_avx512.cpp) share them, so each format's bit
// layout is written once. Internal to model/.
//
// In an unnamed namespace on purpose: a file compiled for AVX-512 includes
// these too, and each file must keep its own copy of the functions rather
// than share one the linker might take from the AVX-512 file.

#include <cstdint>
#include <cstring>

#include "model/quant_blocks.hpp"

namespace ceco::quant {

namespace {

// x = scale * q + offset for each element of a sub-block of `sub` elements;
// q runs from min_value to min_value + 2^bits - 1.

struct q4_0_layout {
  using block_type = block_q4_0;
  static constexpr int block = 32, bytes = sizeof(block_type), sub = 32;
  static constexpr bool has_offset = false;
  static constexpr int min_value = -8;  // the least q unpack gives
  // d: f16 | qs[16]: element l in the low nibble of qs[l], l+16 in the high
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    scale[0] = load_half(CECO_FIELD(b, block_q4_0, d));
    offset[0] = 0;
    const uint8_t* qs = CECO_FIELD(b, block_q4_0, qs);
    for (int l = 0; l < 16; ++l) {
      q[l] = int8_t((qs[l] & 15) - 8);
      q[l + 16] = int8_t((qs[l] >> 4) - 8);
    }
  }
};

struct q4_1_layout {
  using block_type = block_q4_1;
  static constexpr int block = 32, bytes = sizeof(block_type), sub = 32;
  static constexpr bool has_offset = true;
  static constexpr int min_value = 0;  // the least q unpack gives
  // d: f16 | m: f16 | qs[16]; x = d * q + m
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    scale[0] = load_half(CECO_FIELD(b, block_q4_1, d));
    offset[0] = load_half(CECO_FIELD(b, block_q4_1, m));
    const uint8_t* qs = CECO_FIELD(b, block_q4_1, qs);
    for (int l = 0; l < 16; ++l) {
      q[l] = int8_t(qs[l] & 15);
      q[l + 16] = int8_t(qs[l] >> 4);
    }
  }
};

struct q5_0_layout {
  using block_type = block_q5_0;
  static constexpr int block = 32, bytes = sizeof(block_type), sub = 32;
  static constexpr bool has_offset = false;
  static constexpr int min_value = -16;  // the least q unpack gives
  // d: f16 | qh: u32, bit i the fifth bit of element i | qs[16] as Q4_0
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    scale[0] = load_half(CECO_FIELD(b, block_q5_0, d));
    offset[0] = 0;
    const uint32_t qh = load_u32(CECO_FIELD(b, block_q5_0, qh));
    const uint8_t* qs = CECO_FIELD(b, block_q5_0, qs);
    for (int l = 0; l < 16; ++l) {
      q[l] = int8_t(((qs[l] & 15) | (((qh >> l) & 1) << 4)) - 16);
      q[l + 16] = int8_t(((qs[l] >> 4) | (((qh >> (l + 16)) & 1) << 4)) - 16);
    }
  }
};

struct q5_1_layout {
  using block_type = block_q5_1;
  static constexpr int block = 32, bytes = sizeof(block_type), sub = 32;
  static constexpr bool has_offset = true;
  static constexpr int min_value = 0;  // the least q unpack gives
  // d: f16 | m: f16 | qh: u32 | qs[16]; x = d * q + m
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    scale[0] = load_half(CECO_FIELD(b, block_q5_1, d));
    offset[0] = load_half(CECO_FIELD(b, block_q5_1, m));
    const uint32_t qh = load_u32(CECO_FIELD(b, block_q5_1, qh));
    const uint8_t* qs = CECO_FIELD(b, block_q5_1, qs);
    for (int l = 0; l < 16; ++l) {
      q[l] = int8_t((qs[l] & 15) | (((qh >> l) & 1) << 4));
      q[l + 16] = int8_t((qs[l] >> 4) | (((qh >> (l + 16)) & 1) << 4));
    }
  }
};

struct q8_0_layout {
  using block_type = block_q8_0;
  static constexpr int block = 32, bytes = sizeof(block_type), sub = 32;
  static constexpr bool has_offset = false;
  static constexpr int min_value = -128;  // the least q unpack gives
  // d: f16 | qs[32]: int8
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    scale[0] = load_half(CECO_FIELD(b, block_q8_0, d));
    offset[0] = 0;
    std::memcpy(q, CECO_FIELD(b, block_q8_0, qs), 32);
  }
};

struct q2_k_layout {
  using block_type = block_q2_k;
  static constexpr int block = 256, bytes = sizeof(block_type), sub = 16;
  static constexpr bool has_offset = true;
  static constexpr int min_value = 0;  // the least q unpack gives
  // scales[16]: scale (low nibble) and min (high) per 16 | qs[64]: 2 bits |
  // d: f16 | dmin: f16. Element 128n + 32j + l is bits 2j of qs[32n + l].
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    const uint8_t* sc = CECO_FIELD(b, block_q2_k, scales);
    const uint8_t* qs = CECO_FIELD(b, block_q2_k, qs);
    const float d = load_half(CECO_FIELD(b, block_q2_k, d));
    const float dmin = load_half(CECO_FIELD(b, block_q2_k, dmin));
    for (int s = 0; s < 16; ++s) {
      scale[s] = d * float(sc[s] & 15);
      offset[s] = -dmin * float(sc[s] >> 4);
    }
    for (int n = 0; n < 2; ++n)
      for (int j = 0; j < 4; ++j)
        for (int l = 0; l < 32; ++l)
          q[128 * n + 32 * j + l] = int8_t((qs[32 * n + l] >> (2 * j)) & 3);
  }
};

struct q3_k_layout {
  using block_type = block_q3_k;
  static constexpr int block = 256, bytes = sizeof(block_type), sub = 16;
  static constexpr bool has_offset = false;
  static constexpr int min_value = -4;  // the least q unpack gives
  // hmask[32] | qs[64]: low 2 bits | scales[12]: 16 6-bit scales, biased
  // by 32 | d: f16. Element 128n + 32j + l: low bits 2j of qs[32n + l];
  // high bit 4n + j of hmask[l], where a clear bit subtracts 4.
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    const uint8_t* hmask = CECO_FIELD(b, block_q3_k, hmask);
    const uint8_t* qs = CECO_FIELD(b, block_q3_k, qs);
    const uint8_t* sc = CECO_FIELD(b, block_q3_k, scales);
    const float d = load_half(CECO_FIELD(b, block_q3_k, d));
    for (int s = 0; s < 16; ++s) {
      scale[s] = d * float(k3_scale(sc, s));
      offset[s] = 0;
    }
    for (int n = 0; n < 2; ++n)
      for (int j = 0; j < 4; ++j)
        for (int l = 0; l < 32; ++l) {
          const int low = (qs[32 * n + l] >> (2 * j)) & 3;
          const int high = (hmask[l] >> (4 * n + j)) & 1;
          q[128 * n + 32 * j + l] = int8_t(low - (high ? 0 : 4));
        }
  }
};

struct q4_k_layout {
  using block_type = block_q4_k;
  static constexpr int block = 256, bytes = sizeof(block_type), sub = 32;
  static constexpr bool has_offset = true;
  static constexpr int min_value = 0;  // the least q unpack gives
  // d: f16 | dmin: f16 | scales[12]: 8 6-bit scales and mins | qs[128].
  // Each 64 elements take 32 bytes: low nibbles first, then high nibbles.
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    const float d = load_half(CECO_FIELD(b, block_q4_k, d));
    const float dmin = load_half(CECO_FIELD(b, block_q4_k, dmin));
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      k4_scale_min(CECO_FIELD(b, block_q4_k, scales), j, sc, m);
      scale[j] = d * float(sc);
      offset[j] = -dmin * float(m);
    }
    const uint8_t* qs = CECO_FIELD(b, block_q4_k, qs);
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        q[64 * c + l] = int8_t(qs[32 * c + l] & 15);
        q[64 * c + 32 + l] = int8_t(qs[32 * c + l] >> 4);
      }
  }
};

struct q5_k_layout {
  using block_type = block_q5_k;
  static constexpr int block = 256, bytes = sizeof(block_type), sub = 32;
  static constexpr bool has_offset = true;
  static constexpr int min_value = 0;  // the least q unpack gives
  // d | dmin | scales[12] as Q4_K | qh[32]: fifth bits | qs[128] as Q4_K.
  // The fifth bit of element 32s + l is bit s of qh[l].
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    const float d = load_half(CECO_FIELD(b, block_q5_k, d));
    const float dmin = load_half(CECO_FIELD(b, block_q5_k, dmin));
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      k4_scale_min(CECO_FIELD(b, block_q5_k, scales), j, sc, m);
      scale[j] = d * float(sc);
      offset[j] = -dmin * float(m);
    }
    const uint8_t* qh = CECO_FIELD(b, block_q5_k, qh);
    const uint8_t* qs = CECO_FIELD(b, block_q5_k, qs);
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        q[64 * c + l] = int8_t((qs[32 * c + l] & 15) | (((qh[l] >> (2 * c)) & 1) << 4));
        q[64 * c + 32 + l] = int8_t((qs[32 * c + l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4));
      }
  }
};

struct q6_k_layout {
  using block_type = block_q6_k;
  static constexpr int block = 256, bytes = sizeof(block_type), sub = 16;
  static constexpr bool has_offset = false;
  static constexpr int min_value = -32;  // the least q unpack gives
  // ql[128]: low 4 bits | qh[64]: high 2 bits | scales[16]: int8 | d: f16.
  // Per 128 elements (h): ql + 64h, qh + 32h; element 32k + l of the half
  // takes the low or high nibble of ql[l] / ql[l + 32] and bits 2k of qh[l].
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    const float d = load_half(CECO_FIELD(b, block_q6_k, d));
    const auto* sc = reinterpret_cast<const int8_t*>(CECO_FIELD(b, block_q6_k, scales));
    for (int s = 0; s < 16; ++s) {
      scale[s] = d * float(sc[s]);
      offset[s] = 0;
    }
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = CECO_FIELD(b, block_q6_k, ql) + 64 * h;
      const uint8_t* qh = CECO_FIELD(b, block_q6_k, qh) + 32 * h;
      int8_t* qo = q + 128 * h;
      for (int l = 0; l < 32; ++l) {
        qo[l] = int8_t(((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32);
        qo[l + 32] = int8_t(((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
        qo[l + 64] = int8_t(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
        qo[l + 96] = int8_t(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
      }
    }
  }
};

} // namespace

} // namespace ceco::quant
