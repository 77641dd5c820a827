// aarch64 Advanced SIMD (NEON) kernels of the quantized dot products,
// chosen at run time (quant_neon.hpp). The portable kernels of
// model/quant.cpp are the reference they are tested against
// (test/aarch64/, under qemu-aarch64 in CI).
//
// Each kernel is one template over its block format and the instruction
// that multiplies 16 signed bytes by 16 and adds them into 4 i32 lanes:
// - `widening` (every ARMv8-A core): SMULL/SMULL2 to 16-bit products,
//   SADALP to add pairs of them into the lanes;
// - `sdot` (the dot-product extension, ARMv8.2-A): SDOT, four products
//   per lane in one instruction.
// The file is compiled for plain ARMv8-A; only the entry points of the
// SDOT variants carry the dotprod target, and `flatten` inlines the
// template bodies into them (an always_inline body without the target
// could not take the SDOT intrinsic). Which lane holds which product
// differs between the two; the kernels only ever sum whole sub-blocks.
//
// The 32-element types meet their integer sums with the scales in the
// float operations and order of the portable kernels, so their results
// are the portable ones bit for bit. The K-quants sum scale × integer sum
// over a block in integers, then take one float product per block.

#include "model/quant_neon.hpp"

#if defined(__aarch64__)
#include <arm_neon.h>
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)  // the kernel's bit for SDOT/UDOT
#endif
#endif

#include "model/quant_blocks.hpp"

namespace ceco::quant::neon {

#if defined(__aarch64__)

namespace {

#define CECO_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))
#define CECO_FLATTEN __attribute__((flatten))

/// f16 to f32 by the FP unit's FCVT (every ARMv8-A core), exact.
CECO_INLINE float half_at(const uint8_t* p) {
  __fp16 h;
  std::memcpy(&h, p, 2);
  return float(h);
}

struct widening {
  static CECO_INLINE int32x4_t dot(int32x4_t acc, int8x16_t a, int8x16_t b) {
    // |a·b| <= 128 * 127: each product fits 16 bits; pairs go into 32.
    const int16x8_t low = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t high = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, low), high);
  }
};

struct sdot {
  static inline CECO_DOTPROD int32x4_t dot(int32x4_t acc, int8x16_t a, int8x16_t b) {
    return vdotq_s32(acc, a, b);
  }
};

/// Byte i is 0xFF where bit i of `bits` (16 of them) is set.
CECO_INLINE uint8x16_t bits_to_bytes(uint32_t bits) {
  const uint8x16_t spread =
    vcombine_u8(vdup_n_u8(uint8_t(bits & 0xff)), vdup_n_u8(uint8_t((bits >> 8) & 0xff)));
  const uint8x16_t bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201ull));
  return vtstq_u8(spread, bit);
}

CECO_INLINE int8x16_t as_s8(uint8x16_t v) {
  return vreinterpretq_s8_u8(v);
}

// -- blocks of 32 ---------------------------------------------------------------
// values(): elements 0..15 and 16..31 of one block as signed bytes.

