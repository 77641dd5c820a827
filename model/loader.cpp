#include "model/loader.hpp"

#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <map>
#include <algorithm>
#include <fmt/format.h>

#include "model/gguf.hpp"
#include "model/hf_checkpoint.hpp"
#include "model/safetensors.hpp"

namespace ceco {

namespace fs = std::filesystem;

at::Tensor read_gguf_tensor(const gguf_file& f, const std::string& name,
                            const std::vector<int64_t>& shape) {
  const auto& t = f.get(name);
  std::vector<int64_t> expected(shape.rbegin(), shape.rend());
  if (t.ne != expected)
    throw model_error(fmt::format("{}: tensor '{}' has shape [{}], expected [{}] (ggml order)",
                                  f.path(), name, fmt::join(t.ne, ", "),
                                  fmt::join(expected, ", ")));
  auto out = at::empty(shape, at::kFloat);
  f.dequantize(t, out.data_ptr<float>());
  return out;
}

namespace {

// -- GGUF -----------------------------------------------------------------------

at::Tensor read_tensor(const gguf_file& f, const std::string& name, std::vector<int64_t> shape) {
  return read_gguf_tensor(f, name, shape);
}

/// A weight matrix [rows, cols]: F32 tensors are copied; every other type
/// stays as GGML blocks in the mapped file, which `file` keeps alive.
weight_matrix read_matrix(const std::shared_ptr<const gguf_file>& file, const std::string& name,
                          int64_t rows, int64_t cols) {
  const auto& t = file->get(name);
  if (t.type == ggml_type::f32)
    return weight_matrix(read_gguf_tensor(*file, name, {rows, cols}));
  if (t.ne != std::vector<int64_t>{cols, rows})
    throw model_error(fmt::format("{}: tensor '{}' has shape [{}], expected [{}, {}] (ggml order)",
                                  file->path(), name, fmt::join(t.ne, ", "), cols, rows));
  return weight_matrix(
    quant::matrix::view(t.type, t.data, rows, cols, fmt::format("{}: tensor '{}'", file->path(), name)),
    file);
}

loaded_model load_gguf(const std::string& path) {
  auto file = std::make_shared<const gguf_file>(path);
  const gguf_file& f = *file;
  auto arch = f.get_string_or("general.architecture", "llama");
  if (arch != "llama" && arch != "qwen2")
    throw model_error(fmt::format(
      "{}: general.architecture is '{}'; ceco runs these architectures: llama, qwen2", path,
      arch));
  const bool qwen2 = arch == "qwen2";
  auto key = [&](const char* k) { return arch + "." + k; };

  loaded_model m;
  m.path = path;
  m.format = "gguf";
  m.vocab = tokenizer::from_gguf(f);
  auto& c = m.config;
  c.n_embd = int(f.get_uint(key("embedding_length")));
  c.n_ff = int(f.get_uint(key("feed_forward_length")));
  c.n_layer = int(f.get_uint(key("block_count")));
  c.n_head = int(f.get_uint(key("attention.head_count")));
  c.n_head_kv = int(f.get_uint_or(key("attention.head_count_kv"), uint64_t(c.n_head)));
  c.max_seq = int(f.get_uint(key("context_length")));
  c.rope_theta = float(f.get_float_or(key("rope.freq_base"), 10000.0));
  c.norm_eps = float(f.get_float_or(key("attention.layer_norm_rms_epsilon"), 1e-5));
  c.rope_halves = qwen2;  // GGML's NEOX rotation for qwen2
  const auto& embd = f.get("token_embd.weight");
  c.vocab_size = embd.ne.size() == 2 ? int(embd.ne[1]) : 0;
  if (f.has(key("vocab_size")) && int(f.get_uint(key("vocab_size"))) != c.vocab_size)
    throw model_error(fmt::format("{}: {} is {}, but token_embd.weight has {} rows", path,
                                  key("vocab_size"), f.get_uint(key("vocab_size")),
                                  c.vocab_size));
  c.validate(path);
  if (f.has(key("rope.dimension_count"))
      && int(f.get_uint(key("rope.dimension_count"))) != c.head_dim())
    throw model_error(fmt::format(
      "{}: {} is {}, expected the head size {} (partial RoPE is not supported)", path,
      key("rope.dimension_count"), f.get_uint(key("rope.dimension_count")), c.head_dim()));
  if (m.vocab.vocab_size() != c.vocab_size)
    throw model_error(fmt::format(
      "{}: the tokenizer has {} tokens but token_embd.weight has {} rows", path,
      m.vocab.vocab_size(), c.vocab_size));

  c10::InferenceMode guard;
  if (f.find("rope_freqs.weight")) {
    auto factors = read_tensor(f, "rope_freqs.weight", {c.head_dim() / 2});
    c.rope_freq_factors.assign(factors.data_ptr<float>(),
                               factors.data_ptr<float>() + factors.numel());
    c.validate(path + ": rope_freqs.weight");
  }
  auto& w = m.weights;
  const int64_t d = c.n_embd, d_kv = c.n_embd_kv(), ff = c.n_ff;
  w.tok_embd = read_matrix(file, "token_embd.weight", c.vocab_size, d);
  w.output_norm = read_tensor(f, "output_norm.weight", {d});
  w.output = f.find("output.weight") ? read_matrix(file, "output.weight", c.vocab_size, d)
                                     : w.tok_embd;
  for (int il = 0; il < c.n_layer; ++il) {
    auto n = [&](const char* s) { return fmt::format("blk.{}.{}.weight", il, s); };
    layer_weights l;
    l.attn_norm = read_tensor(f, n("attn_norm"), {d});
    l.wq = read_matrix(file, n("attn_q"), d, d);
    l.wk = read_matrix(file, n("attn_k"), d_kv, d);
    l.wv = read_matrix(file, n("attn_v"), d_kv, d);
    l.wo = read_matrix(file, n("attn_output"), d, d);
    l.ffn_norm = read_tensor(f, n("ffn_norm"), {d});
    l.w1 = read_matrix(file, n("ffn_gate"), ff, d);
    l.w2 = read_matrix(file, n("ffn_down"), d, ff);
    l.w3 = read_matrix(file, n("ffn_up"), ff, d);
    if (qwen2) {
      auto b = [&](const char* s) { return fmt::format("blk.{}.{}.bias", il, s); };
      l.bq = read_tensor(f, b("attn_q"), {d});
      l.bk = read_tensor(f, b("attn_k"), {d_kv});
      l.bv = read_tensor(f, b("attn_v"), {d_kv});
    }
    w.layers.push_back(std::move(l));
  }
  return m;
}

// -- llama2.c ---------------------------------------------------------------------

/// The llama2.c tokenizer of the .bin at `path`: `tokenizer_path`, else
/// tok<vocab>.bin or tokenizer.bin beside it.
tokenizer llama2c_tokenizer(const std::string& path, int vocab_size,
                            const std::string& tokenizer_path) {
  std::string tok = tokenizer_path;
  if (tok.empty()) {
    auto dir = fs::path(path).parent_path();
    for (auto name : {fmt::format("tok{}.bin", vocab_size), std::string("tokenizer.bin")})
      if (fs::exists(dir / name)) {
        tok = (dir / name).string();
        break;
      }
    if (tok.empty())
      throw model_error(fmt::format(
        "{}: no tokenizer given and neither tok{}.bin nor tokenizer.bin is beside it; "
        "pass --tokenizer PATH",
        path, vocab_size));
  }
  return tokenizer::from_llama2c(tok, vocab_size);
}

loaded_model load_llama2c(const std::string& path, const std::string& tokenizer_path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw model_error(fmt::format("{}: cannot open", path));
  in.seekg(0, std::ios::end);
  const auto file_size = int64_t(in.tellg());
  in.seekg(0);
  int32_t h[7];
  if (file_size < int64_t(sizeof h) || !in.read(reinterpret_cast<char*>(h), sizeof h))
    throw model_error(fmt::format(
      "{}: truncated llama2.c checkpoint: {} bytes, the header alone needs 28", path,
      file_size));
  if (h[0] == 0x616b3432)  // "ak42": llama2.c's newer export formats
    throw model_error(fmt::format(
      "{}: llama2.c version-1/2 export (magic 0x616b3432); ceco reads the legacy format "
      "(export with --version 0) or GGUF",
      path));

  loaded_model m;
  m.path = path;
  m.format = "llama2c";
  auto& c = m.config;
  c.n_embd = h[0];
  c.n_ff = h[1];
  c.n_layer = h[2];
  c.n_head = h[3];
  c.n_head_kv = h[4];
  const bool shared_classifier = h[5] > 0;
  c.vocab_size = std::abs(h[5]);
  c.max_seq = h[6];
  try {
    c.validate(path);
  } catch (const model_error& e) {
    throw model_error(fmt::format(
      "{} (not a llama2.c legacy checkpoint? header reads dim={} hidden={} layers={} heads={} "
      "kv_heads={} vocab={} seq_len={})",
      e.what(), h[0], h[1], h[2], h[3], h[4], h[5], h[6]));
  }

  const int64_t d = c.n_embd, d_kv = c.n_embd_kv(), ff = c.n_ff, L = c.n_layer,
                V = c.vocab_size, hs = c.head_dim();
  // Tensor order of llama2.c's legacy export, with torch shapes.
  struct part {
    const char* name;
    std::vector<int64_t> shape;
  };
  std::vector<part> parts = {
    {"token_embedding", {V, d}},  {"rms_att", {L, d}},        {"wq", {L, d, d}},
    {"wk", {L, d_kv, d}},         {"wv", {L, d_kv, d}},       {"wo", {L, d, d}},
    {"rms_ffn", {L, d}},          {"w1", {L, ff, d}},         {"w2", {L, d, ff}},
    {"w3", {L, ff, d}},           {"rms_final", {d}},         {"freq_cis_real", {c.max_seq, hs / 2}},
    {"freq_cis_imag", {c.max_seq, hs / 2}},
  };
  if (!shared_classifier)
    parts.push_back({"wcls", {V, d}});
  int64_t expected = int64_t(sizeof h);
  for (auto& p : parts) {
    int64_t n = 1;
    for (auto s : p.shape)
      n *= s;
    expected += n * 4;
  }
  if (file_size != expected)
    throw model_error(fmt::format(
      "{}: {} llama2.c checkpoint: the header (dim={} hidden={} layers={} heads={} "
      "kv_heads={} vocab={} seq_len={}) needs {} bytes, the file has {}",
      path, file_size < expected ? "truncated" : "oversized or corrupt", h[0], h[1], h[2], h[3],
      h[4], h[5], h[6], expected, file_size));

  c10::InferenceMode guard;
  std::vector<at::Tensor> t;
  for (auto& p : parts) {
    auto x = at::empty(p.shape, at::kFloat);
    in.read(reinterpret_cast<char*>(x.data_ptr<float>()), std::streamsize(x.nbytes()));
    if (!in)
      throw model_error(fmt::format("{}: read failed in tensor '{}'", path, p.name));
    t.push_back(x);
  }
  auto& w = m.weights;
  w.tok_embd = t[0];
  w.output_norm = t[10];
  w.output = shared_classifier ? t[0] : t[13];
  for (int64_t il = 0; il < L; ++il) {
    layer_weights l;
    l.attn_norm = t[1][il];
    l.wq = t[2][il];
    l.wk = t[3][il];
    l.wv = t[4][il];
    l.wo = t[5][il];
    l.ffn_norm = t[6][il];
    l.w1 = t[7][il];
    l.w2 = t[8][il];
    l.w3 = t[9][il];
    w.layers.push_back(std::move(l));
  }

  m.vocab = llama2c_tokenizer(path, c.vocab_size, tokenizer_path);
  return m;
}

/// `path` for a message: a path past 200 characters is cut, its length said.
std::string path_excerpt(const std::string& path) {
  return path.size() <= 200 ? path
                            : fmt::format("{}... ({} characters)", path.substr(0, 200), path.size());
}

/// A filesystem error while looking at a checkpoint (a name too long, a
/// folder that cannot be listed) is the input's fault: a model_error.
template <typename F>
auto with_file_errors(const std::string& path, F f) {
  try {
    return f();
  } catch (const fs::filesystem_error& e) {
    throw model_error(fmt::format("{}: {}{}", path_excerpt(path), e.code().message(),
                                  e.path1().empty() || e.path1().string() == path
                                    ? std::string()
                                    : " (" + path_excerpt(e.path1().string()) + ")"));
  }
}

bool has_gguf_magic(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::string(magic, 4) == "GGUF";
}

std::string resolve_checkpoint(const std::string& path) {
  if (path.find('\0') != std::string::npos)
    throw model_error("a model path cannot hold a NUL character");
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    if (ec && ec != std::errc::no_such_file_or_directory)
      throw model_error(fmt::format("{}: {}", path_excerpt(path), ec.message()));
    throw model_error(fmt::format("{}: no such file or folder", path_excerpt(path)));
  }
  if (!fs::is_directory(path))
    return path;
  std::vector<fs::path> gguf, bin;
  for (auto& e : fs::directory_iterator(path)) {
    auto name = e.path().filename().string();
    if (e.path().extension() == ".gguf")
      gguf.push_back(e.path());
    else if (e.path().extension() == ".bin" && name.rfind("tok", 0) != 0)
      bin.push_back(e.path());
  }
  std::sort(gguf.begin(), gguf.end());
  std::sort(bin.begin(), bin.end());
  if (!gguf.empty())
    return gguf.front().string();
  if (is_safetensors_checkpoint(path))
    return path;  // a Hugging Face checkpoint (its pytorch_model.bin is no llama2.c file)
  if (!bin.empty())
    return bin.front().string();
  throw model_error(fmt::format(
    "{}: the folder holds no .gguf, Hugging Face safetensors or llama2.c .bin model", path));
}


tokenizer load_tokenizer_of(const std::string& path, const std::string& tokenizer_path) {
  auto file = resolve_checkpoint(path);
  if (is_safetensors_checkpoint(file))
    return load_hf_tokenizer(file);
  if (has_gguf_magic(file) || fs::path(file).extension() == ".gguf") {
    gguf_file f(file);
    return tokenizer::from_gguf(f);
  }
  std::ifstream in(file, std::ios::binary);
  int32_t h[7];
  if (!in || !in.read(reinterpret_cast<char*>(h), sizeof h))
    throw model_error(fmt::format(
      "{}: neither a GGUF file nor a llama2.c checkpoint (its 28-byte header is missing)", file));
  if (h[5] == 0 || h[5] < -(1 << 24) || h[5] > (1 << 24))
    throw model_error(fmt::format(
      "{}: not a llama2.c legacy checkpoint: its header's vocab_size is {}", file, h[5]));
  return llama2c_tokenizer(file, std::abs(h[5]), tokenizer_path);
}

loaded_model load_model_of(const std::string& path, const std::string& tokenizer_path) {
  auto file = resolve_checkpoint(path);
  if (is_safetensors_checkpoint(file))
    return load_hf_checkpoint(file);
  if (has_gguf_magic(file))
    return load_gguf(file);
  if (fs::path(file).extension() == ".gguf")
    return load_gguf(file);  // reports the wrong magic
  return load_llama2c(file, tokenizer_path);
}

} // namespace

