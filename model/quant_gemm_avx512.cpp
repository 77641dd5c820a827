// The AVX-512/VNNI kernels of the integer matrix product (layout:
// model/quant_gemm.hpp). Built with those instruction sets, as
// quant_avx512.cpp is, and for the same reason it calls nothing of another
// header that the linker could keep in an AVX-512 copy: no std templates,
// only the always-inline block helpers, and the layouts and the repacking,
// which quant_layouts.hpp and quant_gemm_repack.hpp keep file-local.
//
// Per group of 16 weight rows and 8 activation rows, a chunk of 32 columns
// costs 8 vector loads of weights (kept in registers for all 8 activation
// rows) and, per activation row, 8 vpdpbusd whose activation operand is a
// 4-byte broadcast from memory, one int-to-float conversion and two or
// three multiply-adds with the scales: 16 × 32 × 8 products in about 90
// instructions.

#include "model/quant_gemm.hpp"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
  defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define CECO_AVX512_GEMM 1
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics start some results from an undefined vector
// (_mm512_undefined_*), which -Wuninitialized reports at every use (fixed
// in GCC 13): the warnings say nothing of this file's code.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "model/quant_gemm_repack.hpp"
#endif

namespace ceco::quant::avx512 {

#if defined(CECO_AVX512_GEMM)

namespace {

/// The largest of 16 floats.
CECO_INLINE float max_of(__m512 v) {
  const __m256 m8 = _mm256_max_ps(_mm512_castps512_ps256(v),
                                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  return _mm_cvtss_f32(m4);
}

/// The sum of 16 integers.
CECO_INLINE int32_t sum_of(__m512i v) {
  const __m256i s8 = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
  return _mm_cvtsi128_si32(s4);
}

void quantize(const float* x, gemm::act_block* out, int64_t cols) {
  for (int64_t b = 0; b < cols / 32; ++b) {
    const __m512 v0 = _mm512_loadu_ps(x + 32 * b);
    const __m512 v1 = _mm512_loadu_ps(x + 32 * b + 16);
    const float amax = max_of(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    // Round to nearest, ties to even, as quantize_activation does.
    const __m512i q0 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i q1 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    gemm::act_block& a = out[b];
    _mm_storeu_si128(reinterpret_cast<__m128i*>(a.q), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(a.q + 16), _mm512_cvtsepi32_epi8(q1));
    const int32_t s0 = sum_of(q0), s1 = sum_of(q1);
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

CECO_INLINE __m512i broadcast_u32(const int8_t* p) {
  return _mm512_set1_epi32(int32_t(load_u32(reinterpret_cast<const uint8_t*>(p))));
}

/// y[c * y_stride + i] = row i of the repacked group · activation row c,
/// for C activation rows (act + c * act_stride) and the rows in `mask`.
template <int Sub, bool Offset, int C>
void multiply(const uint8_t* group, int64_t chunks, const gemm::act_block* act, int64_t act_stride,
              float* y, int64_t y_stride, __mmask16 mask) {
  constexpr size_t cb = gemm_chunk_bytes<Sub>;
  __m512 total[C];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
    total[c] = _mm512_setzero_ps();
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const uint8_t* g = group + size_t(ch) * cb;
    __m512i wv[8];
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k)
      wv[k] = _mm512_load_si512(g + 64 * k);
    const auto* f = reinterpret_cast<const float*>(g + 512);
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) {
      const gemm::act_block& a = act[c * act_stride + ch];
      __m512 t;
      if constexpr (Sub == 32) {
        __m512i acc = _mm512_set1_epi32(a.neg128_sum32);
#pragma GCC unroll 8
        for (int k = 0; k < 8; ++k)
          acc = _mm512_dpbusd_epi32(acc, wv[k], broadcast_u32(a.q + 4 * k));
        t = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_load_ps(f));
        if constexpr (Offset)
          t = _mm512_fmadd_ps(_mm512_load_ps(f + 16), _mm512_set1_ps(a.sum32), t);
      } else {
        __m512i acc0 = _mm512_set1_epi32(a.neg128_sum16[0]);
        __m512i acc1 = _mm512_set1_epi32(a.neg128_sum16[1]);
#pragma GCC unroll 4
        for (int k = 0; k < 4; ++k) {
          acc0 = _mm512_dpbusd_epi32(acc0, wv[k], broadcast_u32(a.q + 4 * k));
          acc1 = _mm512_dpbusd_epi32(acc1, wv[k + 4], broadcast_u32(a.q + 16 + 4 * k));
        }
        t = _mm512_mul_ps(_mm512_cvtepi32_ps(acc0), _mm512_load_ps(f));
        t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc1), _mm512_load_ps(f + 32), t);
        if constexpr (Offset) {
          t = _mm512_fmadd_ps(_mm512_load_ps(f + 16), _mm512_set1_ps(a.sum16[0]), t);
          t = _mm512_fmadd_ps(_mm512_load_ps(f + 48), _mm512_set1_ps(a.sum16[1]), t);
        }
      }
      total[c] = _mm512_fmadd_ps(t, _mm512_set1_ps(a.d), total[c]);
    }
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
    _mm512_mask_storeu_ps(y + c * y_stride, mask, total[c]);
}

template <class L>
void rows(const matrix& w, int64_t r0, int64_t r1, const gemm::act_block* act, int64_t n, float* y,
          uint8_t* scratch) {
  const int64_t chunks = w.cols / 32;
  for (int64_t g = r0; g < r1; g += 16) {
    const int64_t n_rows = r1 - g < 16 ? r1 - g : 16;
    repack_group<L, 128>(w.data + size_t(g) * w.row_bytes, w.row_bytes, n_rows, w.cols, scratch);
    const __mmask16 mask = __mmask16((1u << n_rows) - 1);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
      multiply<L::sub, L::has_offset, 8>(scratch, chunks, act + j * chunks, chunks,
                                         y + j * w.rows + g, w.rows, mask);
    for (; j + 4 <= n; j += 4)
      multiply<L::sub, L::has_offset, 4>(scratch, chunks, act + j * chunks, chunks,
                                         y + j * w.rows + g, w.rows, mask);
    for (; j < n; ++j)
      multiply<L::sub, L::has_offset, 1>(scratch, chunks, act + j * chunks, chunks,
                                         y + j * w.rows + g, w.rows, mask);
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

#else

const gemm::kernels* gemm_kernels(ggml_type) {
  return nullptr;
}

#endif

} // namespace ceco::quant::avx512
