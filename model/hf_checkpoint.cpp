#include "model/hf_checkpoint.hpp"
#include "model/json_input.hpp"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/safetensors.hpp"

namespace ceco {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

/// config.json with typed, checked reads naming the file and the key.
struct hf_config {
  std::string path;
  json j;

  explicit hf_config(const std::string& folder) : path((fs::path(folder) / "config.json").string()) {
    if (!std::ifstream(path))
      throw model_error(fmt::format("{}: cannot open (a Hugging Face checkpoint needs its "
                                    "config.json)",
                                    path));
    j = read_json_file(path);
    if (!j.is_object())
      throw model_error(fmt::format("{}: expected a JSON object, found {}", path, j.type_name()));
  }

  bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }
  const json& need(const char* key) const {
    if (!has(key))
      throw model_error(fmt::format("{}: key '{}' is missing", path, key));
    return j[key];
  }
  int integer(const char* key) const {
    const auto& v = need(key);
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (int64_t{1} << 30))
      throw model_error(fmt::format("{}: '{}' is {}, expected an integer in 0..2^30", path, key,
                                    json_excerpt(v)));
    return int(v.get<int64_t>());
  }
  int integer_or(const char* key, int fallback) const {
    return has(key) ? integer(key) : fallback;
  }
  double number(const char* key) const {
    const auto& v = need(key);
    if (!v.is_number())
      throw model_error(fmt::format("{}: '{}' is {}, expected a number", path, key, json_excerpt(v)));
    return v.get<double>();
  }
  double number_or(const char* key, double fallback) const {
    return has(key) ? number(key) : fallback;
  }
  bool boolean_or(const char* key, bool fallback) const {
    if (!has(key))
      return fallback;
    if (!j[key].is_boolean())
      throw model_error(fmt::format("{}: '{}' is {}, expected true or false", path, key,
                                    json_excerpt(j[key])));
    return j[key].get<bool>();
  }
  /// A token id: an integer, or the first of a list (Llama 3.1 lists several
  /// end-of-turn tokens); -1 when absent.
  int token_id(const char* key) const {
    if (!has(key))
      return -1;
    const auto& v = j[key];
    const auto& first = v.is_array() && !v.empty() ? v[0] : v;
    if (!first.is_number_unsigned() || first.get<uint64_t>() > uint64_t(1 << 30))
      throw model_error(fmt::format("{}: '{}' is {}, expected a token id", path, key, json_excerpt(v)));
    return int(first.get<uint64_t>());
  }

  /// "llama" or "qwen2", from `architectures`, else `model_type`.
  std::string architecture() const {
    std::string named;
    if (has("architectures") && j["architectures"].is_array() && !j["architectures"].empty()
        && j["architectures"][0].is_string()) {
      named = j["architectures"][0].get<std::string>();
      if (named == "LlamaForCausalLM")
        return "llama";
      if (named == "Qwen2ForCausalLM")
        return "qwen2";
    } else if (has("model_type") && j["model_type"].is_string()) {
      named = j["model_type"].get<std::string>();
      if (named == "llama" || named == "qwen2")
        return named;
    }
    throw model_error(fmt::format(
      "{}: the architecture is '{}'; ceco runs LlamaForCausalLM (model_type llama) and "
      "Qwen2ForCausalLM (model_type qwen2)",
      path, named.empty() ? "(neither 'architectures' nor 'model_type' given)" : named));
  }
};

/// Llama 3's rope_scaling as per-pair divisors of the angle, computed as the
/// reference's converter computes rope_freqs.weight.
std::vector<float> llama3_rope_factors(const hf_config& cfg, const json& s, int head_dim,
                                       double theta) {
  auto get = [&](const char* key, double fallback) {
    if (!s.contains(key))
      return fallback;
    if (!s[key].is_number())
      throw model_error(fmt::format("{}: rope_scaling.{} is {}, expected a number", cfg.path,
                                    key, json_excerpt(s[key])));
    return s[key].get<double>();
  };
  const double factor = get("factor", 8.0);
  const double low = get("low_freq_factor", 1.0);
  const double high = get("high_freq_factor", 4.0);
  const double context = get("original_max_position_embeddings", 8192.0);
  if (!(high > low) || !(factor > 0) || !(context > 0))
    throw model_error(fmt::format(
      "{}: rope_scaling has factor {}, low_freq_factor {}, high_freq_factor {}, "
      "original_max_position_embeddings {}: expected positive values and high > low",
      cfg.path, factor, low, high, context));
  const double low_wavelen = context / low, high_wavelen = context / high;
  std::vector<float> out;
  for (int i = 0; i < head_dim; i += 2) {
    // In fp32, as torch computes the frequencies there.
    const float freq = 1.0f / std::pow(float(theta), float(i) / float(head_dim));
    const double wavelen = 2 * M_PI / double(freq);
    if (wavelen < high_wavelen)
      out.push_back(1.0f);
    else if (wavelen > low_wavelen)
      out.push_back(float(factor));
    else {
      const double smooth = (context / wavelen - low) / (high - low);
      out.push_back(float(1.0 / ((1 - smooth) / factor + smooth)));
    }
  }
  return out;
}

