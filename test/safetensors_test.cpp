// Hugging Face checkpoints (config.json, model.safetensors, tokenizer.json)
// written here from the GGUF models the tests use: the same weights compute
// the same logits through either loader, the tokenizer.json encodes as the
// GGUF vocabulary does, and each corruption gets its clear error.

#include "test/support.hpp"

#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "model/half.hpp"
#include "model/hf_checkpoint.hpp"
#include "model/safetensors.hpp"

using namespace ceco;
using namespace ceco::test;
using json = nlohmann::json;

namespace {

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

uint16_t float_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fff + ((bits >> 16) & 1);  // round to nearest even
  return uint16_t(bits >> 16);
}

/// A safetensors file built in memory: tensors from fp32 values stored as
/// F32, F16 or BF16.
struct st_writer {
  json header = json::object();
  std::string data;

  void add(const std::string& name, const std::vector<int64_t>& shape, const float* values,
           const std::string& dtype = "F32") {
    int64_t n = 1;
    for (auto d : shape)
      n *= d;
    const auto begin = data.size();
    for (int64_t i = 0; i < n; ++i) {
      if (dtype == "F32") {
        data.append(reinterpret_cast<const char*>(values + i), 4);
      } else {
        const uint16_t h = dtype == "F16" ? float_to_half(values[i]) : float_to_bf16(values[i]);
        data.append(reinterpret_cast<const char*>(&h), 2);
      }
    }
    header[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, data.size()}}};
  }
  /// The bytes of the file: 8-byte length, header padded with spaces to 8.
  std::string bytes() const {
    auto text = json(header).dump();
    while (text.size() % 8)
      text += ' ';
    std::string out(8, '\0');
    uint64_t n = text.size();
    for (int i = 0; i < 8; ++i)
      out[size_t(i)] = char((n >> (8 * i)) & 0xff);
    return out + text + data;
  }
  void write(const std::string& path) const {
    std::ofstream(path, std::ios::binary) << bytes();
  }
};

void write_json(const std::string& path, const json& j) {
  std::ofstream(path) << j.dump(1);
}

std::vector<float> values_of(const gguf_file& f, const gguf_tensor& t) {
  std::vector<float> v(size_t(t.n_elements()));
  f.dequantize(t, v.data());
  return v;
}

/// Rows of each head of a GGUF llama q/k matrix [rows, cols] back to
/// Hugging Face's rotate-half order (the inverse of the converter's permute).
std::vector<float> unpermute_rows(const std::vector<float>& w, int64_t rows, int64_t cols,
                                  int64_t heads) {
  std::vector<float> out(w.size());
  const int64_t hd = rows / heads;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t head = r / hd, i = r % hd;
    const int64_t hf = head * hd + (i % 2) * (hd / 2) + i / 2;
    std::copy_n(&w[size_t(r * cols)], cols, &out[size_t(hf * cols)]);
  }
  return out;
}

/// The Hugging Face name of a GGUF tensor.
std::string hf_name(const std::string& gguf) {
  static const std::map<std::string, std::string> top = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"}};
  if (top.count(gguf))
    return top.at(gguf);
  static const std::map<std::string, std::string> layer = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"}};
  auto dot = gguf.find('.', 4);
  return "model.layers." + gguf.substr(4, dot - 4) + "." + layer.at(gguf.substr(dot + 1));
}

