#include "model/quant.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include <ATen/Parallel.h>
#include <cblas.h>
#include <fmt/format.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "model/compute_threads.hpp"
#include "model/config.hpp"
#include "model/half.hpp"

namespace ceco::quant {

namespace {

#define CECO_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define CECO_INLINE inline __attribute__((always_inline))

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

CECO_INLINE float round_to_half(float f) {
  return half_bits_to_float(float_to_half(f));
}

// Both quantizers scale by 127 / max|x| and round to nearest, ties to even,
// as the reference implementation does.
CECO_CLONES
void quantize_act32(const float* x, act_block32* out, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; ++b) {
    const float* xb = x + b * 32;
    float amax = 0;
    for (int i = 0; i < 32; ++i)
      amax = std::max(amax, std::fabs(xb[i]));
    const float d = amax / 127.0f;
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    int32_t sum = 0;
    for (int i = 0; i < 32; ++i) {
      const int8_t q = int8_t(std::nearbyint(xb[i] * id));
      out[b].q[i] = q;
      sum += q;
    }
    out[b].d = round_to_half(d);
    out[b].s = round_to_half(d * float(sum));
  }
}

CECO_CLONES
void quantize_act256(const float* x, act_block256* out, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; ++b) {
    const float* xb = x + b * 256;
    float amax = 0;
    for (int i = 0; i < 256; ++i)
      amax = std::max(amax, std::fabs(xb[i]));
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    for (int i = 0; i < 256; ++i)
      out[b].q[i] = int8_t(std::nearbyint(xb[i] * id));
    for (int s = 0; s < 16; ++s) {
      int32_t sum = 0;
      for (int i = 0; i < 16; ++i)
        sum += out[b].q[s * 16 + i];
      out[b].sums[s] = int16_t(sum);
    }
    out[b].d = amax > 0 ? 1.0f / id : 0.0f;
  }
}

// -- weight layouts -----------------------------------------------------------
// Each layout unpacks one block into signed 8-bit values q[block] and, per
// sub-block of `sub` elements, a scale and an offset: x = scale * q + offset.
// Dequantization and the dot products share these, so the layout lives in
// one place.

struct q4_0_layout {
  static constexpr int block = 32, bytes = 18, sub = 32;
  static constexpr bool has_offset = false;
  // d: f16 | qs[16]: element l in the low nibble of qs[l], l+16 in the high
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    scale[0] = load_half(b);
    offset[0] = 0;
    const uint8_t* qs = b + 2;
    for (int l = 0; l < 16; ++l) {
      q[l] = int8_t((qs[l] & 15) - 8);
      q[l + 16] = int8_t((qs[l] >> 4) - 8);
    }
  }
};

struct q4_1_layout {
  static constexpr int block = 32, bytes = 20, sub = 32;
  static constexpr bool has_offset = true;
  // d: f16 | m: f16 | qs[16]; x = d * q + m
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    scale[0] = load_half(b);
    offset[0] = load_half(b + 2);
    const uint8_t* qs = b + 4;
    for (int l = 0; l < 16; ++l) {
      q[l] = int8_t(qs[l] & 15);
      q[l + 16] = int8_t(qs[l] >> 4);
    }
  }
};

struct q5_0_layout {
  static constexpr int block = 32, bytes = 22, sub = 32;
  static constexpr bool has_offset = false;
  // d: f16 | qh: u32, bit i the fifth bit of element i | qs[16] as Q4_0
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    scale[0] = load_half(b);
    offset[0] = 0;
    const uint32_t qh = load_u32(b + 2);
    const uint8_t* qs = b + 6;
    for (int l = 0; l < 16; ++l) {
      q[l] = int8_t(((qs[l] & 15) | (((qh >> l) & 1) << 4)) - 16);
      q[l + 16] = int8_t(((qs[l] >> 4) | (((qh >> (l + 16)) & 1) << 4)) - 16);
    }
  }
};

struct q5_1_layout {
  static constexpr int block = 32, bytes = 24, sub = 32;
  static constexpr bool has_offset = true;
  // d: f16 | m: f16 | qh: u32 | qs[16]; x = d * q + m
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    scale[0] = load_half(b);
    offset[0] = load_half(b + 2);
    const uint32_t qh = load_u32(b + 4);
    const uint8_t* qs = b + 8;
    for (int l = 0; l < 16; ++l) {
      q[l] = int8_t((qs[l] & 15) | (((qh >> l) & 1) << 4));
      q[l + 16] = int8_t((qs[l] >> 4) | (((qh >> (l + 16)) & 1) << 4));
    }
  }
};

struct q8_0_layout {
  static constexpr int block = 32, bytes = 34, sub = 32;
  static constexpr bool has_offset = false;
  // d: f16 | qs[32]: int8
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    scale[0] = load_half(b);
    offset[0] = 0;
    std::memcpy(q, b + 2, 32);
  }
};

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

