// AVX2/FMA kernels of the quantized dot products, chosen at run time where
// the CPU has AVX2, FMA and F16C (quant_avx2.hpp). The portable kernels of
// model/quant.cpp are the reference they are tested against (quant_test).

#include "model/quant_avx2.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "model/quant_blocks.hpp"

namespace ceco::quant::avx2 {

namespace {

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
  using block_type = block_q4_0;
  static constexpr bool has_offset = false;
  static CECO_AVX2_INLINE __m256i values(const uint8_t* b) {
    return _mm256_sub_epi8(nibbles32(CECO_FIELD(b, block_q4_0, qs)), _mm256_set1_epi8(8));
  }
};
struct avx2_q4_1 {
  using block_type = block_q4_1;
  static constexpr bool has_offset = true;
  static CECO_AVX2_INLINE __m256i values(const uint8_t* b) { return nibbles32(CECO_FIELD(b, block_q4_1, qs)); }
};
struct avx2_q5_0 {
  using block_type = block_q5_0;
  static constexpr bool has_offset = false;
  static CECO_AVX2_INLINE __m256i values(const uint8_t* b) {
    const __m256i high = _mm256_and_si256(bits_to_bytes(load_u32(CECO_FIELD(b, block_q5_0, qh))), _mm256_set1_epi8(16));
    return _mm256_sub_epi8(_mm256_or_si256(nibbles32(CECO_FIELD(b, block_q5_0, qs)), high), _mm256_set1_epi8(16));
  }
};
struct avx2_q5_1 {
  using block_type = block_q5_1;
  static constexpr bool has_offset = true;
  static CECO_AVX2_INLINE __m256i values(const uint8_t* b) {
    const __m256i high = _mm256_and_si256(bits_to_bytes(load_u32(CECO_FIELD(b, block_q5_1, qh))), _mm256_set1_epi8(16));
    return _mm256_or_si256(nibbles32(CECO_FIELD(b, block_q5_1, qs)), high);
  }
};
struct avx2_q8_0 {
  using block_type = block_q8_0;
  static constexpr bool has_offset = false;
  static CECO_AVX2_INLINE __m256i values(const uint8_t* b) { return load32(CECO_FIELD(b, block_q8_0, qs)); }
};

/// Bytes ahead of the block in hand that the kernels ask the cache for:
/// the hardware prefetcher stops at 4 KiB pages, and a matrix is one
/// stream of them.
constexpr int prefetch_ahead = 2048;

/// R rows of a 32-element type (V: its values and block) · activation
/// blocks of 32 (out[r]: row w[r]). Every block starts with its f16 scale
/// d; those with an offset follow it with m. The rows share the activation
/// loads; each row's floats are the single row's.
template <class V, int R>
CECO_AVX2_INLINE void dot32_rows_avx2(const uint8_t* const* w, const void* act, int64_t cols,
                                      float* out) {
  const auto* a = static_cast<const act_block32*>(act);
  __m256 acc[R];
  float offsets[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    offsets[r] = 0;
  }
  for (int64_t b = 0; b < cols / 32; ++b) {
    const __m256i y = load32(a[b].q);
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w[r] + b * sizeof(typename V::block_type);
      _mm_prefetch(reinterpret_cast<const char*>(blk) + prefetch_ahead, _MM_HINT_T0);
      const __m256i x = V::values(blk);
      __m256i sums;
      if constexpr (V::has_offset) {  // unsigned values: no sign trick needed
        sums = _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
        offsets[r] += half_f16c(CECO_FIELD(blk, typename V::block_type, m)) * a[b].s;
      } else {
        sums = signed_dot(x, y);
      }
      const float d = half_f16c(CECO_FIELD(blk, typename V::block_type, d)) * a[b].d;
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sums), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r)
    out[r] = hsum(acc[r]) + offsets[r];
}

