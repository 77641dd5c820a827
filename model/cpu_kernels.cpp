#include "model/cpu_kernels.hpp"

#include <algorithm>
#include <cmath>

#include "model/compute_threads.hpp"
#include "model/half.hpp"
#include "model/kv_f16.hpp"

#include <ATen/Parallel.h>

namespace ceco::kernels {

namespace {

#if defined(__x86_64__)
#define CECO_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define CECO_CLONES  // aarch64: no target_clones in GCC; the baseline has NEON
#endif

CECO_CLONES
void matvec_rows(const float* w, const float* x, float* y, int64_t r0, int64_t r1,
                 int64_t cols) {
  // Four rows at a time share each load of x. They are taken a quarter of
  // the range apart (rows i, i + q, i + 2q, i + 3q), so that the weights
  // are read as four streams: a core keeps few cache misses in flight per
  // stream, and one stream leaves memory bandwidth unused.
  const int64_t quarter = (r1 - r0) / 4;
  for (int64_t i = 0; i < quarter; ++i) {
    const int64_t r = r0 + i;
    const float* a = w + r * cols;
    const float* b = a + quarter * cols;
    const float* c = b + quarter * cols;
    const float* d = c + quarter * cols;
    float sa = 0, sb = 0, sc = 0, sd = 0;
#pragma omp simd reduction(+ : sa, sb, sc, sd)
    for (int64_t i = 0; i < cols; ++i) {
      sa += a[i] * x[i];
      sb += b[i] * x[i];
      sc += c[i] * x[i];
      sd += d[i] * x[i];
    }
    y[r] = sa;
    y[r + quarter] = sb;
    y[r + 2 * quarter] = sc;
    y[r + 3 * quarter] = sd;
  }
  for (int64_t r = r0 + 4 * quarter; r < r1; ++r) {
    const float* a = w + r * cols;
    float s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < cols; ++i)
      s += a[i] * x[i];
    y[r] = s;
  }
}

// Inlined into each clone of their callers: a head is a few dozen values,
// where a call through the clones' dispatch would cost more than the loop.
inline __attribute__((always_inline)) float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i)
    s += a[i] * b[i];
  return s;
}

inline __attribute__((always_inline)) void axpy(float* y, float a, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i)
    y[i] += a * x[i];
}

// Below this many multiply-adds a thread hand-off costs more than it saves.
constexpr int64_t parallel_min_work = 1 << 16;

} // namespace

namespace {

/// Rows [r0, r1) of matmat, in blocks that stay in cache while every input
/// passes over them. Blocks start at multiples of 4 rows, as matvec's do,
/// so each row is reduced by the same code.
void matmat_rows(const float* w, const float* x, float* y, int64_t n, int64_t rows,
                 int64_t r0, int64_t r1, int64_t cols) {
  // One input reuses nothing: one block, read as matvec_rows' four streams.
  const int64_t block =
    n == 1 ? r1 - r0
           : std::max<int64_t>(4, (int64_t(1) << 14) / std::max<int64_t>(1, cols) / 4 * 4);
  for (int64_t b0 = r0; b0 < r1; b0 += block) {
    const int64_t b1 = std::min(r1, b0 + block);
    for (int64_t j = 0; j < n; ++j)
      matvec_rows(w, x + j * cols, y + j * rows, b0, b1, cols);
  }
}

} // namespace

void matmat(const float* w, const float* x, float* y, int64_t n, int64_t rows, int64_t cols) {
  if (n * rows * cols < parallel_min_work || at::get_num_threads() <= 1) {
    matmat_rows(w, x, y, n, rows, 0, rows, cols);
    return;
  }
  // Row ranges of a multiple of 4 rows: the same rows take matvec_rows'
  // one-row tail whatever the thread count.
  parallel_ranges(rows, at::get_num_threads(), 4, [&](int64_t r0, int64_t r1) {
    matmat_rows(w, x, y, n, rows, r0, r1, cols);
  });
}

void matvec(const float* w, const float* x, float* y, int64_t rows, int64_t cols) {
  matmat(w, x, y, 1, rows, cols);
}