struct q2_k_layout {
  static constexpr int block = 256, bytes = 84, sub = 16;
  static constexpr bool has_offset = true;
  // scales[16]: scale (low nibble) and min (high) per 16 | qs[64]: 2 bits |
  // d: f16 | dmin: f16. Element 128n + 32j + l is bits 2j of qs[32n + l].
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    const uint8_t* sc = b;
    const uint8_t* qs = b + 16;
    const float d = load_half(b + 80), dmin = load_half(b + 82);
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
  static constexpr int block = 256, bytes = 110, sub = 16;
  static constexpr bool has_offset = false;
  // hmask[32] | qs[64]: low 2 bits | scales[12]: 16 6-bit scales, biased
  // by 32 | d: f16. Element 128n + 32j + l: low bits 2j of qs[32n + l];
  // high bit 4n + j of hmask[l], where a clear bit subtracts 4.
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    const uint8_t* hmask = b;
    const uint8_t* qs = b + 32;
    const uint8_t* sc = b + 96;
    const float d = load_half(b + 108);
    for (int s = 0; s < 16; ++s) {
      const int low = s < 8 ? (sc[s] & 15) : (sc[s - 8] >> 4);
      const int high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
      scale[s] = d * float((low | (high << 4)) - 32);
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
  static constexpr int block = 256, bytes = 144, sub = 32;
  static constexpr bool has_offset = true;
  // d: f16 | dmin: f16 | scales[12]: 8 6-bit scales and mins | qs[128].
  // Each 64 elements take 32 bytes: low nibbles first, then high nibbles.
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    const float d = load_half(b), dmin = load_half(b + 2);
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      k4_scale_min(b + 4, j, sc, m);
      scale[j] = d * float(sc);
      offset[j] = -dmin * float(m);
    }
    const uint8_t* qs = b + 16;
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        q[64 * c + l] = int8_t(qs[32 * c + l] & 15);
        q[64 * c + 32 + l] = int8_t(qs[32 * c + l] >> 4);
      }
  }
};

struct q5_k_layout {
  static constexpr int block = 256, bytes = 176, sub = 32;
  static constexpr bool has_offset = true;
  // d | dmin | scales[12] as Q4_K | qh[32]: fifth bits | qs[128] as Q4_K.
  // The fifth bit of element 32s + l is bit s of qh[l].
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    const float d = load_half(b), dmin = load_half(b + 2);
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      k4_scale_min(b + 4, j, sc, m);
      scale[j] = d * float(sc);
      offset[j] = -dmin * float(m);
    }
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + 48;
    for (int c = 0; c < 4; ++c)
      for (int l = 0; l < 32; ++l) {
        q[64 * c + l] = int8_t((qs[32 * c + l] & 15) | (((qh[l] >> (2 * c)) & 1) << 4));
        q[64 * c + 32 + l] = int8_t((qs[32 * c + l] >> 4) | (((qh[l] >> (2 * c + 1)) & 1) << 4));
      }
  }
};

struct q6_k_layout {
  static constexpr int block = 256, bytes = 210, sub = 16;
  static constexpr bool has_offset = false;
  // ql[128]: low 4 bits | qh[64]: high 2 bits | scales[16]: int8 | d: f16.
  // Per 128 elements (h): ql + 64h, qh + 32h; element 32k + l of the half
  // takes the low or high nibble of ql[l] / ql[l + 32] and bits 2k of qh[l].
  static CECO_INLINE void unpack(const uint8_t* b, int8_t* q, float* scale, float* offset) {
    const float d = load_half(b + 208);
    const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
    for (int s = 0; s < 16; ++s) {
      scale[s] = d * float(sc[s]);
      offset[s] = 0;
    }
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = b + 64 * h;
      const uint8_t* qh = b + 128 + 32 * h;
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

// -- per-layout kernels ---------------------------------------------------------

template <class L>
CECO_CLONES void dequantize_blocks(const uint8_t* src, float* dst, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; ++b) {
    int8_t q[L::block];
    float scale[L::block / L::sub], offset[L::block / L::sub];
    L::unpack(src + b * L::bytes, q, scale, offset);
    float* out = dst + b * L::block;
    for (int s = 0; s < L::block / L::sub; ++s)
      for (int i = 0; i < L::sub; ++i)
        out[s * L::sub + i] = scale[s] * float(q[s * L::sub + i]) + offset[s];
  }
}

template <int N>
CECO_INLINE int32_t int_dot(const int8_t* a, const int8_t* b) {
  int32_t s = 0;
  for (int i = 0; i < N; ++i)
    s += int16_t(a[i]) * int16_t(b[i]);
  return s;
}

/// A row of a 32-element type · Q8 activation blocks of 32.
template <class L>
CECO_CLONES float dot_blocks32(const uint8_t* w, const act_block32* a, int64_t n_blocks) {
  float sum = 0;
  for (int64_t b = 0; b < n_blocks; ++b) {
    int8_t q[32];
    float scale, offset;
    L::unpack(w + b * L::bytes, q, &scale, &offset);
    sum += a[b].d * scale * float(int_dot<32>(q, a[b].q));
    if (L::has_offset)
      sum += offset * a[b].s;
  }
  return sum;
}

/// A row of a K-quant type · Q8 activation blocks of 256.
template <class L>
CECO_CLONES float dot_blocks256(const uint8_t* w, const act_block256* a, int64_t n_blocks) {
  constexpr int n_sub = 256 / L::sub;
  float sum = 0;
  for (int64_t b = 0; b < n_blocks; ++b) {
    int8_t q[256];
    float scale[n_sub], offset[n_sub];
    L::unpack(w + b * L::bytes, q, scale, offset);
    float block = 0;
    for (int s = 0; s < n_sub; ++s) {
      block += scale[s] * float(int_dot<L::sub>(q + s * L::sub, a[b].q + s * L::sub));
      if (L::has_offset) {
        int32_t a_sum = 0;
        for (int k = 0; k < L::sub / 16; ++k)
          a_sum += a[b].sums[s * (L::sub / 16) + k];
        block += offset[s] * float(a_sum);
      }
    }
    sum += a[b].d * block;
  }
  return sum;
}

// -- float types ----------------------------------------------------------------

CECO_CLONES
void dequantize_f16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = half_bits_to_float(h);
  }
}

