#pragma once

// The integer matrix product of prefill and catch-up (quant::matmat): a
// weight matrix in a GGML type times n activation rows quantized to 8 bits,
// formed with 8-bit integer products as the decode path's dot products are,
// but with each weight unpacked once for all n rows instead of once per row.
// Internal to model/.
//
// The weights are repacked a group of 16 rows at a time into a scratch
// buffer the caller owns: per chunk of 32 columns, 8 steps of 64 bytes, step
// k holding bytes 4k..4k+3 of each of the 16 rows (row i at bytes 4i..4i+3),
// each byte the unpacked value, made unsigned on x86 (as vpdpbusd and
// vpmaddubsw take it), signed on aarch64 (as SDOT takes it); then, per sub-block of
// the type in the chunk, the 16 rows' scales and their 16 offsets as floats
// (model/quant_gemm_repack.hpp). One instruction then forms four products
// for each of 16 rows (vpdpbusd) or 4 rows (SDOT by lane) against the same
// four activation bytes, and a group's sums come out as vectors of rows per
// activation row, with no horizontal sums. The kernels:
// model/quant_gemm_avx512.cpp (AVX-512/VNNI), quant_gemm_avx2.cpp (AVX2's
// vpmaddubsw, which needs the bytes small: stored as value - min_value, and
// Q8_0 signed, multiplied by sign) and quant_gemm_neon.cpp (SDOT).

#include <cstddef>
#include <cstdint>

#include "model/quant.hpp"

namespace ceco::quant::gemm {

/// 32 activations x ≈ d * q, q in -127..127, with the sums the products
/// need: the offsets of the types that have them multiply sum(q), and on
/// x86 storing weights as q_w + 128 adds 128 * sum(q) to every integer
/// product, which the kernels start their sums at minus.
struct act_block {
  int8_t q[32];
  float d;
  float sum32;              // sum(q) over the 32
  float sum16[2];           // over each 16 (types with sub-blocks of 16)
  int32_t neg128_sum32;     // -128 * sum(q)
  int32_t neg128_sum16[2];  // -128 * sum(q) over each 16
  int32_t unused;
};
static_assert(sizeof(act_block) == 64);

/// Rows repacked together.
constexpr int64_t group_rows = 16;

/// Bytes of scratch one repacked group needs (any type), 64 more than the
/// layout, so that the caller can align it to 64 bytes.
inline size_t group_scratch_bytes(int64_t cols) {
  return size_t(cols / 32) * (512 + 2 * 128) + 64;
}

/// One weight type's kernels.
struct kernels {
  /// x[cols] into cols / 32 blocks.
  void (*quantize)(const float* x, act_block* out, int64_t cols);
  /// y[j * w.rows + r] = W[r] · act row j for r in [r0, r1) and j in
  /// [0, n); act row j is act[j * (w.cols / 32) ...]. r0 is a multiple of
  /// group_rows; scratch (64-byte aligned) holds group_scratch_bytes.
  void (*rows)(const matrix& w, int64_t r0, int64_t r1, const act_block* act, int64_t n,
               float* y, uint8_t* scratch);
};

} // namespace ceco::quant::gemm

namespace ceco::quant::avx512 {

/// The AVX-512/VNNI kernels of weight type t; null for a type without them
/// or where this build has no AVX-512 kernels. Call only where the CPU has
/// AVX-512 F, BW, VL and VNNI.
const gemm::kernels* gemm_kernels(ggml_type t);

} // namespace ceco::quant::avx512

namespace ceco::quant::avx2 {

/// The AVX2 kernels of weight type t; null for a type without them or on
/// another architecture.
/// Call only where the CPU has AVX2, FMA and F16C.
const gemm::kernels* gemm_kernels(ggml_type t);

} // namespace ceco::quant::avx2

namespace ceco::quant::neon {

/// The SDOT kernels of weight type t; null for a type without them or on
/// another architecture. Call only where the CPU has the dot-product
/// extension (neon::has_dotprod).
const gemm::kernels* gemm_kernels_dotprod(ggml_type t);

} // namespace ceco::quant::neon