tokenizer load_tokenizer(const std::string& path, const std::string& tokenizer_path) {
  return with_file_errors(path, [&] { return load_tokenizer_of(path, tokenizer_path); });
}

loaded_model load_model(const std::string& path, const std::string& tokenizer_path) {
  return with_file_errors(path, [&] { return load_model_of(path, tokenizer_path); });
}


namespace {

/// FNV-1a, fed in pieces.
struct fnv1a {
  uint64_t h = 0xcbf29ce484222325ULL;
  void operator()(const void* data, size_t n) {
    auto p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < n; ++i)
      h = (h ^ p[i]) * 0x100000001b3ULL;
  }
};

/// The shape and the RoPE settings.
void mix_shape(fnv1a& mix, const model_config& c) {
  const int32_t dims[] = {c.n_embd, c.n_ff, c.n_layer, c.n_head, c.n_head_kv, c.vocab_size};
  mix(dims, sizeof dims);
  const float rope[] = {c.rope_theta, c.rope_halves ? 1.0f : 0.0f};
  mix(rope, sizeof rope);
  mix(c.rope_freq_factors.data(), c.rope_freq_factors.size() * sizeof(float));
}

} // namespace

uint64_t shape_fingerprint(const model_config& c, const tokenizer& vocab) {
  fnv1a mix;
  mix_shape(mix, c);
  mix(&c.norm_eps, sizeof c.norm_eps);
  for (int32_t id = 0; id < vocab.vocab_size(); ++id) {
    const auto& piece = vocab.piece(id);
    const uint32_t n = uint32_t(piece.size());
    mix(&n, sizeof n);
    mix(piece.data(), piece.size());
  }
  return mix.h;
}

