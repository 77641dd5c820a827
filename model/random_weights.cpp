#include "model/random_weights.hpp"

#include <cctype>
#include <cstring>
#include <memory>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

namespace ceco {

namespace {

struct shape_entry {
  const char* name;
  model_config config;
  bool tied_output;
};

model_config llama_shape(int n_embd, int n_ff, int n_layer, int n_head, int n_head_kv,
                         int vocab, int max_seq, float rope_theta) {
  model_config c;
  c.n_embd = n_embd;
  c.n_ff = n_ff;
  c.n_layer = n_layer;
  c.n_head = n_head;
  c.n_head_kv = n_head_kv;
  c.vocab_size = vocab;
  c.max_seq = max_seq;
  c.rope_theta = rope_theta;
  return c;
}

const std::vector<shape_entry>& shapes() {
  // The last three have their models' context cut to 512 positions: the
  // KV cache a benchmark needs (bench grows it to the prompt and tokens).
  static const std::vector<shape_entry> all = {
    {"260K", llama_shape(64, 172, 5, 8, 4, 512, 512, 10000), false},
    {"15M", llama_shape(288, 768, 6, 6, 6, 32000, 256, 10000), false},
    {"42M", llama_shape(512, 1376, 8, 8, 8, 32000, 1024, 10000), false},
    {"110M", llama_shape(768, 2048, 12, 12, 12, 32000, 1024, 10000), false},
    {"SmolLM2-135M", llama_shape(576, 1536, 30, 9, 3, 49152, 512, 100000), true},
    {"TinyLlama-1.1B", llama_shape(2048, 5632, 22, 32, 4, 32000, 512, 10000), false},
    {"Llama-3.2-1B", llama_shape(2048, 8192, 16, 32, 8, 128256, 512, 500000), true},
  };
  return all;
}

/// splitmix64: a counter-based generator, so any row can be made alone.
uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// Row `row` of matrix `matrix`: values of std `stdev`, each the sum of four
/// 16-bit uniforms, centred and scaled (variance 4/12 before scaling).
void random_row(uint64_t seed, uint64_t matrix, int64_t row, float* out, int64_t n, float stdev) {
  const uint64_t key = mix64(seed ^ mix64(matrix * 0x100000001b3ull + uint64_t(row)));
  const float scale = stdev * 1.7320508f / 65536.0f;  // sqrt(3): unit variance
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t r = mix64(key + uint64_t(i));
    const int32_t sum = int32_t(r & 0xffff) + int32_t((r >> 16) & 0xffff) +
                        int32_t((r >> 32) & 0xffff) + int32_t(r >> 48);
    out[i] = float(sum - 2 * 65535) * scale;
  }
}

/// One matrix [rows, cols] in type t, a row at a time.
weight_matrix random_matrix(uint64_t seed, uint64_t matrix, int64_t rows, int64_t cols,
                            quant::ggml_type t, const std::string& name) {
  constexpr float stdev = 0.02f;
  constexpr int64_t grain = 16;  // rows per task
  if (t == quant::ggml_type::f32) {
    auto w = at::empty({rows, cols}, at::kFloat);
    float* data = w.data_ptr<float>();
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        random_row(seed, matrix, r, data + r * cols, cols, stdev);
    });
    return weight_matrix(std::move(w));
  }
  const size_t row_bytes = quant::tensor_bytes(t, cols, cols, name);
  auto bytes = std::make_shared<std::vector<uint8_t>>(row_bytes * size_t(rows));
  uint8_t* data = bytes->data();
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      random_row(seed, matrix, r, row.data(), cols, stdev);
      quant::quantize_row(t, row.data(), data + size_t(r) * row_bytes, cols);
    }
  });
  auto view = quant::matrix::view(t, data, rows, cols, name);
  return weight_matrix(view, std::move(bytes));
}

} // namespace

named_shape shape_preset(const std::string& name) {
  // Case-blind, as --type is: "smollm2-135m" and "110m" name shapes too.
  auto lower = [](std::string x) {
    for (auto& ch : x)
      ch = char(std::tolower(static_cast<unsigned char>(ch)));
    return x;
  };
  for (const auto& s : shapes())
    if (lower(name) == lower(s.name))
      return {s.config, s.tied_output};
  throw model_error(fmt::format("--shape: unknown shape '{}', expected one of {}", name,
                                shape_names()));
}

std::string shape_names() {
  std::string out;
  for (const auto& s : shapes())
    out += fmt::format("{}{}", out.empty() ? "" : ", ", s.name);
  return out;
}

model_weights random_weights(const model_config& c, uint64_t seed,
                             const random_weights_options& opts) {
  c.validate("random_weights");
  c10::InferenceMode guard;
  using quant::matrix_role;
  const int64_t d = c.n_embd, d_kv = c.n_embd_kv(), ff = c.n_ff;
  uint64_t next_matrix = 0;  // each matrix's stream of values
  auto matrix = [&](matrix_role role, int il, int64_t rows, int64_t cols, const std::string& name) {
    const auto t = quant::matrix_type(opts.type, role, il, c.n_layer, cols, c.n_head / c.n_head_kv);
    return random_matrix(seed, next_matrix++, rows, cols, t, "random " + name);
  };
  model_weights w;
  // A tied embedding is the output matrix too, so it takes the output's type.
  w.tok_embd = matrix(opts.tied_output ? matrix_role::output : matrix_role::token_embd, 0,
                      c.vocab_size, d, "token_embd");
  w.output_norm = at::ones({d});
  w.output = opts.tied_output ? w.tok_embd : matrix(matrix_role::output, 0, c.vocab_size, d, "output");
  for (int il = 0; il < c.n_layer; ++il) {
    auto name = [&](const char* m) { return fmt::format("blk.{}.{}", il, m); };
    layer_weights l;
    l.attn_norm = at::ones({d});
    l.wq = matrix(matrix_role::attn_q, il, d, d, name("attn_q"));
    l.wk = matrix(matrix_role::attn_k, il, d_kv, d, name("attn_k"));
    l.wv = matrix(matrix_role::attn_v, il, d_kv, d, name("attn_v"));
    l.wo = matrix(matrix_role::attn_output, il, d, d, name("attn_output"));
    l.ffn_norm = at::ones({d});
    l.w1 = matrix(matrix_role::ffn_gate, il, ff, d, name("ffn_gate"));
    l.w2 = matrix(matrix_role::ffn_down, il, d, ff, name("ffn_down"));
    l.w3 = matrix(matrix_role::ffn_up, il, ff, d, name("ffn_up"));
    w.layers.push_back(std::move(l));
    if (opts.on_layer)
      opts.on_layer(il + 1, c.n_layer);
  }
  return w;
}

} // namespace ceco
