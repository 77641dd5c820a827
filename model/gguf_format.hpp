#pragma once

// Constants of the GGUF format shared by the reader (model/gguf.hpp) and the
// writer (model/gguf_writer.hpp).

#include <cstdint>

namespace ceco {

enum class ggml_type : uint32_t {
  f32 = 0,
  f16 = 1,
  q8_0 = 8,
  bf16 = 30,
};

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
