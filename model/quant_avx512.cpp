// AVX-512 (F, BW, VL) and VNNI kernels of the quantized dot products. This
// file alone is compiled with those instruction sets (CMakeLists.txt); it
// holds only these kernels, so no inline function of another header is
// emitted here in an AVX-512 copy the linker could pick for the rest of the
// binary. quant.cpp calls them only where the CPU has the four extensions.
//
// Each kernel computes exactly the integers of its AVX2 twin
// (model/quant_avx2.cpp) and meets them with the block scales in the same
// float operations, in the same order, so the results are bit for bit the
// AVX2 ones (quant_test checks): what AVX-512 changes is how the integer
// products are formed, 64 bytes at a time, the bytes unpacked with masks,
// variable shifts and ternary logic, the products summed by VNNI
// (vpdpbusd: u8 × s8, vpdpwssd: s16 × s16, both into i32 lanes).
//
// The integer lane layout both share: an AVX2 vector of 32 values v gives
// 8 i32 lanes, lane k the products of elements 4k..4k+3 of v. Here a
// vector of 64 values holds two such vectors, the second in its upper
// 256 bits; adding the upper half to the lower gives the AVX2 lanes.

#include "model/quant_avx512.hpp"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
  defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define CECO_AVX512_KERNELS 1
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics start some results from an undefined vector
// (_mm512_undefined_*), which -Wuninitialized reports at every use (fixed
// in GCC 13): the warnings say nothing of this file's code.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <type_traits>

#include "model/quant_blocks.hpp"

namespace ceco::quant::avx512 {

#if defined(CECO_AVX512_KERNELS)

namespace {

#define CECO_AVX512_INLINE inline __attribute__((always_inline))

/// As quant_avx2.cpp: bytes ahead of the block in hand asked of the cache.
constexpr int prefetch_ahead = 2048;

CECO_AVX512_INLINE float half_f16c(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

/// The AVX2 kernels' horizontal sum, operation for operation.
CECO_AVX512_INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/// The 8 AVX2 lanes of a 16-lane sum: upper half added to the lower.
CECO_AVX512_INLINE __m256i fold(__m512i v) {
  return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

/// A 512-bit vector with `low` in every element of its lower 256 bits and
/// `high` in the upper (16-bit elements).
CECO_AVX512_INLINE __m512i halves16(int16_t low, int16_t high) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(low)),
                            _mm256_set1_epi16(high), 1);
}
CECO_AVX512_INLINE __m512i halves8(int8_t low, int8_t high) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi8(low)),
                            _mm256_set1_epi8(high), 1);
}

CECO_AVX512_INLINE __m512i broadcast32(const uint8_t* p) {
  return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

/// ternary logic 0xEA: (a & b) | c.
CECO_AVX512_INLINE __m512i and_or(__m512i a, __m512i b, __m512i c) {
  return _mm512_ternarylogic_epi32(a, b, c, 0xEA);
}

// -- blocks of 32 ------------------------------------------------------------------
// Two blocks per step as 64 unsigned bytes u (the first block's 32 values,
// then the second's), with the stored values x = u - bias: the i32 lanes are
// dpbusd(u, y) - dpbusd(bias, y), the AVX2 kernel's exact integers.

/// 16 bytes of nibbles per block: element l the low nibble of byte l, l + 16 its high.
CECO_AVX512_INLINE __m512i nibbles_two(const uint8_t* qs0, const uint8_t* qs1) {
  const __m256i both = _mm256_inserti128_si256(
    _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs0))),
    _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs1)), 1);
  const __m512i z = _mm512_castsi256_si512(both);
  const __m512i lanes = _mm512_shuffle_i64x2(z, z, 0x50);  // qs0, qs0, qs1, qs1
  const long long four = 0x0004000400040004ll;  // 16-bit shift counts: 0 for lanes 0 and 2, 4 for 1 and 3
  const __m512i shift = _mm512_set_epi64(four, four, 0, 0, four, four, 0, 0);
  return _mm512_and_si512(_mm512_srlv_epi16(lanes, shift), _mm512_set1_epi8(15));
}

