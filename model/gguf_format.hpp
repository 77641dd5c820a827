#pragma once

// Constants of the GGUF format shared by the reader (model/gguf.hpp) and the
// writer (model/gguf_writer.hpp).

#include <cstdint>

#include "model/quant.hpp"

namespace ceco {

/// The ggml type ids of tensor infos; their block layouts and kernels are in
/// model/quant.hpp.
using ggml_type = quant::ggml_type;

namespace gguf_format {

constexpr uint32_t magic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t default_alignment = 32;

/// Metadata value types.
enum value_type : uint32_t {
  t_u8 = 0, t_i8, t_u16, t_i16, t_u32, t_i32, t_f32, t_bool, t_string,
  t_array, t_u64, t_i64, t_f64,
};

} // namespace gguf_format

} // namespace ceco
