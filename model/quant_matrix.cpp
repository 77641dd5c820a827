// The matrix products over the kernels of model/quant.cpp: quantized
// matvec (one activation row, or several, against each weight row read
// once) split over the compute threads, and matmat: the integer matrix
// product (model/quant_gemm.hpp) where the kernel level has one, else BLAS
// over tiles of dequantized rows. The torch thread count and BLAS are
// needed here only.

#include "model/quant.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

#include <ATen/Parallel.h>
#include <cblas.h>

#include "model/compute_threads.hpp"
#include "model/quant_gemm.hpp"
#include "model/quant_kernels.hpp"

namespace ceco::quant {

namespace {

// Below this many weights a thread hand-off costs more than it saves.
constexpr int64_t parallel_min_weights = 1 << 15;

int thread_count(int requested) {
  return requested > 0 ? requested : at::get_num_threads();
}

/// Whether a product of this size is done faster by one thread than handed off.
bool rows_times_cols_small(int64_t rows, int64_t cols) { return rows * cols < parallel_min_weights; }

/// Calls body(r0, r1) on row ranges that cover [0, rows), split over the
/// compute threads in multiples of 4 rows.
template <class Body>
void split_rows(int64_t rows, int64_t cols, int n_threads, Body body) {
  if (n_threads <= 1 || rows_times_cols_small(rows, cols) || rows < 2) {
    body(int64_t(0), rows);
    return;
  }
  parallel_ranges(rows, n_threads, 4, body);
}

/// Rows per matrix stream. A core keeps only a few cache-line misses in
/// flight per stream it reads, so one stream of weights leaves most of the
/// memory bandwidth unused: reading the row range as this many interleaved
/// streams (rows i, i + n/4, i + 2n/4, i + 3n/4, then i + 1, ...) measured
/// 1.4-2x the bandwidth of one on Q8_0 and Q6_K matrices. The four rows of
/// a step go to the type's four-row kernel where the kernel level has one
/// (the block overhead and the activation loads shared, four independent
/// chains), which gives each row the single-row kernel's floats bit for bit,
/// so no result depends on it.
constexpr int64_t row_streams = 4;

/// Calls rows4(r) for each group of row_streams rows r[0..3] in [r0, r1),
/// one row from each interleaved stream, then row(r) for the rows left.
template <class Rows4, class Row>
void for_rows_interleaved(int64_t r0, int64_t r1, Rows4 rows4, Row row) {
  static_assert(row_streams == 4);
  const int64_t per = (r1 - r0) / row_streams;
  for (int64_t i = 0; i < per; ++i) {
    const int64_t r[4] = {r0 + i, r0 + per + i, r0 + 2 * per + i, r0 + 3 * per + i};
    rows4(r);
  }
  for (int64_t r = r0 + per * row_streams; r < r1; ++r)
    row(r);
}

} // namespace

void matvec(const matrix& w, const float* x, float* y, void* scratch, int n_threads) {
  matvec_batch(w, x, y, 1, scratch, n_threads);
}

void matvec_batch(const matrix& w, const float* x, float* y, int64_t n, void* scratch,
                  int n_threads) {
  const dot_fn dot = active_dot(w.type);
  const dot4_fn dot4 = active_dot4(w.type);
  const size_t act_bytes = is_float(w.type) ? size_t(w.cols) * sizeof(float)
                                            : activation_bytes(w.type, w.cols);
  const auto* acts = static_cast<const uint8_t*>(is_float(w.type) ? static_cast<const void*>(x)
                                                                  : scratch);
  if (!is_float(w.type))
    for (int64_t j = 0; j < n; ++j)
      quantize_activation(w.type, x + j * w.cols, static_cast<uint8_t*>(scratch) + size_t(j) * act_bytes,
                          w.cols);
  split_rows(w.rows, w.cols * n, thread_count(n_threads), [&](int64_t r0, int64_t r1) {
    for_rows_interleaved(
      r0, r1,
      [&](const int64_t* r) {
        const uint8_t* rows[4] = {w.row(r[0]), w.row(r[1]), w.row(r[2]), w.row(r[3])};
        for (int64_t j = 0; j < n; ++j) {
          const uint8_t* act = acts + size_t(j) * act_bytes;
          if (dot4) {
            float out[4];
            dot4(rows, act, w.cols, out);
            for (int k = 0; k < 4; ++k)
              y[j * w.rows + r[k]] = out[k];
          } else {
            for (int k = 0; k < 4; ++k)
              y[j * w.rows + r[k]] = dot(rows[k], act, w.cols);
          }
        }
      },
      [&](int64_t r) {
        for (int64_t j = 0; j < n; ++j)
          y[j * w.rows + r] = dot(w.row(r), acts + size_t(j) * act_bytes, w.cols);
      });
  });
}

namespace {

/// Rows per dequantized tile: about 1 MiB of floats, at least 16 rows.
int64_t tile_rows(const matrix& w) {
  return std::min(w.rows, std::max<int64_t>(16, (int64_t(1) << 18) / std::max<int64_t>(1, w.cols)));
}

/// `bytes` bytes of v from a 64-byte boundary; v grows once, to the most asked.
uint8_t* aligned_scratch(std::vector<uint8_t>& v, size_t bytes) {
  if (v.size() < bytes + 64)
    v.resize(bytes + 64);
  const auto misalign = reinterpret_cast<uintptr_t>(v.data()) % 64;
  return v.data() + (misalign ? 64 - misalign : 0);
}

/// matmat with 8-bit activations and integer products: each activation row
/// quantized once, then each group of rows repacked once for all of them.
void integer_matmat(const gemm::kernels& kernels, const matrix& w, const float* x, float* y,
                    int64_t n, int n_threads) {
  const int64_t chunks = w.cols / 32;
  thread_local std::vector<uint8_t> act_buffer;
  auto* act = reinterpret_cast<gemm::act_block*>(
    aligned_scratch(act_buffer, size_t(n * chunks) * sizeof(gemm::act_block)));
  const int threads = thread_count(n_threads);
  parallel_ranges(n, rows_times_cols_small(n, w.cols) ? 1 : threads, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j)
      kernels.quantize(x + j * w.cols, act + j * chunks, w.cols);
  });
  parallel_ranges(w.rows, rows_times_cols_small(w.rows, w.cols * n) ? 1 : threads, gemm::group_rows,
                  [&](int64_t r0, int64_t r1) {
                    thread_local std::vector<uint8_t> group;
                    kernels.rows(w, r0, r1, act, n, y,
                                 aligned_scratch(group, gemm::group_scratch_bytes(w.cols)));
                  });
}

} // namespace

