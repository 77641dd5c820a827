#include "model/quant.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

#include "model/config.hpp"
#include "model/half.hpp"
#include "model/quant_layouts.hpp"
#include "model/quant_avx2.hpp"
#include "model/quant_avx512.hpp"
#include "model/quant_blocks.hpp"
#include "model/quant_gemm.hpp"
#include "model/quant_kernels.hpp"
#include "model/quant_neon.hpp"

namespace ceco::quant {

namespace {

// x86-64: each loop also compiled for AVX2/FMA, picked at run time. GCC has
// no target_clones for aarch64, whose baseline already has NEON.
#if defined(__x86_64__)
#define CECO_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CECO_CLONES
#endif

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

// -- dispatch -------------------------------------------------------------------

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

/// A weight type's kernels: the portable ones, and each instruction set's
/// dot product where its file has one (null otherwise: the next level
/// below serves).
struct kernels {
  type_info info;
  dot_fn portable_dot;
  dequantize_fn dequantize;
  dot_fn avx2_dot = nullptr;     // AVX2/FMA
  dot_fn avx512_dot = nullptr;   // AVX-512 and VNNI
  dot_fn neon_dot = nullptr;     // aarch64 Advanced SIMD
  dot_fn dotprod_dot = nullptr;  // aarch64 Advanced SIMD with SDOT
  // Four rows at once, where the level's file has them: each row's floats
  // are its single-row kernel's.
  dot4_fn avx2_dot4 = nullptr;
  dot4_fn avx512_dot4 = nullptr;

  kernels(type_info i, dot_fn portable, dequantize_fn dq, ggml_type t)
    : info(i), portable_dot(portable), dequantize(dq), avx2_dot(avx2::dot(t)),
      avx512_dot(avx512::dot(t)), neon_dot(neon::dot(t)), dotprod_dot(neon::dot_dotprod(t)),
      avx2_dot4(avx2::dot4(t)), avx512_dot4(avx512::dot4(t)) {}

  dot_fn dot() const;
  /// The four-row kernel of the level dot() picks; null where it has none.
  dot4_fn dot4() const;
};

bool cpu_has_avx2() {
#if defined(__x86_64__)
  return avx2::available();
#else
  return false;
#endif
}

/// Checked here, in a file compiled for plain x86-64: the AVX-512 file
/// runs only after this says yes.
bool cpu_has_avx512() {
#if defined(__x86_64__)
  static const bool has = cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512vnni") &&
                          avx512::dot(ggml_type::q8_0) != nullptr;  // built with them
  return has;
#else
  return false;
#endif
}

kernel_level level_from_environment() {
  const kernel_level best = best_kernel_level();
  const char* name = std::getenv("CECO_KERNELS");
  if (!name || !*name)
    return best;
  for (kernel_level l : {kernel_level::portable, kernel_level::avx2, kernel_level::avx512,
                         kernel_level::neon, kernel_level::dotprod}) {
    if (std::strcmp(name, kernel_level_name(l)) != 0)
      continue;
    if (kernel_level_supported(l))
      return l;
    std::fprintf(stderr, "ceco: CECO_KERNELS=%s: this CPU lacks it; using %s\n", name,
                 kernel_level_name(best));
    return best;
  }
  std::fprintf(stderr,
               "ceco: CECO_KERNELS=%s is none of portable, avx2, avx512, neon, dotprod; using %s\n",
               name, kernel_level_name(best));
  return best;
}

/// -1 until the first dot product asks (CECO_KERNELS read then).
std::atomic<int> level{-1};

kernel_level current_level() {
  int l = level.load(std::memory_order_relaxed);
  if (l < 0) {
    static const int from_environment = int(level_from_environment());
    int unset = -1;
    level.compare_exchange_strong(unset, from_environment);
    l = level.load(std::memory_order_relaxed);
  }
  return kernel_level(l);
}

dot_fn kernels::dot() const {
  switch (current_level()) {
    case kernel_level::avx512:
      if (avx512_dot)
        return avx512_dot;
      [[fallthrough]];
    case kernel_level::avx2:
      return avx2_dot ? avx2_dot : portable_dot;
    case kernel_level::dotprod:
      if (dotprod_dot)
        return dotprod_dot;
      [[fallthrough]];
    case kernel_level::neon:
      return neon_dot ? neon_dot : portable_dot;
    case kernel_level::portable: break;
  }
  return portable_dot;
}

dot4_fn kernels::dot4() const {
  switch (current_level()) {
    case kernel_level::avx512:
      if (avx512_dot)
        return avx512_dot4;
      [[fallthrough]];
    case kernel_level::avx2:
      return avx2_dot ? avx2_dot4 : nullptr;
    default: return nullptr;
  }
}

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
                           dequantize_f32, ggml_type::f32};
  static const kernels f16{{"F16", 1, 2, ggml_type::f32},
                           [](const uint8_t* w, const void* x, int64_t n) {
                             return dot_f16(w, static_cast<const float*>(x), n);
                           },
                           dequantize_f16, ggml_type::f16};
  static const kernels bf16{{"BF16", 1, 2, ggml_type::f32},
                            [](const uint8_t* w, const void* x, int64_t n) {
                              return dot_bf16(w, static_cast<const float*>(x), n);
                            },
                            dequantize_bf16, ggml_type::bf16};
  static const kernels q4_0{block_info<q4_0_layout>("Q4_0"), dot32<q4_0_layout>,
                            dequantize_layout<q4_0_layout>, ggml_type::q4_0};
  static const kernels q4_1{block_info<q4_1_layout>("Q4_1"), dot32<q4_1_layout>,
                            dequantize_layout<q4_1_layout>, ggml_type::q4_1};
  static const kernels q5_0{block_info<q5_0_layout>("Q5_0"), dot32<q5_0_layout>,
                            dequantize_layout<q5_0_layout>, ggml_type::q5_0};
  static const kernels q5_1{block_info<q5_1_layout>("Q5_1"), dot32<q5_1_layout>,
                            dequantize_layout<q5_1_layout>, ggml_type::q5_1};
  static const kernels q8_0{block_info<q8_0_layout>("Q8_0"), dot32<q8_0_layout>,
                            dequantize_layout<q8_0_layout>, ggml_type::q8_0};
  static const kernels q2_k{block_info<q2_k_layout>("Q2_K"), dot256<q2_k_layout>,
                            dequantize_layout<q2_k_layout>, ggml_type::q2_k};
  static const kernels q3_k{block_info<q3_k_layout>("Q3_K"), dot256<q3_k_layout>,
                            dequantize_layout<q3_k_layout>, ggml_type::q3_k};
  static const kernels q4_k{block_info<q4_k_layout>("Q4_K"), dot256<q4_k_layout>,
                            dequantize_layout<q4_k_layout>, ggml_type::q4_k};
  static const kernels q5_k{block_info<q5_k_layout>("Q5_K"), dot256<q5_k_layout>,
                            dequantize_layout<q5_k_layout>, ggml_type::q5_k};
  static const kernels q6_k{block_info<q6_k_layout>("Q6_K"), dot256<q6_k_layout>,
                            dequantize_layout<q6_k_layout>, ggml_type::q6_k};
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

} // namespace

