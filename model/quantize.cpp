// Quantizing f32 rows into the GGML block layouts of model/quant.cpp, and
// the type each matrix of a model gets under a file type (llama-quantize's
// rules). The dequantizers of quant.cpp are the specification: every block
// written here decodes there to within one quantization step of the input
// (Q2_K and Q3_K: their sub-blocks' RMS error within one step).
//
// Round to nearest against per-block scales. Every scale is rounded to f16
// *away from zero* before the weights are quantized against it, so the
// levels still reach the block's extreme values and no element is clamped
// by more than the bound each function states. Only the 2- and 3-bit types,
// whose few levels make the choice matter most, search a few scales per
// sub-block for the least squared error.

#include "model/quantize.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "model/config.hpp"
#include "model/half.hpp"

namespace ceco::quant {

namespace {

void store_half(uint8_t* p, uint16_t h) {
  std::memcpy(p, &h, 2);
}

/// The smallest half >= v.
uint16_t half_at_least(float v) {
  uint16_t h = float_to_half(v);
  if (half_to_float(h) < v)
    h = v >= 0 ? uint16_t(h + 1) : uint16_t(h - 1);  // one unit toward +infinity
  return h;
}

/// The largest half <= v.
uint16_t half_at_most(float v) {
  return uint16_t(half_at_least(-v) ^ 0x8000);
}

/// Round to nearest, ties to even, for |v| < 2^22 (every level here): adding
/// 1.5 * 2^23 leaves no bits below the units. Inline, unlike nearbyint.
int nearest(float v) {
  constexpr float magic = 12582912.0f;
  return int((v + magic) - magic);
}

int clamp_level(int q, int lo, int hi) {
  return std::min(hi, std::max(lo, q));
}

/// The element of largest magnitude, with its sign.
float signed_absmax(const float* x, int n) {
  float v = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > std::fabs(v))
      v = x[i];
  return v;
}

/// x = d * (u - bias) for 32 elements, u in [0, 2 bias): the element of
/// largest magnitude maps to u = 0, as in the reference implementation, so
/// |x - x'| <= |d| (the opposite extreme may be clamped by one step), |d| =
/// max|x| / bias. Returns d's f16 bits.
uint16_t quantize_signed32(const float* x, int bias, uint8_t* u) {
  const float v = signed_absmax(x, 32);
  const uint16_t h = uint16_t(half_at_least(std::fabs(v) / float(bias)) | (v > 0 ? 0x8000 : 0));
  const float d = half_to_float(h);
  const float id = d != 0 ? 1.0f / d : 0.0f;
  for (int i = 0; i < 32; ++i)
    u[i] = uint8_t(clamp_level(nearest(x[i] * id) + bias, 0, 2 * bias - 1));
  return h;
}

/// x = d * u + m for 32 elements, u in [0, levels], m <= min x: |x - x'| <=
/// d / 2 with d = (max x - min x) / levels (both rounded outward to f16).
void quantize_offset32(const float* x, int levels, uint16_t& dh, uint16_t& mh, uint8_t* u) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < 32; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  mh = half_at_most(lo);
  const float m = half_to_float(mh);
  dh = half_at_least(std::max(0.0f, hi - m) / float(levels));
  const float d = half_to_float(dh);
  const float id = d > 0 ? 1.0f / d : 0.0f;
  for (int i = 0; i < 32; ++i)
    u[i] = uint8_t(clamp_level(nearest((x[i] - m) * id), 0, levels));
}

/// Low nibbles of elements 0..15 and high nibbles of 16..31, as Q4_0/Q5_0
/// store them; the fifth bits (when `qh`) go to bit i of a u32.
void pack_nibbles32(const uint8_t* u, uint8_t* qs, uint8_t* qh) {
  uint32_t high = 0;
  for (int l = 0; l < 16; ++l) {
    qs[l] = uint8_t((u[l] & 15) | ((u[l + 16] & 15) << 4));
    high |= uint32_t(u[l] >> 4) << l;
    high |= uint32_t(u[l + 16] >> 4) << (l + 16);
  }
  if (qh)
    std::memcpy(qh, &high, 4);
}

// -- one block per type (layouts: model/quant.cpp) ------------------------------

