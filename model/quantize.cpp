// Quantizing f32 rows into the GGML block layouts of model/quant.cpp, and
// the type each matrix of a model gets under a file type (llama-quantize's
// rules). The dequantizers of quant.cpp are the specification: every block
// written here decodes there to within one quantization step of the input.
//
// Round to nearest against per-block scales, no search. Every scale is
// rounded to f16 *away from zero* before the weights are quantized against
// it, so the levels still reach the block's extreme values and no element
// is clamped by more than the bound each function states.

#include "model/quantize.hpp"

#include <algorithm>
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

/// A Q4_K/Q5_K super-block of 256 as 8 sub-blocks of 32: x = d sc_j u -
/// dmin m_j, u in [0, levels], sc_j and m_j 6-bit. The offsets are fixed
/// first (m_j rounded up, so -dmin m_j <= min(0, min x_j)), then each scale
/// is rounded up so its levels reach the sub-block's maximum: |x - x'| <=
/// (d sc_j) / 2 <= ((range_j + dmin) / levels + d) / 2.
void k_offset_block(const float* x, int levels, uint8_t* b, uint8_t* u) {
  float lo[8], hi[8];
  float max_neg = 0;
  for (int j = 0; j < 8; ++j) {
    lo[j] = 0;
    hi[j] = x[32 * j];
    for (int i = 0; i < 32; ++i) {
      lo[j] = std::min(lo[j], x[32 * j + i]);
      hi[j] = std::max(hi[j], x[32 * j + i]);
    }
    max_neg = std::max(max_neg, -lo[j]);
  }
  const uint16_t dmin_h = half_at_least(max_neg / 63.0f);
  const float dmin = half_to_float(dmin_h);
  int m[8];
  float base[8], need[8], max_need = 0;
  for (int j = 0; j < 8; ++j) {
    m[j] = dmin > 0 ? std::min(63, int(std::ceil(-lo[j] / dmin))) : 0;
    base[j] = -dmin * float(m[j]);  // as the dequantizer computes the offset
    need[j] = std::max(0.0f, hi[j] - base[j]) / float(levels);
    max_need = std::max(max_need, need[j]);
  }
  const uint16_t d_h = half_at_least(max_need / 63.0f);
  const float d = half_to_float(d_h);
  int sc[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = d > 0 ? std::min(63, int(std::ceil(need[j] / d))) : 0;
    const float step = d * float(sc[j]);
    const float inv = step > 0 ? 1.0f / step : 0.0f;
    for (int i = 0; i < 32; ++i)
      u[32 * j + i] = uint8_t(clamp_level(nearest((x[32 * j + i] - base[j]) * inv), 0, levels));
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

/// 16 sub-blocks of 16: x = d sc_j (u - 32), u in [0, 63], sc_j int8. Each
/// sub-block's scale maps its element of largest magnitude to -32 (as the
/// reference implementation) and is rounded away from zero to 8 bits
/// against d, so |x - x'| <= |d sc_j| <= max|x_j| / 32 + d.
void q6_k_block(const float* x, uint8_t* b) {
  float scale[16], max_scale = 0;
  for (int s = 0; s < 16; ++s) {
    scale[s] = signed_absmax(x + 16 * s, 16) / -32.0f;
    max_scale = std::max(max_scale, std::fabs(scale[s]));
  }
  const uint16_t d_h = half_at_least(max_scale / 127.0f);
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
                                  "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K)",
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
    case ggml_type::q4_k: quantize_blocks<q4_k_block>(src, out, n, *info); return;
    case ggml_type::q5_k: quantize_blocks<q5_k_block>(src, out, n, *info); return;
    case ggml_type::q6_k: quantize_blocks<q6_k_block>(src, out, n, *info); return;
    default: return;  // refused above
  }
}

// -- file types -----------------------------------------------------------------

namespace {

struct named_file_type {
  const char* name;
  ggml_type base;
  bool mixed;
};

constexpr named_file_type file_types[] = {
  {"F32", ggml_type::f32, false},   {"F16", ggml_type::f16, false},
  {"BF16", ggml_type::bf16, false}, {"Q8_0", ggml_type::q8_0, false},
  {"Q4_0", ggml_type::q4_0, false}, {"Q4_1", ggml_type::q4_1, false},
  {"Q5_0", ggml_type::q5_0, false}, {"Q5_1", ggml_type::q5_1, false},
  {"Q4_K", ggml_type::q4_k, false}, {"Q5_K", ggml_type::q5_k, false},
  {"Q6_K", ggml_type::q6_k, false}, {"Q4_K_M", ggml_type::q4_k, true},
  {"Q5_K_M", ggml_type::q5_k, true}};

/// The reference implementation's use_more_bits: the first and last eighth
/// of the layers, and every third layer between them.
bool use_more_bits(int il, int n_layer) {
  return il < n_layer / 8 || il >= 7 * n_layer / 8 || (il - n_layer / 8) % 3 == 2;
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
    if (name == t.name)
      return {t.name, t.base, t.mixed};
  throw model_error(fmt::format("{}: unknown weight type '{}', expected one of {}", flag, name,
                                file_type_names()));
}

ggml_type matrix_type(const file_type& ft, matrix_role role, int il, int n_layer, int64_t cols) {
  ggml_type t = ft.base;
  const bool block_type = t != ggml_type::f32 && t != ggml_type::f16 && t != ggml_type::bf16;
  if (role == matrix_role::output && block_type && t != ggml_type::q8_0)
    t = ggml_type::q6_k;
  else if (ft.mixed && (role == matrix_role::attn_v || role == matrix_role::ffn_down) &&
           use_more_bits(il, n_layer))
    t = ggml_type::q6_k;
  if (cols % 256 != 0) {  // the reference's fallbacks for rows K-quants cannot hold
    if (t == ggml_type::q4_k)
      t = ggml_type::q5_0;
    else if (t == ggml_type::q5_k)
      t = ggml_type::q5_1;
    else if (t == ggml_type::q6_k)
      t = ggml_type::q8_0;
  }
  if (cols % find_info(t)->block_size != 0)
    t = ggml_type::f16;
  return t;
}

} // namespace ceco::quant
