#include "test/support.hpp"

#include <cmath>
#include <map>

#include <fmt/format.h>


using namespace ceco;
using namespace ceco::test;

namespace {

/// A small random-weight model of one architecture, written as GGUF with
/// stories260K's vocabulary, and the same weights in double for the
/// reference computation below.
struct tiny_model {
  std::string arch = "llama";
  int d = 64, ff = 96, layers = 2, heads = 4, kv_heads = 2, context = 32;
  float theta = 10000.0f;
  bool biases = false;              // qwen2's q/k/v biases
  bool halves = false;              // qwen2's RoPE pairs (i, i + hd/2)
  std::vector<float> freq_factors;  // Llama 3's rope_freqs.weight
  std::map<std::string, at::Tensor> w;  // name -> double tensor, torch shapes

  int hd() const { return d / heads; }

  void make(uint64_t seed) {
    gguf_file vocab(stories_gguf());
    const int64_t V = int64_t(vocab.get_string_array("tokenizer.ggml.tokens").size());
    at::manual_seed(seed);
    auto rnd = [](std::vector<int64_t> shape, double scale) {
      return at::randn(shape, at::kDouble) * scale;
    };
    const int64_t d_kv = int64_t(hd()) * kv_heads;
    w["token_embd.weight"] = rnd({V, d}, 1.0);
    w["output_norm.weight"] = 1 + rnd({d}, 0.1);
    w["output.weight"] = rnd({V, d}, 0.2);
    for (int il = 0; il < layers; ++il) {
      auto n = [&](const char* s) { return fmt::format("blk.{}.{}", il, s); };
      w[n("attn_norm.weight")] = 1 + rnd({d}, 0.1);
      w[n("ffn_norm.weight")] = 1 + rnd({d}, 0.1);
      w[n("attn_q.weight")] = rnd({d, d}, 0.3);
      w[n("attn_k.weight")] = rnd({d_kv, d}, 0.3);
      w[n("attn_v.weight")] = rnd({d_kv, d}, 0.3);
      w[n("attn_output.weight")] = rnd({d, d}, 0.1);
      w[n("ffn_gate.weight")] = rnd({ff, d}, 0.2);
      w[n("ffn_up.weight")] = rnd({ff, d}, 0.2);
      w[n("ffn_down.weight")] = rnd({d, ff}, 0.1);
      if (biases) {
        w[n("attn_q.bias")] = rnd({d}, 0.5);
        w[n("attn_k.bias")] = rnd({d_kv}, 0.5);
        w[n("attn_v.bias")] = rnd({d_kv}, 0.5);
      }
    }
  }