struct neon_q4_0 {
  using block_type = block_q4_0;
  static constexpr bool has_offset = false;
  static CECO_INLINE void values(const uint8_t* b, int8x16_t& lo, int8x16_t& hi) {
    // qs[l]: element l in the low nibble, l + 16 in the high; stored + 8
    const uint8x16_t qs = vld1q_u8(CECO_FIELD(b, block_q4_0, qs));
    lo = vsubq_s8(as_s8(vandq_u8(qs, vdupq_n_u8(15))), vdupq_n_s8(8));
    hi = vsubq_s8(as_s8(vshrq_n_u8(qs, 4)), vdupq_n_s8(8));
  }
};
struct neon_q4_1 {
  using block_type = block_q4_1;
  static constexpr bool has_offset = true;
  static CECO_INLINE void values(const uint8_t* b, int8x16_t& lo, int8x16_t& hi) {
    const uint8x16_t qs = vld1q_u8(CECO_FIELD(b, block_q4_1, qs));
    lo = as_s8(vandq_u8(qs, vdupq_n_u8(15)));
    hi = as_s8(vshrq_n_u8(qs, 4));
  }
};
/// Q5_0 and Q5_1: the nibbles of qs with bit i of qh as element i's fifth bit.
template <class B>
CECO_INLINE void five_bit_values(const uint8_t* b, uint8x16_t& lo, uint8x16_t& hi) {
  const uint8x16_t qs = vld1q_u8(CECO_FIELD(b, B, qs));
  const uint32_t qh = load_u32(CECO_FIELD(b, B, qh));
  const uint8x16_t sixteen = vdupq_n_u8(16);
  lo = vorrq_u8(vandq_u8(qs, vdupq_n_u8(15)), vandq_u8(bits_to_bytes(qh), sixteen));
  hi = vorrq_u8(vshrq_n_u8(qs, 4), vandq_u8(bits_to_bytes(qh >> 16), sixteen));
}
struct neon_q5_0 {
  using block_type = block_q5_0;
  static constexpr bool has_offset = false;
  static CECO_INLINE void values(const uint8_t* b, int8x16_t& lo, int8x16_t& hi) {
    uint8x16_t l, h;
    five_bit_values<block_q5_0>(b, l, h);
    lo = vsubq_s8(as_s8(l), vdupq_n_s8(16));
    hi = vsubq_s8(as_s8(h), vdupq_n_s8(16));
  }
};
struct neon_q5_1 {
  using block_type = block_q5_1;
  static constexpr bool has_offset = true;
  static CECO_INLINE void values(const uint8_t* b, int8x16_t& lo, int8x16_t& hi) {
    uint8x16_t l, h;
    five_bit_values<block_q5_1>(b, l, h);
    lo = as_s8(l);
    hi = as_s8(h);
  }
};
struct neon_q8_0 {
  using block_type = block_q8_0;
  static constexpr bool has_offset = false;
  static CECO_INLINE void values(const uint8_t* b, int8x16_t& lo, int8x16_t& hi) {
    const uint8_t* qs = CECO_FIELD(b, block_q8_0, qs);
    lo = as_s8(vld1q_u8(qs));
    hi = as_s8(vld1q_u8(qs + 16));
  }
};

/// A row of a 32-element type · activation blocks of 32, in the portable
/// kernel's float operations: sum += (a.d * d) * q·a, then + m * a.s.
template <class V, class D>
inline float dot32(const uint8_t* w, const void* act, int64_t cols) {
  using B = typename V::block_type;
  const auto* a = static_cast<const act_block32*>(act);
  float sum = 0;
  for (int64_t b = 0; b < cols / 32; ++b) {
    const uint8_t* blk = w + b * int64_t(sizeof(B));
    int8x16_t lo, hi;
    V::values(blk, lo, hi);
    int32x4_t acc = D::dot(vdupq_n_s32(0), lo, vld1q_s8(a[b].q));
    acc = D::dot(acc, hi, vld1q_s8(a[b].q + 16));
    sum += a[b].d * half_at(CECO_FIELD(blk, B, d)) * float(vaddvq_s32(acc));
    if constexpr (V::has_offset)
      sum += half_at(CECO_FIELD(blk, B, m)) * a[b].s;
  }
  return sum;
}

// -- K-quants -------------------------------------------------------------------
// unpack(): the block's 256 values as 16 vectors of 16 signed bytes (vector
// v: elements 16v..16v+15), its integer scale per sub-block (16 of 16, or 8
// of 32) and, for the types with mins, the integer min per sub-block.