template <class V>
CECO_AVX2 float dot32_avx2(const uint8_t* w, const void* act, int64_t cols) {
  float out;
  dot32_rows_avx2<V, 1>(&w, act, cols, &out);
  return out;
}
template <class V>
CECO_AVX2 void dot32_4_avx2(const uint8_t* const* w, const void* act, int64_t cols, float* out) {
  dot32_rows_avx2<V, 4>(w, act, cols, out);
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
  using block_type = block_q4_k;
  static constexpr int sub = 32, bias = 0;
  static constexpr size_t d_at = offsetof(block_type, d), dmin_at = offsetof(block_type, dmin);
  static constexpr min_sum mins_kind = min_sum::dmin_then_d;
  static CECO_AVX2_INLINE void unpack(const uint8_t* b, __m256i* q, __m256i& scales,
                                      __m256i& mins) {
    scales = mins = k4_scales_mins(CECO_FIELD(b, block_q4_k, scales));
    const __m256i low = _mm256_set1_epi8(15);
    for (int c = 0; c < 4; ++c) {
      const __m256i bytes = load32(CECO_FIELD(b, block_q4_k, qs) + 32 * c);
      q[2 * c] = _mm256_and_si256(bytes, low);
      q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low);
    }
  }
};
struct avx2_q5_k {
  using block_type = block_q5_k;
  static constexpr int sub = 32, bias = 0;
  static constexpr size_t d_at = offsetof(block_type, d), dmin_at = offsetof(block_type, dmin);
  static constexpr min_sum mins_kind = min_sum::d_dmin;
  static CECO_AVX2_INLINE void unpack(const uint8_t* b, __m256i* q, __m256i& scales,
                                      __m256i& mins) {
    scales = mins = k4_scales_mins(CECO_FIELD(b, block_q5_k, scales));
    const __m256i low = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    const __m256i qh = load32(CECO_FIELD(b, block_q5_k, qh));
    for (int c = 0; c < 4; ++c) {
      const __m256i bytes = load32(CECO_FIELD(b, block_q5_k, qs) + 32 * c);
      const __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c), one);
      const __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * c + 1), one);
      q[2 * c] = _mm256_or_si256(_mm256_and_si256(bytes, low), _mm256_slli_epi16(h0, 4));
      q[2 * c + 1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), low),
                                     _mm256_slli_epi16(h1, 4));
    }
  }
};
struct avx2_q6_k {
  using block_type = block_q6_k;
  static constexpr int sub = 16, bias = 32;
  static constexpr size_t d_at = offsetof(block_type, d), dmin_at = 0;  // no dmin
  static constexpr min_sum mins_kind = min_sum::none;
  static CECO_AVX2_INLINE void unpack(const uint8_t* b, __m256i* q, __m256i& scales, __m256i&) {
    scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(CECO_FIELD(b, block_q6_k, scales))));
    const __m256i low = _mm256_set1_epi8(15), three = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = load32(CECO_FIELD(b, block_q6_k, ql) + 64 * h),
                  ql1 = load32(CECO_FIELD(b, block_q6_k, ql) + 64 * h + 32);
      const __m256i qh = load32(CECO_FIELD(b, block_q6_k, qh) + 32 * h);
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
  using block_type = block_q3_k;
  static constexpr int sub = 16, bias = 4;
  static constexpr size_t d_at = offsetof(block_type, d), dmin_at = 0;  // no dmin
  static constexpr min_sum mins_kind = min_sum::none;
  static CECO_AVX2_INLINE void unpack(const uint8_t* b, __m256i* q, __m256i& scales, __m256i&) {
    const uint8_t* sc = CECO_FIELD(b, block_q3_k, scales);
    int16_t scale[16];
    for (int s = 0; s < 16; ++s) {
      const int low = s < 8 ? (sc[s] & 15) : (sc[s - 8] >> 4);
      const int high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
      scale[s] = int16_t((low | (high << 4)) - 32);
    }
    scales = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scale));
    const __m256i three = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    const __m256i hmask = load32(CECO_FIELD(b, block_q3_k, hmask));
    for (int n = 0; n < 2; ++n) {
      const __m256i qs = load32(CECO_FIELD(b, block_q3_k, qs) + 32 * n);
      for (int j = 0; j < 4; ++j) {
        const __m256i low = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), three);
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(hmask, 4 * n + j), one);
        q[4 * n + j] = _mm256_or_si256(low, _mm256_slli_epi16(high, 2));
      }
    }
  }
};
struct avx2_q2_k {
  using block_type = block_q2_k;
  static constexpr int sub = 16, bias = 0;
  static constexpr size_t d_at = offsetof(block_type, d), dmin_at = offsetof(block_type, dmin);
  static constexpr min_sum mins_kind = min_sum::lanes8;
  static CECO_AVX2_INLINE void unpack(const uint8_t* b, __m256i* q, __m256i& scales,
                                      __m256i& mins) {
    const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(CECO_FIELD(b, block_q2_k, scales)));
    const __m128i nibble = _mm_set1_epi8(15);
    scales = _mm256_cvtepu8_epi16(_mm_and_si128(packed, nibble));
    mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), nibble));
    const __m256i three = _mm256_set1_epi8(3);
    for (int n = 0; n < 2; ++n) {
      const __m256i qs = load32(CECO_FIELD(b, block_q2_k, qs) + 32 * n);
      for (int j = 0; j < 4; ++j)
        q[4 * n + j] = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), three);
    }
  }
};

