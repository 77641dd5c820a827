#include "model/random_weights.hpp"

#include <cctype>
#include <cstring>
#include <memory>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>

#include "model/gguf_writer.hpp"

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

constexpr float weight_stdev = 0.02f;
constexpr int64_t rows_per_task = 16;

/// The blocks of matrix `matrix` [rows, cols] in type t into `data`
/// (row_bytes a row), rows split over the compute threads.
void fill_random_blocks(uint64_t seed, uint64_t matrix, int64_t rows, int64_t cols,
                        quant::ggml_type t, size_t row_bytes, uint8_t* data) {
  at::parallel_for(0, rows, rows_per_task, [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      random_row(seed, matrix, r, row.data(), cols, weight_stdev);
      quant::quantize_row(t, row.data(), data + size_t(r) * row_bytes, cols);
    }
  });
}

/// One matrix [rows, cols] in type t, a row at a time.
weight_matrix random_matrix(uint64_t seed, uint64_t matrix, int64_t rows, int64_t cols,
                            quant::ggml_type t, const std::string& name) {
  if (t == quant::ggml_type::f32) {
    auto w = at::empty({rows, cols}, at::kFloat);
    float* data = w.data_ptr<float>();
    at::parallel_for(0, rows, rows_per_task, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        random_row(seed, matrix, r, data + r * cols, cols, weight_stdev);
    });
    return weight_matrix(std::move(w));
  }
  const size_t row_bytes = quant::tensor_bytes(t, cols, cols, name);
  auto bytes = std::make_shared<std::vector<uint8_t>>(row_bytes * size_t(rows));
  fill_random_blocks(seed, matrix, rows, cols, t, row_bytes, bytes->data());
  auto view = quant::matrix::view(t, bytes->data(), rows, cols, name);
  return weight_matrix(view, std::move(bytes));
}

/// The matrices of a random model in the order random_weights numbers their
/// value streams: the embedding, the output unless tied, then each layer's
/// q, k, v, o, gate, down, up.
struct matrix_plan {
  std::string name;  // GGUF tensor name without ".weight"
  quant::matrix_role role;
  int layer;
  int64_t rows, cols;
};

std::vector<matrix_plan> matrix_plans(const model_config& c, bool tied_output) {
  using quant::matrix_role;
  const int64_t d = c.n_embd, d_kv = c.n_embd_kv(), ff = c.n_ff;
  std::vector<matrix_plan> out;
  // A tied embedding is the output matrix too, so it takes the output's type.
  out.push_back({"token_embd", tied_output ? matrix_role::output : matrix_role::token_embd, 0,
                 c.vocab_size, d});
  if (!tied_output)
    out.push_back({"output", matrix_role::output, 0, c.vocab_size, d});
  for (int il = 0; il < c.n_layer; ++il) {
    auto name = [&](const char* m) { return fmt::format("blk.{}.{}", il, m); };
    out.push_back({name("attn_q"), matrix_role::attn_q, il, d, d});
    out.push_back({name("attn_k"), matrix_role::attn_k, il, d_kv, d});
    out.push_back({name("attn_v"), matrix_role::attn_v, il, d_kv, d});
    out.push_back({name("attn_output"), matrix_role::attn_output, il, d, d});
    out.push_back({name("ffn_gate"), matrix_role::ffn_gate, il, ff, d});
    out.push_back({name("ffn_down"), matrix_role::ffn_down, il, d, ff});
    out.push_back({name("ffn_up"), matrix_role::ffn_up, il, ff, d});
  }
  return out;
}

quant::ggml_type plan_type(const matrix_plan& p, const model_config& c,
                           const quant::file_type& type) {
  return quant::matrix_type(type, p.role, p.layer, c.n_layer, p.cols, c.n_head / c.n_head_kv);
}