struct neon_q4_k {
  using block_type = block_q4_k;
  static constexpr int sub = 32;
  static constexpr bool has_min = true;
  static CECO_INLINE void unpack(const uint8_t* b, int8x16_t* q, int32_t* scale, int32_t* min) {
    for (int j = 0; j < 8; ++j)
      k4_scale_min(CECO_FIELD(b, block_q4_k, scales), j, scale[j], min[j]);
    // 32 bytes per 64 elements: the low nibbles are elements 0..31, the
    // high ones 32..63
    const uint8_t* qs = CECO_FIELD(b, block_q4_k, qs);
    for (int c = 0; c < 4; ++c) {
      const uint8x16_t b0 = vld1q_u8(qs + 32 * c), b1 = vld1q_u8(qs + 32 * c + 16);
      q[4 * c + 0] = as_s8(vandq_u8(b0, vdupq_n_u8(15)));
      q[4 * c + 1] = as_s8(vandq_u8(b1, vdupq_n_u8(15)));
      q[4 * c + 2] = as_s8(vshrq_n_u8(b0, 4));
      q[4 * c + 3] = as_s8(vshrq_n_u8(b1, 4));
    }
  }
};
struct neon_q5_k {
  using block_type = block_q5_k;
  static constexpr int sub = 32;
  static constexpr bool has_min = true;
  static CECO_INLINE void unpack(const uint8_t* b, int8x16_t* q, int32_t* scale, int32_t* min) {
    for (int j = 0; j < 8; ++j)
      k4_scale_min(CECO_FIELD(b, block_q5_k, scales), j, scale[j], min[j]);
    // as Q4_K; the fifth bit of element 32s + l is bit s of qh[l]
    const uint8_t* qs = CECO_FIELD(b, block_q5_k, qs);
    const uint8x16_t h0 = vld1q_u8(CECO_FIELD(b, block_q5_k, qh)),
                     h1 = vld1q_u8(CECO_FIELD(b, block_q5_k, qh) + 16);
    const uint8x16_t sixteen = vdupq_n_u8(16);
    for (int c = 0; c < 4; ++c) {
      const uint8x16_t b0 = vld1q_u8(qs + 32 * c), b1 = vld1q_u8(qs + 32 * c + 16);
      const uint8x16_t even = vdupq_n_u8(uint8_t(1u << (2 * c))),
                       odd = vdupq_n_u8(uint8_t(1u << (2 * c + 1)));
      q[4 * c + 0] = as_s8(vorrq_u8(vandq_u8(b0, vdupq_n_u8(15)), vandq_u8(vtstq_u8(h0, even), sixteen)));
      q[4 * c + 1] = as_s8(vorrq_u8(vandq_u8(b1, vdupq_n_u8(15)), vandq_u8(vtstq_u8(h1, even), sixteen)));
      q[4 * c + 2] = as_s8(vorrq_u8(vshrq_n_u8(b0, 4), vandq_u8(vtstq_u8(h0, odd), sixteen)));
      q[4 * c + 3] = as_s8(vorrq_u8(vshrq_n_u8(b1, 4), vandq_u8(vtstq_u8(h1, odd), sixteen)));
    }
  }
};
struct neon_q6_k {
  using block_type = block_q6_k;
  static constexpr int sub = 16;
  static constexpr bool has_min = false;
  static CECO_INLINE void unpack(const uint8_t* b, int8x16_t* q, int32_t* scale, int32_t*) {
    const auto* sc = reinterpret_cast<const int8_t*>(CECO_FIELD(b, block_q6_k, scales));
    for (int s = 0; s < 16; ++s)
      scale[s] = sc[s];
    // Per 128 elements h: element 32k + l takes a nibble of ql[l] (k even)
    // or ql[l + 32] (k odd), low for k < 2, and bits 2k..2k+1 of qh[l].
    const uint8x16_t low = vdupq_n_u8(15), top = vdupq_n_u8(0x30);
    for (int h = 0; h < 2; ++h)
      for (int i = 0; i < 2; ++i) {
        const uint8_t* ql = CECO_FIELD(b, block_q6_k, ql) + 64 * h + 16 * i;
        const uint8x16_t l0 = vld1q_u8(ql), l1 = vld1q_u8(ql + 32);
        const uint8x16_t qh = vld1q_u8(CECO_FIELD(b, block_q6_k, qh) + 32 * h + 16 * i);
        const uint8x16_t v0 = vorrq_u8(vandq_u8(l0, low), vandq_u8(vshlq_n_u8(qh, 4), top));
        const uint8x16_t v1 = vorrq_u8(vandq_u8(l1, low), vandq_u8(vshlq_n_u8(qh, 2), top));
        const uint8x16_t v2 = vorrq_u8(vshrq_n_u8(l0, 4), vandq_u8(qh, top));
        const uint8x16_t v3 = vorrq_u8(vshrq_n_u8(l1, 4), vandq_u8(vshrq_n_u8(qh, 2), top));
        // stored + 32
        q[8 * h + 0 + i] = vsubq_s8(as_s8(v0), vdupq_n_s8(32));
        q[8 * h + 2 + i] = vsubq_s8(as_s8(v1), vdupq_n_s8(32));
        q[8 * h + 4 + i] = vsubq_s8(as_s8(v2), vdupq_n_s8(32));
        q[8 * h + 6 + i] = vsubq_s8(as_s8(v3), vdupq_n_s8(32));
      }
  }
};
struct neon_q3_k {
  using block_type = block_q3_k;
  static constexpr int sub = 16;
  static constexpr bool has_min = false;
  static CECO_INLINE void unpack(const uint8_t* b, int8x16_t* q, int32_t* scale, int32_t*) {
    for (int s = 0; s < 16; ++s)
      scale[s] = k3_scale(CECO_FIELD(b, block_q3_k, scales), s);
    // Element 128n + 32j + l: bits 2j of qs[32n + l]; bit 4n + j of
    // hmask[l], where a clear bit subtracts 4.
    const uint8x16_t three = vdupq_n_u8(3), four = vdupq_n_u8(4);
    for (int n = 0; n < 2; ++n)
      for (int i = 0; i < 2; ++i) {
        const uint8x16_t qs = vld1q_u8(CECO_FIELD(b, block_q3_k, qs) + 32 * n + 16 * i);
        const uint8x16_t hm = vld1q_u8(CECO_FIELD(b, block_q3_k, hmask) + 16 * i);
        for (int j = 0; j < 4; ++j) {
          const uint8x16_t lowbits = vandq_u8(vshlq_u8(qs, vdupq_n_s8(int8_t(-2 * j))), three);
          const uint8x16_t set = vtstq_u8(hm, vdupq_n_u8(uint8_t(1u << (4 * n + j))));
          q[8 * n + 2 * j + i] = vsubq_s8(as_s8(lowbits), as_s8(vbicq_u8(four, set)));
        }
      }
  }
};
struct neon_q2_k {
  using block_type = block_q2_k;
  static constexpr int sub = 16;
  static constexpr bool has_min = true;
  static CECO_INLINE void unpack(const uint8_t* b, int8x16_t* q, int32_t* scale, int32_t* min) {
    const uint8_t* sc = CECO_FIELD(b, block_q2_k, scales);
    for (int s = 0; s < 16; ++s) {
      scale[s] = sc[s] & 15;
      min[s] = sc[s] >> 4;
    }
    // element 128n + 32j + l: bits 2j of qs[32n + l]
    const uint8x16_t three = vdupq_n_u8(3);
    for (int n = 0; n < 2; ++n)
      for (int i = 0; i < 2; ++i) {
        const uint8x16_t qs = vld1q_u8(CECO_FIELD(b, block_q2_k, qs) + 32 * n + 16 * i);
        for (int j = 0; j < 4; ++j)
          q[8 * n + 2 * j + i] = as_s8(vandq_u8(vshlq_u8(qs, vdupq_n_s8(int8_t(-2 * j))), three));
      }
  }
};