CECO_CLONES
void dequantize_bf16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    dst[i] = bits_to_float(uint32_t(h) << 16);
  }
}

CECO_CLONES
float dot_f32(const uint8_t* w, const float* x, int64_t n) {
  const auto* wf = reinterpret_cast<const float*>(w);
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i)
    s += wf[i] * x[i];
  return s;
}

CECO_CLONES
float dot_f16(const uint8_t* w, const float* x, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, w + 2 * i, 2);
    s += half_bits_to_float(h) * x[i];
  }
  return s;
}

CECO_CLONES
float dot_bf16(const uint8_t* w, const float* x, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, w + 2 * i, 2);
    s += bits_to_float(uint32_t(h) << 16) * x[i];
  }
  return s;
}

// -- AVX2/FMA kernels -------------------------------------------------------------
// Chosen at run time where the CPU has AVX2, FMA and F16C; the portable
// kernels above are the reference they are tested against.

#if defined(__x86_64__)

#define CECO_AVX2 __attribute__((target("avx2,fma,f16c")))
#define CECO_AVX2_INLINE CECO_AVX2 inline __attribute__((always_inline))

CECO_AVX2_INLINE float half_f16c(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

CECO_AVX2_INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/// Eight i32 sums of products of 32 signed bytes x and y (|y| <= 127).
CECO_AVX2_INLINE __m256i signed_dot(__m256i x, __m256i y) {
  const __m256i products = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
  return _mm256_madd_epi16(products, _mm256_set1_epi16(1));
}

/// Byte i is 0xFF where bit i of `bits` is set.
CECO_AVX2_INLINE __m256i bits_to_bytes(uint32_t bits) {
  const __m256i spread = _mm256_shuffle_epi8(
    _mm256_set1_epi32(int32_t(bits)),
    _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                     3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
  return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
}

/// 32 nibbles of 16 bytes: element l low nibble of byte l, l + 16 its high.
CECO_AVX2_INLINE __m256i nibbles32(const uint8_t* p) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i low = _mm_set1_epi8(15);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), low), _mm_and_si128(bytes, low));
}