void rmsnorm(float* out, const float* x, const float* w, int64_t n, float eps) {
  // The squares summed in double, as the reference implementation does.
  double ss = 0;
  for (int64_t i = 0; i < n; ++i)
    ss += double(x[i] * x[i]);
  const float inv = 1.0f / std::sqrt(float(ss / double(n) + double(eps)));
  for (int64_t i = 0; i < n; ++i)
    out[i] = w[i] * (x[i] * inv);
}

void rope(float* v, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin,
          bool halves) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* p = v + h * head_dim;
    if (halves) {
      for (int64_t i = 0; i < half; ++i) {
        float a = p[i], b = p[i + half];
        p[i] = a * cos[i] - b * sin[i];
        p[i + half] = a * sin[i] + b * cos[i];
      }
      continue;
    }
    for (int64_t i = 0; i < head_dim / 2; ++i) {
      float a = p[2 * i], b = p[2 * i + 1];
      p[2 * i] = a * cos[i] - b * sin[i];
      p[2 * i + 1] = a * sin[i] + b * cos[i];
    }
  }
}

namespace {

/// Each head h of [h0, h1): its scores [n_pos] at scores + h * n_pos made
/// exp(score - max), and 1 / their sum into weight_of[h].
inline __attribute__((always_inline)) void softmax_heads(int64_t h0, int64_t h1, float* scores,
                                                         int64_t n_pos, float* weight_of) {
  for (int64_t h = h0; h < h1; ++h) {
    float* sh = scores + h * n_pos;
    float m = -INFINITY;
    for (int64_t t = 0; t < n_pos; ++t)
      m = std::max(m, sh[t]);
    float sum = 0;
    for (int64_t t = 0; t < n_pos; ++t) {
      sh[t] = std::exp(sh[t] - m);
      sum += sh[t];
    }
    weight_of[h] = 1.0f / sum;
  }
}

/// Heads [h0, h1) of attention(), in position-major passes: each cached
/// row of keys, then of values, is read once for all these heads, in
/// order, as a single stream. Each head's scores, softmax and weighted sum
/// are the same operations in the same order as a head-by-head loop.
CECO_CLONES
void attend_heads(int64_t h0, int64_t h1, float* out, const float* q, const float* k,
                  const float* v, int64_t n_pos, int64_t n_head, int64_t n_head_kv,
                  int64_t head_dim, float* scores) {
  const int64_t kv_stride = n_head_kv * head_dim;
  const int64_t group = n_head / n_head_kv;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  float* weight_of = scores + n_head * n_pos;  // [n_head]: 1 / each head's softmax sum
  for (int64_t t = 0; t < n_pos; ++t) {
    const float* kt = k + t * kv_stride;
    for (int64_t h = h0; h < h1; ++h)
      scores[h * n_pos + t] = dot(q + h * head_dim, kt + (h / group) * head_dim, head_dim) * scale;
  }
  softmax_heads(h0, h1, scores, n_pos, weight_of);
  std::fill(out + h0 * head_dim, out + h1 * head_dim, 0.0f);
  for (int64_t t = 0; t < n_pos; ++t) {
    const float* vt = v + t * kv_stride;
    for (int64_t h = h0; h < h1; ++h)
      axpy(out + h * head_dim, scores[h * n_pos + t] * weight_of[h], vt + (h / group) * head_dim,
           head_dim);
  }
}

} // namespace

void attention(float* out, const float* q, const float* k, const float* v, int64_t n_pos,
               int64_t n_head, int64_t n_head_kv, int64_t head_dim, float* scores) {
  // Heads split over the compute threads, each head whole on one thread.
  const int64_t work = n_pos * n_head * head_dim;
  const int n_threads = work < parallel_min_work ? 1 : int(std::min<int64_t>(at::get_num_threads(), n_head));
  parallel_ranges(n_head, n_threads, 1, [&](int64_t h0, int64_t h1) {
    attend_heads(h0, h1, out, q, k, v, n_pos, n_head, n_head_kv, head_dim, scores);
  });
}