std::string describe_weight_types(const model_weights& w) {
  std::map<std::string, int> count;
  auto add = [&](const weight_matrix& m) {
    if (m.defined())
      ++count[quant::type_name(m.type())];
  };
  add(w.tok_embd);
  if (!w.output.same_as(w.tok_embd))
    add(w.output);
  for (const auto& l : w.layers)
    for (const auto* m : l.matrices())
      add(*m);
  std::vector<std::pair<int, std::string>> order;
  for (const auto& [name, n] : count)
    order.emplace_back(-n, name);
  std::sort(order.begin(), order.end());
  std::string out;
  for (const auto& [n, name] : order)
    out += (out.empty() ? "" : "+") + name;
  return out;
}

uint64_t model_fingerprint(const model_config& c, const model_weights& w) {
  fnv1a mix;
  mix_shape(mix, c);
  c10::InferenceMode guard;
  auto add = [&](const at::Tensor& t) {
    if (!t.defined())
      return;
    auto cpu = t.to(at::kCPU).contiguous();
    mix(cpu.data_ptr(), size_t(cpu.nbytes()));
  };
  // fp32 matrices hash as their floats; blocks as their type and bytes, so
  // two quantizations of one model differ.
  auto add_matrix = [&](const weight_matrix& m) {
    if (m.is_tensor() || !m.defined()) {
      if (m.defined())
        add(m.tensor("model_fingerprint"));
      return;
    }
    const auto type = uint32_t(m.type());
    mix(&type, sizeof type);
    mix(m.blocks().data, m.n_bytes());
  };
  add_matrix(w.tok_embd);
  for (auto& l : w.layers) {
    add(l.attn_norm);
    for (const auto* b : {&l.bq, &l.bk, &l.bv})
      add(*b);
    for (auto* m : {&l.wq, &l.wk, &l.wv, &l.wo})
      add_matrix(*m);
    add(l.ffn_norm);
    for (auto* m : {&l.w1, &l.w2, &l.w3})
      add_matrix(*m);
  }
  add(w.output_norm);
  add_matrix(w.output);
  return mix.h;
}

} // namespace ceco