/// A GGUF's SentencePiece vocabulary as a tokenizer.json: pieces with "▁",
/// merges made from the scores as the `tokenizers` converter makes them
/// (every split of a piece into two pieces, by the piece's score).
json spm_tokenizer_json(const std::string& vocab_gguf = stories_gguf()) {
  gguf_file f(vocab_gguf);
  auto pieces = f.get_string_array("tokenizer.ggml.tokens");
  auto scores = f.get_float_array("tokenizer.ggml.scores");
  auto types = f.get_int_array("tokenizer.ggml.token_type");
  json vocab = json::object();
  std::map<std::string, size_t> ids;
  for (size_t i = 0; i < pieces.size(); ++i) {
    vocab[pieces[i]] = i;
    if (types[i] == 1)
      ids[pieces[i]] = i;
  }
  std::vector<std::tuple<double, size_t, size_t, std::string>> ranked;
  for (const auto& [piece, id] : ids)
    for (size_t cut = 1; cut < piece.size(); ++cut) {
      auto l = ids.find(piece.substr(0, cut)), r = ids.find(piece.substr(cut));
      if (l != ids.end() && r != ids.end())
        ranked.emplace_back(-scores[id], l->second, r->second,
                            piece.substr(0, cut) + " " + piece.substr(cut));
    }
  std::sort(ranked.begin(), ranked.end());
  json merges = json::array();
  for (auto& m : ranked)
    merges.push_back(std::get<3>(m));
  json added = json::array();
  for (size_t i = 0; i < 3; ++i)
    added.push_back({{"id", i}, {"content", pieces[i]}, {"special", true}});
  const std::string mark = "\xe2\x96\x81";
  json normalizer = {{"type", "Sequence"}, {"normalizers", json::array()}};
  normalizer["normalizers"].push_back({{"type", "Prepend"}, {"prepend", mark}});
  normalizer["normalizers"].push_back(
    {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", mark}});
  json single = json::array();
  single.push_back({{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}});
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  json out = json::object();
  out["version"] = "1.0";
  out["added_tokens"] = added;
  out["normalizer"] = normalizer;
  out["pre_tokenizer"] = nullptr;
  out["post_processor"] = {{"type", "TemplateProcessing"}, {"single", single}};
  out["model"] = {{"type", "BPE"},
                  {"byte_fallback", true},
                  {"unk_token", "<unk>"},
                  {"vocab", vocab},
                  {"merges", merges}};
  return out;
}

std::string tiny256_gguf() {
  return shared_dir() + "/models/tiny256/tiny256-f32.gguf";
}

/// How a test checkpoint is written from tiny256.
struct variant {
  std::string arch = "llama";      // or "qwen2": adds random q/k/v biases
  std::string dtype = "F32";       // of the matrices; norms and biases stay F32
  bool tied = false;               // drop output.weight / lm_head
  int shards = 1;                  // > 1: model.safetensors.index.json
};

/// tiny256's weights (with `v`'s changes) as a GGUF file and as a Hugging
/// Face folder; `dir` receives both ("model.gguf" and "hf/").
void write_pair(const std::string& dir, const variant& v) {
  gguf_file f(tiny256_gguf());
  const bool qwen2 = v.arch == "qwen2";
  const int n_head = int(f.get_uint("llama.attention.head_count"));
  const int n_head_kv = int(f.get_uint("llama.attention.head_count_kv"));
  const int n_layer = int(f.get_uint("llama.block_count"));
  gguf_writer g;
  g.set_string("general.architecture", v.arch);
  for (auto key : {"context_length", "embedding_length", "feed_forward_length",
                   "attention.head_count", "attention.head_count_kv", "block_count"})
    g.set_uint32(v.arch + "." + key, uint32_t(f.get_uint(std::string("llama.") + key)));
  g.set_float32(v.arch + ".attention.layer_norm_rms_epsilon", 1e-5f);
  g.set_float32(v.arch + ".rope.freq_base", 10000.0f);
  copy_stories_vocabulary(g);
  g.set_uint32("tokenizer.ggml.bos_token_id", 1);
  g.set_uint32("tokenizer.ggml.eos_token_id", 2);

  std::filesystem::create_directories(dir + "/hf");
  std::vector<st_writer> shards(size_t(v.shards));
  json weight_map = json::object();
  std::mt19937 rng(7);
  std::normal_distribution<float> noise(0.0f, 0.5f);
  size_t next = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> ne, std::vector<float> values) {
    const bool matrix = ne.size() == 2;
    // Stored in the GGUF as F16 only for the F16 variant (it has no BF16).
    g.add_tensor(name, ne, values.data(), matrix && v.dtype == "F16");
    std::vector<int64_t> shape(ne.rbegin(), ne.rend());
    if (!qwen2 && (contains(name, "attn_q.weight") || contains(name, "attn_k.weight")))
      values = unpermute_rows(values, shape[0], shape[1],
                              contains(name, "attn_q") ? n_head : n_head_kv);
    auto& shard = shards[next++ % shards.size()];
    shard.add(hf_name(name), shape, values.data(), matrix ? v.dtype : "F32");
    weight_map[hf_name(name)] = fmt::format("model-{:05}-of-{:05}.safetensors",
                                            (next - 1) % shards.size() + 1, shards.size());
  };
  for (const auto& t : f.tensors()) {
    if (v.tied && t.name == "output.weight")
      continue;
    add(t.name, t.ne, values_of(f, t));
    if (qwen2 && contains(t.name, "attn_") && contains(t.name, ".weight")
        && !contains(t.name, "attn_norm") && !contains(t.name, "attn_output")) {
      std::vector<float> bias(size_t(t.ne[1]));
      for (auto& b : bias)
        b = noise(rng);
      add(t.name.substr(0, t.name.size() - 6) + "bias", {t.ne[1]}, bias);
    }
  }
  g.write(dir + "/model.gguf");
  if (v.shards == 1) {
    shards[0].write(dir + "/hf/model.safetensors");
  } else {
    for (size_t i = 0; i < shards.size(); ++i)
      shards[i].write(dir + fmt::format("/hf/model-{:05}-of-{:05}.safetensors", i + 1,
                                        shards.size()));
    write_json(dir + "/hf/model.safetensors.index.json",
               {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}});
  }
  const auto& embd = f.get("token_embd.weight");
  write_json(dir + "/hf/config.json",
             {{"architectures", {qwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM"}},
              {"model_type", v.arch},
              {"hidden_size", embd.ne[0]},
              {"intermediate_size", f.get_uint("llama.feed_forward_length")},
              {"num_hidden_layers", n_layer},
              {"num_attention_heads", n_head},
              {"num_key_value_heads", n_head_kv},
              {"max_position_embeddings", f.get_uint("llama.context_length")},
              {"vocab_size", embd.ne[1]},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", 10000.0},
              {"hidden_act", "silu"},
              {"tie_word_embeddings", v.tied},
              {"bos_token_id", 1},
              {"eos_token_id", 2},
              {"torch_dtype", "float32"}});
  write_json(dir + "/hf/tokenizer.json", spm_tokenizer_json());
}

/// Logits [T, vocab] of `ids` from the start of a fresh cache.
at::Tensor logits_of(const loaded_model& m, const std::vector<int32_t>& ids) {
  c10::InferenceMode guard;
  transformer t(m.config, m.weights, c10::Device("cpu"));
  auto cache = t.make_cache(0, m.config.n_layer);
  auto x = t.embed(ids);
  t.forward_layers(x, 0, 0, m.config.n_layer, cache);
  return t.logits(x);
}

void check_same_config(const model_config& a, const model_config& b) {
  CHECK(a.n_embd == b.n_embd);
  CHECK(a.n_ff == b.n_ff);
  CHECK(a.n_layer == b.n_layer);
  CHECK(a.n_head == b.n_head);
  CHECK(a.n_head_kv == b.n_head_kv);
  CHECK(a.vocab_size == b.vocab_size);
  CHECK(a.max_seq == b.max_seq);
  CHECK(a.norm_eps == b.norm_eps);
  CHECK(a.rope_theta == b.rope_theta);
  CHECK(a.rope_halves == b.rope_halves);
  CHECK(a.rope_freq_factors == b.rope_freq_factors);
}

const std::vector<int32_t> probe_ids = {1, 403, 407, 26, 300, 5, 77, 480};

/// Loads both files of write_pair and compares them; exact = bit-identical
/// logits.
void check_pair(const std::string& dir, const variant& v) {
  const auto gguf = load_model(dir + "/model.gguf");
  const auto hf = load_model(dir + "/hf");
  CHECK(hf.format == "safetensors");
  check_same_config(gguf.config, hf.config);
  CHECK(describe_weight_types(hf.weights) == v.dtype);
  CHECK(hf.weights.output.same_as(hf.weights.tok_embd) == v.tied);
  CHECK(hf.weights.layers[0].bq.defined() == (v.arch == "qwen2"));
  auto a = logits_of(gguf, probe_ids), b = logits_of(hf, probe_ids);
  REQUIRE(a.sizes() == b.sizes());
  CHECK_MESSAGE(at::equal(a, b), "max difference " << (a - b).abs().max().item<float>());
  if (v.dtype == "F32")
    CHECK(model_fingerprint(gguf.config, gguf.weights) == model_fingerprint(hf.config, hf.weights));
}

} // namespace

TEST_CASE("a Hugging Face llama checkpoint computes the GGUF conversion's logits exactly") {
  // The GGUF holds q/k rows in adjacent-pair order, the safetensors in
  // rotate-half order: the loader's permutation makes them the same weights.
  temp_dir tmp;
  for (std::string dtype : {"F32", "F16"}) {
    CAPTURE(dtype);
    variant v;
    v.dtype = dtype;
    write_pair(tmp.file(dtype), v);
    check_pair(tmp.file(dtype), v);
  }
  SUBCASE("sharded, with an index, tied output") {
    variant v;
    v.shards = 3;
    v.tied = true;
    write_pair(tmp.file("shards"), v);
    check_pair(tmp.file("shards"), v);
    // The index and a shard name the same checkpoint.
    auto by_index = load_model(tmp.file("shards") + "/hf/model.safetensors.index.json");
    CHECK(by_index.format == "safetensors");
    CHECK(by_index.config.n_layer == 4);
  }
}

TEST_CASE("a Hugging Face qwen2 checkpoint with biases computes the GGUF's logits exactly, tied and untied") {
  temp_dir tmp;
  for (bool tied : {false, true}) {
    CAPTURE(tied);
    variant v;
    v.arch = "qwen2";
    v.tied = tied;
    const auto dir = tmp.file(tied ? "tied" : "untied");
    write_pair(dir, v);
    check_pair(dir, v);
    CHECK(load_model(dir + "/hf").config.rope_halves);
  }
}

TEST_CASE("BF16 safetensors weights stay BF16 and compute what their fp32 values compute") {
  temp_dir tmp;
  variant v;
  v.dtype = "BF16";
  write_pair(tmp.file("bf16"), v);
  const auto bf16 = load_model(tmp.file("bf16") + "/hf/model.safetensors");
  CHECK(describe_weight_types(bf16.weights) == "BF16");
  CHECK(bf16.weights.layers[0].wq.blocks().type == quant::ggml_type::bf16);
  // The same weights widened to fp32: equal within the activations' rounding.
  const auto f32 = load_model(tmp.file("bf16") + "/model.gguf");
  model_weights widened = bf16.weights;
  widened.tok_embd = bf16.weights.tok_embd.to_tensor();
  widened.output = bf16.weights.output.to_tensor();
  for (auto& l : widened.layers)
    for (auto* m : l.matrices())
      *m = m->to_tensor();
  loaded_model reference = bf16;
  reference.weights = widened;
  auto a = logits_of(bf16, probe_ids), b = logits_of(reference, probe_ids);
  CHECK(at::allclose(a, b, 1e-3, 1e-3));
  // And close to the unrounded fp32 model (bf16 keeps 8 bits of mantissa).
  auto c = logits_of(f32, probe_ids);
  CHECK((a - c).abs().max().item<float>() < 0.1f * c.abs().max().item<float>());
}

TEST_CASE("Llama 3 rope_scaling becomes the reference converter's rope frequency factors") {
  temp_dir tmp;
  write_pair(tmp.file("m"), {});
  const auto config_path = tmp.file("m") + "/hf/config.json";
  auto j = json::parse(read_all(config_path));
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 32.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 64}};
  write_json(config_path, j);
  const auto m = load_model(tmp.file("m") + "/hf");
  // head_dim 32 at theta 5e5: wavelengths 2π·θ^(i/32) for i = 0, 2, .., 30;
  // below 64/4 = 16 the factor is 1, above 64 it is 32, smooth between.
  const auto& f = m.config.rope_freq_factors;
  REQUIRE(f.size() == 16);
  for (size_t k = 0; k < f.size(); ++k) {
    const double freq = 1.0 / std::pow(500000.0, double(2 * k) / 32.0);
    const double wavelen = 2 * M_PI / freq;
    double expected = wavelen < 16 ? 1 : wavelen > 64 ? 32 : 0;
    if (expected == 0) {
      const double smooth = (64 / wavelen - 1) / 3;
      expected = 1 / ((1 - smooth) / 32 + smooth);
    }
    CAPTURE(k);
    CHECK(f[k] == doctest::Approx(expected).epsilon(1e-5));
  }
  CHECK(f.front() == 1.0f);
  CHECK(f.back() == 32.0f);
  // Other scalings are refused by name.
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  write_json(config_path, j);
  auto e = error_of([&] { load_model(tmp.file("m") + "/hf"); });
  CHECK(contains(e, "config.json"));
  CHECK(contains(e, "'yarn'"));
  CHECK(contains(e, "llama3"));
}