void q8_0_block(const float* x, uint8_t* b) {
  float amax = 0;
  for (int i = 0; i < 32; ++i)
    amax = std::max(amax, std::fabs(x[i]));
  const uint16_t h = half_at_least(amax / 127.0f);
  const float d = half_to_float(h);
  const float id = d > 0 ? 1.0f / d : 0.0f;
  store_half(b, h);
  for (int i = 0; i < 32; ++i)
    b[2 + i] = uint8_t(int8_t(clamp_level(nearest(x[i] * id), -127, 127)));
}

/// Q4_0 (bias 8) and Q5_0 (bias 16): d | qh (Q5_0) | qs.
template <int bias, int qs_at, int qh_at>
void signed32_block(const float* x, uint8_t* b) {
  uint8_t u[32];
  store_half(b, quantize_signed32(x, bias, u));
  pack_nibbles32(u, b + qs_at, qh_at > 0 ? b + qh_at : nullptr);
}

/// Q4_1 (15 levels) and Q5_1 (31): d | m | qh (Q5_1) | qs.
template <int levels, int qs_at, int qh_at>
void offset32_block(const float* x, uint8_t* b) {
  uint8_t u[32];
  uint16_t dh, mh;
  quantize_offset32(x, levels, dh, mh, u);
  store_half(b, dh);
  store_half(b + 2, mh);
  pack_nibbles32(u, b + qs_at, qh_at > 0 ? b + qh_at : nullptr);
}

/// The offsets and scales of a K-quant super-block of 256 with offsets
/// that clip nothing: n_sub sub-blocks, x = d sc_j u - dmin m_j, u in [0,
/// levels], sc_j and m_j at most max_int. The offsets come first (m_j
/// rounded up, so -dmin m_j <= min(0, min x_j)), then each sub-block's step
/// need_j, which its levels need to reach its maximum from there; dmin and
/// d are 1/max_int of the largest offset and step, rounded up to f16.
struct unclipped_scales {
  uint16_t d_h, dmin_h;
  float d, dmin;
  int m[16];
  float need[16];
};

unclipped_scales offset_scales(const float* x, int n_sub, int levels, int max_int) {
  const int sub = 256 / n_sub;
  unclipped_scales r;
  float lo[16], hi[16], max_neg = 0, max_need = 0;
  for (int j = 0; j < n_sub; ++j) {
    lo[j] = 0;
    hi[j] = x[sub * j];
    for (int i = 0; i < sub; ++i) {
      lo[j] = std::min(lo[j], x[sub * j + i]);
      hi[j] = std::max(hi[j], x[sub * j + i]);
    }
    max_neg = std::max(max_neg, -lo[j]);
  }
  r.dmin_h = half_at_least(max_neg / float(max_int));
  r.dmin = half_to_float(r.dmin_h);
  for (int j = 0; j < n_sub; ++j) {
    r.m[j] = r.dmin > 0 ? std::min(max_int, int(std::ceil(-lo[j] / r.dmin))) : 0;
    // From the offset as the dequantizer computes it.
    r.need[j] = std::max(0.0f, hi[j] - -r.dmin * float(r.m[j])) / float(levels);
    max_need = std::max(max_need, r.need[j]);
  }
  r.d_h = half_at_least(max_need / float(max_int));
  r.d = half_to_float(r.d_h);
  return r;
}

/// A Q4_K/Q5_K super-block of 256 as 8 sub-blocks of 32: x = d sc_j u -
/// dmin m_j, u in [0, levels], sc_j and m_j 6-bit, with offset_scales'
/// offsets and each scale rounded up so its levels reach the sub-block's
/// maximum: |x - x'| <= (d sc_j) / 2 <= ((range_j + dmin) / levels + d) / 2.
void k_offset_block(const float* x, int levels, uint8_t* b, uint8_t* u) {
  const unclipped_scales k = offset_scales(x, 8, levels, 63);
  const float d = k.d;
  const uint16_t d_h = k.d_h, dmin_h = k.dmin_h;
  const int* m = k.m;
  int sc[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = d > 0 ? std::min(63, int(std::ceil(k.need[j] / d))) : 0;
    const float step = d * float(sc[j]);
    const float inv = step > 0 ? 1.0f / step : 0.0f;
    const float base = -k.dmin * float(m[j]);
    for (int i = 0; i < 32; ++i)
      u[32 * j + i] = uint8_t(clamp_level(nearest((x[32 * j + i] - base) * inv), 0, levels));
  }
  store_half(b, d_h);
  store_half(b + 2, dmin_h);
  // 12 bytes of 6-bit scales and mins, the inverse of k4_scale_min.
  uint8_t* s = b + 4;
  for (int j = 0; j < 4; ++j) {
    s[j] = uint8_t(sc[j] | ((sc[j + 4] >> 4) << 6));
    s[j + 4] = uint8_t(m[j] | ((m[j + 4] >> 4) << 6));
    s[j + 8] = uint8_t((sc[j + 4] & 15) | ((m[j + 4] & 15) << 4));
  }
}