/// 32 nibbles of 16 bytes in 256 bits: element l the low nibble of byte l,
/// l + 16 its high.
CECO_AVX512_INLINE __m256i nibbles_one(const uint8_t* qs) {
  const __m256i both = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
  return _mm256_and_si256(_mm256_srlv_epi16(both, _mm256_setr_epi64x(0, 0, 0x0004000400040004ll,
                                                                      0x0004000400040004ll)),
                          _mm256_set1_epi8(15));
}

/// The fifth bits of one block added as 16.
CECO_AVX512_INLINE __m256i with_fifth_bits_one(__m256i u, const uint8_t* qh) {
  return _mm256_mask_add_epi8(u, _cvtu32_mask32(load_u32(qh)), u, _mm256_set1_epi8(16));
}

/// The fifth bits of two blocks (bit i of each block's qh: element i) added as 16.
CECO_AVX512_INLINE __m512i with_fifth_bits(__m512i u, const uint8_t* qh0, const uint8_t* qh1) {
  const __mmask64 high = _cvtu64_mask64(uint64_t(load_u32(qh0)) | (uint64_t(load_u32(qh1)) << 32));
  return _mm512_mask_add_epi8(u, high, u, _mm512_set1_epi8(16));
}

struct v_q4_0 {
  using block_type = block_q4_0;
  static constexpr bool has_offset = false;
  static constexpr int bias = 8;
  static CECO_AVX512_INLINE __m512i values(const uint8_t* b0, const uint8_t* b1) {
    return nibbles_two(CECO_FIELD(b0, block_q4_0, qs), CECO_FIELD(b1, block_q4_0, qs));
  }
  static CECO_AVX512_INLINE __m256i values(const uint8_t* b) {
    return nibbles_one(CECO_FIELD(b, block_q4_0, qs));
  }
};
struct v_q4_1 {
  using block_type = block_q4_1;
  static constexpr bool has_offset = true;
  static constexpr int bias = 0;
  static CECO_AVX512_INLINE __m512i values(const uint8_t* b0, const uint8_t* b1) {
    return nibbles_two(CECO_FIELD(b0, block_q4_1, qs), CECO_FIELD(b1, block_q4_1, qs));
  }
  static CECO_AVX512_INLINE __m256i values(const uint8_t* b) {
    return nibbles_one(CECO_FIELD(b, block_q4_1, qs));
  }
};
struct v_q5_0 {
  using block_type = block_q5_0;
  static constexpr bool has_offset = false;
  static constexpr int bias = 16;
  static CECO_AVX512_INLINE __m512i values(const uint8_t* b0, const uint8_t* b1) {
    return with_fifth_bits(
      nibbles_two(CECO_FIELD(b0, block_q5_0, qs), CECO_FIELD(b1, block_q5_0, qs)),
      CECO_FIELD(b0, block_q5_0, qh), CECO_FIELD(b1, block_q5_0, qh));
  }
  static CECO_AVX512_INLINE __m256i values(const uint8_t* b) {
    return with_fifth_bits_one(nibbles_one(CECO_FIELD(b, block_q5_0, qs)), CECO_FIELD(b, block_q5_0, qh));
  }
};
struct v_q5_1 {
  using block_type = block_q5_1;
  static constexpr bool has_offset = true;
  static constexpr int bias = 0;
  static CECO_AVX512_INLINE __m512i values(const uint8_t* b0, const uint8_t* b1) {
    return with_fifth_bits(
      nibbles_two(CECO_FIELD(b0, block_q5_1, qs), CECO_FIELD(b1, block_q5_1, qs)),
      CECO_FIELD(b0, block_q5_1, qh), CECO_FIELD(b1, block_q5_1, qh));
  }
  static CECO_AVX512_INLINE __m256i values(const uint8_t* b) {
    return with_fifth_bits_one(nibbles_one(CECO_FIELD(b, block_q5_1, qs)), CECO_FIELD(b, block_q5_1, qh));
  }
};
/// Signed bytes as unsigned: u = x + 128 (the sign bit flipped).
struct v_q8_0 {
  using block_type = block_q8_0;
  static constexpr bool has_offset = false;
  static constexpr int bias = 128;
  static CECO_AVX512_INLINE __m512i values(const uint8_t* b0, const uint8_t* b1) {
    const __m512i x = _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(CECO_FIELD(b0, block_q8_0, qs)))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(CECO_FIELD(b1, block_q8_0, qs))), 1);
    return _mm512_xor_si512(x, _mm512_set1_epi8(char(0x80)));
  }
  static CECO_AVX512_INLINE __m256i values(const uint8_t* b) {
    return _mm256_xor_si256(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(CECO_FIELD(b, block_q8_0, qs))),
      _mm256_set1_epi8(char(0x80)));
  }
};