TEST_CASE("Llama 2's vocabulary as a SentencePiece-style tokenizer.json encodes the reference's test texts as its GGUF") {
  temp_dir tmp;
  const auto vocab_gguf = shared_dir() + "/models/vocab/ggml-vocab-llama-spm.gguf";
  write_json(tmp.file("tokenizer.json"), spm_tokenizer_json(vocab_gguf));
  const auto json_vocab = tokenizer::from_tokenizer_json(tmp.file("tokenizer.json"));
  gguf_file f(vocab_gguf);
  const auto gguf_vocab = tokenizer::from_gguf(f);
  REQUIRE(json_vocab.vocab_size() == 32000);
  // The texts of the reference's vectors, each ended by the separator line.
  const auto inp = read_all(vocab_gguf + ".inp");
  const std::string all(inp.begin(), inp.end()), sep = "\n__ggml_vocab_test__\n";
  int cases = 0;
  for (size_t pos = 0, at; (at = all.find(sep, pos)) != std::string::npos; pos = at + sep.size()) {
    const auto text = all.substr(pos, at - pos);
    CAPTURE(text);
    CHECK(json_vocab.encode(text, false) == gguf_vocab.encode(text, false));
    ++cases;
  }
  CHECK(cases > 40);
}

TEST_CASE("a SentencePiece-style tokenizer.json encodes as the GGUF vocabulary") {
  temp_dir tmp;
  write_json(tmp.file("tokenizer.json"), spm_tokenizer_json());
  const auto json_vocab = tokenizer::from_tokenizer_json(tmp.file("tokenizer.json"));
  const auto& gguf_vocab = load_stories("gguf").files.vocab;
  CHECK(json_vocab.type() == vocab_type::sentencepiece);
  CHECK(json_vocab.vocab_size() == gguf_vocab.vocab_size());
  CHECK(json_vocab.bos() == gguf_vocab.bos());
  CHECK(json_vocab.eos() == gguf_vocab.eos());
  for (std::string text : {"Once upon a time, there was a little girl named Lily.",
                           "  Hello   world\n\nthe end", "Zürich 1234 ☃ naïve", "",
                           "She said: \"I'm happy!\""}) {
    CAPTURE(text);
    CHECK(json_vocab.encode(text) == gguf_vocab.encode(text));
    CHECK(json_vocab.decode(json_vocab.encode(text)) == gguf_vocab.decode(gguf_vocab.encode(text)));
  }
}

