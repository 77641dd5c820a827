#pragma once

// GGML's weight blocks as named structs, the 8-bit activation blocks the
// integer dot products take, and the scalar helpers both kernel files share
// (model/quant.cpp: portable; model/quant_avx2.cpp: AVX2; model/quant_neon.cpp:
// aarch64 NEON). Internal to
// model/: read these layouts through quant.hpp. Blocks are read from the
// mapped file byte by byte, at any alignment: the structs give each field's
// offset (offsetof) and the block's size, checked against the format below.

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "model/half.hpp"

#define CECO_INLINE inline __attribute__((always_inline))

namespace ceco::quant {

// -- scalars ------------------------------------------------------------------

CECO_INLINE float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

CECO_INLINE uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

/// IEEE half to float, exact; branch-free so that loops over it vectorise.
CECO_INLINE float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t em = h & 0x7fff;
  uint32_t normal = (em << 13) + (112u << 23);             // rebias 15 -> 127
  normal += em >= 0x7c00 ? (112u << 23) : 0u;              // inf/nan: exponent 255
  const float subnormal = float(int32_t(em)) * 5.9604645e-8f;  // em * 2^-24
  return bits_to_float(sign | (em < 0x0400 ? float_to_bits(subnormal) : normal));
}

CECO_INLINE float load_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return half_bits_to_float(h);
}

CECO_INLINE uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// -- activation blocks (internal to ceco, never stored in files) -------------

/// 32 activations as d * q, and s = d * sum(q) for the types with an
/// offset. As the reference implementation's Q8_0/Q8_1 blocks: d and s are
/// rounded to f16, so the products match its integer dot products.
struct act_block32 {
  float d;
  float s;
  int8_t q[32];
};
/// 256 activations as d * q, with the sums of q over each 16.
struct act_block256 {
  float d;
  int16_t sums[16];
  int8_t q[256];
};

static_assert(sizeof(act_block32) == 40 && sizeof(act_block256) == 292);

// -- GGML blocks, as the format lays them out -----------------------------------
// d, dmin, m: f16 scales; qs: packed values; qh, hmask: high bits.

/// 32 values: x = d * (q - 8); element l in the low nibble of qs[l], l + 16 in the high.
struct block_q4_0 {
  uint16_t d;
  uint8_t qs[16];
};
/// 32 values: x = d * q + m.
struct block_q4_1 {
  uint16_t d, m;
  uint8_t qs[16];
};
/// 32 values: x = d * (q - 16); bit i of qh (a little-endian u32) is element i's fifth bit.
struct block_q5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[16];
};
/// 32 values: x = d * q + m; qh as Q5_0.
struct block_q5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[16];
};
/// 32 values: x = d * q.
struct block_q8_0 {
  uint16_t d;
  int8_t qs[32];
};
/// 256 values in 16 sub-blocks of 16: scale (low nibble) and min (high) per
/// sub-block; element 128n + 32j + l is bits 2j of qs[32n + l].
struct block_q2_k {
  uint8_t scales[16];
  uint8_t qs[64];
  uint16_t d, dmin;
};
/// 256 values in 16 sub-blocks of 16: low 2 bits in qs, the high bit in
/// hmask (clear: minus 4), 16 6-bit scales biased by 32 packed in 12 bytes.
struct block_q3_k {
  uint8_t hmask[32];
  uint8_t qs[64];
  uint8_t scales[12];
  uint16_t d;
};
/// 256 values in 8 sub-blocks of 32: 6-bit scales and mins packed in 12
/// bytes; each 64 values take 32 bytes of qs, low nibbles first.
struct block_q4_k {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};
/// As Q4_K, with each value's fifth bit in qh: bit s of qh[l] for element 32s + l.
struct block_q5_k {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
/// 256 values in 16 sub-blocks of 16: low 4 bits in ql, high 2 bits in qh,
/// int8 scales; x = d * scale * (q - 32).
struct block_q6_k {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};

static_assert(sizeof(block_q4_0) == 18 && sizeof(block_q4_1) == 20);
static_assert(sizeof(block_q5_0) == 22 && sizeof(block_q5_1) == 24);
static_assert(sizeof(block_q8_0) == 34);
static_assert(sizeof(block_q2_k) == 84 && sizeof(block_q3_k) == 110);
static_assert(sizeof(block_q4_k) == 144 && sizeof(block_q5_k) == 176);
static_assert(sizeof(block_q6_k) == 210);

/// 6-bit scale and min j (0..7) of the 12 packed bytes of Q4_K and Q5_K:
/// j < 4 in the low 6 bits of bytes j and j+4; j >= 4 in the nibbles of
/// byte j+4 with their top 2 bits in the top bits of bytes j-4 and j.
CECO_INLINE void k4_scale_min(const uint8_t* s, int j, int& scale, int& min) {
  if (j < 4) {
    scale = s[j] & 63;
    min = s[j + 4] & 63;
  } else {
    scale = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

/// Scale s (0..15, -32..31) of the 12 packed bytes of Q3_K: its low 4 bits
/// in the nibbles of bytes 0..7 (s < 8 low, else high of byte s - 8), its
/// top 2 bits at bits 2 (s / 4) of byte 8 + s % 4; stored biased by 32.
CECO_INLINE int k3_scale(const uint8_t* sc, int s) {
  const int low = s < 8 ? (sc[s] & 15) : (sc[s - 8] >> 4);
  const int high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
  return (low | (high << 4)) - 32;
}

/// Where field `member` of block type `B` starts in the block at `b`.
#define CECO_FIELD(b, B, member) ((b) + offsetof(B, member))

} // namespace ceco::quant