/// A SentencePiece-style vocabulary of n pieces as llama.cpp's 'llama'
/// tokenizer reads it: <unk>, <s>, </s>, the 256 byte pieces <0x00>..<0xFF>,
/// the printable ASCII characters, then made-up words ("▁a", "▁b", ...,
/// "▁aa", ...) scored so that longer ones merge first.
void synthetic_vocabulary(gguf_writer& w, int n) {
  const std::string space = "\xe2\x96\x81";  // U+2581, SentencePiece's space
  std::vector<std::string> pieces = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};  // llama.cpp: unknown, control
  for (int b = 0; b < 256; ++b) {
    pieces.push_back(fmt::format("<0x{:02X}>", b));
    types.push_back(6);  // byte
  }
  for (char ch = ' '; ch <= '~' && int(pieces.size()) < n; ++ch) {
    pieces.push_back(ch == ' ' ? space : std::string(1, ch));
    types.push_back(1);  // normal
  }
  for (int64_t k = 0; int(pieces.size()) < n; ++k) {
    std::string word;  // k in bijective base 26: a..z, aa..
    for (int64_t v = k + 1; v > 0; v = (v - 1) / 26)
      word.insert(word.begin(), char('a' + (v - 1) % 26));
    pieces.push_back(space + word);
    types.push_back(1);
  }
  std::vector<float> scores(pieces.size(), 0.0f);
  for (size_t i = 259; i < pieces.size(); ++i)
    scores[i] = -float(i - 259);
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", pieces);
  w.set_float32_array("tokenizer.ggml.scores", scores);
  w.set_int32_array("tokenizer.ggml.token_type", types);
  w.set_uint32("tokenizer.ggml.unknown_token_id", 0);
  w.set_uint32("tokenizer.ggml.bos_token_id", 1);
  w.set_uint32("tokenizer.ggml.eos_token_id", 2);
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
  const auto plans = matrix_plans(c, opts.tied_output);
  std::vector<weight_matrix> m;
  for (size_t i = 0; i < plans.size(); ++i) {
    const auto& p = plans[i];
    m.push_back(random_matrix(seed, uint64_t(i), p.rows, p.cols, plan_type(p, c, opts.type),
                              "random " + p.name));
    const size_t first = opts.tied_output ? 1 : 2;  // the layers' matrices
    if (i >= first && (i - first) % 7 == 6 && opts.on_layer)
      opts.on_layer(int((i - first) / 7) + 1, c.n_layer);
  }
  const int64_t d = c.n_embd;
  model_weights w;
  w.tok_embd = m[0];
  w.output_norm = at::ones({d});
  w.output = opts.tied_output ? w.tok_embd : m[1];
  for (size_t at = opts.tied_output ? 1 : 2; at < m.size(); at += 7) {
    layer_weights l;
    l.attn_norm = at::ones({d});
    l.wq = m[at];
    l.wk = m[at + 1];
    l.wv = m[at + 2];
    l.wo = m[at + 3];
    l.ffn_norm = at::ones({d});
    l.w1 = m[at + 4];
    l.w2 = m[at + 5];
    l.w3 = m[at + 6];
    w.layers.push_back(std::move(l));
  }
  return w;
}

void write_random_gguf(const std::string& path, const std::string& name, const model_config& c,
                       uint64_t seed, const random_weights_options& opts) {
  c.validate(path);
  if (c.vocab_size < 259)
    throw model_error(fmt::format(
      "{}: a vocabulary of {} tokens cannot hold the 3 special and 256 byte pieces a GGUF "
      "vocabulary needs",
      path, c.vocab_size));
  c10::InferenceMode guard;
  gguf_writer w;
  const std::string arch = "llama";
  w.set_string("general.architecture", arch);
  w.set_string("general.name", name);
  w.set_uint32("general.file_type", opts.type.llama_ftype);
  w.set_uint32("general.quantization_version", 2);
  w.set_uint32(arch + ".vocab_size", uint32_t(c.vocab_size));
  w.set_uint32(arch + ".context_length", uint32_t(c.max_seq));
  w.set_uint32(arch + ".embedding_length", uint32_t(c.n_embd));
  w.set_uint32(arch + ".block_count", uint32_t(c.n_layer));
  w.set_uint32(arch + ".feed_forward_length", uint32_t(c.n_ff));
  w.set_uint32(arch + ".rope.dimension_count", uint32_t(c.head_dim()));
  w.set_uint32(arch + ".attention.head_count", uint32_t(c.n_head));
  w.set_uint32(arch + ".attention.head_count_kv", uint32_t(c.n_head_kv));
  w.set_float32(arch + ".attention.layer_norm_rms_epsilon", c.norm_eps);
  w.set_float32(arch + ".rope.freq_base", c.rope_theta);
  synthetic_vocabulary(w, c.vocab_size);

  const std::vector<float> ones(size_t(c.n_embd), 1.0f);
  const auto plans = matrix_plans(c, opts.tied_output);
  const size_t first = opts.tied_output ? 1 : 2;  // the layers' matrices
  auto add_matrix = [&](size_t i) {
    const auto& p = plans[i];
    const auto t = plan_type(p, c, opts.type);
    const size_t row_bytes = quant::tensor_bytes(t, p.cols, p.cols, path + ": " + p.name);
    w.add_tensor(p.name + ".weight", {p.cols, p.rows}, t,
                 [&, i, t, row_bytes](uint8_t* data, size_t) {
                   const auto& q = plans[i];
                   fill_random_blocks(seed, uint64_t(i), q.rows, q.cols, t, row_bytes, data);
                   if (i >= first && (i - first) % 7 == 6 && opts.on_layer)
                     opts.on_layer(int((i - first) / 7) + 1, c.n_layer);
                 });
  };
  add_matrix(0);
  if (!opts.tied_output)
    add_matrix(1);
  w.add_tensor("output_norm.weight", {c.n_embd}, ones.data());
  for (int il = 0; il < c.n_layer; ++il) {
    const size_t at = first + size_t(il) * 7;
    w.add_tensor(fmt::format("blk.{}.attn_norm.weight", il), {c.n_embd}, ones.data());
    w.add_tensor(fmt::format("blk.{}.ffn_norm.weight", il), {c.n_embd}, ones.data());
    for (size_t k = 0; k < 7; ++k)
      add_matrix(at + k);
  }
  w.write(path);
}

} // namespace ceco