namespace {

/// A byte-level vocabulary GGUF as a tokenizer.json with `pre_tokenizer`;
/// merges as "a b" strings, or as [a, b] pairs.
json byte_level_tokenizer_json(const std::string& vocab_gguf, const json& pre_tokenizer,
                               bool pair_merges) {
  gguf_file f(vocab_gguf);
  auto pieces = f.get_string_array("tokenizer.ggml.tokens");
  auto types = f.get_int_array("tokenizer.ggml.token_type");
  json vocab = json::object(), added = json::array();
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (types[i] == 3 || types[i] == 4)
      added.push_back({{"id", i}, {"content", pieces[i]}, {"special", types[i] == 3}});
    else
      vocab[pieces[i]] = i;
  }
  json merges = json::array();
  for (const auto& m : f.get_string_array("tokenizer.ggml.merges")) {
    if (!pair_merges) {
      merges.push_back(m);
      continue;
    }
    auto space = m.find(' ');
    merges.push_back({m.substr(0, space), m.substr(space + 1)});
  }
  return {{"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre_tokenizer},
          {"post_processor", {{"type", "ByteLevel"}, {"trim_offsets", false}}},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
}

json split_then_bytes(const std::string& regex) {
  return {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
}

} // namespace

TEST_CASE("a byte-level tokenizer.json encodes as the GGUF vocabulary, and its split is recognised") {
  temp_dir tmp;
  const auto vocab_gguf = shared_dir() + "/models/vocab/ggml-vocab-gpt-2.gguf";
  gguf_file f(vocab_gguf);
  const auto gguf_vocab = tokenizer::from_gguf(f);
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false},
                           {"use_regex", true}};
  for (bool pairs : {false, true}) {
    CAPTURE(pairs);
    write_json(tmp.file("tokenizer.json"), byte_level_tokenizer_json(vocab_gguf, byte_level, pairs));
    const auto vocab = tokenizer::from_tokenizer_json(tmp.file("tokenizer.json"), 0, 50256, 50256);
    CHECK(vocab.type() == vocab_type::byte_level_bpe);
    CHECK(vocab.pre_name() == "gpt-2");
    CHECK(vocab.vocab_size() == gguf_vocab.vocab_size());
    CHECK_FALSE(vocab.add_bos());
    for (std::string text : {"Hello world", " Hello World", "Äpfel 123456 ½ months",
                             "   \n\n\tthe   end ", "I'm  can't <|endoftext|>x", "ied 4 ½ months"}) {
      CAPTURE(text);
      CHECK(vocab.encode(text, false, true) == gguf_vocab.encode(text, false, true));
      CHECK(vocab.decode(vocab.encode(text, false)) == text);
    }
  }
  // Padded to the model's vocab_size with unused pieces.
  const auto padded = tokenizer::from_tokenizer_json(tmp.file("tokenizer.json"),
                                                     gguf_vocab.vocab_size() + 3, 50256, 50256);
  CHECK(padded.vocab_size() == gguf_vocab.vocab_size() + 3);
  CHECK(padded.kind(gguf_vocab.vocab_size() + 1) == token_kind::unused);
  CHECK(contains(error_of([&] {
                   tokenizer::from_tokenizer_json(tmp.file("tokenizer.json"), 100, 0, 0);
                 }),
                 "vocab_size is 100"));