CECO_AVX2_INLINE __m256i load32(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

/// Legacy blocks of 32: the unsigned (0..31) or signed values of one block.
struct avx2_q4_0 {
  static CECO_AVX2_INLINE __m256i values(const uint8_t* b) {
    return _mm256_sub_epi8(nibbles32(b + 2), _mm256_set1_epi8(8));
  }
};
struct avx2_q4_1 {
  static CECO_AVX2_INLINE __m256i values(const uint8_t* b) { return nibbles32(b + 4); }
};
struct avx2_q5_0 {
  static CECO_AVX2_INLINE __m256i values(const uint8_t* b) {
    const __m256i high = _mm256_and_si256(bits_to_bytes(load_u32(b + 2)), _mm256_set1_epi8(16));
    return _mm256_sub_epi8(_mm256_or_si256(nibbles32(b + 6), high), _mm256_set1_epi8(16));
  }
};
struct avx2_q5_1 {
  static CECO_AVX2_INLINE __m256i values(const uint8_t* b) {
    const __m256i high = _mm256_and_si256(bits_to_bytes(load_u32(b + 4)), _mm256_set1_epi8(16));
    return _mm256_or_si256(nibbles32(b + 8), high);
  }
};
struct avx2_q8_0 {
  static CECO_AVX2_INLINE __m256i values(const uint8_t* b) { return load32(b + 2); }
};

/// Bytes ahead of the block in hand that the kernels ask the cache for:
/// the hardware prefetcher stops at 4 KiB pages, and a matrix is one
/// stream of them.
constexpr int prefetch_ahead = 2048;

template <class L, class V>
CECO_AVX2 float dot32_avx2(const uint8_t* w, const void* act, int64_t cols) {
  const auto* a = static_cast<const act_block32*>(act);
  __m256 acc = _mm256_setzero_ps();
  float offsets = 0;
  for (int64_t b = 0; b < cols / 32; ++b) {
    const uint8_t* blk = w + b * L::bytes;
    _mm_prefetch(reinterpret_cast<const char*>(blk) + prefetch_ahead, _MM_HINT_T0);
    const __m256i x = V::values(blk), y = load32(a[b].q);
    __m256i sums;
    if (L::has_offset) {  // unsigned values: no sign trick needed
      sums = _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
      offsets += half_f16c(blk + 2) * a[b].s;
    } else {
      sums = signed_dot(x, y);
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(half_f16c(blk) * a[b].d), _mm256_cvtepi32_ps(sums), acc);
  }
  return hsum(acc) + offsets;
}

/// K-quant blocks as 8 vectors of 32 unsigned values (0..63) and a scale
/// per sub-block, with the terms beyond scale * q summed as the reference
/// implementation sums them, so that the floats agree to the last bit:
/// - `bias`: a constant every stored value carries (Q3_K: 4, Q6_K: 32),
///   subtracted in the integer sums;
/// - `mins`: Q2_K, Q4_K and Q5_K subtract dmin * min * (sum of the
///   sub-block's activations); how the integer products of mins and sums
///   meet the two scales is `min_sum`: Q2_K adds them per lane of 8 with
///   the scale products; Q4_K scales the block's total by dmin, then by the
///   activation's d; Q5_K by the product of the two. (The orders that
///   reproduce the reference's logits on tiny256, see the tests.)
enum class min_sum { none, lanes8, dmin_then_d, d_dmin };

/// Q4_K and Q5_K: the 8 scales (low half) and 8 mins (high half) of 32 as
/// 16-bit values, unpacked from their 12 bytes four at a time, as
/// k4_scale_min unpacks one.
CECO_AVX2_INLINE __m256i k4_scales_mins(const uint8_t* s) {
  const uint32_t u0 = load_u32(s), u1 = load_u32(s + 4), u2 = load_u32(s + 8);
  const uint32_t low6 = 0x3f3f3f3f, nibble = 0x0f0f0f0f, top2 = 0x03030303;
  const uint32_t scales_lo = u0 & low6, mins_lo = u1 & low6;
  const uint32_t scales_hi = (u2 & nibble) | (((u0 >> 6) & top2) << 4);
  const uint32_t mins_hi = ((u2 >> 4) & nibble) | (((u1 >> 6) & top2) << 4);
  return _mm256_cvtepu8_epi16(_mm_set_epi32(int32_t(mins_hi), int32_t(mins_lo),
                                            int32_t(scales_hi), int32_t(scales_lo)));
}

struct avx2_q4_k {
  static constexpr int sub = 32, bias = 0, d_at = 0, dmin_at = 2;
  static constexpr min_sum mins_kind = min_sum::dmin_then_d;
  static CECO_AVX2_INLINE void unpack(const uint8_t* b, __m256i* q, __m256i& scales,
                                      __m256i& mins) {
    scales = mins = k4_scales_mins(b + 4);
    const __m256i low = _mm256_set1_epi8(15);
    for (int c = 0; c < 4; ++c) {
      const __m256i bytes = load32(b + 16 + 32 * c);
      q[2 * c] = _mm256_and_si256(bytes, low);
      q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);
    }
  }
};
struct avx2_q5_k {
  static constexpr int sub = 32, bias = 0, d_at = 0, dmin_at = 2;
  static constexpr min_sum mins_kind = min_sum::d_dmin;
  static CECO_AVX2_INLINE void unpack(const uint8_t* b, __m256i* q, __m256i& scales,
                                      __m256i& mins) {
    scales = mins = k4_scales_mins(b + 4);
    const __m256i low = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    const __m256i qh = load32(b + 16);
    for (int c = 0; c < 4; ++c) {
      const __m256i bytes = load32(b + 48 + 32 * c);
      const __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one);
      const __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one);
      q[2 * c] = _mm256_or_si256(_mm256_and_si256(bytes, low), _mm256_slli_epi16(h0, 4));
      q[2 * c + 1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), low),
                                     _mm256_slli_epi16(h1, 4));
    }
  }
};
struct avx2_q6_k {
  static constexpr int sub = 16, bias = 32, d_at = 208, dmin_at = -1;
  static constexpr min_sum mins_kind = min_sum::none;
  static CECO_AVX2_INLINE void unpack(const uint8_t* b, __m256i* q, __m256i& scales, __m256i&) {
    scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)));
    const __m256i low = _mm256_set1_epi8(15), three = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = load32(b + 64 * h), ql1 = load32(b + 64 * h + 32);
      const __m256i qh = load32(b + 128 + 32 * h);
      // bits 2k..2k+1 of qh, moved to bits 4..5
      const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(qh, three), 4);
      const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), three), 4);
      const __m256i h2 = _mm256_and_si256(qh, _mm256_set1_epi8(0x30));
      const __m256i h3 = _mm256_and_si256(_mm256_srli_epi16(qh, 2), _mm256_set1_epi8(0x30));
      q[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(ql0, low), h0);
      q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(ql1, low), h1);
      q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low), h2);
      q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low), h3);
    }
  }
};
struct avx2_q3_k {
  static constexpr int sub = 16, bias = 4, d_at = 108, dmin_at = -1;
  static constexpr min_sum mins_kind = min_sum::none;
  static CECO_AVX2_INLINE void unpack(const uint8_t* b, __m256i* q, __m256i& scales, __m256i&) {
    const uint8_t* sc = b + 96;
    int16_t scale[16];
    for (int s = 0; s < 16; ++s) {
      const int low = s < 8 ? (sc[s] & 15) : (sc[s - 8] >> 4);
      const int high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
      scale[s] = int16_t((low | (high << 4)) - 32);
    }
    scales = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scale));
    const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    const __m256i hmask = load32(b);
    for (int n = 0; n < 2; ++n) {
      const __m256i qs = load32(b + 32 + 32 * n);
      for (int j = 0; j < 4; ++j) {
        const __m256i low = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), three);
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(hmask, 4 * n + j), one);
        q[4 * n + j] = _mm256_or_si256(low, _mm256_slli_epi16(high, 2));
      }
    }
  }
};
struct avx2_q2_k {
  static constexpr int sub = 16, bias = 0, d_at = 80, dmin_at = 82;
  static constexpr min_sum mins_kind = min_sum::lanes8;
  static CECO_AVX2_INLINE void unpack(const uint8_t* b, __m256i* q, __m256i& scales,
                                      __m256i& mins) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
    const __m128i nibble = _mm_set1_epi8(15);
    scales = _mm256_cvtepu8_epi16(_mm_and_si128(packed, nibble));
    mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), nibble));
    const __m256i three = _mm256_set1_epi8(3);
    for (int n = 0; n < 2; ++n) {
      const __m256i qs = load32(b + 16 + 32 * n);
      for (int j = 0; j < 4; ++j)
        q[4 * n + j] = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), three);
    }
  }
};