model_config read_config(const hf_config& cfg, const std::string& arch) {
  model_config c;
  c.n_embd = cfg.integer("hidden_size");
  c.n_ff = cfg.integer("intermediate_size");
  c.n_layer = cfg.integer("num_hidden_layers");
  c.n_head = cfg.integer("num_attention_heads");
  c.n_head_kv = cfg.integer_or("num_key_value_heads", c.n_head);
  c.vocab_size = cfg.integer("vocab_size");
  c.max_seq = cfg.integer("max_position_embeddings");
  c.norm_eps = float(cfg.number_or("rms_norm_eps", 1e-6));
  c.rope_theta = float(cfg.number_or("rope_theta", 10000.0));
  c.rope_halves = arch == "qwen2";
  c.validate(cfg.path);
  if (cfg.has("head_dim") && cfg.integer("head_dim") != c.head_dim())
    throw model_error(fmt::format(
      "{}: head_dim is {}, expected hidden_size / num_attention_heads = {}", cfg.path,
      cfg.integer("head_dim"), c.head_dim()));
  if (cfg.has("hidden_act") && cfg.j["hidden_act"] != "silu")
    throw model_error(fmt::format("{}: hidden_act is {}; ceco runs \"silu\"", cfg.path,
                                  json_excerpt(cfg.j["hidden_act"])));
  if (cfg.boolean_or("attention_bias", false) && arch == "llama")
    throw model_error(fmt::format("{}: attention_bias is true; ceco runs llama without "
                                  "attention biases",
                                  cfg.path));
  if (cfg.boolean_or("mlp_bias", false))
    throw model_error(fmt::format("{}: mlp_bias is true; ceco runs MLPs without biases",
                                  cfg.path));
  if (cfg.boolean_or("use_sliding_window", false))
    throw model_error(fmt::format("{}: use_sliding_window is true; ceco attends to the whole "
                                  "context",
                                  cfg.path));
  if (cfg.has("rope_scaling")) {
    const auto& s = cfg.j["rope_scaling"];
    if (!s.is_object())
      throw model_error(fmt::format("{}: rope_scaling is {}, expected an object or null",
                                    cfg.path, json_excerpt(s)));
    const auto type = s.value("rope_type", s.value("type", std::string("default")));
    if (type == "llama3")
      c.rope_freq_factors = llama3_rope_factors(cfg, s, c.head_dim(), c.rope_theta);
    else if (type != "default")
      throw model_error(fmt::format(
        "{}: rope_scaling type '{}' is not supported; ceco runs 'llama3' and 'default'",
        cfg.path, type));
    c.validate(cfg.path + ": rope_scaling");
  }
  return c;
}

/// Checks that tensor `t` has `shape`.
void check_shape(const safetensors_tensor& t, const std::vector<int64_t>& shape) {
  if (t.shape != shape)
    throw model_error(fmt::format("{}: tensor '{}' has shape [{}], expected [{}]", t.file->path(),
                                  t.name, fmt::join(t.shape, ", "), fmt::join(shape, ", ")));
}

/// A vector (norm, bias) as fp32 [n].
at::Tensor read_vector(const safetensors_checkpoint& ckpt, const std::string& name, int64_t n) {
  const auto& t = ckpt.get(name);
  check_shape(t, {n});
  auto out = at::empty({n}, at::kFloat);
  quant::dequantize_row(t.weight_type(), t.data, out.data_ptr<float>(), n);
  return out;
}

/// A weight matrix [rows, cols]. `rope_heads` > 0 permutes the rows of each
/// of that many heads from rotate-half order (pair i is rows i and i + hd/2)
/// to adjacent pairs (rows 2i, 2i + 1), as GGUF's llama holds q and k.
weight_matrix read_matrix(const safetensors_checkpoint& ckpt, const std::string& name,
                          int64_t rows, int64_t cols, int64_t rope_heads = 0) {
  const auto& t = ckpt.get(name);
  check_shape(t, {rows, cols});
  const auto type = t.weight_type();
  const size_t row_bytes = t.n_bytes / size_t(rows);
  const int64_t head_rows = rope_heads > 0 ? rows / rope_heads : 0;
  auto source_row = [&](int64_t r) {
    if (rope_heads == 0)
      return r;
    const int64_t head = r / head_rows, i = r % head_rows;
    return head * head_rows + (i % 2) * (head_rows / 2) + i / 2;
  };
  auto copy_rows = [&](uint8_t* out) {
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(out + size_t(r) * row_bytes, t.data + size_t(source_row(r)) * row_bytes,
                  row_bytes);
  };
  const auto what = fmt::format("{}: tensor '{}'", t.file->path(), name);
  if (type == quant::ggml_type::f32) {
    auto out = at::empty({rows, cols}, at::kFloat);
    copy_rows(reinterpret_cast<uint8_t*>(out.data_ptr<float>()));
    return weight_matrix(out);
  }
  if (rope_heads == 0)
    return weight_matrix(quant::matrix::view(type, t.data, rows, cols, what), ckpt.owner(t));
  auto permuted = std::make_shared<std::vector<uint8_t>>(t.n_bytes);
  copy_rows(permuted->data());
  return weight_matrix(quant::matrix::view(type, permuted->data(), rows, cols, what), permuted);
}

} // namespace