void q4_k_block(const float* x, uint8_t* b) {
  uint8_t u[256];
  k_offset_block(x, 15, b, u);
  uint8_t* qs = b + 16;
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l)
      qs[32 * c + l] = uint8_t(u[64 * c + l] | (u[64 * c + 32 + l] << 4));
}

void q5_k_block(const float* x, uint8_t* b) {
  uint8_t u[256];
  k_offset_block(x, 31, b, u);
  uint8_t* qh = b + 16;
  uint8_t* qs = b + 48;
  std::memset(qh, 0, 32);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) {
      const uint8_t lo = u[64 * c + l], hi = u[64 * c + 32 + l];
      qs[32 * c + l] = uint8_t((lo & 15) | ((hi & 15) << 4));
      qh[l] = uint8_t(qh[l] | ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1)));
    }
}

/// Squared error of n elements as base + step * q, q the nearest level in
/// [lo, hi]; writes q - lo to u when given. The dequantizers compute the
/// same products.
float level_error(const float* x, int n, float step, float base, int lo, int hi, uint8_t* u) {
  const float inv = step != 0 ? 1.0f / step : 0.0f;
  float err = 0;
  for (int i = 0; i < n; ++i) {
    const int q = clamp_level(nearest((x[i] - base) * inv), lo, hi);
    const float e = base + step * float(q) - x[i];
    err += e * e;
    if (u)
      u[i] = uint8_t(q - lo);
  }
  return err;
}

/// Each 16 elements of 256 take a 2-bit level u of one byte of qs[64]:
/// element 128n + 32j + l is bits 2j of qs[32n + l] (Q2_K and Q3_K).
void pack_2bit_levels(const uint8_t* u, uint8_t* qs) {
  std::memset(qs, 0, 64);
  for (int n = 0; n < 2; ++n)
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 32; ++l)
        qs[32 * n + l] = uint8_t(qs[32 * n + l] | ((u[128 * n + 32 * j + l] & 3) << (2 * j)));
}