template <class L, class U>
CECO_AVX2 float dot256_avx2(const uint8_t* w, const void* act, int64_t cols) {
  const auto* a = static_cast<const act_block256*>(act);
  __m256 acc = _mm256_setzero_ps();
  float min_total = 0;  // min_sum::dmin_then_d and d_dmin
  for (int64_t b = 0; b < cols / 256; ++b) {
    const uint8_t* blk = w + b * L::bytes;
    for (int line = 0; line < L::bytes; line += 64)
      _mm_prefetch(reinterpret_cast<const char*>(blk) + prefetch_ahead + line, _MM_HINT_T0);
    __m256i q[8];
    // 16-bit, per sub-block of 16, or of 32 in the low half
    __m256i scale = _mm256_setzero_si256(), mins = _mm256_setzero_si256();
    U::unpack(blk, q, scale, mins);
    const float d = a[b].d * half_f16c(blk + U::d_at);
    const __m256i act_sums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].sums));
    if (U::mins_kind == min_sum::lanes8) {
      // lane l: the mins and activation sums of sub-blocks 2l and 2l + 1
      const __m256i prod = _mm256_madd_epi16(mins, act_sums);
      const float dmin = -a[b].d * half_f16c(blk + U::dmin_at);
      acc = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(prod), acc);
    }
    __m256i scales[8];
    if (U::sub == 32) {
      const __m256i eight = _mm256_permute4x64_epi64(scale, 0x44);  // scales 0..7 twice
      for (int v = 0; v < 8; ++v)
        scales[v] = _mm256_shuffle_epi8(eight, _mm256_set1_epi16(int16_t(0x0100 + 0x0202 * v)));
    } else {
      // Vector v covers sub-blocks 2v (low lane) and 2v + 1 (high lane).
      const __m256i first = _mm256_permute4x64_epi64(scale, 0x44);   // scales 0..7 twice
      const __m256i second = _mm256_permute4x64_epi64(scale, 0xEE);  // scales 8..15 twice
      for (int v = 0; v < 4; ++v) {
        const char lo = char(4 * v), hi = char(4 * v + 2);
        const __m256i pick = _mm256_setr_epi8(
          lo, char(lo + 1), lo, char(lo + 1), lo, char(lo + 1), lo, char(lo + 1), lo,
          char(lo + 1), lo, char(lo + 1), lo, char(lo + 1), lo, char(lo + 1), hi, char(hi + 1), hi,
          char(hi + 1), hi, char(hi + 1), hi, char(hi + 1), hi, char(hi + 1), hi, char(hi + 1), hi,
          char(hi + 1), hi, char(hi + 1));
        scales[v] = _mm256_shuffle_epi8(first, pick);
        scales[v + 4] = _mm256_shuffle_epi8(second, pick);
      }
    }
    // Lane k of the sums holds elements 4k..4k+3 (mod 32) of every vector.
    __m256i sums = _mm256_setzero_si256();
    for (int v = 0; v < 8; ++v) {
      const __m256i y = load32(a[b].q + 32 * v);
      __m256i products = _mm256_maddubs_epi16(q[v], y);
      if (U::bias != 0)
        products = _mm256_sub_epi16(products, _mm256_maddubs_epi16(_mm256_set1_epi8(U::bias), y));
      sums = _mm256_add_epi32(sums, _mm256_madd_epi16(products, scales[v]));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sums), acc);
    if (U::mins_kind == min_sum::dmin_then_d || U::mins_kind == min_sum::d_dmin) {
      // Over the 8 sub-blocks of 32: their mins times the sums of their
      // two activation sums of 16.
      const __m128i sums32 = _mm_hadd_epi16(_mm256_castsi256_si128(act_sums),
                                            _mm256_extracti128_si256(act_sums, 1));
      __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(mins, 1), sums32);
      prod = _mm_add_epi32(prod, _mm_shuffle_epi32(prod, 0x4E));
      prod = _mm_add_epi32(prod, _mm_shuffle_epi32(prod, 0xB1));
      const int32_t total = _mm_cvtsi128_si32(prod);
      const float dmin = half_f16c(blk + U::dmin_at);
      if (U::mins_kind == min_sum::dmin_then_d)
        min_total += a[b].d * (-dmin * float(total));
      else
        min_total += (-a[b].d * dmin) * float(total);
    }
  }
  return hsum(acc) + min_total;
}