/// A row of a 32-element type · activation blocks of 32. The float side is
/// the AVX2 kernel's: one fmadd of 8 lanes per block, in block order, and
/// the offsets summed in block order.
template <class V>
float dot32(const uint8_t* w, const void* act, int64_t cols) {
  using B = typename V::block_type;
  const auto* a = static_cast<const act_block32*>(act);
  const int64_t nb = cols / 32;
  __m256 acc = _mm256_setzero_ps();
  float offsets = 0;
  const __m512i bias = _mm512_set1_epi8(char(V::bias));
  auto scale_block = [&](const uint8_t* blk, int64_t b, __m256i lanes) {
    if constexpr (V::has_offset)
      offsets += half_f16c(CECO_FIELD(blk, B, m)) * a[b].s;
    const float d = half_f16c(CECO_FIELD(blk, B, d)) * a[b].d;
    acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc);
  };
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    const uint8_t* b0 = w + b * sizeof(B);
    const uint8_t* b1 = b0 + sizeof(B);
    _mm_prefetch(reinterpret_cast<const char*>(b0) + prefetch_ahead, _MM_HINT_T0);
    const __m512i u = V::values(b0, b1);
    const __m512i y = _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].q))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b + 1].q)), 1);
    __m512i lanes = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, y);
    if constexpr (V::bias != 0)
      lanes = _mm512_sub_epi32(lanes, _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, y));
    scale_block(b0, b, _mm512_castsi512_si256(lanes));
    scale_block(b1, b + 1, _mm512_extracti64x4_epi64(lanes, 1));
  }
  if (b < nb) {  // an odd last block: the same integers, 256 bits wide
    const uint8_t* b0 = w + b * sizeof(B);
    const __m512i u = V::values(b0, b0);
    const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].q));
    __m256i lanes = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm512_castsi512_si256(u), y);
    if constexpr (V::bias != 0)
      lanes = _mm256_sub_epi32(
        lanes, _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm512_castsi512_si256(bias), y));
    scale_block(b0, b, lanes);
  }
  return hsum(acc) + offsets;
}

/// Four rows of a 32-element type, a block at a time in 256-bit vectors
/// (the odd last block's integers of dot32), which leaves port 5 little
/// to do: the f16 scales are converted from memory (d, then m where the
/// type has it), and the bias products are shared by the rows. Each row's
/// floats are dot32's.
template <class V>
void dot32_4(const uint8_t* const* w, const void* act, int64_t cols, float* out) {
  using B = typename V::block_type;
  static_assert(offsetof(B, d) == 0);
  const auto* a = static_cast<const act_block32*>(act);
  const __m256i bias = _mm256_set1_epi8(char(V::bias));
  __m256 acc[4];
  float offsets[4];
  for (int r = 0; r < 4; ++r) {
    acc[r] = _mm256_setzero_ps();
    offsets[r] = 0;
  }
  for (int64_t b = 0; b < cols / 32; ++b) {
    const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].q));
    __m256i bias_lanes = _mm256_setzero_si256();
    if constexpr (V::bias != 0)
      bias_lanes = _mm256_dpbusd_epi32(_mm256_setzero_si256(), bias, y);
    for (int r = 0; r < 4; ++r) {
      const uint8_t* blk = w[r] + b * sizeof(B);
      if (b % 2 == 0)
        _mm_prefetch(reinterpret_cast<const char*>(blk) + prefetch_ahead, _MM_HINT_T0);
      __m256i lanes = _mm256_dpbusd_epi32(_mm256_setzero_si256(), V::values(blk), y);
      if constexpr (V::bias != 0)
        lanes = _mm256_sub_epi32(lanes, bias_lanes);
      // the block's first 8 bytes as f16: lane 0 is d, lane 1 m
      const __m128 halves = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk)));
      if constexpr (V::has_offset) {
        static_assert(offsetof(B, m) == 2);
        offsets[r] += _mm_cvtss_f32(_mm_movehdup_ps(halves)) * a[b].s;
      }
      const float d = _mm_cvtss_f32(halves) * a[b].d;
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc[r]);
    }
  }
  for (int r = 0; r < 4; ++r)
    out[r] = hsum(acc[r]) + offsets[r];
}