  void write(const std::string& path) const {
    gguf_file vocab(stories_gguf());
    gguf_writer g;
    g.set_string("general.architecture", arch);
    auto key = [&](const char* k) { return arch + "." + k; };
    g.set_uint32(key("context_length"), uint32_t(context));
    g.set_uint32(key("embedding_length"), uint32_t(d));
    g.set_uint32(key("feed_forward_length"), uint32_t(ff));
    g.set_uint32(key("block_count"), uint32_t(layers));
    g.set_uint32(key("attention.head_count"), uint32_t(heads));
    g.set_uint32(key("attention.head_count_kv"), uint32_t(kv_heads));
    g.set_float32(key("attention.layer_norm_rms_epsilon"), 1e-5f);
    g.set_float32(key("rope.freq_base"), theta);
    copy_stories_vocabulary(g);
    for (auto k : {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"})
      g.set_uint32(k, uint32_t(vocab.get_uint(k)));
    auto add = [&](const std::string& name, const at::Tensor& t) {
      auto f = t.to(at::kFloat).contiguous();
      std::vector<int64_t> ne(f.sizes().rbegin(), f.sizes().rend());  // ggml order
      g.add_tensor(name, ne, f.data_ptr<float>());
    };
    for (const auto& [name, t] : w)
      add(name, t);
    if (!freq_factors.empty())
      add("rope_freqs.weight",
          at::tensor(at::ArrayRef<float>(freq_factors.data(), freq_factors.size())));
    g.write(path);
  }

  /// The model written out plainly in double: logits [T, vocab] of ids.
  at::Tensor reference_logits(const std::vector<int32_t>& ids) const {
    const int64_t T = int64_t(ids.size()), half = hd() / 2;
    auto norm = [](const at::Tensor& x, const at::Tensor& g) {
      return x * at::rsqrt(x.pow(2).mean(-1, true) + 1e-5) * g;
    };
    // angle(t, i) = t · theta^(-2i / hd) / factor_i
    auto angle = at::empty({T, half}, at::kDouble);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < half; ++i)
        angle[t][i] = double(t) * std::pow(double(theta), -2.0 * double(i) / hd()) /
                      (freq_factors.empty() ? 1.0 : double(freq_factors[size_t(i)]));
    auto rotate = [&](const at::Tensor& x, int64_t n_heads) {  // [T, n_heads * hd]
      auto v = x.reshape({T, n_heads, hd()});
      auto c = angle.cos().unsqueeze(1), s = angle.sin().unsqueeze(1);
      at::Tensor a, b;
      if (halves) {
        a = v.narrow(2, 0, half);
        b = v.narrow(2, half, half);
        return at::cat({a * c - b * s, a * s + b * c}, 2).reshape({T, -1});
      }
      a = v.slice(2, 0, hd(), 2);
      b = v.slice(2, 1, hd(), 2);
      return at::stack({a * c - b * s, a * s + b * c}, 3).reshape({T, -1});
    };
    auto idx = at::tensor(std::vector<int64_t>(ids.begin(), ids.end()));
    auto x = w.at("token_embd.weight").index_select(0, idx);
    auto mask = at::ones({T, T}, at::kBool).triu(1);
    for (int il = 0; il < layers; ++il) {
      auto W = [&](const char* s) { return w.at(fmt::format("blk.{}.{}", il, s)); };
      auto h = norm(x, W("attn_norm.weight"));
      auto q = h.matmul(W("attn_q.weight").t());
      auto k = h.matmul(W("attn_k.weight").t());
      auto v = h.matmul(W("attn_v.weight").t());
      if (biases) {
        q = q + W("attn_q.bias");
        k = k + W("attn_k.bias");
        v = v + W("attn_v.bias");
      }
      q = rotate(q, heads);
      k = rotate(k, kv_heads);
      auto out = at::empty({T, d}, at::kDouble);
      for (int hq = 0; hq < heads; ++hq) {
        const int64_t hk = hq / (heads / kv_heads);
        auto qh = q.narrow(1, hq * hd(), hd()), kh = k.narrow(1, hk * hd(), hd()),
             vh = v.narrow(1, hk * hd(), hd());
        auto scores = qh.matmul(kh.t()) / std::sqrt(double(hd()));
        scores = scores.masked_fill(mask, -INFINITY);
        out.narrow(1, hq * hd(), hd()).copy_(at::softmax(scores, 1).matmul(vh));
      }
      x = x + out.matmul(W("attn_output.weight").t());
      h = norm(x, W("ffn_norm.weight"));
      auto gate = h.matmul(W("ffn_gate.weight").t());
      x = x + (gate * at::sigmoid(gate) * h.matmul(W("ffn_up.weight").t()))
                .matmul(W("ffn_down.weight").t());
    }
    return norm(x, w.at("output_norm.weight")).matmul(w.at("output.weight").t());
  }
};

/// ceco's logits of ids [T, vocab]: the first T-1 prefilled at once, the
/// last decoded alone.
at::Tensor ceco_logits(const std::string& path, const std::vector<int32_t>& ids) {
  auto m = load_model(path);
  transformer model(m.config, m.weights, c10::Device(c10::kCPU));
  c10::InferenceMode guard;
  const int L = m.config.n_layer;
  auto cache = model.make_cache(0, L);
  auto x = model.embed(std::vector<int32_t>(ids.begin(), ids.end() - 1));
  model.forward_layers(x, 0, 0, L, cache);
  auto prefill = model.logits(x);
  auto last = model.embed({ids.back()});
  model.forward_layers(last, int64_t(ids.size()) - 1, 0, L, cache);
  return at::cat({prefill, model.logits(last)}, 0).to(at::kDouble);
}

const std::vector<int32_t> prompt = {1, 403, 407, 261, 378, 290, 500, 17};

void check_against_reference(tiny_model& t, uint64_t seed) {
  t.make(seed);
  temp_dir tmp;
  const auto path = tmp.file(t.arch + ".gguf");
  t.write(path);
  const auto ours = ceco_logits(path, prompt);
  const auto expected = t.reference_logits(prompt);
  const double scale = expected.abs().max().item<double>();
  const double diff = (ours - expected).abs().max().item<double>();
  MESSAGE(t.arch << ": largest logit difference " << diff << " (logits up to " << scale << ")");
  CHECK(diff <= 1e-4 * std::max(1.0, scale));
}

} // namespace

TEST_CASE("a qwen2 model (q/k/v biases, RoPE by halves) computes what its plain definition computes") {
  tiny_model t;
  t.arch = "qwen2";
  t.biases = true;
  t.halves = true;
  t.theta = 1000000.0f;
  check_against_reference(t, 7);
  // The same weights read as llama (no biases, adjacent pairs) compute
  // something else: the test can tell the two apart.
  tiny_model plain = t;
  plain.arch = "llama";
  plain.biases = false;
  plain.halves = false;
  plain.make(7);
  temp_dir tmp;
  plain.write(tmp.file("llama.gguf"));
  CHECK((ceco_logits(tmp.file("llama.gguf"), prompt) - t.reference_logits(prompt))
          .abs()
          .max()
          .item<double>() > 0.1);
}

TEST_CASE("Llama 3 RoPE frequency factors and freq_base come from the file") {
  tiny_model t;
  t.theta = 500000.0f;
  for (int i = 0; i < t.hd() / 2; ++i)
    t.freq_factors.push_back(1.0f + float(i % 4) * 2.5f);
  check_against_reference(t, 11);
  CHECK(load_model(stories_gguf()).config.rope_freq_factors.empty());
}

TEST_CASE("a GGUF of another architecture is refused naming general.architecture and the supported ones") {
  tiny_model t;
  t.arch = "phi3";
  t.make(3);
  temp_dir tmp;
  const auto path = tmp.file("phi3.gguf");
  t.write(path);
  const auto msg = error_of([&] { load_model(path); });
  CHECK(msg.find(path) != std::string::npos);
  CHECK(msg.find("general.architecture is 'phi3'") != std::string::npos);
  CHECK(msg.find("llama, qwen2") != std::string::npos);
}

TEST_CASE("rope_freqs.weight of the wrong length is refused by name") {
  tiny_model t;
  t.freq_factors = {1.0f, 2.0f, 3.0f};  // head_dim / 2 is 8
  t.make(5);
  temp_dir tmp;
  const auto path = tmp.file("bad-freqs.gguf");
  t.write(path);
  const auto msg = error_of([&] { load_model(path); });
  CHECK(msg.find("rope_freqs.weight") != std::string::npos);
}
