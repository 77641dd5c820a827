// The AVX2 kernels of the integer matrix product (layout:
// model/quant_gemm.hpp), for x86 CPUs without AVX-512/VNNI. AVX2 has no
// 4-byte dot product; vpmaddubsw multiplies u8 by s8 and adds pairs into
// saturating 16-bit lanes, and vpmaddwd adds those pairs into 32 bits. The
// weights are stored as q - min_value, 0..63 for the 2-to-6-bit types, so
// two steps' pair sums (at most 2 × 2 × 63 × 127) still fit 16 bits and
// one vpmaddwd serves both. Q8_0's bytes, stored as such, would span
// 0..255 and saturate: they stay signed and are multiplied as |w| by a
// with w's sign (vpsignb), each step widened on its own.
//
// A group's 16 rows are two vectors per step (rows 0-7, rows 8-15); each
// pair of steps loads them once for two activation rows. Only this file's
// kernels carry the AVX2 target (the pragma below, after every include):
// as in quant_gemm_avx512.cpp, nothing here calls a std template.

#include "model/quant_gemm.hpp"

#if defined(__x86_64__)
#include <immintrin.h>

#include "model/quant_gemm_repack.hpp"
#endif

namespace ceco::quant::avx2 {

#if defined(__x86_64__)

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace {

/// The largest of 8 floats.
inline float max_of(__m256 v) {
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  return _mm_cvtss_f32(m4);
}

/// The sum of 8 integers.
inline int32_t sum_of(__m256i v) {
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
  return _mm_cvtsi128_si32(s4);
}

void quantize(const float* x, gemm::act_block* out, int64_t cols) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int64_t b = 0; b < cols / 32; ++b) {
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) {
      v[i] = _mm256_loadu_ps(x + 32 * b + 8 * i);
      m = _mm256_max_ps(m, _mm256_and_ps(v[i], abs_mask));
    }
    const float amax = max_of(m);
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    __m256i q[4];
    for (int i = 0; i < 4; ++i)  // the default rounding: to nearest, ties to even
      q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(id)));
    gemm::act_block& a = out[b];
    // packs interleave 128-bit lanes; the permute puts the 32 bytes in order.
    const __m256i words = _mm256_packs_epi32(q[0], q[1]), words2 = _mm256_packs_epi32(q[2], q[3]);
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(words, words2),
                                                      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.q), bytes);
    const int32_t s0 = sum_of(_mm256_add_epi32(q[0], q[1])), s1 = sum_of(_mm256_add_epi32(q[2], q[3]));
    a.d = amax / 127.0f;
    a.sum32 = float(s0 + s1);
    a.sum16[0] = float(s0);
    a.sum16[1] = float(s1);
    a.neg128_sum32 = -128 * (s0 + s1);
    a.neg128_sum16[0] = -128 * s0;
    a.neg128_sum16[1] = -128 * s1;
    a.unused = 0;
  }
}

/// The i32 sums, per row of 8, of steps K and K + 1 of half h (rows 8h..8h+7)
/// against the activation bytes of those steps. Signed: the bytes are
/// signed values (Q8_0), multiplied as |w| by a with w's sign, and each
/// step's pair sums (up to 2 × 128 × 127) are widened on their own.
template <int K, bool Signed>
inline __attribute__((always_inline)) __m256i two_steps(const uint8_t* g, int h, const int8_t* aq) {
  const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(g + 64 * K + 32 * h));
  const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(g + 64 * (K + 1) + 32 * h));
  const __m256i a0 = _mm256_set1_epi32(int32_t(load_u32(reinterpret_cast<const uint8_t*>(aq) + 4 * K)));
  const __m256i a1 =
    _mm256_set1_epi32(int32_t(load_u32(reinterpret_cast<const uint8_t*>(aq) + 4 * (K + 1))));
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (Signed) {
    const __m256i p0 = _mm256_maddubs_epi16(_mm256_abs_epi8(w0), _mm256_sign_epi8(a0, w0));
    const __m256i p1 = _mm256_maddubs_epi16(_mm256_abs_epi8(w1), _mm256_sign_epi8(a1, w1));
    return _mm256_add_epi32(_mm256_madd_epi16(p0, ones), _mm256_madd_epi16(p1, ones));
  } else {
    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(w0, a0), _mm256_maddubs_epi16(w1, a1));
    return _mm256_madd_epi16(pairs, ones);
  }
}