/// A Q2_K super-block of 256 as 16 sub-blocks of 16: x = d sc_s u - dmin
/// m_s, u in [0, 3], sc_s and m_s 4-bit. As Q4_K (offset_scales), the offsets and scales
/// that clip nothing come first: m0_s rounded up (-dmin m0_s <= min(0, min
/// x_s)), then sc0_s rounded up so its levels reach the sub-block's maximum,
/// every element within half a step d sc0_s <= (range_s + dmin) / 3 + d.
/// Then a few smaller scales and offsets (sc0 - 3 .. sc0, m0 - 2 .. m0),
/// which clip the extremes but may round the rest closer, and the
/// least-squares fit to the best one's levels (rounded down and up) are
/// tried and the one of least squared error kept: a sub-block's RMS error
/// stays within half of d sc0_s.
void q2_k_block(const float* x, uint8_t* b) {
  const unclipped_scales k = offset_scales(x, 16, 3, 15);
  const float d = k.d, dmin = k.dmin;
  const int* m0 = k.m;
  const float* need = k.need;
  uint8_t u[256];
  for (int s = 0; s < 16; ++s) {
    const float* xs = x + 16 * s;
    const int sc0 = d > 0 ? std::min(15, int(std::ceil(need[s] / d))) : 0;
    int best_sc = sc0, best_m = m0[s];
    float best = level_error(xs, 16, d * float(sc0), -dmin * float(m0[s]), 0, 3, nullptr);
    auto consider = [&](int sc, int m) {
      const float err = level_error(xs, 16, d * float(sc), -dmin * float(m), 0, 3, nullptr);
      if (err < best) {
        best = err;
        best_sc = sc;
        best_m = m;
      }
    };
    for (int m = m0[s]; m >= std::max(0, m0[s] - 2); --m)
      for (int sc = sc0; sc >= std::max(0, sc0 - 3); --sc)
        consider(sc, m);
    // The least-squares step and offset for the levels chosen, each
    // rounded down and up to its grid.
    level_error(xs, 16, d * float(best_sc), -dmin * float(best_m), 0, 3, u + 16 * s);
    float su = 0, suu = 0, sx = 0, sxu = 0;
    for (int i = 0; i < 16; ++i) {
      const float ui = u[16 * s + i];
      su += ui;
      suu += ui * ui;
      sx += xs[i];
      sxu += xs[i] * ui;
    }
    const float det = 16 * suu - su * su;
    if (det > 0 && d > 0 && dmin > 0) {
      const float step = (16 * sxu - su * sx) / det, offset = (sx - step * su) / 16;
      for (float sc : {std::floor(step / d), std::ceil(step / d)})
        for (float m : {std::floor(-offset / dmin), std::ceil(-offset / dmin)})
          consider(clamp_level(int(sc), 0, 15), clamp_level(int(m), 0, 15));
    }
    level_error(xs, 16, d * float(best_sc), -dmin * float(best_m), 0, 3, u + 16 * s);
    b[s] = uint8_t(best_sc | (best_m << 4));
  }
  pack_2bit_levels(u, b + 16);
  store_half(b + 80, k.d_h);
  store_half(b + 82, k.dmin_h);
}

/// The scales of 16 sub-blocks of 16 that map each one's element of
/// largest magnitude to level -`bottom`, and the super-block scale d they
/// are integers of, at most `top` (Q3_K and Q6_K): d's f16 bits, rounded up.
uint16_t signed_subblock_scales(const float* x, float bottom, float top, float* scale) {
  float max_scale = 0;
  for (int s = 0; s < 16; ++s) {
    scale[s] = signed_absmax(x + 16 * s, 16) / -bottom;
    max_scale = std::max(max_scale, std::fabs(scale[s]));
  }
  return half_at_least(max_scale / top);
}

