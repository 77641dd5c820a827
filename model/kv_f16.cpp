#include "model/kv_f16.hpp"

#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "model/half.hpp"
#include "model/quant.hpp"

namespace ceco::kernels {

namespace {

/// Key/value heads [first, last) that query heads [h0, h1) read.
struct kv_heads {
  int64_t first, last;
};
kv_heads kv_heads_of(int64_t h0, int64_t h1, int64_t group) {
  return {h0 / group, (h1 - 1) / group + 1};
}

// -- portable: each row's heads converted to floats once, then f32 loops ------

namespace portable {

void store(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    dst[i] = float_to_half(src[i]);
}

void load(float* dst, const uint16_t* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    dst[i] = half_to_float(src[i]);
}

/// The key/value heads of one row that heads [h0, h1) read, as floats:
/// head kv at (kv - first) * head_dim. Grows once per thread.
float* row_scratch(int64_t floats) {
  thread_local std::vector<float> row;
  if (int64_t(row.size()) < floats)
    row.resize(size_t(floats));
  return row.data();
}

void scores(int64_t h0, int64_t h1, const float* q, const uint16_t* k, int64_t n_pos,
            int64_t n_head, int64_t n_head_kv, int64_t head_dim, float scale, float* out) {
  const int64_t kv_stride = n_head_kv * head_dim, group = n_head / n_head_kv;
  const auto kv = kv_heads_of(h0, h1, group);
  float* row = row_scratch((kv.last - kv.first) * head_dim);
  for (int64_t t = 0; t < n_pos; ++t) {
    load(row, k + t * kv_stride + kv.first * head_dim, (kv.last - kv.first) * head_dim);
    for (int64_t h = h0; h < h1; ++h) {
      const float* qh = q + h * head_dim;
      const float* kh = row + (h / group - kv.first) * head_dim;
      float s = 0;
      for (int64_t i = 0; i < head_dim; ++i)
        s += qh[i] * kh[i];
      out[h * n_pos + t] = s * scale;
    }
  }
}

void weighted_values(int64_t h0, int64_t h1, float* out, const uint16_t* v, const float* scores,
                     const float* weight_of, int64_t n_pos, int64_t n_head, int64_t n_head_kv,
                     int64_t head_dim) {
  const int64_t kv_stride = n_head_kv * head_dim, group = n_head / n_head_kv;
  const auto kv = kv_heads_of(h0, h1, group);
  float* row = row_scratch((kv.last - kv.first) * head_dim);
  for (int64_t i = h0 * head_dim; i < h1 * head_dim; ++i)
    out[i] = 0;
  for (int64_t t = 0; t < n_pos; ++t) {
    load(row, v + t * kv_stride + kv.first * head_dim, (kv.last - kv.first) * head_dim);
    for (int64_t h = h0; h < h1; ++h) {
      const float w = scores[h * n_pos + t] * weight_of[h];
      const float* vh = row + (h / group - kv.first) * head_dim;
      float* oh = out + h * head_dim;
      for (int64_t i = 0; i < head_dim; ++i)
        oh[i] += w * vh[i];
    }
  }
}

} // namespace portable

// -- x86-64: F16C conversion, AVX2/FMA arithmetic ------------------------------

#if defined(__x86_64__)

namespace f16c {

#define CECO_F16C __attribute__((target("avx2,fma,f16c")))
#define CECO_F16C_INLINE CECO_F16C inline __attribute__((always_inline))

CECO_F16C_INLINE __m256 load8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

CECO_F16C_INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

CECO_F16C_INLINE float dot(const float* q, const uint16_t* k, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), load8(k + i + 8), a1);
  }
  if (i + 8 <= n) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), load8(k + i), a0);
    i += 8;
  }
  float s = hsum(_mm256_add_ps(a0, a1));
  for (; i < n; ++i)
    s += q[i] * _cvtsh_ss(k[i]);
  return s;
}

CECO_F16C_INLINE void axpy(float* y, float a, const uint16_t* x, int64_t n) {
  const __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load8(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i)
    y[i] += a * _cvtsh_ss(x[i]);
}