/// R rows of a K-quant type (out[r]: row w[r]). The rows share the
/// activation sums of 32 and the products of the bias with the
/// activations; each row's floats are the single row's.
template <class U, int R>
CECO_AVX2_INLINE void dot256_rows_avx2(const uint8_t* const* w, const void* act, int64_t cols,
                                       float* out) {
  const auto* a = static_cast<const act_block256*>(act);
  __m256 acc[R];
  float min_total[R];  // min_sum::dmin_then_d and d_dmin
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    min_total[r] = 0;
  }
  constexpr bool block_mins =
    U::mins_kind == min_sum::dmin_then_d || U::mins_kind == min_sum::d_dmin;
  for (int64_t b = 0; b < cols / 256; ++b) {
    constexpr int block_bytes = int(sizeof(typename U::block_type));
    const __m256i act_sums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].sums));
    __m128i sums32 = _mm_setzero_si128();
    if (block_mins)
      sums32 = _mm_hadd_epi16(_mm256_castsi256_si128(act_sums),
                              _mm256_extracti128_si256(act_sums, 1));
    __m256i bias_products[8];
    if (U::bias != 0)
      for (int v = 0; v < 8; ++v)
        bias_products[v] = _mm256_maddubs_epi16(_mm256_set1_epi8(U::bias), load32(a[b].q + 32 * v));
    __m128i min_prod[R];
    for (int r = 0; r < R; ++r) {
      const uint8_t* blk = w[r] + b * block_bytes;
      for (int line = 0; line < block_bytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(blk) + prefetch_ahead + line, _MM_HINT_T0);
      __m256i q[8];
      // 16-bit, per sub-block of 16, or of 32 in the low half
      __m256i scale = _mm256_setzero_si256(), mins = _mm256_setzero_si256();
      U::unpack(blk, q, scale, mins);
      const float d = a[b].d * half_f16c(blk + U::d_at);
      if (U::mins_kind == min_sum::lanes8) {
        // lane l: the mins and activation sums of sub-blocks 2l and 2l + 1
        const __m256i prod = _mm256_madd_epi16(mins, act_sums);
        const float dmin = -a[b].d * half_f16c(blk + U::dmin_at);
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(prod), acc[r]);
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
          products = _mm256_sub_epi16(products, bias_products[v]);
        sums = _mm256_add_epi32(sums, _mm256_madd_epi16(products, scales[v]));
      }
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sums), acc[r]);
      // Over the 8 sub-blocks of 32: their mins times the sums of their
      // two activation sums of 16.
      if (block_mins)
        min_prod[r] = _mm_madd_epi16(_mm256_extracti128_si256(mins, 1), sums32);
    }
    if (block_mins) {
      int32_t total[R];
      if constexpr (R == 4) {
        // lane r: row r's total
        const __m128i t = _mm_hadd_epi32(_mm_hadd_epi32(min_prod[0], min_prod[1]),
                                         _mm_hadd_epi32(min_prod[2], min_prod[3]));
        total[0] = _mm_cvtsi128_si32(t);
        total[1] = _mm_extract_epi32(t, 1);
        total[2] = _mm_extract_epi32(t, 2);
        total[3] = _mm_extract_epi32(t, 3);
      } else {
        for (int r = 0; r < R; ++r) {
          __m128i prod = _mm_add_epi32(min_prod[r], _mm_shuffle_epi32(min_prod[r], 0x4E));
          prod = _mm_add_epi32(prod, _mm_shuffle_epi32(prod, 0xB1));
          total[r] = _mm_cvtsi128_si32(prod);
        }
      }
      for (int r = 0; r < R; ++r) {
        const float dmin = half_f16c(w[r] + b * block_bytes + U::dmin_at);
        if (U::mins_kind == min_sum::dmin_then_d)
          min_total[r] += a[b].d * (-dmin * float(total[r]));
        else
          min_total[r] += (-a[b].d * dmin) * float(total[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    out[r] = hsum(acc[r]) + min_total[r];
}

/// Four rows of Q4_K (U = avx2_q4_k) or Q5_K (avx2_q5_k): each row's
/// integer lanes and floats are dot256_avx2's, the block overhead done
/// once for the four rows. d, dmin and the 12 bytes of scales and mins are
/// the first 16 bytes of a block: two rows' per vector, unpacked together
/// as k4_scales_mins unpacks one, into bytes [8 scales, 8 mins] per row;
/// the mins' totals and the f16 scales of the four rows come from vectors.
template <class U>
CECO_AVX2 void dot_q45_k_4_avx2(const uint8_t* const* w, const void* act, int64_t cols,
                                float* out) {
  using B = typename U::block_type;
  static_assert(offsetof(B, d) == 0 && offsetof(B, dmin) == 2 && offsetof(B, scales) == 4);
  const auto* a = static_cast<const act_block256*>(act);
  const __m256i low4 = _mm256_set1_epi8(15), low6 = _mm256_set1_epi8(0x3f);
  const __m256i top2 = _mm256_set1_epi8(0x30);
  // Per 128-bit lane (one row), dwords [d dmin, u0, u1, u2]: u2 >> 4 for
  // the mins' low nibbles.
  const __m256i u2_shift = _mm256_setr_epi32(0, 0, 0, 4, 0, 0, 0, 4);
  __m256 acc[4];
  float min_total[4];
  for (int r = 0; r < 4; ++r) {
    acc[r] = _mm256_setzero_ps();
    min_total[r] = 0;
  }
  for (int64_t b = 0; b < cols / 256; ++b) {
    constexpr int block_bytes = int(sizeof(B));
    const uint8_t* blk[4];
    for (int r = 0; r < 4; ++r) {
      blk[r] = w[r] + b * block_bytes;
      for (int line = 0; line < block_bytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(blk[r]) + prefetch_ahead + line, _MM_HINT_T0);
    }
    // packed[p], lane l: row 2p + l's [8 scales, 8 mins] as bytes
    __m256i heads[2], packed[2];
    for (int p = 0; p < 2; ++p) {
      heads[p] = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[2 * p + 1])),
                                  _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[2 * p])));
      const __m256i words_a = _mm256_shuffle_epi32(heads[p], 0xED);  // u0, u2, u1, u2
      const __m256i words_b = _mm256_shuffle_epi32(heads[p], 0xA5);  // u0, u0, u1, u1
      const __m256i high =
        _mm256_or_si256(_mm256_and_si256(_mm256_srlv_epi32(words_a, u2_shift), low4),
                        _mm256_and_si256(_mm256_srli_epi32(words_b, 2), top2));
      packed[p] = _mm256_and_si256(_mm256_blend_epi32(words_a, high, 0xAA), low6);
    }
    // The mins of rows 0 and 2 (1 and 3) as words, times the activation
    // sums of 32.
    const __m256i act_sums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].sums));
    const __m128i sums32 = _mm_hadd_epi16(_mm256_castsi256_si128(act_sums),
                                          _mm256_extracti128_si256(act_sums, 1));
    const __m256i sums32_2 = _mm256_broadcastsi128_si256(sums32);
    const __m256i mins = _mm256_unpackhi_epi64(packed[0], packed[1]);  // lanes: [0, 2], [1, 3]
    const __m256i prod_02 = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(mins)), sums32_2);
    const __m256i prod_13 = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(mins, 1)), sums32_2);
    __m256i totals = _mm256_hadd_epi32(prod_02, prod_13);
    totals = _mm256_hadd_epi32(totals, totals);  // lanes: [0, 1, 0, 1], [2, 3, 2, 3]
    alignas(32) int32_t total[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(total), totals);
    // d and dmin: [row 0, row 2, row 1, row 3]
    const __m256i firsts = _mm256_unpacklo_epi32(heads[0], heads[1]);
    alignas(32) float halves[8];
    _mm256_store_ps(halves, _mm256_cvtph_ps(_mm256_castsi256_si128(
                              _mm256_permute4x64_epi64(firsts, 0x08))));
    static constexpr int total_at[4] = {0, 1, 4, 5}, half_at[4] = {0, 4, 2, 6};
    for (int r = 0; r < 4; ++r) {
      __m256i q[8], unused_scale, unused_mins;
      U::unpack(blk[r], q, unused_scale, unused_mins);
      // all 8 scale bytes of the row in every qword, each picked as 16 words
      const __m256i eight = r % 2 ? _mm256_permute4x64_epi64(packed[r / 2], 0xAA)
                                  : _mm256_permute4x64_epi64(packed[r / 2], 0x00);
      __m256i sums = _mm256_setzero_si256();
      for (int v = 0; v < 8; ++v) {
        const __m256i scale = _mm256_shuffle_epi8(eight, _mm256_set1_epi16(int16_t(0x8000 + v)));
        const __m256i products = _mm256_maddubs_epi16(q[v], load32(a[b].q + 32 * v));
        sums = _mm256_add_epi32(sums, _mm256_madd_epi16(products, scale));
      }
      const float d = a[b].d * halves[half_at[r]];
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sums), acc[r]);
      const float dmin = halves[half_at[r] + 1];
      if (U::mins_kind == min_sum::dmin_then_d)
        min_total[r] += a[b].d * (-dmin * float(total[total_at[r]]));
      else
        min_total[r] += (-a[b].d * dmin) * float(total[total_at[r]]);
    }
  }
  for (int r = 0; r < 4; ++r)
    out[r] = hsum(acc[r]) + min_total[r];
}