CECO_AVX2 float dot_f16_avx2(const uint8_t* w, const void* act, int64_t n) {
  const auto* x = static_cast<const float*>(act);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(w + 2 * i) + prefetch_ahead, _MM_HINT_T0);
    const __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * i)));
    const __m256 w1 =
      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 2 * i + 16)));
    acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + i), acc0);
    acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + i + 8), acc1);
  }
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, w + 2 * i, 2);
    s += half_bits_to_float(h) * x[i];
  }
  return s;
}

bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
}

#endif  // __x86_64__

// -- dispatch -------------------------------------------------------------------

using dot_fn = float (*)(const uint8_t* w, const void* act, int64_t cols);
using dequantize_fn = void (*)(const uint8_t* src, float* dst, int64_t n);

template <class L>
float dot32(const uint8_t* w, const void* act, int64_t cols) {
  return dot_blocks32<L>(w, static_cast<const act_block32*>(act), cols / 32);
}
template <class L>
float dot256(const uint8_t* w, const void* act, int64_t cols) {
  return dot_blocks256<L>(w, static_cast<const act_block256*>(act), cols / 256);
}
template <class L>
void dequantize_layout(const uint8_t* src, float* dst, int64_t n) {
  dequantize_blocks<L>(src, dst, n / L::block);
}

void dequantize_f32(const uint8_t* src, float* dst, int64_t n) {
  std::memcpy(dst, src, size_t(n) * 4);
}
void dequantize_act32(const uint8_t* src, float* dst, int64_t n) {
  const auto* a = reinterpret_cast<const act_block32*>(src);
  for (int64_t i = 0; i < n; ++i)
    dst[i] = a[i / 32].d * float(a[i / 32].q[i % 32]);
}
void dequantize_act256(const uint8_t* src, float* dst, int64_t n) {
  const auto* a = reinterpret_cast<const act_block256*>(src);
  for (int64_t i = 0; i < n; ++i)
    dst[i] = a[i / 256].d * float(a[i / 256].q[i % 256]);
}

struct kernels {
  type_info info;
  dot_fn portable_dot;
  dequantize_fn dequantize;
  dot_fn simd_dot = nullptr;  // AVX2/FMA, where the CPU has it

  dot_fn dot() const;
};

std::atomic<bool> portable_only{false};

dot_fn kernels::dot() const {
#if defined(__x86_64__)
  if (simd_dot && !portable_only.load(std::memory_order_relaxed) && cpu_has_avx2())
    return simd_dot;
#endif
  return portable_dot;
}

#if defined(__x86_64__)
#define CECO_SIMD(...) , __VA_ARGS__
#else
#define CECO_SIMD(...)
#endif

constexpr ggml_type act32_type = ggml_type::q8_0;
constexpr ggml_type act256_type = ggml_type::q8_k;

template <class L>
constexpr type_info block_info(const char* name) {
  return {name, L::block, L::bytes, L::block == 32 ? act32_type : act256_type};
}

const kernels* find_kernels(ggml_type t) {
  static const kernels f32{{"F32", 1, 4, ggml_type::f32},
                           [](const uint8_t* w, const void* x, int64_t n) {
                             return dot_f32(w, static_cast<const float*>(x), n);
                           },
                           dequantize_f32};
  static const kernels f16{{"F16", 1, 2, ggml_type::f32},
                           [](const uint8_t* w, const void* x, int64_t n) {
                             return dot_f16(w, static_cast<const float*>(x), n);
                           },
                           dequantize_f16 CECO_SIMD(dot_f16_avx2)};
  static const kernels bf16{{"BF16", 1, 2, ggml_type::f32},
                            [](const uint8_t* w, const void* x, int64_t n) {
                              return dot_bf16(w, static_cast<const float*>(x), n);
                            },
                            dequantize_bf16};
  static const kernels q4_0{block_info<q4_0_layout>("Q4_0"), dot32<q4_0_layout>,
                            dequantize_layout<q4_0_layout>
                            CECO_SIMD(dot32_avx2<q4_0_layout, avx2_q4_0>)};
  static const kernels q4_1{block_info<q4_1_layout>("Q4_1"), dot32<q4_1_layout>,
                            dequantize_layout<q4_1_layout>
                            CECO_SIMD(dot32_avx2<q4_1_layout, avx2_q4_1>)};
  static const kernels q5_0{block_info<q5_0_layout>("Q5_0"), dot32<q5_0_layout>,
                            dequantize_layout<q5_0_layout>
                            CECO_SIMD(dot32_avx2<q5_0_layout, avx2_q5_0>)};
  static const kernels q5_1{block_info<q5_1_layout>("Q5_1"), dot32<q5_1_layout>,
                            dequantize_layout<q5_1_layout>
                            CECO_SIMD(dot32_avx2<q5_1_layout, avx2_q5_1>)};
  static const kernels q8_0{block_info<q8_0_layout>("Q8_0"), dot32<q8_0_layout>,
                            dequantize_layout<q8_0_layout>
                            CECO_SIMD(dot32_avx2<q8_0_layout, avx2_q8_0>)};
  static const kernels q2_k{block_info<q2_k_layout>("Q2_K"), dot256<q2_k_layout>,
                            dequantize_layout<q2_k_layout>
                            CECO_SIMD(dot256_avx2<q2_k_layout, avx2_q2_k>)};
  static const kernels q3_k{block_info<q3_k_layout>("Q3_K"), dot256<q3_k_layout>,
                            dequantize_layout<q3_k_layout>
                            CECO_SIMD(dot256_avx2<q3_k_layout, avx2_q3_k>)};
  static const kernels q4_k{block_info<q4_k_layout>("Q4_K"), dot256<q4_k_layout>,
                            dequantize_layout<q4_k_layout>
                            CECO_SIMD(dot256_avx2<q4_k_layout, avx2_q4_k>)};
  static const kernels q5_k{block_info<q5_k_layout>("Q5_K"), dot256<q5_k_layout>,
                            dequantize_layout<q5_k_layout>
                            CECO_SIMD(dot256_avx2<q5_k_layout, avx2_q5_k>)};
  static const kernels q6_k{block_info<q6_k_layout>("Q6_K"), dot256<q6_k_layout>,
                            dequantize_layout<q6_k_layout>
                            CECO_SIMD(dot256_avx2<q6_k_layout, avx2_q6_k>)};
  switch (t) {
    case ggml_type::f32: return &f32;
    case ggml_type::f16: return &f16;
    case ggml_type::bf16: return &bf16;
    case ggml_type::q4_0: return &q4_0;
    case ggml_type::q4_1: return &q4_1;
    case ggml_type::q5_0: return &q5_0;
    case ggml_type::q5_1: return &q5_1;
    case ggml_type::q8_0: return &q8_0;
    case ggml_type::q2_k: return &q2_k;
    case ggml_type::q3_k: return &q3_k;
    case ggml_type::q4_k: return &q4_k;
    case ggml_type::q5_k: return &q5_k;
    case ggml_type::q6_k: return &q6_k;
    case ggml_type::q8_k: break;
  }
  return nullptr;
}

