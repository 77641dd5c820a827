#pragma once

// The repacking of the integer matrix product (layout: model/quant_gemm.hpp),
// shared by its per-ISA kernels. File-local, as quant_layouts.hpp is, so
// that each kernel file keeps its own copy compiled for its instruction set.

#include <cstddef>
#include <cstdint>

#include "model/quant_gemm.hpp"
#include "model/quant_layouts.hpp"

namespace ceco::quant {

namespace {

/// Bytes of one repacked chunk of 32 columns of a group: 8 steps of 64
/// bytes, then per sub-block of Sub values 16 scales and 16 offsets.
template <int Sub>
constexpr size_t gemm_chunk_bytes = 512 + (32 / Sub) * 128;

/// Repacks rows [0, n_rows) of the group at `rows` (rows n_rows..15 as
/// zeros) into out (64-byte aligned). Each weight byte is the layout's
/// signed value plus Bias, modulo 256: 128 makes it an unsigned byte for
/// AVX-512's vpdpbusd (u8 × s8); -L::min_value does too, and keeps the
/// 2-to-6-bit types within 0..63 for AVX2's vpmaddubsw, whose 16-bit pair
/// sums would saturate past that; 0 keeps it signed (SDOT: s8 × s8; AVX2's
/// Q8_0 by sign). Rows
/// n_rows..15 hold the byte of value 0.
template <class L, int Bias>
void repack_group(const uint8_t* rows, size_t row_bytes, int64_t n_rows, int64_t cols,
                  uint8_t* out) {
  constexpr int n_sub = L::block / L::sub, subs_per_chunk = 32 / L::sub;
  constexpr int words = L::block / 4;
  constexpr size_t cb = gemm_chunk_bytes<L::sub>;
  const int64_t n_blocks = cols / L::block;
  for (int64_t b = 0; b < n_blocks; ++b) {
    // The block of each of the 16 rows unpacked, then written out step by
    // step, each step's 16 words contiguous.
    alignas(64) uint32_t q[16][words];
    alignas(64) float scale[n_sub][16], offset[n_sub][16];
    for (int i = 0; i < 16; ++i) {
      alignas(64) int8_t values[L::block];
      float row_scale[n_sub], row_offset[n_sub];
      if (i < n_rows) {
        L::unpack(rows + size_t(i) * row_bytes + size_t(b) * L::bytes, values, row_scale, row_offset);
      } else {
        __builtin_memset(values, 0, sizeof values);
        for (int s = 0; s < n_sub; ++s)
          row_scale[s] = row_offset[s] = 0;
      }
      for (int j = 0; j < L::block; ++j)
        values[j] = int8_t(uint8_t(values[j]) + uint8_t(Bias));
      __builtin_memcpy(q[i], values, sizeof values);
      for (int s = 0; s < n_sub; ++s) {
        scale[s][i] = row_scale[s];
        offset[s][i] = row_offset[s];
      }
    }
    for (int c = 0; c < L::block / 32; ++c) {
      uint8_t* chunk = out + size_t(b * (L::block / 32) + c) * cb;
      auto* step = reinterpret_cast<uint32_t*>(chunk);
      for (int k = 0; k < 8; ++k)
        for (int i = 0; i < 16; ++i)
          step[16 * k + i] = q[i][8 * c + k];
      auto* f = reinterpret_cast<float*>(chunk + 512);
      for (int s = 0; s < subs_per_chunk; ++s)
        for (int i = 0; i < 16; ++i) {
          f[32 * s + i] = scale[c * subs_per_chunk + s][i];
          f[32 * s + 16 + i] = offset[c * subs_per_chunk + s][i];
        }
    }
  }
}

/// &Table<L>::kernels for the layout L of weight type t; null for a type
/// without one (the float types). Each kernel file's table of its kernels.
template <template <class> class Table>
const gemm::kernels* kernels_by_layout(ggml_type t) {
  switch (t) {
    case ggml_type::q4_0: return &Table<q4_0_layout>::kernels;
    case ggml_type::q4_1: return &Table<q4_1_layout>::kernels;
    case ggml_type::q5_0: return &Table<q5_0_layout>::kernels;
    case ggml_type::q5_1: return &Table<q5_1_layout>::kernels;
    case ggml_type::q8_0: return &Table<q8_0_layout>::kernels;
    case ggml_type::q2_k: return &Table<q2_k_layout>::kernels;
    case ggml_type::q3_k: return &Table<q3_k_layout>::kernels;
    case ggml_type::q4_k: return &Table<q4_k_layout>::kernels;
    case ggml_type::q5_k: return &Table<q5_k_layout>::kernels;
    case ggml_type::q6_k: return &Table<q6_k_layout>::kernels;
    default: return nullptr;
  }
}

} // namespace

} // namespace ceco::quant
