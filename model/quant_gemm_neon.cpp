// The aarch64 SDOT kernels of the integer matrix product (layout:
// model/quant_gemm.hpp), for the dotprod kernel level (ARMv8.2-A and
// later: Cortex-A55/A76 on, as in the Raspberry Pi 5, Jetson Orin and most
// phones); a core without SDOT keeps matmat's dequantized tiles and BLAS.
// The weights stay signed bytes (SDOT multiplies s8 by s8), so the sums
// need no correction. SDOT by lane multiplies 4 rows' 4 bytes by the same 4
// activation bytes: per chunk of 32 columns, each of the 8 steps loads the
// 16 rows' bytes once (4 vectors) for two activation rows.
//
// Only this file's kernels are compiled with the dot-product extension
// (the pragma below, after every include): as quant_gemm_avx512.cpp, it
// calls no std template that the linker could keep in such a copy.

#include "model/quant_gemm.hpp"

#if defined(__aarch64__)
#include <arm_neon.h>

#include "model/quant_gemm_repack.hpp"
#endif

namespace ceco::quant::neon {

#if defined(__aarch64__)

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")

namespace {

void quantize(const float* x, gemm::act_block* out, int64_t cols) {
  for (int64_t b = 0; b < cols / 32; ++b) {
    float32x4_t v[8];
    float32x4_t m = vdupq_n_f32(0);
    for (int i = 0; i < 8; ++i) {
      v[i] = vld1q_f32(x + 32 * b + 4 * i);
      m = vmaxq_f32(m, vabsq_f32(v[i]));
    }
    const float amax = vmaxvq_f32(m);
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    int32x4_t q[8];
    for (int i = 0; i < 8; ++i)  // FCVTNS: to nearest, ties to even
      q[i] = vcvtnq_s32_f32(vmulq_n_f32(v[i], id));
    gemm::act_block& a = out[b];
    for (int h = 0; h < 2; ++h) {
      const int16x8_t low = vcombine_s16(vqmovn_s32(q[4 * h]), vqmovn_s32(q[4 * h + 1]));
      const int16x8_t high = vcombine_s16(vqmovn_s32(q[4 * h + 2]), vqmovn_s32(q[4 * h + 3]));
      vst1q_s8(a.q + 16 * h, vcombine_s8(vqmovn_s16(low), vqmovn_s16(high)));
    }
    const int32_t s0 = vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])));
    const int32_t s1 = vaddvq_s32(vaddq_s32(vaddq_s32(q[4], q[5]), vaddq_s32(q[6], q[7])));
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

/// Step K of a chunk: rows' bytes 4K..4K+3 (4 vectors of 4 rows) against
/// activation bytes 4K..4K+3 of each of the C activation rows. Sub-blocks
/// of 16 keep steps 0-3 and 4-7 apart (H = 2).
template <int K, int C, int H>
inline __attribute__((always_inline)) void step(const int8_t* g, const int8x16_t (&a)[C][2],
                                                int32x4_t (&acc)[C][H][4]) {
  int8x16_t w[4];
  for (int r = 0; r < 4; ++r)
    w[r] = vld1q_s8(g + 64 * K + 16 * r);
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < 4; ++r)
      acc[c][H == 2 ? K / 4 : 0][r] = vdotq_laneq_s32(acc[c][H == 2 ? K / 4 : 0][r], w[r], a[c][K / 4], K % 4);
}

