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

/// A row of a 32-element type (V: its values and block) · activation blocks of 32.
/// Every block starts with its f16 scale d; those with an offset follow it with m.
template <class V>
CECO_AVX2 float dot32_avx2(const uint8_t* w, const void* act, int64_t cols) {
  const auto* a = static_cast<const act_block32*>(act);
  __m256 acc = _mm256_setzero_ps();
  float offsets = 0;
  for (int64_t b = 0; b < cols / 32; ++b) {
    const uint8_t* blk = w + b * sizeof(typename V::block_type);
    _mm_prefetch(reinterpret_cast<const char*>(blk) + prefetch_ahead, _MM_HINT_T0);
    const __m256i x = V::values(blk), y = load32(a[b].q);
    __m256i sums;
    if constexpr (V::has_offset) {  // unsigned values: no sign trick needed
      sums = _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
      offsets += half_f16c(CECO_FIELD(blk, typename V::block_type, m)) * a[b].s;
    } else {
      sums = signed_dot(x, y);
    }
    const float d = half_f16c(CECO_FIELD(blk, typename V::block_type, d)) * a[b].d;
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sums), acc);
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

template <class U>
CECO_AVX2 float dot256_avx2(const uint8_t* w, const void* act, int64_t cols) {
  const auto* a = static_cast<const act_block256*>(act);
  __m256 acc = _mm256_setzero_ps();
  float min_total = 0;  // min_sum::dmin_then_d and d_dmin
  for (int64_t b = 0; b < cols / 256; ++b) {
    constexpr int block_bytes = int(sizeof(typename U::block_type));
    const uint8_t* blk = w + b * block_bytes;
    for (int line = 0; line < block_bytes; line += 64)
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

#else

bool available() { return false; }
dot_fn dot(ggml_type) { return nullptr; }

#endif

} // namespace ceco::quant::avx2