const kernels& kernels_of(ggml_type t) {
  if (auto k = find_kernels(t))
    return *k;
  throw model_error(fmt::format("ggml type {} has no kernels in ceco (supported: {})",
                                type_name(t), supported_types()));
}

bool is_float(ggml_type t) {
  return t == ggml_type::f32 || t == ggml_type::f16 || t == ggml_type::bf16;
}

// Below this many weights a thread hand-off costs more than it saves.
constexpr int64_t parallel_min_weights = 1 << 15;

int thread_count(int requested) {
  return requested > 0 ? requested : at::get_num_threads();
}

/// Calls body(r0, r1) on row ranges that cover [0, rows), split over the
/// compute threads in multiples of 4 rows.
template <class Body>
void split_rows(int64_t rows, int64_t cols, int n_threads, Body body) {
  if (n_threads <= 1 || rows * cols < parallel_min_weights || rows < 2) {
    body(int64_t(0), rows);
    return;
  }
  parallel_ranges(rows, n_threads, 4, body);
}

/// Rows per matrix stream. A core keeps only a few cache-line misses in
/// flight per stream it reads, so one stream of weights leaves most of the
/// memory bandwidth unused: reading the row range as this many interleaved
/// streams (rows i, i + n/4, i + 2n/4, i + 3n/4, then i + 1, ...) measured
/// 1.4-2x the bandwidth of one on Q8_0 and Q6_K matrices. Each row is still
/// reduced by the same code, so no result depends on it.
constexpr int64_t row_streams = 4;

/// Calls row(r) for every r in [r0, r1), in row_streams interleaved streams.
template <class Row>
void for_rows_interleaved(int64_t r0, int64_t r1, Row row) {
  const int64_t per = (r1 - r0) / row_streams;
  for (int64_t i = 0; i < per; ++i)
    for (int64_t s = 0; s < row_streams; ++s)
      row(r0 + s * per + i);
  for (int64_t r = r0 + per * row_streams; r < r1; ++r)
    row(r);
}

} // namespace

void use_portable_kernels(bool portable) {
  portable_only = portable;
}

const type_info* find_info(ggml_type t) {
  auto k = find_kernels(t);
  return k ? &k->info : nullptr;
}

std::string type_name(ggml_type t) {
  if (auto info = find_info(t))
    return info->name;
  if (t == ggml_type::q8_k)
    return "Q8_K";
  return std::to_string(uint32_t(t));
}

std::string supported_types() {
  std::string out;
  for (uint32_t id = 0; id <= 30; ++id)
    if (auto info = find_info(ggml_type(id)))
      out += fmt::format("{}{}={}", out.empty() ? "" : ", ", info->name, id);
  return out;
}

size_t tensor_bytes(ggml_type t, int64_t n_elements, int64_t row_length, const std::string& what) {
  const type_info* info = find_info(t);
  if (!info)
    throw model_error(fmt::format("{} has ggml type {}, which ceco cannot read (supported: {})",
                                  what, uint32_t(t), supported_types()));
  if (row_length <= 0 || row_length % info->block_size != 0)
    throw model_error(fmt::format(
      "{} is {} with rows of {} elements, not a multiple of its block size {}", what,
      info->name, row_length, info->block_size));
  if (n_elements % row_length != 0)
    throw model_error(fmt::format("{} has {} elements, not a whole number of rows of {}", what,
                                  n_elements, row_length));
  return size_t(n_elements / info->block_size) * size_t(info->block_bytes);
}

void dequantize_row(ggml_type t, const void* src, float* dst, int64_t n) {
  kernels_of(t).dequantize(static_cast<const uint8_t*>(src), dst, n);
}