const char* kernel_level_name(kernel_level l) {
  switch (l) {
    case kernel_level::portable: return "portable";
    case kernel_level::avx2: return "avx2";
    case kernel_level::avx512: return "avx512";
    case kernel_level::neon: return "neon";
    case kernel_level::dotprod: return "dotprod";
  }
  return "?";
}

bool kernel_level_supported(kernel_level l) {
  switch (l) {
    case kernel_level::portable: return true;
    case kernel_level::avx2: return cpu_has_avx2();
    case kernel_level::avx512: return cpu_has_avx512();
    case kernel_level::neon: return neon::available();
    case kernel_level::dotprod: return neon::has_dotprod();
  }
  return false;
}

kernel_level best_kernel_level() {
  return cpu_has_avx512()       ? kernel_level::avx512
         : cpu_has_avx2()       ? kernel_level::avx2
         : neon::has_dotprod()  ? kernel_level::dotprod
         : neon::available()    ? kernel_level::neon
                                : kernel_level::portable;
}

kernel_level active_kernel_level() {
  return current_level();
}

void set_kernel_level(kernel_level l) {
  if (!kernel_level_supported(l))
    throw model_error(fmt::format("kernel level {} is not supported by this CPU (best: {})",
                                  kernel_level_name(l), kernel_level_name(best_kernel_level())));
  current_level();  // the environment read first, so that it cannot overwrite l later
  level.store(int(l), std::memory_order_relaxed);
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

void dot_rows4(ggml_type weight, const void* const w_rows[4], const void* activation,
               int64_t cols, float out[4]) {
  const kernels& k = kernels_of(weight);
  const uint8_t* w[4];
  for (int r = 0; r < 4; ++r)
    w[r] = static_cast<const uint8_t*>(w_rows[r]);
  if (dot4_fn four = k.dot4()) {
    four(w, activation, cols, out);
    return;
  }
  const dot_fn one = k.dot();
  for (int r = 0; r < 4; ++r)
    out[r] = one(w[r], activation, cols);
}

bool has_dot4(ggml_type weight) {
  return kernels_of(weight).dot4() != nullptr;
}

dot_fn active_dot(ggml_type t) {
  return kernels_of(t).dot();
}

dot4_fn active_dot4(ggml_type t) {
  return kernels_of(t).dot4();
}

const gemm::kernels* active_gemm(ggml_type t) {
  switch (current_level()) {
    case kernel_level::avx512: return avx512::gemm_kernels(t);
    case kernel_level::avx2: return avx2::gemm_kernels(t);
    case kernel_level::dotprod: return neon::gemm_kernels_dotprod(t);
    default: return nullptr;
  }
}

bool matmat_is_integer(ggml_type t) {
  return !is_float(t) && find_kernels(t) && active_gemm(t) != nullptr;
}

dequantize_fn dequantizer(ggml_type t) {
  return kernels_of(t).dequantize;
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

} // namespace ceco::quant