size_t matmat_scratch_floats(const matrix& w) {
  return w.type == ggml_type::f32 ? 0 : size_t(tile_rows(w)) * size_t(w.cols);
}

void matmat(const matrix& w, const float* x, float* y, int64_t n, float* scratch, int n_threads) {
  if (n <= 0 || w.rows <= 0)
    return;
  if (w.type == ggml_type::f32) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(w.rows), int(w.cols), 1.0f, x,
                int(w.cols), reinterpret_cast<const float*>(w.data), int(w.cols), 0.0f, y,
                int(w.rows));
    return;
  }
  if (const gemm::kernels* kernels = active_gemm(w.type)) {
    integer_matmat(*kernels, w, x, y, n, n_threads);
    return;
  }
  const dequantize_fn dequantize = dequantizer(w.type);
  const int64_t tile = tile_rows(w);
  // OpenBLAS runs one thread per call (set_compute_threads: its own threads
  // would fight the chunk pool's), so each compute thread dequantizes a
  // part of the tile and multiplies that part itself: one contiguous part
  // per thread, whole groups of 4 rows, so that each product stays large.
  const int threads = int(std::min<int64_t>(thread_count(n_threads), std::max<int64_t>(1, tile / 16)));
  for (int64_t t0 = 0; t0 < w.rows; t0 += tile) {
    const int64_t t_rows = std::min(tile, w.rows - t0);
    const int64_t per_part = (t_rows / threads + 3) / 4 * 4;
    const int64_t parts = per_part > 0 ? (t_rows + per_part - 1) / per_part : 1;
    auto part = [&](int64_t i) {
      const int64_t r0 = i * per_part, r1 = std::min(t_rows, r0 + per_part);
      if (r0 >= r1)
        return;
      for (int64_t r = r0; r < r1; ++r)
        dequantize(w.row(t0 + r), scratch + r * w.cols, w.cols);
      // y[:, t0 + r0 : t0 + r1] = x[n, cols] · tile[r0 : r1, cols]ᵀ
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(n), int(r1 - r0), int(w.cols), 1.0f,
                  x, int(w.cols), scratch + r0 * w.cols, int(w.cols), 0.0f, y + t0 + r0,
                  int(w.rows));
    };
    if (parts <= 1 || rows_times_cols_small(t_rows, w.cols))
      for (int64_t i = 0; i < parts; ++i)
        part(i);
    else
      parallel_chunks(parts, threads, part);
  }
}

} // namespace ceco::quant