  const std::string llama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  const std::string qwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  const std::vector<std::pair<json, std::string>> splits = {
    {split_then_bytes(llama3), "llama-bpe"},
    {split_then_bytes(qwen2), "qwen2"},
    {split_then_bytes(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"),
     "gpt-2"},
    {{{"type", "Sequence"},
      {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level}}},
     "smollm"},
    {split_then_bytes(R"(\p{L}+|\s+)"), "gpt-2"}};  // unknown: gpt-2, with a warning
  for (const auto& [pre, name] : splits) {
    CAPTURE(pre.dump());
    write_json(tmp.file("tokenizer.json"), byte_level_tokenizer_json(vocab_gguf, pre, false));
    CHECK(tokenizer::from_tokenizer_json(tmp.file("tokenizer.json"), 0, 0, 0).pre_name() == name);
  }
}

namespace {

/// A one-layer llama folder from tiny256 for the error cases.
std::string small_checkpoint(const temp_dir& tmp) {
  const auto dir = tmp.file("m");
  write_pair(dir, {});
  return dir + "/hf";
}

/// The safetensors file's bytes with its header replaced by `edit(header)`.
void edit_header(const std::string& path, const std::function<void(json&)>& edit) {
  auto bytes = read_all(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = n << 8 | uint8_t(bytes[size_t(i)]);
  auto header = json::parse(std::string(bytes.data() + 8, n));
  edit(header);
  st_writer w;
  w.header = header;
  w.data.assign(bytes.data() + 8 + n, bytes.size() - 8 - n);
  w.write(path);
}

} // namespace

TEST_CASE("corrupt Hugging Face checkpoints give errors naming the file, the tensor or key, and the values") {
  temp_dir tmp;
  const auto dir = small_checkpoint(tmp);
  const auto st = dir + "/model.safetensors";
  const auto good = read_all(st);
  auto restore = [&] { write_all(st, good, good.size()); };
  auto load = [&] { return error_of([&] { load_model(dir); }); };
  REQUIRE(load().empty());

  SUBCASE("truncated before the header length") {
    write_all(st, good, 5);
    auto e = load();
    CHECK(contains(e, st));
    CHECK(contains(e, "5 bytes"));
    CHECK(contains(e, "8-byte header length"));
  }
  SUBCASE("header length beyond the file") {
    auto bytes = good;
    bytes[6] = 1;  // + 2^48
    write_all(st, bytes, bytes.size());
    auto e = load();
    CHECK(contains(e, st));
    CHECK(contains(e, "header length"));
    CHECK(contains(e, fmt::format("only {} bytes follow", good.size() - 8)));
  }
  SUBCASE("truncated data") {
    write_all(st, good, good.size() - 100);
    auto e = load();
    CHECK(contains(e, st));
    CHECK(contains(e, "outside the"));
    CHECK(contains(e, "data_offsets"));
  }
  SUBCASE("a byte range that disagrees with dtype x shape") {
    edit_header(st, [](json& h) { h["model.norm.weight"]["shape"] = {128}; });
    auto e = load();
    CHECK(contains(e, "'model.norm.weight'"));
    CHECK(contains(e, "holds 1024 bytes"));
    CHECK(contains(e, "F32 [128] needs 128 x 4 = 512 bytes"));
  }
  SUBCASE("a shape the model does not expect") {
    edit_header(st, [](json& h) { h["model.norm.weight"]["shape"] = {16, 16}; });
    auto e = load();
    CHECK(contains(e, "'model.norm.weight' has shape [16, 16], expected [256]"));
  }
  SUBCASE("overlapping tensors") {
    edit_header(st, [](json& h) {
      h["model.norm.weight"]["data_offsets"] = h["model.layers.0.input_layernorm.weight"]["data_offsets"];
    });
    CHECK(contains(load(), "overlap"));
  }
  SUBCASE("an unknown dtype, and a dtype that is no weight type") {
    edit_header(st, [](json& h) { h["model.norm.weight"]["dtype"] = "F24"; });
    auto e = load();
    CHECK(contains(e, "'model.norm.weight' has unknown dtype 'F24'"));
    CHECK(contains(e, "BF16"));
    edit_header(st, [](json& h) {
      h["model.norm.weight"]["dtype"] = "I32";
    });
    e = load();
    CHECK(contains(e, st));
    CHECK(contains(e, "'model.norm.weight' has dtype I32; ceco reads weights in F32, F16 and BF16"));
  }
  SUBCASE("a missing tensor") {
    edit_header(st, [](json& h) { h.erase("model.layers.2.mlp.up_proj.weight"); });
    auto e = load();
    CHECK(contains(e, st));
    CHECK(contains(e, "tensor 'model.layers.2.mlp.up_proj.weight' is missing"));
  }
  SUBCASE("a header that is not JSON") {
    auto bytes = good;
    bytes[8] = '[';
    bytes[9] = '[';
    write_all(st, bytes, bytes.size());
    CHECK(contains(load(), "not valid JSON"));
  }

  const auto config_path = dir + "/config.json";
  const auto config = json::parse(read_all(config_path));
  SUBCASE("a missing config key") {
    auto j = config;
    j.erase("num_hidden_layers");
    write_json(config_path, j);
    auto e = load();
    CHECK(contains(e, config_path));
    CHECK(contains(e, "'num_hidden_layers' is missing"));
  }
  SUBCASE("a config value of the wrong type") {
    auto j = config;
    j["hidden_size"] = "256";
    write_json(config_path, j);
    CHECK(contains(load(), "'hidden_size' is \"256\", expected an integer"));
  }
  SUBCASE("an unsupported architecture") {
    auto j = config;
    j["architectures"] = {"MistralForCausalLM"};
    write_json(config_path, j);
    auto e = load();
    CHECK(contains(e, config_path));
    CHECK(contains(e, "'MistralForCausalLM'"));
    CHECK(contains(e, "LlamaForCausalLM"));
    CHECK(contains(e, "Qwen2ForCausalLM"));
  }
  SUBCASE("a missing shard") {
    json index = {{"weight_map", {{"model.norm.weight", "model-00002-of-00002.safetensors"}}}};
    write_json(dir + "/model.safetensors.index.json", index);
    auto e = load();
    CHECK(contains(e, "model.safetensors.index.json"));
    CHECK(contains(e, "shard 'model-00002-of-00002.safetensors' is missing"));
  }
  SUBCASE("a shard named outside the index's folder") {
    json index = {{"weight_map", {{"model.norm.weight", "../model.safetensors"}}}};
    write_json(dir + "/model.safetensors.index.json", index);
    CHECK(contains(load(), "is '../model.safetensors', expected a file name in the index's folder"));
  }
  SUBCASE("a tokenizer the model's vocab_size cannot hold") {
    auto j = config;
    j["vocab_size"] = 100;
    write_json(config_path, j);
    auto e = load();
    CHECK(contains(e, "tokenizer.json"));
    CHECK(contains(e, "vocab_size is 100"));
  }
  SUBCASE("a vocab_size far beyond the tokenizer's ids is refused before it is padded") {
    auto j = config;
    j["vocab_size"] = 1 << 30;
    write_json(config_path, j);
    auto e = load();
    CHECK(contains(e, "tokenizer.json"));
    CHECK(contains(e, "vocab_size 1073741824 is far beyond the tokenizer's 512 ids"));
  }
  SUBCASE("JSON nested deeper than any checkpoint's, in the header and in tokenizer.json") {
    // Copying or printing such a value would recurse once per level.
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    std::vector<char> file(8);
    for (int i = 0; i < 8; ++i)
      file[size_t(i)] = char((uint64_t(deep.size()) >> (8 * i)) & 0xff);
    file.insert(file.end(), deep.begin(), deep.end());
    write_all(st, file, file.size());
    CHECK(contains(load(), "(header): JSON nested more than 64 levels deep"));
    restore();
    const auto tok = dir + "/tokenizer.json";
    const auto tokenizer_text = read_all(tok);
    const std::string nested = "{\"model\": " + deep + "}";
    write_all(tok, std::vector<char>(nested.begin(), nested.end()), nested.size());
    CHECK(contains(load(), tok + ": JSON nested more than 64 levels deep"));
    write_all(tok, tokenizer_text, tokenizer_text.size());
  }
  SUBCASE("a tokenizer.json value of the wrong JSON type") {
    const auto tok = dir + "/tokenizer.json";
    auto j = json::parse(read_all(tok));
    j["model"]["type"] = 5;
    write_json(tok, j);
    auto e = load();
    CHECK(contains(e, dir));
    CHECK(contains(e, "unexpected type"));
    CHECK(contains(e, "must be string, but is number"));
  }
  restore();
}

TEST_CASE("ceco commands take a Hugging Face folder as --model") {
  temp_dir tmp;
  const auto dir = small_checkpoint(tmp);
  auto generate = [](const std::string& model) {
    return run_shell(std::string(CECO_BINARY) + " generate --model " + model +
                     " --prompt 'Once upon a time' --max-tokens 6 2>/dev/null");
  };
  auto hf = generate(dir), gguf = generate(tmp.file("m") + "/model.gguf");
  CHECK(hf.status == 0);
  CHECK(gguf.status == 0);
  // The same weights generate the same text.
  CHECK(hf.out.size() > 16);
  CHECK(hf.out == gguf.out);
  auto ids = [](const std::string& model) {
    return run_shell(std::string(CECO_BINARY) + " tokenize --model " + model +
                     " --text 'Once upon a time, Lily said \"hi\"' 2>&1");
  };
  auto hf_ids = ids(dir), gguf_ids = ids(tmp.file("m") + "/model.gguf");
  CHECK(hf_ids.status == 0);
  CHECK(hf_ids.out == gguf_ids.out);
}

TEST_CASE("a shard name no file can have, or a shard that is a folder, is an error naming the index") {
  temp_dir tmp;
  const auto dir = small_checkpoint(tmp);
  auto load = [&] { return error_of([&] { load_model(dir); }); };
  {
    json index = {{"weight_map", {{"model.norm.weight", std::string(5000, 'a') + ".safetensors"}}}};
    write_json(dir + "/model.safetensors.index.json", index);
    auto e = load();
    CHECK(contains(e, "model.safetensors.index.json"));
    CHECK(contains(e, "a file name of 5012 characters"));
    CHECK(e.size() < 1000);
  }
  {
    std::filesystem::create_directory(dir + "/shard.safetensors");
    json index = {{"weight_map", {{"model.norm.weight", "shard.safetensors"}}}};
    write_json(dir + "/model.safetensors.index.json", index);
    CHECK(contains(load(), "shard 'shard.safetensors' is a folder"));
  }
  // As a command: exit 1 with the message, not an internal error.
  json index = {{"weight_map", {{"model.norm.weight", std::string(5000, 'a') + ".safetensors"}}}};
  write_json(dir + "/model.safetensors.index.json", index);
  auto r = run_ceco("generate --model " + dir + " --max-tokens 2");
  CHECK(r.status == 1);
  CHECK(contains(r.out, "a file name of 5012 characters"));
  auto long_path = run_ceco("generate --max-tokens 2 --model /tmp/" + std::string(100000, 'x'));
  CHECK(long_path.status == 1);
  CHECK(contains(long_path.out, "(100005 characters)"));
}