/// A row of a K-quant type · activation blocks of 256:
/// a.d * (d * sum_s scale_s q_s·a_s - dmin * sum_s min_s sum(a_s)).
/// The integers fit 32 bits: |q_s·a_s| <= 16 * 32 * 127 per 16 values (Q6_K,
/// scales up to 128), 32 * 31 * 127 per 32 (Q5_K, scales up to 63).
template <class U, class D>
inline float dot256(const uint8_t* w, const void* act, int64_t cols) {
  using B = typename U::block_type;
  constexpr int n_sub = 256 / U::sub;
  const auto* a = static_cast<const act_block256*>(act);
  float sum = 0;
  for (int64_t b = 0; b < cols / 256; ++b) {
    const uint8_t* blk = w + b * int64_t(sizeof(B));
    int8x16_t q[16];
    int32_t scale[n_sub], min[n_sub];
    U::unpack(blk, q, scale, min);
    // Four sub-blocks at a time: their dot products summed to one lane each.
    int32x4_t scaled = vdupq_n_s32(0);
    for (int g = 0; g < n_sub / 4; ++g) {
      int32x4_t p[4];
      for (int k = 0; k < 4; ++k) {
        const int s = 4 * g + k;
        constexpr int per = U::sub / 16;  // vectors per sub-block
        p[k] = vdupq_n_s32(0);
        for (int v = 0; v < per; ++v)
          p[k] = D::dot(p[k], q[per * s + v], vld1q_s8(a[b].q + U::sub * s + 16 * v));
      }
      const int32x4_t sums = vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3]));
      scaled = vmlaq_s32(scaled, sums, vld1q_s32(scale + 4 * g));
    }
    float block = half_at(CECO_FIELD(blk, B, d)) * float(vaddvq_s32(scaled));
    if constexpr (U::has_min) {
      int32_t mins = 0;  // sum_s min_s * (the sub-block's activation sum)
      for (int s = 0; s < n_sub; ++s)
        for (int k = 0; k < U::sub / 16; ++k)
          mins += min[s] * a[b].sums[s * (U::sub / 16) + k];
      block -= half_at(CECO_FIELD(blk, B, dmin)) * float(mins);
    }
    sum += a[b].d * block;
  }
  return sum;
}