CECO_F16C void store(uint16_t* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i)
    dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

CECO_F16C void load(float* dst, const uint16_t* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, load8(src + i));
  for (; i < n; ++i)
    dst[i] = _cvtsh_ss(src[i]);
}

CECO_F16C void scores(int64_t h0, int64_t h1, const float* q, const uint16_t* k, int64_t n_pos,
                      int64_t n_head, int64_t n_head_kv, int64_t head_dim, float scale,
                      float* out) {
  const int64_t kv_stride = n_head_kv * head_dim, group = n_head / n_head_kv;
  for (int64_t t = 0; t < n_pos; ++t) {
    const uint16_t* kt = k + t * kv_stride;
    for (int64_t h = h0; h < h1; ++h)
      out[h * n_pos + t] = dot(q + h * head_dim, kt + (h / group) * head_dim, head_dim) * scale;
  }
}

CECO_F16C void weighted_values(int64_t h0, int64_t h1, float* out, const uint16_t* v,
                               const float* scores, const float* weight_of, int64_t n_pos,
                               int64_t n_head, int64_t n_head_kv, int64_t head_dim) {
  const int64_t kv_stride = n_head_kv * head_dim, group = n_head / n_head_kv;
  for (int64_t i = h0 * head_dim; i < h1 * head_dim; ++i)
    out[i] = 0;
  for (int64_t t = 0; t < n_pos; ++t) {
    const uint16_t* vt = v + t * kv_stride;
    for (int64_t h = h0; h < h1; ++h)
      axpy(out + h * head_dim, scores[h * n_pos + t] * weight_of[h], vt + (h / group) * head_dim,
           head_dim);
  }
}

} // namespace f16c

#endif

// -- aarch64: NEON conversion (FCVTL/FCVTN, every ARMv8-A core) ----------------

#if defined(__aarch64__)

namespace neon {

inline float dot(const float* q, const uint16_t* k, int64_t n) {
  float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(k + i));
    a0 = vfmaq_f32(a0, vld1q_f32(q + i), vcvt_f32_f16(vget_low_f16(h)));
    a1 = vfmaq_f32(a1, vld1q_f32(q + i + 4), vcvt_high_f32_f16(h));
  }
  float s = vaddvq_f32(vaddq_f32(a0, a1));
  for (; i < n; ++i)
    s += q[i] * half_to_float(k[i]);
  return s;
}

inline void axpy(float* y, float a, const uint16_t* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(x + i));
    vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vcvt_f32_f16(vget_low_f16(h)), a));
    vst1q_f32(y + i + 4, vfmaq_n_f32(vld1q_f32(y + i + 4), vcvt_high_f32_f16(h), a));
  }
  for (; i < n; ++i)
    y[i] += a * half_to_float(x[i]);
}

void store(uint16_t* dst, const float* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const float16x4_t lo = vcvt_f16_f32(vld1q_f32(src + i));
    vst1q_u16(dst + i, vreinterpretq_u16_f16(vcvt_high_f16_f32(lo, vld1q_f32(src + i + 4))));
  }
  for (; i < n; ++i)
    dst[i] = float_to_half(src[i]);
}

void load(float* dst, const uint16_t* src, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(src + i));
    vst1q_f32(dst + i, vcvt_f32_f16(vget_low_f16(h)));
    vst1q_f32(dst + i + 4, vcvt_high_f32_f16(h));
  }
  for (; i < n; ++i)
    dst[i] = half_to_float(src[i]);
}

void scores(int64_t h0, int64_t h1, const float* q, const uint16_t* k, int64_t n_pos,
            int64_t n_head, int64_t n_head_kv, int64_t head_dim, float scale, float* out) {
  const int64_t kv_stride = n_head_kv * head_dim, group = n_head / n_head_kv;
  for (int64_t t = 0; t < n_pos; ++t) {
    const uint16_t* kt = k + t * kv_stride;
    for (int64_t h = h0; h < h1; ++h)
      out[h * n_pos + t] = dot(q + h * head_dim, kt + (h / group) * head_dim, head_dim) * scale;
  }
}