void attention(float* out, const float* q, const uint16_t* k, const uint16_t* v, int64_t n_pos,
               int64_t n_head, int64_t n_head_kv, int64_t head_dim, float* scores) {
  // As the f32 attention: heads split over the compute threads, each pass
  // position-major over the heads of one thread.
  const int64_t work = n_pos * n_head * head_dim;
  const int n_threads = work < parallel_min_work ? 1 : int(std::min<int64_t>(at::get_num_threads(), n_head));
  const float scale = 1.0f / std::sqrt(float(head_dim));
  float* weight_of = scores + n_head * n_pos;  // [n_head]: 1 / each head's softmax sum
  parallel_ranges(n_head, n_threads, 1, [&](int64_t h0, int64_t h1) {
    f16_scores(h0, h1, q, k, n_pos, n_head, n_head_kv, head_dim, scale, scores);
    softmax_heads(h0, h1, scores, n_pos, weight_of);
    f16_weighted_values(h0, h1, out, v, scores, weight_of, n_pos, n_head, n_head_kv, head_dim);
  });
}

void round_to_f16(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    x[i] = half_to_float(float_to_half(x[i]));
}

namespace {

/// a · b as 4 accumulators of 8 f32 lanes over each 32 elements (fused
/// multiply-adds), reduced pairwise, the rest added in double: the
/// reference implementation's f16 dot product order.
float dot_lanes(const float* a, const float* b, int64_t n) {
  float acc[4][8] = {};
  const int64_t n32 = n / 32 * 32;
  for (int64_t i = 0; i < n32; i += 32)
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 8; ++l)
        acc[j][l] = std::fma(a[i + 8 * j + l], b[i + 8 * j + l], acc[j][l]);
  float lane[8];
  for (int l = 0; l < 8; ++l)
    lane[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
  float quad[4];
  for (int l = 0; l < 4; ++l)
    quad[l] = lane[l] + lane[l + 4];
  double sum = double((quad[0] + quad[1]) + (quad[2] + quad[3]));
  for (int64_t i = n32; i < n; ++i)
    sum += double(a[i] * b[i]);
  return float(sum);
}

} // namespace

void attention_f16(float* out, const float* q, const uint16_t* k, const uint16_t* v,
                   int64_t n_pos, int64_t n_head, int64_t n_head_kv, int64_t head_dim,
                   float* scratch) {
  const int64_t kv_stride = n_head_kv * head_dim;
  const int64_t group = n_head / n_head_kv;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  float* q16 = scratch;            // [head_dim]: the head's query at f16 precision
  float* row = scratch + head_dim;  // [head_dim]: one cached key or value head as floats
  for (int64_t h = 0; h < n_head; ++h) {
    std::copy_n(q + h * head_dim, head_dim, q16);
    round_to_f16(q16, head_dim);
    const int64_t off = (h / group) * head_dim;
    float* acc = out + h * head_dim;  // f16 values
    std::fill_n(acc, head_dim, 0.0f);
    float sum = 0, max = -INFINITY;
    for (int64_t t = 0; t < n_pos; ++t) {
      load_f16(row, k + t * kv_stride + off, head_dim);
      const float s = dot_lanes(q16, row, head_dim) * scale;
      float ms = 1, vs = 1;
      if (s > max) {  // a new maximum rescales what is accumulated
        ms = std::exp(max - s);
        max = s;
        for (int64_t i = 0; i < head_dim; ++i)
          acc[i] = half_to_float(float_to_half(acc[i] * ms));
      } else {
        vs = std::exp(s - max);
      }
      load_f16(row, v + t * kv_stride + off, head_dim);
      for (int64_t i = 0; i < head_dim; ++i)
        acc[i] = half_to_float(float_to_half(std::fma(row[i], vs, acc[i])));
      sum = sum * ms + vs;
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < head_dim; ++i)
      acc[i] *= inv;
  }
}

void swiglu(float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    a[i] = a[i] / (1.0f + std::exp(-a[i])) * b[i];
}

void add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    x[i] += y[i];
}

} // namespace ceco::kernels