// -- float types ----------------------------------------------------------------
// Two accumulators of 4 lanes, 8 elements a step, the tail one by one.

float dot_f32(const uint8_t* w, const void* act, int64_t n) {
  const auto* x = static_cast<const float*>(act);
  float32x4_t acc0 = vdupq_n_f32(0), acc1 = vdupq_n_f32(0);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    float wf[8];
    std::memcpy(wf, w + 4 * i, sizeof wf);  // rows may be unaligned
    acc0 = vfmaq_f32(acc0, vld1q_f32(wf), vld1q_f32(x + i));
    acc1 = vfmaq_f32(acc1, vld1q_f32(wf + 4), vld1q_f32(x + i + 4));
  }
  float s = vaddvq_f32(vaddq_f32(acc0, acc1));
  for (; i < n; ++i) {
    float v;
    std::memcpy(&v, w + 4 * i, 4);
    s += v * x[i];
  }
  return s;
}

float dot_f16(const uint8_t* w, const void* act, int64_t n) {
  const auto* x = static_cast<const float*>(act);
  float32x4_t acc0 = vdupq_n_f32(0), acc1 = vdupq_n_f32(0);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const float16x8_t h = vreinterpretq_f16_u8(vld1q_u8(w + 2 * i));
    acc0 = vfmaq_f32(acc0, vcvt_f32_f16(vget_low_f16(h)), vld1q_f32(x + i));
    acc1 = vfmaq_f32(acc1, vcvt_high_f32_f16(h), vld1q_f32(x + i + 4));
  }
  float s = vaddvq_f32(vaddq_f32(acc0, acc1));
  for (; i < n; ++i)
    s += half_at(w + 2 * i) * x[i];
  return s;
}

