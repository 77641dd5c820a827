#pragma once

// The f16 rows of a KV cache (IEEE half bits, 2 bytes a value): conversion
// into them and the two passes of one-token attention that read them. Each
// takes the instruction set of quant::active_kernel_level(): F16C with
// AVX2/FMA at the avx2 and avx512 levels, NEON at neon and dotprod, plain
// C++ (model/half.hpp) at portable. No torch: the aarch64 kernel test
// (test/aarch64) builds this file alone.

#include <cstdint>

namespace ceco::kernels {

/// dst[i] = src[i] rounded to the nearest f16 (ties to even).
void store_f16(uint16_t* dst, const float* src, int64_t n);
/// dst[i] = the f16 src[i] as a float (exact).
void load_f16(float* dst, const uint16_t* src, int64_t n);

/// Heads [h0, h1) of one query q [n_head * head_dim] against n_pos cached
/// keys k [n_pos, n_head_kv * head_dim]: scores[h * n_pos + t] = scale ·
/// q_h · k_t of h's key/value head. Position-major: each key row is read
/// once for all these heads.
void f16_scores(int64_t h0, int64_t h1, const float* q, const uint16_t* k, int64_t n_pos,
                int64_t n_head, int64_t n_head_kv, int64_t head_dim, float scale, float* scores);
/// Heads [h0, h1) of out [n_head * head_dim] = Σ_t scores[h * n_pos + t] ·
/// weight_of[h] · v_t of h's key/value head, over values v [n_pos,
/// n_head_kv * head_dim]; out's rows of those heads are overwritten.
void f16_weighted_values(int64_t h0, int64_t h1, float* out, const uint16_t* v,
                         const float* scores, const float* weight_of, int64_t n_pos,
                         int64_t n_head, int64_t n_head_kv, int64_t head_dim);

} // namespace ceco::kernels