// -- K-quants ----------------------------------------------------------------------

/// Q4_K and Q5_K: the 8 scales (words 0..7) and 8 mins (words 8..15) of 32
/// as 16-bit values, unpacked from their 12 bytes four at a time.
CECO_AVX512_INLINE __m256i k4_scales_mins(const uint8_t* s) {
  const uint32_t u0 = load_u32(s), u1 = load_u32(s + 4), u2 = load_u32(s + 8);
  const uint32_t low6 = 0x3f3f3f3f, nibble = 0x0f0f0f0f, top2 = 0x03030303;
  const uint32_t scales_lo = u0 & low6, mins_lo = u1 & low6;
  const uint32_t scales_hi = (u2 & nibble) | (((u0 >> 6) & top2) << 4);
  const uint32_t mins_hi = ((u2 >> 4) & nibble) | (((u1 >> 6) & top2) << 4);
  return _mm256_cvtepu8_epi16(_mm_set_epi32(int32_t(mins_hi), int32_t(mins_lo),
                                            int32_t(scales_hi), int32_t(scales_lo)));
}

/// Q4_K (Five = false) and Q5_K, R rows at a time (out[r]: row w[r]).
/// Step c takes 32 bytes of qs: the low nibbles are sub-block 2c, the high
/// ones 2c + 1, which are activations 64c .. 64c + 63 in order; Q5_K's
/// fifth bits are bits 2c and 2c + 1 of qh. The rows share the activation
/// loads and the activation sums of 32; each row's floats are the single
/// row's.
template <bool Five, int R>
CECO_AVX512_INLINE void dot_q45_k_rows(const uint8_t* const* w, const void* act, int64_t cols,
                                       float* out) {
  using B = std::conditional_t<Five, block_q5_k, block_q4_k>;
  const auto* a = static_cast<const act_block256*>(act);
  const __m512i shift = halves16(0, 4), low4 = _mm512_set1_epi8(15);
  __m256 acc[R];
  float min_total[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    min_total[r] = 0;
  }
  for (int64_t b = 0; b < cols / 256; ++b) {
    const uint8_t* blk[R];
    __m256i scales_mins[R];
    __m512i sm[R], qh[R];
    // Two sums per row, so that each dpwssd waits for one two steps back
    // (integers: the order does not matter).
    __m512i sums[R][2];
    for (int r = 0; r < R; ++r) {
      blk[r] = w[r] + b * sizeof(B);
      for (int line = 0; line < int(sizeof(B)); line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(blk[r]) + prefetch_ahead + line, _MM_HINT_T0);
      scales_mins[r] = k4_scales_mins(CECO_FIELD(blk[r], B, scales));
      sm[r] = _mm512_castsi256_si512(scales_mins[r]);
      if constexpr (Five)
        qh[r] = broadcast32(CECO_FIELD(blk[r], block_q5_k, qh));
      sums[r][0] = sums[r][1] = _mm512_setzero_si512();
    }
    for (int c = 0; c < 4; ++c) {
      const __m512i y = _mm512_loadu_si512(a[b].q + 64 * c);
      const __m512i pick = halves16(int16_t(2 * c), int16_t(2 * c + 1));
      for (int r = 0; r < R; ++r) {
        const uint8_t* qs = CECO_FIELD(blk[r], B, qs);
        __m512i q = _mm512_and_si512(_mm512_srlv_epi16(broadcast32(qs + 32 * c), shift), low4);
        if constexpr (Five) {
          const __mmask64 high =
            _mm512_test_epi8_mask(qh[r], halves8(int8_t(1 << (2 * c)), int8_t(1 << (2 * c + 1))));
          q = _mm512_mask_add_epi8(q, high, q, _mm512_set1_epi8(16));
        }
        const __m512i scale = _mm512_permutexvar_epi16(pick, sm[r]);
        sums[r][c % 2] = _mm512_dpwssd_epi32(sums[r][c % 2], _mm512_maddubs_epi16(q, y), scale);
      }
    }
    // The mins: over the 8 sub-blocks of 32, min times the sum of its
    // activations; the activation sums of 32 serve every row.
    const __m256i act_sums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].sums));
    const __m128i sums32 = _mm_hadd_epi16(_mm256_castsi256_si128(act_sums),
                                          _mm256_extracti128_si256(act_sums, 1));
    int32_t total[R];
    __m128i prod[R];
    for (int r = 0; r < R; ++r)
      prod[r] = _mm_madd_epi16(_mm256_extracti128_si256(scales_mins[r], 1), sums32);
    if constexpr (R == 4) {
      // lane r: row r's total
      const __m128i t = _mm_hadd_epi32(_mm_hadd_epi32(prod[0], prod[1]),
                                       _mm_hadd_epi32(prod[2], prod[3]));
      total[0] = _mm_cvtsi128_si32(t);
      total[1] = _mm_extract_epi32(t, 1);
      total[2] = _mm_extract_epi32(t, 2);
      total[3] = _mm_extract_epi32(t, 3);
    } else {
      for (int r = 0; r < R; ++r) {
        __m128i p = _mm_add_epi32(prod[r], _mm_shuffle_epi32(prod[r], 0x4E));
        p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0xB1));
        total[r] = _mm_cvtsi128_si32(p);
      }
    }
    for (int r = 0; r < R; ++r) {
      const float d = a[b].d * half_f16c(CECO_FIELD(blk[r], B, d));
      const __m512i total_sums = _mm512_add_epi32(sums[r][0], sums[r][1]);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(fold(total_sums)), acc[r]);
      const float dmin = half_f16c(CECO_FIELD(blk[r], B, dmin));
      if constexpr (Five)
        min_total[r] += (-a[b].d * dmin) * float(total[r]);  // as the AVX2 kernel: d · dmin first
      else
        min_total[r] += a[b].d * (-dmin * float(total[r]));  // dmin first, then d
    }
  }
  for (int r = 0; r < R; ++r)
    out[r] = hsum(acc[r]) + min_total[r];
}

