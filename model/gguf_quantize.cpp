#include "model/gguf_quantize.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <set>

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/gguf_writer.hpp"

namespace ceco {

namespace {

using quant::ggml_type;
using quant::matrix_role;

bool is_float(ggml_type t) {
  return t == ggml_type::f32 || t == ggml_type::f16 || t == ggml_type::bf16;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

/// llama-quantize's test for what it quantizes: tensors of two or more
/// dimensions named *weight, norms aside.
bool is_matrix(const gguf_tensor& t) {
  return t.ne.size() >= 2 && ends_with(t.name, "weight") &&
         t.name.find("_norm.weight") == std::string::npos;
}

/// A matrix's role and layer from its GGUF name ("blk.3.attn_v.weight").
/// Without an output matrix the embedding is the output too, and takes its
/// type.
matrix_role role_of(const std::string& name, bool has_output, int& layer) {
  layer = 0;
  if (name == "output.weight")
    return matrix_role::output;
  if (name == "token_embd.weight")
    return has_output ? matrix_role::token_embd : matrix_role::output;
  const std::string prefix = "blk.", suffix = ".weight";
  if (name.compare(0, prefix.size(), prefix) != 0 || !ends_with(name, suffix))
    return matrix_role::other;
  size_t at = prefix.size(), digits = 0;
  while (at + digits < name.size() && std::isdigit(static_cast<unsigned char>(name[at + digits])))
    ++digits;
  if (digits == 0 || digits > 6 || at + digits >= name.size() || name[at + digits] != '.')
    return matrix_role::other;
  layer = std::stoi(name.substr(at, digits));
  const std::string what =
    name.substr(at + digits + 1, name.size() - suffix.size() - (at + digits + 1));
  static const std::pair<const char*, matrix_role> roles[] = {
    {"attn_q", matrix_role::attn_q},       {"attn_k", matrix_role::attn_k},
    {"attn_v", matrix_role::attn_v},       {"attn_output", matrix_role::attn_output},
    {"ffn_gate", matrix_role::ffn_gate},   {"ffn_down", matrix_role::ffn_down},
    {"ffn_up", matrix_role::ffn_up}};
  for (const auto& [n, role] : roles)
    if (what == n)
      return role;
  return matrix_role::other;
}

/// A scalar of the architecture's metadata, or `fallback` where the file
/// has none (or, as some architectures do, an array per layer).
uint64_t arch_scalar(const gguf_file& f, const std::string& arch, const std::string& key,
                     uint64_t fallback) {
  const std::string full = arch + "." + key;
  try {
    return f.get_uint_or(full, fallback);
  } catch (const model_error&) {
    return fallback;
  }
}

struct planned_tensor {
  const gguf_tensor* tensor;
  ggml_type to;
};

} // namespace

gguf_quantize_summary quantize_gguf(const std::string& input, const std::string& output,
                                    const gguf_quantize_options& options) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(output, ec) && fs::equivalent(input, output, ec))
    throw model_error(fmt::format("{}: is the input file; write the quantized model to another file",
                                  output));
  gguf_file in(input);
  const auto& tensors = in.tensors();

  // Layers and grouped heads, for the per-matrix rules.
  const std::string arch = in.get_string_or("general.architecture", "llama");
  bool has_output = false;
  int max_layer = -1;
  for (const auto& t : tensors) {
    int layer = 0;
    role_of(t.name, true, layer);
    max_layer = std::max(max_layer, layer);
    has_output |= t.name == "output.weight";
  }
  const int n_layer = int(arch_scalar(in, arch, "block_count", uint64_t(max_layer + 1)));
  const uint64_t n_head = arch_scalar(in, arch, "attention.head_count", 0);
  const uint64_t n_head_kv = arch_scalar(in, arch, "attention.head_count_kv", n_head);
  const int gqa = n_head > 0 && n_head_kv > 0 ? int(n_head / n_head_kv) : 1;

  // Every tensor's type, and every refusal, before a byte is written.
  std::vector<planned_tensor> plan;
  for (const auto& t : tensors) {
    ggml_type to = t.type;
    if (is_matrix(t)) {
      int layer = 0;
      const matrix_role role = role_of(t.name, has_output, layer);
      to = quant::matrix_type(options.type, role, layer, n_layer, t.ne[0], gqa);
      if (to != t.type && !is_float(t.type) && !options.allow_requantize)
        throw model_error(fmt::format(
          "{}: tensor '{}' is {}, already quantized: ceco quantize reads F32, F16 and BF16 "
          "matrices (--allow-requantize dequantizes and quantizes it again, adding the errors "
          "of both)",
          input, t.name, quant::type_name(t.type)));
    }
    plan.push_back({&t, to});
  }

  gguf_writer w;
  std::set<std::string> keys;
  for (const auto& kv : in.encoded_metadata()) {
    if (kv.key == "general.file_type" || kv.key == "general.quantization_version" ||
        !keys.insert(kv.key).second)
      continue;
    w.set_encoded(kv.key, kv.type, kv.value, kv.n_bytes);
  }
  w.set_uint32("general.quantization_version", 2);
  w.set_uint32("general.file_type", options.type.llama_ftype);

  gguf_quantize_summary summary;
  summary.tensors = int(plan.size());
  for (size_t i = 0; i < plan.size(); ++i) {
    const planned_tensor p = plan[i];
    const gguf_tensor& t = *p.tensor;
    w.add_tensor(t.name, t.ne, p.to, [&, p, i](uint8_t* out, size_t n_bytes) {
      if (p.to == t.type) {
        std::memcpy(out, t.data, n_bytes);
      } else {
        const int64_t cols = t.ne[0], rows = t.n_elements() / cols;
        const size_t in_row = size_t(t.n_bytes) / size_t(rows), out_row = n_bytes / size_t(rows);
        const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / cols);
        at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
          std::vector<float> row(static_cast<size_t>(cols));
          for (int64_t r = r0; r < r1; ++r) {
            quant::dequantize_row(t.type, t.data + size_t(r) * in_row, row.data(), cols);
            quant::quantize_row(p.to, row.data(), out + size_t(r) * out_row, cols);
          }
        });
      }
      ++summary.types[quant::type_name(p.to)];
      if (options.on_tensor)
        options.on_tensor({int(i) + 1, int(plan.size()), t.name, t.ne, t.type, p.to, t.n_bytes,
                           n_bytes});
    });
  }
  w.write(output);
  summary.input_bytes = fs::file_size(input);
  summary.output_bytes = fs::file_size(output);
  return summary;
}

} // namespace ceco
