#pragma once

// Plain loops for the one-token decode path on CPU, where per-op dispatch
// in libtorch costs more than the arithmetic at small sizes. Reductions are
// vectorised with `omp simd` and cloned for AVX2/FMA at run time.

#include <cstdint>

namespace ceco::kernels {

/// y[rows] = W[rows, cols] · x[cols]; split over threads when large.
void matvec(const float* w, const float* x, float* y, int64_t rows, int64_t cols);
/// y[n, rows]: row j is W[rows, cols] · x[j] for each of the n inputs
/// x[n, cols]. Reads each block of W once for all inputs; each output row is
/// reduced by the same code as matvec's.
void matmat(const float* w, const float* x, float* y, int64_t n, int64_t rows, int64_t cols);
/// out = w ⊙ x / sqrt(mean(x²) + eps)
void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps);
/// Rotates pairs of each head by the angle whose cos and sin are cos[i],
/// sin[i]: v[h*head_dim + 2i, +1], or with `halves` v[h*head_dim + i] and
/// v[h*head_dim + i + head_dim/2].
void rope(float* v, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin,
          bool halves = false);
/// Causal attention of one query position over n_pos cached positions.
/// q: [n_head * head_dim]; k, v: [n_pos, n_head_kv * head_dim];
/// out: [n_head * head_dim]; scores: n_head * (n_pos + 1) floats of scratch.
void attention(float* out, const float* q, const float* k, const float* v, int64_t n_pos,
               int64_t n_head, int64_t n_head_kv, int64_t head_dim, float* scores);
/// The same over an f16 cache (IEEE half bits): the same operations, each
/// key and value converted to float as it is read (model/kv_f16.hpp).
void attention(float* out, const float* q, const uint16_t* k, const uint16_t* v, int64_t n_pos,
               int64_t n_head, int64_t n_head_kv, int64_t head_dim, float* scores);
/// The same as the reference implementation's CPU flash attention over an
/// f16 cache: q is rounded to f16, each score is a dot product in 4 × 8 f32
/// lanes, and the weighted values accumulate in f16 under an online
/// softmax. k, v: f16 as in attention(); scratch: 2 * head_dim floats.
void attention_f16(float* out, const float* q, const uint16_t* k, const uint16_t* v,
                   int64_t n_pos, int64_t n_head, int64_t n_head_kv, int64_t head_dim,
                   float* scratch);
/// x[i] = the nearest f16 value of x[i] (ties to even).
void round_to_f16(float* x, int64_t n);
/// a = silu(a) ⊙ b
void swiglu(float* a, const float* b, int64_t n);
/// x += y
void add(float* x, const float* y, int64_t n);

} // namespace ceco::kernels