template <bool Five>
float dot_q45_k(const uint8_t* w, const void* act, int64_t cols) {
  float out;
  dot_q45_k_rows<Five, 1>(&w, act, cols, &out);
  return out;
}
/// Four rows of Q4_K (Five = false) or Q5_K: each row's integer lanes and
/// floats are dot_q45_k's, the block overhead done once for the four rows.
/// - d, dmin and the 12 bytes of scales and mins are the first 16 bytes of
///   a block: the four rows' as the 128-bit lanes of one vector, unpacked
///   together into bytes [8 scales, 8 mins] per lane, then words;
/// - the weights are read 64 bytes of qs at a time: their low nibbles are
///   sub-blocks 2c and 2c + 2 (one per 256-bit half), the high nibbles
///   2c + 1 and 2c + 3, against activations rearranged to match once for
///   the four rows; each half's i32 lanes still sum elements 4k..4k+3 of
///   its sub-block, so the folded lanes are dot_q45_k's integers;
/// - the mins' totals of the four rows come from one vector.
template <bool Five>
void dot_q45_k_4(const uint8_t* const* w, const void* act, int64_t cols, float* out) {
  using B = std::conditional_t<Five, block_q5_k, block_q4_k>;
  static_assert(offsetof(B, d) == 0 && offsetof(B, dmin) == 2 && offsetof(B, scales) == 4);
  const auto* a = static_cast<const act_block256*>(act);
  const __m512i low4 = _mm512_set1_epi8(15), low6 = _mm512_set1_epi8(0x3f);
  const __m512i nibble = _mm512_set1_epi8(15);
  // Per 128-bit lane (one row), dwords [d dmin, u0, u1, u2]: the shifts of
  // the words picked below, u2 >> 4 for the mins' low nibbles.
  const __m512i u2_shift = _mm512_set4_epi32(4, 0, 0, 0);
  // Vector v (qs half v / 2, low or high nibbles) holds sub-blocks lo and
  // hi; the scale of each as 16 words, in the words of row 0 (row 1: + 16).
  const int sub_lo[4] = {0, 1, 4, 5};
  __m512i pick[2][4];
  for (int v = 0; v < 4; ++v)
    for (int odd = 0; odd < 2; ++odd)
      pick[odd][v] = halves16(int16_t(sub_lo[v] + 16 * odd), int16_t(sub_lo[v] + 2 + 16 * odd));
  // The mins of the four rows (dwords 2 and 3 of each lane) in the low 256 bits.
  const __m512i mins_at = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 15, 14, 11, 10, 7, 6, 3, 2);
  const __m512i firsts = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
  __m256 acc[4];
  float min_total[4];
  for (int r = 0; r < 4; ++r) {
    acc[r] = _mm256_setzero_ps();
    min_total[r] = 0;
  }
  for (int64_t b = 0; b < cols / 256; ++b) {
    const uint8_t* blk[4];
    for (int r = 0; r < 4; ++r) {
      blk[r] = w[r] + b * sizeof(B);
      for (int line = 0; line < int(sizeof(B)); line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(blk[r]) + prefetch_ahead + line, _MM_HINT_T0);
    }
    // -- scales and mins, as k4_scales_mins unpacks them, four rows at once
    const __m512i heads = _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[0]))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[1])), 1)),
      _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[2]))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk[3])), 1),
      1);
    // dwords [u0, u2, u1, u2] and [u0, u0, u1, u1]
    const __m512i words_a = _mm512_shuffle_epi32(heads, _MM_PERM_ENUM(0xED));
    const __m512i words_b = _mm512_shuffle_epi32(heads, _MM_PERM_ENUM(0xA5));
    // odd dwords: (u2 >> 0 or 4) & 15 | the top 2 bits of u0 or u1 at bits 4-5
    const __m512i high = _mm512_ternarylogic_epi32(nibble, _mm512_srlv_epi32(words_a, u2_shift),
                                                   _mm512_srli_epi32(words_b, 2), 0xCA);
    const __m512i packed = _mm512_and_si512(
      _mm512_mask_mov_epi32(words_a, __mmask16(0xAAAA), high), low6);  // even dwords: u & 63
    const __m512i sm01 = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(packed));
    const __m512i sm23 = _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64(packed, 1));
    // -- the mins: min times the sum of its sub-block's activations
    const __m256i act_sums = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[b].sums));
    const __m128i sums32 = _mm_hadd_epi16(_mm256_castsi256_si128(act_sums),
                                          _mm256_extracti128_si256(act_sums, 1));
    const __m512i mins =
      _mm512_cvtepu8_epi16(_mm512_castsi512_si256(_mm512_permutexvar_epi32(mins_at, packed)));
    __m512i min_prod = _mm512_madd_epi16(mins, _mm512_broadcast_i32x4(sums32));  // lane r: row r
    min_prod = _mm512_add_epi32(min_prod, _mm512_shuffle_epi32(min_prod, _MM_PERM_ENUM(0x4E)));
    min_prod = _mm512_add_epi32(min_prod, _mm512_shuffle_epi32(min_prod, _MM_PERM_ENUM(0xB1)));
    alignas(16) int32_t total[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(total),
                    _mm512_castsi512_si128(_mm512_permutexvar_epi32(firsts, min_prod)));
    // d and dmin of each row, from their f16
    alignas(32) float scale_halves[8];  // d, dmin of row 0, then row 1, ...
    _mm256_store_ps(scale_halves, _mm256_cvtph_ps(_mm512_castsi512_si128(
                                    _mm512_permutexvar_epi32(firsts, heads))));
    // -- the activations, as the weight vectors hold them
    __m512i y[4];
    for (int h = 0; h < 2; ++h) {
      const __m512i first = _mm512_loadu_si512(a[b].q + 128 * h);
      const __m512i second = _mm512_loadu_si512(a[b].q + 128 * h + 64);
      y[2 * h] = _mm512_shuffle_i64x2(first, second, 0x44);      // 128h + [0, 32) and [64, 96)
      y[2 * h + 1] = _mm512_shuffle_i64x2(first, second, 0xEE);  // [32, 64) and [96, 128)
    }
    for (int r = 0; r < 4; ++r) {
      const __m512i sm = r < 2 ? sm01 : sm23;
      const uint8_t* qs = CECO_FIELD(blk[r], B, qs);
      __m512i qh;
      if constexpr (Five)
        qh = broadcast32(CECO_FIELD(blk[r], block_q5_k, qh));
      __m512i sums[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
      for (int h = 0; h < 2; ++h) {
        const __m512i bytes = _mm512_loadu_si512(qs + 64 * h);
        __m512i q[2] = {_mm512_and_si512(bytes, low4),
                        _mm512_and_si512(_mm512_srli_epi16(bytes, 4), low4)};
        for (int k = 0; k < 2; ++k) {
          const int v = 2 * h + k, lo = sub_lo[v];
          if constexpr (Five) {  // bit s of qh: sub-block s's fifth bits
            const __mmask64 fifth =
              _mm512_test_epi8_mask(qh, halves8(int8_t(1 << lo), int8_t(1 << (lo + 2))));
            q[k] = _mm512_mask_add_epi8(q[k], fifth, q[k], _mm512_set1_epi8(16));
          }
          const __m512i scale = _mm512_permutexvar_epi16(pick[r % 2][v], sm);
          sums[k] = _mm512_dpwssd_epi32(sums[k], _mm512_maddubs_epi16(q[k], y[v]), scale);
        }
      }
      const float d = a[b].d * scale_halves[2 * r];
      const __m512i total_sums = _mm512_add_epi32(sums[0], sums[1]);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(fold(total_sums)), acc[r]);
      const float dmin = scale_halves[2 * r + 1];
      if constexpr (Five)
        min_total[r] += (-a[b].d * dmin) * float(total[r]);  // as dot_q45_k
      else
        min_total[r] += a[b].d * (-dmin * float(total[r]));
    }
  }
  for (int r = 0; r < 4; ++r)
    out[r] = hsum(acc[r]) + min_total[r];
}