template <class U>
CECO_AVX2 float dot256_avx2(const uint8_t* w, const void* act, int64_t cols) {
  float out;
  dot256_rows_avx2<U, 1>(&w, act, cols, &out);
  return out;
}
template <class U>
CECO_AVX2 void dot256_4_avx2(const uint8_t* const* w, const void* act, int64_t cols, float* out) {
  dot256_rows_avx2<U, 4>(w, act, cols, out);
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

#endif  // __x86_64__

} // namespace

#if defined(__x86_64__)

bool available() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
}

dot_fn dot(ggml_type t) {
  switch (t) {
    case ggml_type::f16: return dot_f16_avx2;
    case ggml_type::q4_0: return dot32_avx2<avx2_q4_0>;
    case ggml_type::q4_1: return dot32_avx2<avx2_q4_1>;
    case ggml_type::q5_0: return dot32_avx2<avx2_q5_0>;
    case ggml_type::q5_1: return dot32_avx2<avx2_q5_1>;
    case ggml_type::q8_0: return dot32_avx2<avx2_q8_0>;
    case ggml_type::q2_k: return dot256_avx2<avx2_q2_k>;
    case ggml_type::q3_k: return dot256_avx2<avx2_q3_k>;
    case ggml_type::q4_k: return dot256_avx2<avx2_q4_k>;
    case ggml_type::q5_k: return dot256_avx2<avx2_q5_k>;
    case ggml_type::q6_k: return dot256_avx2<avx2_q6_k>;
    default: return nullptr;
  }
}

dot4_fn dot4(ggml_type t) {
  switch (t) {
    case ggml_type::q4_0: return dot32_4_avx2<avx2_q4_0>;
    case ggml_type::q4_1: return dot32_4_avx2<avx2_q4_1>;
    case ggml_type::q5_0: return dot32_4_avx2<avx2_q5_0>;
    case ggml_type::q5_1: return dot32_4_avx2<avx2_q5_1>;
    case ggml_type::q8_0: return dot32_4_avx2<avx2_q8_0>;
    case ggml_type::q2_k: return dot256_4_avx2<avx2_q2_k>;
    case ggml_type::q3_k: return dot256_4_avx2<avx2_q3_k>;
    case ggml_type::q4_k: return dot_q45_k_4_avx2<avx2_q4_k>;
    case ggml_type::q5_k: return dot_q45_k_4_avx2<avx2_q5_k>;
    case ggml_type::q6_k: return dot256_4_avx2<avx2_q6_k>;
    default: return nullptr;
  }
}

#else

bool available() { return false; }
dot_fn dot(ggml_type) { return nullptr; }
dot4_fn dot4(ggml_type) { return nullptr; }

#endif

} // namespace ceco::quant::avx2
