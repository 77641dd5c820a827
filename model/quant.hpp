#pragma once

// GGML weight types kept in their file layout, and the kernels that compute
// with them. Block layouts follow the GGML/GGUF specification: a row of
// `cols` weights is cols / block_size blocks of block_bytes bytes each.
//
// One-token decode: the activation row is quantized once to 8-bit blocks
// (blocks of 32 for the 32-element types, of 256 with sums per 16 for the
// K-quants, as Q8_0 and Q8_K but with f32 scales) and
// every weight row is reduced with integer dot products per sub-block,
// reading each weight byte once. Float types (F32, F16, BF16) take the f32
// activation as it is. The batched product (matmat) quantizes each activation
// row to 8 bits per 32 values and forms integer products against weights
// unpacked once for all rows (model/quant_gemm.hpp) where the kernel level
// has such kernels (AVX-512/VNNI, AVX2, aarch64 SDOT); elsewhere (plain
// NEON, portable) it dequantizes a tile of rows to f32 and multiplies it
// with BLAS.

#include <cstddef>
#include <cstdint>
#include <string>

namespace ceco::quant {

/// Values are the ggml type ids stored in GGUF tensor infos.
enum class ggml_type : uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q4_1 = 3,
  q5_0 = 6,
  q5_1 = 7,
  q8_0 = 8,
  q2_k = 10,
  q3_k = 11,
  q4_k = 12,
  q5_k = 13,
  q6_k = 14,
  q8_k = 15,  // activations only: never a weight type here
  bf16 = 30,
};

struct type_info {
  const char* name;       // as GGML spells it: "Q4_K"
  int64_t block_size;     // elements per block
  int64_t block_bytes;    // bytes per block
  ggml_type activation;   // what the activation row becomes for dot products
};

/// nullptr for a type ceco cannot hold weights in.
const type_info* find_info(ggml_type t);
/// "Q4_K", or "42" for an unknown id.
std::string type_name(ggml_type t);
/// "F32=0, F16=1, ..." for error messages.
std::string supported_types();
/// Bytes of a tensor of `n_elements` whose rows hold `row_length` elements.
/// Throws model_error naming `what` when the type is unsupported or the row
/// length is not a multiple of the type's block size.
size_t tensor_bytes(ggml_type t, int64_t n_elements, int64_t row_length, const std::string& what);

/// dst[n] = the f32 values of n elements at src; n is a multiple of the
/// block size.
void dequantize_row(ggml_type t, const void* src, float* dst, int64_t n);

/// Whether quantize_row writes type t: F32, F16, BF16, Q8_0, Q4_0, Q4_1,
/// Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
bool can_quantize(ggml_type t);
/// The blocks of type t for src[n] into dst (tensor_bytes(t, n, n) bytes);
/// n is a multiple of the block size. Round to nearest against per-block
/// scales: dequantize_row gives back src within one step of the type
/// (half a step for the types with an offset; Q2_K and Q3_K, which search
/// a few scales per sub-block, within that in RMS over each sub-block).
/// model/quantize.cpp.
void quantize_row(ggml_type t, const float* src, void* dst, int64_t n);

/// Scratch bytes for one quantized activation row of `cols` elements.
size_t activation_bytes(ggml_type weight, int64_t cols);
/// Quantizes x[cols] to the activation type of `weight` (a copy for float
/// types) into dst, which holds activation_bytes(weight, cols).
void quantize_activation(ggml_type weight, const float* x, void* dst, int64_t cols);
/// dst[cols] = the values a quantized activation row stands for.
void dequantize_activation(ggml_type weight, const void* activation, float* dst, int64_t cols);
/// One weight row · one activation row made by quantize_activation.
float dot_row(ggml_type weight, const void* w_row, const void* activation, int64_t cols);
/// Four weight rows · one activation row: out[r] = dot_row(weight, w_rows[r],
/// ...), bit for bit, in one pass where the active kernel level has a
/// four-row kernel for the type (has_dot4), else row by row.
void dot_rows4(ggml_type weight, const void* const w_rows[4], const void* activation,
               int64_t cols, float out[4]);
bool has_dot4(ggml_type weight);

/// The instruction sets of the dot products: portable C++; on x86-64
/// AVX2 (with FMA and F16C) and AVX-512 (F, BW, VL and VNNI); on aarch64
/// NEON (Advanced SIMD, every ARMv8-A core) and dotprod (NEON with the
/// SDOT instruction, ARMv8.2-A and later: Cortex-A55/A76 on). A type
/// without a kernel of a level takes the next one below it on its
/// architecture (dotprod, neon, portable; avx512, avx2, portable).
enum class kernel_level { portable, avx2, avx512, neon, dotprod };
/// "portable", "avx2", "avx512", "neon", "dotprod".
const char* kernel_level_name(kernel_level l);
/// Whether this CPU and this build run level l.
bool kernel_level_supported(kernel_level l);
/// The highest level this CPU supports.
kernel_level best_kernel_level();
/// The level the dot products use: the highest this CPU supports, or the
/// one the environment variable CECO_KERNELS names (portable, avx2,
/// avx512, neon, dotprod; a level the CPU lacks or a name it does not
/// know is refused with a line on stderr, and the best level used).
kernel_level active_kernel_level();
/// Sets the level (tests, measurements); throws model_error for one the
/// CPU lacks.
void set_kernel_level(kernel_level l);

/// A row-major matrix [rows, cols] of GGML blocks (a view, owns nothing).
struct matrix {
  ggml_type type = ggml_type::f32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;

  /// Checks the type and that cols is a multiple of its block size; the
  /// error names `name`.
  static matrix view(ggml_type type, const void* data, int64_t rows, int64_t cols,
                     const std::string& name);
  const uint8_t* row(int64_t r) const { return data + size_t(r) * row_bytes; }
};

// The matrix products (model/quant_matrix.cpp: threads and BLAS).

/// y[rows] = W · x[cols]. `scratch` holds activation_bytes(w.type, w.cols);
/// nothing is allocated. Rows are split over n_threads compute threads
/// (the chunk pool of model/compute_threads.hpp; <= 0: ATen's thread count);
/// each row's result does not depend on it.
void matvec(const matrix& w, const float* x, float* y, void* scratch, int n_threads = 0);

/// y[n, rows]: row j is exactly matvec(W, x[j]) for the n inputs x[n, cols]
/// (decode steps of several sequences). Each weight row is read once for
/// all inputs. `scratch` holds n * activation_bytes(w.type, w.cols).
void matvec_batch(const matrix& w, const float* x, float* y, int64_t n, void* scratch,
                  int n_threads = 0);

/// Whether matmat forms integer products of 8-bit activations for weight
/// type t at the active kernel level (else it multiplies f32 activations
/// with dequantized tiles).
bool matmat_is_integer(ggml_type t);
/// Floats of scratch matmat needs for `w`.
size_t matmat_scratch_floats(const matrix& w);
/// y[n, rows]: row j is W · x[j] for the n inputs x[n, cols]: integer
/// products of 8-bit activations where the kernel level has them for the
/// type (see above; `scratch` unused), else a tile of dequantized rows at a
/// time in `scratch`, multiplied with BLAS.
void matmat(const matrix& w, const float* x, float* y, int64_t n, float* scratch,
            int n_threads = 0);

} // namespace ceco::quant