/// Q6_K, R rows at a time (out[r]: row w[r]). Half h (128 values) takes
/// 64 bytes of ql and 32 of qh: the low nibbles of ql are values 128h ..
/// 128h + 63 in order, the high nibbles the next 64; their high two bits
/// are bits 0-1, 2-3 (first step) and 4-5, 6-7 (second) of qh, each moved
/// to bits 4-5. Every stored value carries 32, whose products with the
/// activations the rows share.
template <int R>
CECO_AVX512_INLINE void dot_q6_k_rows(const uint8_t* const* w, const void* act, int64_t cols,
                                      float* out) {
  const auto* a = static_cast<const act_block256*>(act);
  const __m512i low4 = _mm512_set1_epi8(15), bits45 = _mm512_set1_epi8(0x30);
  const __m512i shift_01 = halves16(4, 2), shift_23 = halves16(0, 2);
  const __m512i thirty_two = _mm512_set1_epi8(32);
  // Step m's 128-bit lane i is sub-block 4m + i: its scale in all 8 words.
  const auto words = [](int64_t v) { return v * 0x0001000100010001ll; };
  __m512i pick[4];
  for (int64_t m = 0; m < 4; ++m)
    pick[m] = _mm512_set_epi64(words(4 * m + 3), words(4 * m + 3), words(4 * m + 2),
                               words(4 * m + 2), words(4 * m + 1), words(4 * m + 1),
                               words(4 * m), words(4 * m));
  __m256 acc[R];
  for (int r = 0; r < R; ++r)
    acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < cols / 256; ++b) {
    const uint8_t* blk[R];
    __m512i scales[R];
    __m512i sums[R][2];  // as Q4_K's
    for (int r = 0; r < R; ++r) {
      blk[r] = w[r] + b * sizeof(block_q6_k);
      for (int line = 0; line < int(sizeof(block_q6_k)); line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(blk[r]) + prefetch_ahead + line, _MM_HINT_T0);
      scales[r] = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(CECO_FIELD(blk[r], block_q6_k, scales)))));
      sums[r][0] = sums[r][1] = _mm512_setzero_si512();
    }
    for (int h = 0; h < 2; ++h) {
      __m512i q[R][2];
      for (int r = 0; r < R; ++r) {
        const __m512i ql = _mm512_loadu_si512(CECO_FIELD(blk[r], block_q6_k, ql) + 64 * h);
        const __m512i qh = broadcast32(CECO_FIELD(blk[r], block_q6_k, qh) + 32 * h);
        const __m512i h01 = _mm512_and_si512(_mm512_sllv_epi16(qh, shift_01), bits45);
        const __m512i h23 = _mm512_and_si512(_mm512_srlv_epi16(qh, shift_23), bits45);
        q[r][0] = and_or(ql, low4, h01);
        q[r][1] = and_or(_mm512_srli_epi16(ql, 4), low4, h23);
      }
      for (int k = 0; k < 2; ++k) {
        const int m = 2 * h + k;
        const __m512i y = _mm512_loadu_si512(a[b].q + 64 * m);
        const __m512i bias = _mm512_maddubs_epi16(thirty_two, y);
        for (int r = 0; r < R; ++r) {
          const __m512i products = _mm512_sub_epi16(_mm512_maddubs_epi16(q[r][k], y), bias);
          sums[r][k] =
            _mm512_dpwssd_epi32(sums[r][k], products, _mm512_permutexvar_epi16(pick[m], scales[r]));
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      const float d = a[b].d * half_f16c(CECO_FIELD(blk[r], block_q6_k, d));
      const __m512i total_sums = _mm512_add_epi32(sums[r][0], sums[r][1]);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(fold(total_sums)), acc[r]);
    }
  }
  const float min_total = 0;  // the AVX2 kernel's sum, term for term
  for (int r = 0; r < R; ++r)
    out[r] = hsum(acc[r]) + min_total;
}