/// y[c * y_stride + i] = row i of the repacked group · activation row c,
/// for C activation rows (act + c * act_stride) and rows i < n_rows.
template <int Sub, bool Offset, int C>
void multiply(const uint8_t* group, int64_t chunks, const gemm::act_block* act, int64_t act_stride,
              float* y, int64_t y_stride, int n_rows) {
  constexpr size_t cb = gemm_chunk_bytes<Sub>;
  constexpr int H = Sub == 16 ? 2 : 1;
  float32x4_t total[C][4];
  for (int c = 0; c < C; ++c)
    for (int r = 0; r < 4; ++r)
      total[c][r] = vdupq_n_f32(0);
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const auto* g = reinterpret_cast<const int8_t*>(group + size_t(ch) * cb);
    const auto* f = reinterpret_cast<const float*>(group + size_t(ch) * cb + 512);
    int8x16_t a[C][2];
    int32x4_t acc[C][H][4];
    for (int c = 0; c < C; ++c) {
      a[c][0] = vld1q_s8(act[c * act_stride + ch].q);
      a[c][1] = vld1q_s8(act[c * act_stride + ch].q + 16);
      for (int h = 0; h < H; ++h)
        for (int r = 0; r < 4; ++r)
          acc[c][h][r] = vdupq_n_s32(0);
    }
    step<0>(g, a, acc);
    step<1>(g, a, acc);
    step<2>(g, a, acc);
    step<3>(g, a, acc);
    step<4>(g, a, acc);
    step<5>(g, a, acc);
    step<6>(g, a, acc);
    step<7>(g, a, acc);
    for (int c = 0; c < C; ++c) {
      const gemm::act_block& ab = act[c * act_stride + ch];
      for (int r = 0; r < 4; ++r) {
        float32x4_t t;
        if constexpr (Sub == 32) {
          t = vmulq_f32(vcvtq_f32_s32(acc[c][0][r]), vld1q_f32(f + 4 * r));
          if constexpr (Offset)
            t = vfmaq_n_f32(t, vld1q_f32(f + 16 + 4 * r), ab.sum32);
        } else {
          t = vmulq_f32(vcvtq_f32_s32(acc[c][0][r]), vld1q_f32(f + 4 * r));
          t = vfmaq_f32(t, vcvtq_f32_s32(acc[c][1][r]), vld1q_f32(f + 32 + 4 * r));
          if constexpr (Offset) {
            t = vfmaq_n_f32(t, vld1q_f32(f + 16 + 4 * r), ab.sum16[0]);
            t = vfmaq_n_f32(t, vld1q_f32(f + 48 + 4 * r), ab.sum16[1]);
          }
        }
        total[c][r] = vfmaq_n_f32(total[c][r], t, ab.d);
      }
    }
  }
  for (int c = 0; c < C; ++c) {
    if (n_rows == 16) {
      for (int r = 0; r < 4; ++r)
        vst1q_f32(y + c * y_stride + 4 * r, total[c][r]);
    } else {
      float rows[16];
      for (int r = 0; r < 4; ++r)
        vst1q_f32(rows + 4 * r, total[c][r]);
      for (int i = 0; i < n_rows; ++i)
        y[c * y_stride + i] = rows[i];
    }
  }
}

template <class L>
void rows(const matrix& w, int64_t r0, int64_t r1, const gemm::act_block* act, int64_t n, float* y,
          uint8_t* scratch) {
  const int64_t chunks = w.cols / 32;
  for (int64_t g = r0; g < r1; g += 16) {
    const int n_rows = int(r1 - g < 16 ? r1 - g : 16);
    repack_group<L, 0>(w.data + size_t(g) * w.row_bytes, w.row_bytes, n_rows, w.cols, scratch);
    int64_t j = 0;
    for (; j + 2 <= n; j += 2)
      multiply<L::sub, L::has_offset, 2>(scratch, chunks, act + j * chunks, chunks,
                                         y + j * w.rows + g, w.rows, n_rows);
    for (; j < n; ++j)
      multiply<L::sub, L::has_offset, 1>(scratch, chunks, act + j * chunks, chunks,
                                         y + j * w.rows + g, w.rows, n_rows);
  }
}

template <class L>
struct table {
  static constexpr gemm::kernels kernels{quantize, rows<L>};
};

} // namespace

const gemm::kernels* gemm_kernels_dotprod(ggml_type t) {
  return kernels_by_layout<table>(t);
}

#pragma GCC pop_options

#else

const gemm::kernels* gemm_kernels_dotprod(ggml_type) {
  return nullptr;
}

#endif

} // namespace ceco::quant::neon