float dot_bf16(const uint8_t* w, const void* act, int64_t n) {
  const auto* x = static_cast<const float*>(act);
  float32x4_t acc0 = vdupq_n_f32(0), acc1 = vdupq_n_f32(0);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    // bf16 is the top half of an f32: widen each by 16 zero bits
    const uint16x8_t h = vreinterpretq_u16_u8(vld1q_u8(w + 2 * i));
    acc0 = vfmaq_f32(acc0, vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16)),
                     vld1q_f32(x + i));
    acc1 = vfmaq_f32(acc1, vreinterpretq_f32_u32(vshll_high_n_u16(h, 16)), vld1q_f32(x + i + 4));
  }
  float s = vaddvq_f32(vaddq_f32(acc0, acc1));
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, w + 2 * i, 2);
    s += bits_to_float(uint32_t(h) << 16) * x[i];
  }
  return s;
}

// -- entry points: each kernel with each multiply --------------------------------

template <class V>
CECO_FLATTEN float dot32_neon(const uint8_t* w, const void* act, int64_t cols) {
  return dot32<V, widening>(w, act, cols);
}
template <class V>
CECO_FLATTEN CECO_DOTPROD float dot32_sdot(const uint8_t* w, const void* act, int64_t cols) {
  return dot32<V, sdot>(w, act, cols);
}
template <class U>
CECO_FLATTEN float dot256_neon(const uint8_t* w, const void* act, int64_t cols) {
  return dot256<U, widening>(w, act, cols);
}
template <class U>
CECO_FLATTEN CECO_DOTPROD float dot256_sdot(const uint8_t* w, const void* act, int64_t cols) {
  return dot256<U, sdot>(w, act, cols);
}

} // namespace

bool available() { return true; }

bool has_dotprod() {
  static const bool has = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
  return has;
}

dot_fn dot(ggml_type t) {
  switch (t) {
    case ggml_type::f32: return dot_f32;
    case ggml_type::f16: return dot_f16;
    case ggml_type::bf16: return dot_bf16;
    case ggml_type::q4_0: return dot32_neon<neon_q4_0>;
    case ggml_type::q4_1: return dot32_neon<neon_q4_1>;
    case ggml_type::q5_0: return dot32_neon<neon_q5_0>;
    case ggml_type::q5_1: return dot32_neon<neon_q5_1>;
    case ggml_type::q8_0: return dot32_neon<neon_q8_0>;
    case ggml_type::q2_k: return dot256_neon<neon_q2_k>;
    case ggml_type::q3_k: return dot256_neon<neon_q3_k>;
    case ggml_type::q4_k: return dot256_neon<neon_q4_k>;
    case ggml_type::q5_k: return dot256_neon<neon_q5_k>;
    case ggml_type::q6_k: return dot256_neon<neon_q6_k>;
    default: return nullptr;
  }
}

dot_fn dot_dotprod(ggml_type t) {
  switch (t) {
    case ggml_type::q4_0: return dot32_sdot<neon_q4_0>;
    case ggml_type::q4_1: return dot32_sdot<neon_q4_1>;
    case ggml_type::q5_0: return dot32_sdot<neon_q5_0>;
    case ggml_type::q5_1: return dot32_sdot<neon_q5_1>;
    case ggml_type::q8_0: return dot32_sdot<neon_q8_0>;
    case ggml_type::q2_k: return dot256_sdot<neon_q2_k>;
    case ggml_type::q3_k: return dot256_sdot<neon_q3_k>;
    case ggml_type::q4_k: return dot256_sdot<neon_q4_k>;
    case ggml_type::q5_k: return dot256_sdot<neon_q5_k>;
    case ggml_type::q6_k: return dot256_sdot<neon_q6_k>;
    default: return nullptr;  // the float types: the plain NEON kernels serve
  }
}

#else

bool available() { return false; }
bool has_dotprod() { return false; }
dot_fn dot(ggml_type) { return nullptr; }
dot_fn dot_dotprod(ggml_type) { return nullptr; }

#endif

} // namespace ceco::quant::neon