std::string hf_checkpoint_folder(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) ? path : fs::path(path).parent_path().string();
}

namespace {

tokenizer read_hf_tokenizer(const std::string& path) {
  const auto folder = hf_checkpoint_folder(path);
  const hf_config cfg(folder);
  return tokenizer::from_tokenizer_json((fs::path(folder) / "tokenizer.json").string(),
                                        cfg.integer("vocab_size"), cfg.token_id("bos_token_id"),
                                        cfg.token_id("eos_token_id"));
}

loaded_model read_hf_checkpoint(const std::string& path) {
  const auto folder = hf_checkpoint_folder(path);
  const hf_config cfg(folder);
  const auto arch = cfg.architecture();
  loaded_model m;
  m.path = folder;
  m.format = "safetensors";
  m.config = read_config(cfg, arch);
  const auto& c = m.config;
  m.vocab = read_hf_tokenizer(folder);
  if (m.vocab.vocab_size() != c.vocab_size)
    throw model_error(fmt::format("{}: the tokenizer has {} tokens but vocab_size is {}",
                                  folder, m.vocab.vocab_size(), c.vocab_size));

  const safetensors_checkpoint ckpt(path);
  c10::InferenceMode guard;
  auto& w = m.weights;
  const int64_t d = c.n_embd, d_kv = c.n_embd_kv(), ff = c.n_ff;
  const bool llama = arch == "llama";
  w.tok_embd = read_matrix(ckpt, "model.embed_tokens.weight", c.vocab_size, d);
  w.output_norm = read_vector(ckpt, "model.norm.weight", d);
  w.output = cfg.boolean_or("tie_word_embeddings", false)
               ? w.tok_embd
               : read_matrix(ckpt, "lm_head.weight", c.vocab_size, d);
  for (int il = 0; il < c.n_layer; ++il) {
    auto n = [&](const char* s) { return fmt::format("model.layers.{}.{}", il, s); };
    layer_weights l;
    l.attn_norm = read_vector(ckpt, n("input_layernorm.weight"), d);
    l.wq = read_matrix(ckpt, n("self_attn.q_proj.weight"), d, d, llama ? c.n_head : 0);
    l.wk = read_matrix(ckpt, n("self_attn.k_proj.weight"), d_kv, d, llama ? c.n_head_kv : 0);
    l.wv = read_matrix(ckpt, n("self_attn.v_proj.weight"), d_kv, d);
    l.wo = read_matrix(ckpt, n("self_attn.o_proj.weight"), d, d);
    l.ffn_norm = read_vector(ckpt, n("post_attention_layernorm.weight"), d);
    l.w1 = read_matrix(ckpt, n("mlp.gate_proj.weight"), ff, d);
    l.w2 = read_matrix(ckpt, n("mlp.down_proj.weight"), d, ff);
    l.w3 = read_matrix(ckpt, n("mlp.up_proj.weight"), ff, d);
    if (!llama) {
      l.bq = read_vector(ckpt, n("self_attn.q_proj.bias"), d);
      l.bk = read_vector(ckpt, n("self_attn.k_proj.bias"), d_kv);
      l.bv = read_vector(ckpt, n("self_attn.v_proj.bias"), d_kv);
    }
    w.layers.push_back(std::move(l));
  }
  return m;
}

/// What `read` throws, with a value of the wrong JSON type (nlohmann's
/// type_error from .value() or .get()) turned into a model_error naming
/// the checkpoint.
template <class Read>
auto checked_json(const std::string& folder, Read read) {
  try {
    return read();
  } catch (const nlohmann::json::exception& e) {
    throw model_error(fmt::format("{}: a value in config.json or tokenizer.json has an "
                                  "unexpected type: {}",
                                  folder, e.what()));
  }
}

} // namespace

tokenizer load_hf_tokenizer(const std::string& path) {
  return checked_json(hf_checkpoint_folder(path), [&] { return read_hf_tokenizer(path); });
}

loaded_model load_hf_checkpoint(const std::string& path) {
  return checked_json(hf_checkpoint_folder(path), [&] { return read_hf_checkpoint(path); });
}

} // namespace ceco