float dot_q6_k(const uint8_t* w, const void* act, int64_t cols) {
  float out;
  dot_q6_k_rows<1>(&w, act, cols, &out);
  return out;
}
void dot_q6_k_4(const uint8_t* const* w, const void* act, int64_t cols, float* out) {
  dot_q6_k_rows<4>(w, act, cols, out);
}

} // namespace

dot_fn dot(ggml_type t) {
  switch (t) {
    case ggml_type::q4_0: return dot32<v_q4_0>;
    case ggml_type::q4_1: return dot32<v_q4_1>;
    case ggml_type::q5_0: return dot32<v_q5_0>;
    case ggml_type::q5_1: return dot32<v_q5_1>;
    case ggml_type::q8_0: return dot32<v_q8_0>;
    case ggml_type::q4_k: return dot_q45_k<false>;
    case ggml_type::q5_k: return dot_q45_k<true>;
    case ggml_type::q6_k: return dot_q6_k;
    default: return nullptr;
  }
}

dot4_fn dot4(ggml_type t) {
  switch (t) {
    case ggml_type::q4_0: return dot32_4<v_q4_0>;
    case ggml_type::q4_1: return dot32_4<v_q4_1>;
    case ggml_type::q5_0: return dot32_4<v_q5_0>;
    case ggml_type::q5_1: return dot32_4<v_q5_1>;
    case ggml_type::q8_0: return dot32_4<v_q8_0>;
    case ggml_type::q4_k: return dot_q45_k_4<false>;
    case ggml_type::q5_k: return dot_q45_k_4<true>;
    case ggml_type::q6_k: return dot_q6_k_4;
    default: return nullptr;
  }
}

#else

dot_fn dot(ggml_type) { return nullptr; }
dot4_fn dot4(ggml_type) { return nullptr; }

#endif

} // namespace ceco::quant::avx512