/// A Q3_K super-block of 256 as 16 sub-blocks of 16: x = d sc_s q, q in
/// [-4, 3], sc_s 6-bit signed. As Q6_K, each sub-block's scale first maps
/// its element of largest magnitude to -4 and is rounded away from zero
/// against d, so that it clips nothing but the opposite extreme (by at most
/// one step): |x - x'| <= |d sc0_s| <= max|x_s| / 4 + d. Then a few
/// neighbouring scales (|sc0| - 3 .. |sc0| + 1), those that map the largest
/// element to +3 instead and the least-squares fit to the best one's levels
/// are tried, and the one of least squared error kept: a sub-block's RMS
/// error stays within |d sc0_s|.
void q3_k_block(const float* x, uint8_t* b) {
  float scale[16];
  const uint16_t d_h = signed_subblock_scales(x, 4, 31, scale);
  const float d = half_to_float(d_h);
  uint8_t u[256];
  int sc[16];
  for (int s = 0; s < 16; ++s) {
    const float* xs = x + 16 * s;
    const int sign = scale[s] < 0 ? -1 : 1;
    const int mag0 = d > 0 ? std::min(31, int(std::ceil(std::fabs(scale[s]) / d))) : 0;
    // The largest element at +3: a step of max|x_s| / 3, of the other sign.
    const int mag1 = d > 0 ? std::min(31, int(std::ceil(std::fabs(scale[s]) * 4.0f / 3.0f / d))) : 0;
    int best_sc = sign * mag0;
    float best = level_error(xs, 16, d * float(best_sc), 0, -4, 3, nullptr);
    auto consider = [&](int candidate) {
      const float err = level_error(xs, 16, d * float(candidate), 0, -4, 3, nullptr);
      if (err < best) {
        best = err;
        best_sc = candidate;
      }
    };
    for (int mag = std::max(0, mag0 - 3); mag <= std::min(31, mag0 + 1); ++mag)
      consider(sign * mag);
    for (int mag = std::max(0, mag1 - 2); mag <= mag1; ++mag)
      consider(-sign * mag);
    // The least-squares step for the levels chosen, rounded down and up.
    level_error(xs, 16, d * float(best_sc), 0, -4, 3, u + 16 * s);
    float sxq = 0, sqq = 0;
    for (int i = 0; i < 16; ++i) {
      const float q = float(u[16 * s + i]) - 4;
      sxq += xs[i] * q;
      sqq += q * q;
    }
    if (sqq > 0 && d > 0) {
      const float step = sxq / sqq / d;
      consider(clamp_level(int(std::floor(step)), -31, 31));
      consider(clamp_level(int(std::ceil(step)), -31, 31));
    }
    sc[s] = best_sc;
    level_error(xs, 16, d * float(best_sc), 0, -4, 3, u + 16 * s);
  }
  // u = q + 4: the low 2 bits in qs, the third in hmask (bit 4n + j of
  // hmask[l] for element 128n + 32j + l).
  uint8_t* hmask = b;
  std::memset(hmask, 0, 32);
  for (int n = 0; n < 2; ++n)
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 32; ++l)
        hmask[l] = uint8_t(hmask[l] | ((u[128 * n + 32 * j + l] >> 2) << (4 * n + j)));
  pack_2bit_levels(u, b + 32);
  // 16 6-bit scales biased by 32: low nibbles in bytes 0..7 (s and s + 8),
  // the top 2 bits of s in bits 2 (s / 4) of byte 8 + s % 4.
  uint8_t* packed = b + 96;
  std::memset(packed, 0, 12);
  for (int s = 0; s < 16; ++s) {
    const int v = sc[s] + 32;
    packed[s % 8] = uint8_t(packed[s % 8] | ((v & 15) << (s < 8 ? 0 : 4)));
    packed[8 + s % 4] = uint8_t(packed[8 + s % 4] | ((v >> 4) << (2 * (s / 4))));
  }
  store_half(b + 108, d_h);
}

/// 16 sub-blocks of 16: x = d sc_j (u - 32), u in [0, 63], sc_j int8. Each
/// sub-block's scale maps its element of largest magnitude to -32 (as the
/// reference implementation) and is rounded away from zero to 8 bits
/// against d, so |x - x'| <= |d sc_j| <= max|x_j| / 32 + d.
void q6_k_block(const float* x, uint8_t* b) {
  float scale[16];
  const uint16_t d_h = signed_subblock_scales(x, 32, 127, scale);
  const float d = half_to_float(d_h);
  uint8_t u[256];
  auto* sc = reinterpret_cast<int8_t*>(b + 192);
  for (int s = 0; s < 16; ++s) {
    const int magnitude = d > 0 ? std::min(127, int(std::ceil(std::fabs(scale[s]) / d))) : 0;
    sc[s] = int8_t(scale[s] < 0 ? -magnitude : magnitude);
    const float step = d * float(sc[s]);
    const float inv = step != 0 ? 1.0f / step : 0.0f;
    for (int i = 0; i < 16; ++i)
      u[16 * s + i] = uint8_t(clamp_level(nearest(x[16 * s + i] * inv), -32, 31) + 32);
  }
  for (int h = 0; h < 2; ++h) {
    uint8_t* ql = b + 64 * h;
    uint8_t* qh = b + 128 + 32 * h;
    const uint8_t* uh = u + 128 * h;
    for (int l = 0; l < 32; ++l) {
      ql[l] = uint8_t((uh[l] & 15) | ((uh[l + 64] & 15) << 4));
      ql[l + 32] = uint8_t((uh[l + 32] & 15) | ((uh[l + 96] & 15) << 4));
      qh[l] = uint8_t((uh[l] >> 4) | ((uh[l + 32] >> 4) << 2) | ((uh[l + 64] >> 4) << 4) |
                      ((uh[l + 96] >> 4) << 6));
    }
  }
  store_half(b + 208, d_h);
}

template <void (*Block)(const float*, uint8_t*)>
void quantize_blocks(const float* src, uint8_t* dst, int64_t n, const type_info& info) {
  for (int64_t b = 0; b < n / info.block_size; ++b)
    Block(src + b * info.block_size, dst + b * info.block_bytes);
}

uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffff) > 0x7f800000)
    return uint16_t((bits >> 16) | 0x40);  // NaN stays NaN
  bits += 0x7fff + ((bits >> 16) & 1);    // round to nearest, ties to even
  return uint16_t(bits >> 16);
}

} // namespace

bool can_quantize(ggml_type t) {
  switch (t) {
    case ggml_type::f32:
    case ggml_type::f16:
    case ggml_type::bf16:
    case ggml_type::q8_0:
    case ggml_type::q4_0:
    case ggml_type::q4_1:
    case ggml_type::q5_0:
    case ggml_type::q5_1:
    case ggml_type::q2_k:
    case ggml_type::q3_k:
    case ggml_type::q4_k:
    case ggml_type::q5_k:
    case ggml_type::q6_k: return true;
    default: return false;
  }
}

void quantize_row(ggml_type t, const float* src, void* dst, int64_t n) {
  const type_info* info = find_info(t);
  if (!info || !can_quantize(t))
    throw model_error(fmt::format("quantize: ceco cannot quantize to ggml type {} (it quantizes "
                                  "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                                  type_name(t)));
  if (n % info->block_size != 0)
    throw model_error(fmt::format("quantize: a row of {} elements is not a whole number of {} blocks of {}",
                                  n, info->name, info->block_size));
  auto* out = static_cast<uint8_t*>(dst);
  switch (t) {
    case ggml_type::f32: std::memcpy(out, src, size_t(n) * 4); return;
    case ggml_type::f16:
      for (int64_t i = 0; i < n; ++i)
        store_half(out + 2 * i, float_to_half(src[i]));
      return;
    case ggml_type::bf16:
      for (int64_t i = 0; i < n; ++i)
        store_half(out + 2 * i, float_to_bf16(src[i]));
      return;
    case ggml_type::q8_0: quantize_blocks<q8_0_block>(src, out, n, *info); return;
    case ggml_type::q4_0: quantize_blocks<signed32_block<8, 2, 0>>(src, out, n, *info); return;
    case ggml_type::q4_1: quantize_blocks<offset32_block<15, 4, 0>>(src, out, n, *info); return;
    case ggml_type::q5_0: quantize_blocks<signed32_block<16, 6, 2>>(src, out, n, *info); return;
    case ggml_type::q5_1: quantize_blocks<offset32_block<31, 8, 4>>(src, out, n, *info); return;
    case ggml_type::q2_k: quantize_blocks<q2_k_block>(src, out, n, *info); return;
    case ggml_type::q3_k: quantize_blocks<q3_k_block>(src, out, n, *info); return;
    case ggml_type::q4_k: quantize_blocks<q4_k_block>(src, out, n, *info); return;
    case ggml_type::q5_k: quantize_blocks<q5_k_block>(src, out, n, *info); return;
    case ggml_type::q6_k: quantize_blocks<q6_k_block>(src, out, n, *info); return;
    default: return;  // refused above
  }
}

// -- file types -----------------------------------------------------------------

namespace {

using wt = ggml_type;

// llama.cpp's llama_ftype numbers (general.file_type). Q4_K and Q5_K, one
// type for every matrix, take those of the mixes nearest them.
const file_type file_types[] = {
  {"F32", wt::f32, mix_rule::none, 0},        {"F16", wt::f16, mix_rule::none, 1},
  {"BF16", wt::bf16, mix_rule::none, 32},     {"Q8_0", wt::q8_0, mix_rule::none, 7},
  {"Q4_0", wt::q4_0, mix_rule::none, 2},      {"Q4_1", wt::q4_1, mix_rule::none, 3},
  {"Q5_0", wt::q5_0, mix_rule::none, 8},      {"Q5_1", wt::q5_1, mix_rule::none, 9},
  {"Q2_K", wt::q2_k, mix_rule::q2_k, 10},     {"Q3_K_S", wt::q3_k, mix_rule::none, 11},
  {"Q3_K_M", wt::q3_k, mix_rule::q3_k_m, 12}, {"Q3_K_L", wt::q3_k, mix_rule::q3_k_l, 13},
  {"Q4_K", wt::q4_k, mix_rule::none, 14},     {"Q4_K_S", wt::q4_k, mix_rule::q4_k_s, 14},
  {"Q4_K_M", wt::q4_k, mix_rule::q4_k_m, 15}, {"Q5_K", wt::q5_k, mix_rule::none, 16},
  {"Q5_K_S", wt::q5_k, mix_rule::none, 16},   {"Q5_K_M", wt::q5_k, mix_rule::q5_k_m, 17},
  {"Q6_K", wt::q6_k, mix_rule::none, 18}};

/// The reference implementation's use_more_bits: the first and last eighth
/// of the layers, and every third layer between them.
bool use_more_bits(int il, int n_layer) {
  return il < n_layer / 8 || il >= 7 * n_layer / 8 || (il - n_layer / 8) % 3 == 2;
}

bool same_name(const std::string& a, const std::string& b) {
  if (a.size() != b.size())
    return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::toupper(static_cast<unsigned char>(a[i])) != b[i])
      return false;
  return true;
}

/// The mix's type for a matrix of a LLaMA block, or `base`.
ggml_type mixed_type(mix_rule mix, ggml_type base, matrix_role role, int il, int n_layer, int gqa) {
  switch (role) {
    case matrix_role::attn_v:
      switch (mix) {
        case mix_rule::q2_k: return gqa >= 4 ? wt::q4_k : wt::q3_k;
        case mix_rule::q3_k_m: return il < 2 ? wt::q5_k : wt::q4_k;
        case mix_rule::q3_k_l: return wt::q5_k;
        case mix_rule::q4_k_s: return il < 4 ? wt::q5_k : base;
        case mix_rule::q4_k_m:
        case mix_rule::q5_k_m: return use_more_bits(il, n_layer) ? wt::q6_k : base;
        default: return base;
      }
    case matrix_role::ffn_down:
      switch (mix) {
        case mix_rule::q2_k: return wt::q3_k;
        case mix_rule::q3_k_m: return il < n_layer / 16 ? wt::q5_k : wt::q4_k;
        case mix_rule::q3_k_l: return wt::q5_k;
        case mix_rule::q4_k_s: return il < n_layer / 8 ? wt::q5_k : base;
        case mix_rule::q4_k_m:
        case mix_rule::q5_k_m: return use_more_bits(il, n_layer) ? wt::q6_k : base;
        default: return base;
      }
    case matrix_role::attn_output:
      switch (mix) {
        case mix_rule::q2_k: return wt::q3_k;
        case mix_rule::q3_k_m: return wt::q4_k;
        case mix_rule::q3_k_l: return wt::q5_k;
        default: return base;
      }
    default: return base;
  }
}

} // namespace

std::string file_type_names() {
  std::string out;
  for (const auto& t : file_types)
    out += fmt::format("{}{}", out.empty() ? "" : ", ", t.name);
  return out;
}

file_type parse_file_type(const std::string& name, const std::string& flag) {
  for (const auto& t : file_types)
    if (same_name(name, t.name))
      return t;
  throw model_error(fmt::format("{}: unknown weight type '{}', expected one of {}", flag, name,
                                file_type_names()));
}

ggml_type matrix_type(const file_type& ft, matrix_role role, int il, int n_layer, int64_t cols,
                      int gqa) {
  ggml_type t = ft.base;
  const bool block_type = t != wt::f32 && t != wt::f16 && t != wt::bf16;
  if (role == matrix_role::output && block_type && t != wt::q8_0)
    t = wt::q6_k;
  else if (role != matrix_role::output)
    t = mixed_type(ft.mix, t, role, il, n_layer, gqa);
  if (cols % 256 != 0) {  // the reference's fallbacks for rows K-quants cannot hold
    switch (t) {
      case wt::q2_k:
      case wt::q3_k: t = wt::q4_0; break;  // the reference's IQ4_NL, which ceco lacks
      case wt::q4_k: t = wt::q5_0; break;
      case wt::q5_k: t = wt::q5_1; break;
      case wt::q6_k: t = wt::q8_0; break;
      default: break;
    }
  }
  if (cols % find_info(t)->block_size != 0)
    t = wt::f16;
  return t;
}

} // namespace ceco::quant