/// y[c * y_stride + i] = row i of the repacked group · activation row c,
/// for C activation rows (act + c * act_stride) and rows i < n_rows.
template <int Sub, bool Offset, int Bias, bool Signed, int C>
void multiply(const uint8_t* group, int64_t chunks, const gemm::act_block* act, int64_t act_stride,
              float* y, int64_t y_stride, int n_rows) {
  constexpr size_t cb = gemm_chunk_bytes<Sub>;
  __m256 total[C][2];
  for (int c = 0; c < C; ++c)
    total[c][0] = total[c][1] = _mm256_setzero_ps();
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const uint8_t* g = group + size_t(ch) * cb;
    const auto* f = reinterpret_cast<const float*>(g + 512);
    for (int c = 0; c < C; ++c) {
      const gemm::act_block& a = act[c * act_stride + ch];
      for (int h = 0; h < 2; ++h) {
        __m256 t;
        if constexpr (Sub == 32) {
          // Bias * sum(q) is what the stored weights add to the products.
          __m256i acc = _mm256_set1_epi32(-Bias * int32_t(a.sum32));
          acc = _mm256_add_epi32(acc, two_steps<0, Signed>(g, h, a.q));
          acc = _mm256_add_epi32(acc, two_steps<2, Signed>(g, h, a.q));
          acc = _mm256_add_epi32(acc, two_steps<4, Signed>(g, h, a.q));
          acc = _mm256_add_epi32(acc, two_steps<6, Signed>(g, h, a.q));
          t = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_load_ps(f + 8 * h));
          if constexpr (Offset)
            t = _mm256_fmadd_ps(_mm256_load_ps(f + 16 + 8 * h), _mm256_set1_ps(a.sum32), t);
        } else {
          __m256i acc0 = _mm256_set1_epi32(-Bias * int32_t(a.sum16[0]));
          __m256i acc1 = _mm256_set1_epi32(-Bias * int32_t(a.sum16[1]));
          acc0 = _mm256_add_epi32(acc0, two_steps<0, Signed>(g, h, a.q));
          acc0 = _mm256_add_epi32(acc0, two_steps<2, Signed>(g, h, a.q));
          acc1 = _mm256_add_epi32(acc1, two_steps<4, Signed>(g, h, a.q));
          acc1 = _mm256_add_epi32(acc1, two_steps<6, Signed>(g, h, a.q));
          t = _mm256_mul_ps(_mm256_cvtepi32_ps(acc0), _mm256_load_ps(f + 8 * h));
          t = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc1), _mm256_load_ps(f + 32 + 8 * h), t);
          if constexpr (Offset) {
            t = _mm256_fmadd_ps(_mm256_load_ps(f + 16 + 8 * h), _mm256_set1_ps(a.sum16[0]), t);
            t = _mm256_fmadd_ps(_mm256_load_ps(f + 48 + 8 * h), _mm256_set1_ps(a.sum16[1]), t);
          }
        }
        total[c][h] = _mm256_fmadd_ps(t, _mm256_set1_ps(a.d), total[c][h]);
      }
    }
  }
  for (int c = 0; c < C; ++c) {
    if (n_rows == 16) {
      _mm256_storeu_ps(y + c * y_stride, total[c][0]);
      _mm256_storeu_ps(y + c * y_stride + 8, total[c][1]);
    } else {
      float rows[16];
      _mm256_storeu_ps(rows, total[c][0]);
      _mm256_storeu_ps(rows + 8, total[c][1]);
      for (int i = 0; i < n_rows; ++i)
        y[c * y_stride + i] = rows[i];
    }
  }
}

/// Whether type L's bytes are stored signed (Q8_0's -128..127, which no
/// bias brings within 0..63) and multiplied by sign.
template <class L>
constexpr bool stored_signed = L::min_value < -32;
/// The bias of type L's stored bytes: -min_value makes them 0..63 for the
/// 2-to-6-bit types; signed bytes keep theirs, bias 0.
template <class L>
constexpr int stored_bias = stored_signed<L> ? 0 : -L::min_value;

template <class L>
void rows(const matrix& w, int64_t r0, int64_t r1, const gemm::act_block* act, int64_t n, float* y,
          uint8_t* scratch) {
  constexpr int bias = stored_bias<L>;
  const int64_t chunks = w.cols / 32;
  for (int64_t g = r0; g < r1; g += 16) {
    const int n_rows = int(r1 - g < 16 ? r1 - g : 16);
    repack_group<L, bias>(w.data + size_t(g) * w.row_bytes, w.row_bytes, n_rows, w.cols, scratch);
    int64_t j = 0;
    for (; j + 2 <= n; j += 2)
      multiply<L::sub, L::has_offset, bias, stored_signed<L>, 2>(scratch, chunks, act + j * chunks, chunks,
                                               y + j * w.rows + g, w.rows, n_rows);
    for (; j < n; ++j)
      multiply<L::sub, L::has_offset, bias, stored_signed<L>, 1>(scratch, chunks, act + j * chunks, chunks,
                                               y + j * w.rows + g, w.rows, n_rows);
  }
}

template <class L>
struct table {
  static constexpr gemm::kernels kernels{quantize, rows<L>};
};

} // namespace

const gemm::kernels* gemm_kernels(ggml_type t) {
  return kernels_by_layout<table>(t);
}

#pragma GCC pop_options

#else

const gemm::kernels* gemm_kernels(ggml_type) {
  return nullptr;
}

#endif

} // namespace ceco::quant::avx2