size_t activation_bytes(ggml_type weight, int64_t cols) {
  const auto& info = kernels_of(weight).info;
  switch (info.activation) {
    case act32_type: return size_t(cols / 32) * sizeof(act_block32);
    case act256_type: return size_t(cols / 256) * sizeof(act_block256);
    default: return size_t(cols) * sizeof(float);
  }
}

void quantize_activation(ggml_type weight, const float* x, void* dst, int64_t cols) {
  const auto& info = kernels_of(weight).info;
  if (cols % info.block_size != 0)
    throw model_error(fmt::format("an activation row of {} elements does not split into {} blocks of {}",
                                  cols, info.name, info.block_size));
  switch (info.activation) {
    case act32_type:
      quantize_act32(x, static_cast<act_block32*>(dst), cols / 32);
      return;
    case act256_type:
      quantize_act256(x, static_cast<act_block256*>(dst), cols / 256);
      return;
    default:
      std::memcpy(dst, x, size_t(cols) * sizeof(float));
  }
}

void dequantize_activation(ggml_type weight, const void* activation, float* dst, int64_t cols) {
  const auto* bytes = static_cast<const uint8_t*>(activation);
  switch (kernels_of(weight).info.activation) {
    case act32_type: dequantize_act32(bytes, dst, cols); return;
    case act256_type: dequantize_act256(bytes, dst, cols); return;
    default: std::memcpy(dst, activation, size_t(cols) * sizeof(float));
  }
}

float dot_row(ggml_type weight, const void* w_row, const void* activation, int64_t cols) {
  return kernels_of(weight).dot()(static_cast<const uint8_t*>(w_row), activation, cols);
}

matrix matrix::view(ggml_type type, const void* data, int64_t rows, int64_t cols,
                    const std::string& name) {
  matrix m;
  m.type = type;
  m.data = static_cast<const uint8_t*>(data);
  m.rows = rows;
  m.cols = cols;
  m.row_bytes = tensor_bytes(type, cols, cols, name);
  return m;
}

void matvec(const matrix& w, const float* x, float* y, void* scratch, int n_threads) {
  const dot_fn dot = kernels_of(w.type).dot();
  const void* act = x;
  if (!is_float(w.type)) {
    quantize_activation(w.type, x, scratch, w.cols);
    act = scratch;
  }
  split_rows(w.rows, w.cols, thread_count(n_threads), [&](int64_t r0, int64_t r1) {
    for_rows_interleaved(r0, r1, [&](int64_t r) { y[r] = dot(w.row(r), act, w.cols); });
  });
}

void matvec_batch(const matrix& w, const float* x, float* y, int64_t n, void* scratch,
                  int n_threads) {
  const dot_fn dot = kernels_of(w.type).dot();
  const size_t act_bytes = is_float(w.type) ? size_t(w.cols) * sizeof(float)
                                            : activation_bytes(w.type, w.cols);
  const auto* acts = static_cast<const uint8_t*>(is_float(w.type) ? static_cast<const void*>(x)
                                                                  : scratch);
  if (!is_float(w.type))
    for (int64_t j = 0; j < n; ++j)
      quantize_activation(w.type, x + j * w.cols, static_cast<uint8_t*>(scratch) + size_t(j) * act_bytes,
                          w.cols);
  split_rows(w.rows, w.cols * n, thread_count(n_threads), [&](int64_t r0, int64_t r1) {
    for_rows_interleaved(r0, r1, [&](int64_t r) {
      for (int64_t j = 0; j < n; ++j)
        y[j * w.rows + r] = dot(w.row(r), acts + size_t(j) * act_bytes, w.cols);
    });
  });
}

namespace {

/// Rows per dequantized tile: about 1 MiB of floats, at least 16 rows.
int64_t tile_rows(const matrix& w) {
  return std::min(w.rows, std::max<int64_t>(16, (int64_t(1) << 18) / std::max<int64_t>(1, w.cols)));
}

} // namespace

size_t matmat_scratch_floats(const matrix& w) {
  return w.type == ggml_type::f32 ? 0 : size_t(tile_rows(w)) * size_t(w.cols);
}

void matmat(const matrix& w, const float* x, float* y, int64_t n, float* scratch, int n_threads) {
  if (n <= 0 || w.rows <= 0)
    return;
  if (w.type == ggml_type::f32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(w.rows), int(w.cols), 1.0f, x,
                int(w.cols), reinterpret_cast<const float*>(w.data), int(w.cols), 0.0f, y,
                int(w.rows));
    return;
  }
  const auto& k = kernels_of(w.type);
  const int64_t tile = tile_rows(w);
  const int threads = thread_count(n_threads);
  for (int64_t t0 = 0; t0 < w.rows; t0 += tile) {
    const int64_t t_rows = std::min(tile, w.rows - t0);
    split_rows(t_rows, w.cols, threads, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        k.dequantize(w.row(t0 + r), scratch + r * w.cols, w.cols);
    });
    // y[:, t0 : t0 + t_rows] = x[n, cols] · tile[t_rows, cols]ᵀ
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(t_rows), int(w.cols), 1.0f, x,
                int(w.cols), scratch, int(w.cols), 0.0f, y + t0, int(w.rows));
  }
}

} // namespace ceco::quant