void weighted_values(int64_t h0, int64_t h1, float* out, const uint16_t* v, const float* scores,
                     const float* weight_of, int64_t n_pos, int64_t n_head, int64_t n_head_kv,
                     int64_t head_dim) {
  const int64_t kv_stride = n_head_kv * head_dim, group = n_head / n_head_kv;
  for (int64_t i = h0 * head_dim; i < h1 * head_dim; ++i)
    out[i] = 0;
  for (int64_t t = 0; t < n_pos; ++t) {
    const uint16_t* vt = v + t * kv_stride;
    for (int64_t h = h0; h < h1; ++h)
      axpy(out + h * head_dim, scores[h * n_pos + t] * weight_of[h], vt + (h / group) * head_dim,
           head_dim);
  }
}

} // namespace neon

#endif

enum class f16_isa { portable, f16c, neon };

f16_isa active_isa() {
  switch (quant::active_kernel_level()) {
    case quant::kernel_level::avx2:
    case quant::kernel_level::avx512:
#if defined(__x86_64__)
      return f16_isa::f16c;  // every AVX2 CPU has F16C (quant's avx2 level requires it)
#else
      break;
#endif
    case quant::kernel_level::neon:
    case quant::kernel_level::dotprod:
#if defined(__aarch64__)
      return f16_isa::neon;
#else
      break;
#endif
    case quant::kernel_level::portable: break;
  }
  return f16_isa::portable;
}

} // namespace

void store_f16(uint16_t* dst, const float* src, int64_t n) {
  switch (active_isa()) {
#if defined(__x86_64__)
    case f16_isa::f16c: return f16c::store(dst, src, n);
#endif
#if defined(__aarch64__)
    case f16_isa::neon: return neon::store(dst, src, n);
#endif
    default: return portable::store(dst, src, n);
  }
}

void load_f16(float* dst, const uint16_t* src, int64_t n) {
  switch (active_isa()) {
#if defined(__x86_64__)
    case f16_isa::f16c: return f16c::load(dst, src, n);
#endif
#if defined(__aarch64__)
    case f16_isa::neon: return neon::load(dst, src, n);
#endif
    default: return portable::load(dst, src, n);
  }
}

void f16_scores(int64_t h0, int64_t h1, const float* q, const uint16_t* k, int64_t n_pos,
                int64_t n_head, int64_t n_head_kv, int64_t head_dim, float scale, float* scores) {
  if (h1 <= h0)
    return;
  switch (active_isa()) {
#if defined(__x86_64__)
    case f16_isa::f16c:
      return f16c::scores(h0, h1, q, k, n_pos, n_head, n_head_kv, head_dim, scale, scores);
#endif
#if defined(__aarch64__)
    case f16_isa::neon:
      return neon::scores(h0, h1, q, k, n_pos, n_head, n_head_kv, head_dim, scale, scores);
#endif
    default:
      return portable::scores(h0, h1, q, k, n_pos, n_head, n_head_kv, head_dim, scale, scores);
  }
}

void f16_weighted_values(int64_t h0, int64_t h1, float* out, const uint16_t* v,
                         const float* scores, const float* weight_of, int64_t n_pos,
                         int64_t n_head, int64_t n_head_kv, int64_t head_dim) {
  if (h1 <= h0)
    return;
  switch (active_isa()) {
#if defined(__x86_64__)
    case f16_isa::f16c:
      return f16c::weighted_values(h0, h1, out, v, scores, weight_of, n_pos, n_head, n_head_kv,
                                   head_dim);
#endif
#if defined(__aarch64__)
    case f16_isa::neon:
      return neon::weighted_values(h0, h1, out, v, scores, weight_of, n_pos, n_head, n_head_kv,
                                   head_dim);
#endif
    default:
      return portable::weighted_values(h0, h1, out, v, scores, weight_of, n_pos, n_head,
                                       n_head_kv, head_dim);
  }
}

} // namespace ceco::kernels
