#include "test/support.hpp"

#include <algorithm>
#include <random>

#include "model/cpu_kernels.hpp"
#include "model/exit_heads.hpp"
#include "model/generation.hpp"
#include "model/generation_batch.hpp"
#include "model/half.hpp"
#include "model/kv_f16.hpp"
#include "model/quant.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

/// The reference prompt followed by the reference continuation: 45 tokens.
std::vector<int32_t> reference_sequence() {
  auto seq = once_upon_a_time;
  seq.insert(seq.end(), greedy_40.begin(), greedy_40.end());
  return seq;
}

float max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<float>();
}

/// Hidden states after all layers for `ids`, in one batch from position 0.
at::Tensor forward_all(const transformer& m, const std::vector<int32_t>& ids) {
  auto cache = m.make_cache(0, m.config().n_layer);
  auto x = m.embed(ids);
  m.forward_layers(x, 0, 0, m.config().n_layer, cache);
  return x;
}

} // namespace

TEST_CASE("stories260K: the top logit after 'Once upon a time' matches the reference") {
  c10::InferenceMode guard;
  for (auto format : {"gguf", "bin"}) {
    CAPTURE(format);
    const auto& s = load_stories(format);
    CHECK(s.files.config.n_layer == 5);
    CHECK(s.files.config.n_head_kv == 4);
    auto logits = s.model->logits(forward_all(*s.model, once_upon_a_time))[-1];
    auto top = logits.topk(2);
    CHECK(std::get<1>(top)[0].item<int64_t>() == 432);
    CHECK(std::abs(std::get<0>(top)[0].item<float>() - 17.7994f) < 1e-3f);
    CHECK(std::get<1>(top)[1].item<int64_t>() == 383);
    CHECK(std::abs(std::get<0>(top)[1].item<float>() - 14.2813f) < 1e-3f);
    CHECK(at::softmax(logits, 0)[432].item<float>() == doctest::Approx(0.9688).epsilon(1e-3));
  }
}

TEST_CASE("stories260K: 40 greedy tokens equal the reference, from both checkpoint formats") {
  for (auto format : {"gguf", "bin"}) {
    CAPTURE(format);
    const auto& s = load_stories(format);
    generation_options opts;
    opts.max_tokens = 40;
    auto r = generate(*s.model, once_upon_a_time, opts);
    CHECK(r.tokens == greedy_40);
    CHECK(r.stop_reason == "max_tokens");
    CHECK(s.files.vocab.decode(r.tokens, 378) ==
          ", there was a little girl named Lily. She loved to play outside in the park. One "
          "day, she saw a big, red ball.");
  }
}

TEST_CASE("split forward: edge layers 0..k then cloud layers k..L equal the unsplit forward for every k") {
  c10::InferenceMode guard;
  const auto& m = *load_stories("gguf").model;
  const int L = m.config().n_layer;
  auto seq = reference_sequence();
  std::vector<int32_t> prompt(seq.begin(), seq.begin() + 20);
  auto whole = forward_all(m, prompt);
  for (int k = 0; k <= L; ++k) {
    CAPTURE(k);
    auto edge = m.make_cache(0, k);
    auto cloud = m.make_cache(k, L);
    auto unsplit = m.make_cache(0, L);
    // The prompt as one batch ...
    auto x = m.embed(prompt);
    m.forward_layers(x, 0, 0, k, edge);
    m.forward_layers(x, 0, k, L, cloud);
    CHECK(max_abs_diff(x, whole) <= 1e-5f);
    auto y = m.embed(prompt);
    m.forward_layers(y, 0, 0, L, unsplit);
    // ... then one-token steps, handing the state over at k each time.
    for (size_t i = 20; i < seq.size(); ++i) {
      auto a = m.embed({seq[i]});
      m.forward_layers(a, int64_t(i), 0, k, edge);
      m.forward_layers(a, int64_t(i), k, L, cloud);
      auto b = m.embed({seq[i]});
      m.forward_layers(b, int64_t(i), 0, L, unsplit);
      REQUIRE(max_abs_diff(a, b) <= 1e-5f);
    }
  }
}

TEST_CASE("forward_to_exits_while runs forward_to_exits' layers and exits, and stops before the layer it is told to") {
  c10::InferenceMode guard;
  const auto& m = *load_stories("gguf").model;
  const int L = m.config().n_layer;
  auto seq = reference_sequence();
  std::vector<int32_t> prompt(seq.begin(), seq.begin() + 8);
  const std::vector<int> exits = {2, 3};
  std::vector<at::Tensor> want;
  auto all = m.make_cache(0, L);
  auto x = m.embed(prompt);
  m.forward_to_exits(x, 0, 0, L, all, exits, [&](size_t, const at::Tensor& h) { want.push_back(h.clone()); });
  for (int stop_at = 0; stop_at <= L; ++stop_at) {
    CAPTURE(stop_at);
    std::vector<at::Tensor> got;
    int asked = 0;
    auto cache = m.make_cache(0, L);
    auto y = m.embed(prompt);
    const int ran = m.forward_to_exits_while(
      y, 0, 0, L, cache, exits, [&](size_t, const at::Tensor& h) { got.push_back(h.clone()); },
      [&] { return asked++ < stop_at; });
    CHECK(ran == stop_at);
    CHECK(got.size() == size_t(std::count_if(exits.begin(), exits.end(),
                                             [&](int e) { return e <= stop_at; })));
    for (size_t i = 0; i < got.size(); ++i)
      CHECK(max_abs_diff(got[i], want[i]) == 0.0f);
    if (stop_at == L)
      CHECK(max_abs_diff(y, x) <= 1e-5f);
  }
}

TEST_CASE("cached one-token decoding equals a full recompute") {
  c10::InferenceMode guard;
  for (auto format : {"gguf", "bin"}) {
    CAPTURE(format);
    const auto& m = *load_stories(format).model;
    auto seq = reference_sequence();
    auto full = m.logits(forward_all(m, seq));  // [45, vocab]
    auto cache = m.make_cache(0, m.config().n_layer);
    auto x = at::empty({1, m.config().n_embd});
    auto logits = at::empty({m.config().vocab_size});
    for (size_t i = 0; i < seq.size(); ++i) {
      m.embed_into(seq[i], x);
      m.forward_layers(x, int64_t(i), 0, m.config().n_layer, cache);
      m.logits_into(x, logits);
      REQUIRE(max_abs_diff(logits, full[int64_t(i)]) <= 1e-4f);
      CHECK(logits.argmax().item<int64_t>() == full[int64_t(i)].argmax().item<int64_t>());
    }
  }
}

namespace {

/// Logits [seq.size(), vocab] after each position of seq, decoded one
/// token at a time (the CPU decode path) into a cache of `dtype`.
at::Tensor decoded_logits(transformer& m, const std::vector<int32_t>& seq, kv_dtype dtype) {
  m.set_kv_dtype(dtype);
  const int L = m.config().n_layer;
  auto cache = m.make_cache(0, L);
  auto x = at::empty({1, m.config().n_embd});
  auto out = at::empty({int64_t(seq.size()), m.config().vocab_size});
  auto logits = at::empty({m.config().vocab_size});
  for (size_t i = 0; i < seq.size(); ++i) {
    m.embed_into(seq[i], x);
    m.forward_layers(x, int64_t(i), 0, L, cache);
    m.logits_into(x, logits);
    out[int64_t(i)].copy_(logits);
  }
  return out;
}

/// Logits [seq.size(), vocab] of seq prefilled at once (the libtorch path)
/// into a cache of `dtype`.
at::Tensor prefilled_logits(transformer& m, const std::vector<int32_t>& seq, kv_dtype dtype) {
  m.set_kv_dtype(dtype);
  return m.logits(forward_all(m, seq));
}

} // namespace

TEST_CASE("an f16 KV cache keeps the logits near an f32 cache's: stories260K and the built-in model") {
  c10::InferenceMode guard;
  const auto& s = load_stories("gguf");
  const auto builtin = load_model(std::string(CECO_SOURCE_DIR) + "/config/models/kjv/model.gguf");
  struct model_case {
    std::string name;
    const loaded_model* files;
    std::vector<int32_t> seq;
  };
  const std::vector<model_case> cases = {
    {"stories260K", &s.files, reference_sequence()},
    {"built-in", &builtin,
     builtin.vocab.encode("The LORD is my shepherd; I shall not want. He maketh me to lie down in "
                          "green pastures: he leadeth me beside the still waters.", true)},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    transformer m(c.files->config, c.files->weights, c10::Device(c10::kCPU));
    CHECK(m.cache_dtype() == kv_dtype::f32);  // the default
    // Decoded and prefilled f16 caches each round their own f32 keys: they
    // agree to f16's precision, not to f32's 1e-4.
    const auto decoded16 = decoded_logits(m, c.seq, kv_dtype::f16);
    const auto prefilled16 = prefilled_logits(m, c.seq, kv_dtype::f16);
    MESSAGE(c.name << ": f16 decoded against prefilled " << max_abs_diff(decoded16, prefilled16));
    CHECK(max_abs_diff(decoded16, prefilled16) <= 0.05f);
    CHECK(at::equal(decoded16.argmax(1), prefilled16.argmax(1)));
    for (bool decode : {true, false}) {
      CAPTURE(decode);
      auto of = [&](kv_dtype t) {
        return decode ? decoded_logits(m, c.seq, t) : prefilled_logits(m, c.seq, t);
      };
      const auto f32 = of(kv_dtype::f32), f16 = of(kv_dtype::f16);
      const float diff = max_abs_diff(f16, f32);
      const float range = f32.abs().max().item<float>();
      MESSAGE(c.name << (decode ? " decoded" : " prefilled") << ": largest logit difference "
                     << diff << " (logits up to " << range << ")");
      CHECK(diff > 0.0f);  // the cache did hold f16
      CHECK(diff <= 0.05f);  // measured 0.013 (stories260K), 0.002 (built-in)
      CHECK(at::equal(f16.argmax(1), f32.argmax(1)));
    }
  }
}

TEST_CASE("an f16 cache holds 2 bytes a value and rolls back as an f32 cache does") {
  c10::InferenceMode guard;
  const auto& s = load_stories("gguf");
  transformer m(s.files.config, s.files.weights, c10::Device(c10::kCPU));
  const int L = m.config().n_layer;
  const auto& cfg = m.config();
  CHECK(kv_cache::bytes_for(cfg, 0, L, 64, kv_dtype::f32) ==
        2 * kv_cache::bytes_for(cfg, 0, L, 64, kv_dtype::f16));
  auto seq = reference_sequence();
  std::vector<int32_t> first(seq.begin(), seq.begin() + 12);
  std::vector<int32_t> second(seq.begin(), seq.begin() + 7);  // the same 7, then others
  for (int32_t t : {400, 17, 250, 9, 33})
    second.push_back(t);
  for (auto dtype : {kv_dtype::f16, kv_dtype::f32}) {
    CAPTURE(kv_dtype_name(dtype));
    m.set_kv_dtype(dtype);
    auto cache = m.make_cache(0, L, 64);
    CHECK(cache.dtype() == dtype);
    CHECK((cache.keys(0).scalar_type() == (dtype == kv_dtype::f16 ? at::kHalf : at::kFloat)));
    CHECK(cache.bytes() == kv_cache::bytes_for(cfg, 0, L, 64, dtype));
    CHECK(cache.bytes() == int64_t(2 * L * 64 * cfg.n_embd_kv() * (dtype == kv_dtype::f16 ? 2 : 4)));
    for (bool fast : {true, false}) {
      CAPTURE(fast);
      m.set_fast_decode(fast);
      // Decode `first`, roll back to 7 positions, decode the rest of `second`.
      auto x = at::empty({1, cfg.n_embd});
      auto logits = at::empty({cfg.vocab_size});
      auto rolled = m.make_cache(0, L, 64);
      for (size_t i = 0; i < first.size(); ++i) {
        m.embed_into(first[i], x);
        m.forward_layers(x, int64_t(i), 0, L, rolled);
      }
      rolled.truncate(7);
      CHECK(rolled.length() == 7);
      auto fresh = m.make_cache(0, L, 64);
      for (size_t i = 0; i < 7; ++i) {
        m.embed_into(second[i], x);
        m.forward_layers(x, int64_t(i), 0, L, fresh);
      }
      for (size_t i = 7; i < second.size(); ++i) {
        auto a = at::empty({1, cfg.n_embd}), b = at::empty({1, cfg.n_embd});
        m.embed_into(second[i], a);
        m.embed_into(second[i], b);
        m.forward_layers(a, int64_t(i), 0, L, rolled);
        m.forward_layers(b, int64_t(i), 0, L, fresh);
        CHECK(at::equal(a, b));
      }
      for (int il = 0; il < L; ++il) {
        CHECK(at::equal(rolled.keys(il).narrow(0, 0, 12), fresh.keys(il).narrow(0, 0, 12)));
        CHECK(at::equal(rolled.values(il).narrow(0, 0, 12), fresh.values(il).narrow(0, 0, 12)));
      }
    }
    m.set_fast_decode(true);
  }
}

TEST_CASE("f16 attention equals f32 attention over the same f16 values, at every kernel level") {
  std::mt19937 rng(2024);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  struct shape {
    int64_t n_pos, n_head, n_head_kv, head_dim;
  };
  // Head sizes with and without a tail past 8 and 16 lanes; grouped
  // query heads; a long context that splits the heads over threads.
  const std::vector<shape> shapes = {
    {1, 4, 4, 8}, {37, 8, 2, 64}, {50, 6, 3, 20}, {129, 4, 1, 72}, {5, 2, 2, 3}, {400, 12, 12, 64}};
  using quant::kernel_level;
  int levels = 0;
  for (auto level : {kernel_level::portable, kernel_level::avx2, kernel_level::avx512,
                     kernel_level::neon, kernel_level::dotprod}) {
    if (!quant::kernel_level_supported(level))
      continue;
    CAPTURE(quant::kernel_level_name(level));
    quant::set_kernel_level(level);
    ++levels;
    for (const auto& sh : shapes) {
      CAPTURE(sh.n_pos);
      CAPTURE(sh.head_dim);
      const int64_t n_kv = sh.n_pos * sh.n_head_kv * sh.head_dim, d = sh.n_head * sh.head_dim;
      std::vector<float> q(static_cast<size_t>(d)), k(static_cast<size_t>(n_kv)), v(static_cast<size_t>(n_kv));
      for (auto* x : {&q, &k, &v})
        for (auto& e : *x)
          e = normal(rng);
      k[0] = 70000.0f;  // past f16's largest: infinity, as float_to_half
      k[1] = 1e-6f;      // an f16 subnormal
      // The f16 rows, by store_f16 and by the portable conversion, bit for bit.
      std::vector<uint16_t> k16(k.size()), v16(v.size());
      kernels::store_f16(k16.data(), k.data(), n_kv);
      kernels::store_f16(v16.data(), v.data(), n_kv);
      int mismatched = 0;
      for (int64_t i = 0; i < n_kv; ++i)
        mismatched += (k16[size_t(i)] != float_to_half(k[size_t(i)])) +
                      (v16[size_t(i)] != float_to_half(v[size_t(i)]));
      CHECK(mismatched == 0);
      std::vector<float> back(k.size());
      kernels::load_f16(back.data(), k16.data(), n_kv);
      for (int64_t i = 0; i < n_kv; ++i)
        mismatched += back[size_t(i)] != half_to_float(k16[size_t(i)]);
      CHECK(mismatched == 0);
      k[0] = 3.0f;  // the attention below on finite keys
      k16[0] = float_to_half(k[0]);
      std::vector<float> kr(k.size()), vr(v.size());
      for (int64_t i = 0; i < n_kv; ++i) {
        kr[size_t(i)] = half_to_float(k16[size_t(i)]);
        vr[size_t(i)] = half_to_float(v16[size_t(i)]);
      }
      std::vector<float> scores(static_cast<size_t>(sh.n_head * (sh.n_pos + 1)));
      std::vector<float> out32(static_cast<size_t>(d)), out16(static_cast<size_t>(d)), exact(static_cast<size_t>(d));
      kernels::attention(out32.data(), q.data(), kr.data(), vr.data(), sh.n_pos, sh.n_head,
                         sh.n_head_kv, sh.head_dim, scores.data());
      kernels::attention(out16.data(), q.data(), k16.data(), v16.data(), sh.n_pos, sh.n_head,
                         sh.n_head_kv, sh.head_dim, scores.data());
      kernels::attention(exact.data(), q.data(), k.data(), v.data(), sh.n_pos, sh.n_head,
                         sh.n_head_kv, sh.head_dim, scores.data());
      float same_values = 0, unrounded = 0;
      for (int64_t i = 0; i < d; ++i) {
        same_values = std::max(same_values, std::fabs(out16[size_t(i)] - out32[size_t(i)]));
        unrounded = std::max(unrounded, std::fabs(out16[size_t(i)] - exact[size_t(i)]));
      }
      CHECK(same_values <= 1e-5f);  // only the order of the sums differs
      CHECK(unrounded <= 1e-2f);    // f16 keeps 11 significant bits
    }
  }
  quant::set_kernel_level(quant::best_kernel_level());
  CHECK(levels >= 1);
}

TEST_CASE("a batched catch-up equals one-by-one decoding, outputs and cache alike") {
  c10::InferenceMode guard;
  const auto& m = *load_stories("gguf").model;
  const int L = m.config().n_layer;
  auto seq = reference_sequence();
  std::vector<int32_t> prompt(seq.begin(), seq.begin() + 5);
  std::vector<int32_t> pending(seq.begin() + 5, seq.begin() + 17);  // 12 positions

  auto batched = m.make_cache(0, L);
  auto single = m.make_cache(0, L);
  for (auto* c : {&batched, &single}) {
    auto x = m.embed(prompt);
    m.forward_layers(x, 0, 0, L, *c);
  }
  auto xb = m.embed(pending);
  m.forward_layers(xb, 5, 0, L, batched);
  for (size_t i = 0; i < pending.size(); ++i) {
    auto x1 = m.embed({pending[i]});
    m.forward_layers(x1, int64_t(5 + i), 0, L, single);
    REQUIRE(max_abs_diff(x1[0], xb[int64_t(i)]) <= 1e-5f);
  }
  CHECK(batched.length() == 17);
  CHECK(single.length() == 17);
  for (int il = 0; il < L; ++il) {
    CHECK(max_abs_diff(batched.keys(il).narrow(0, 0, 17), single.keys(il).narrow(0, 0, 17)) <= 1e-5f);
    CHECK(max_abs_diff(batched.values(il).narrow(0, 0, 17), single.values(il).narrow(0, 0, 17)) <= 1e-5f);
  }
}

namespace {

/// Steps sequences of the reference text through layers [split, L), each
/// alone and all together, and returns the largest difference between the
/// two in outputs, keys and values.
struct step_item {
  size_t prefix;  // positions already in the cache
  size_t rows;    // positions this step computes
};

float step_alone_vs_together(const transformer& m, int split, const std::vector<step_item>& items,
                             std::vector<kv_cache>& together_caches) {
  const int L = m.config().n_layer;
  auto seq = reference_sequence();
  std::vector<kv_cache> alone_caches, stacked_caches;
  std::vector<at::Tensor> alone, together, rows_of_items;
  for (auto& it : items) {
    for (auto* caches : {&alone_caches, &together_caches, &stacked_caches}) {
      caches->push_back(m.make_cache(split, L));
      if (it.prefix > 0) {
        // Layers [split, L) take the hidden states of layers [0, split).
        auto edge = m.make_cache(0, split);
        auto x = m.embed({seq.begin(), seq.begin() + std::ptrdiff_t(it.prefix)});
        m.forward_layers(x, 0, 0, split, edge);
        m.forward_layers(x, 0, split, L, caches->back());
      }
    }
    auto edge = m.make_cache(0, split);
    auto x = m.embed({seq.begin(), seq.begin() + std::ptrdiff_t(it.prefix + it.rows)});
    m.forward_layers(x, 0, 0, split, edge);
    auto rows = x.narrow(0, int64_t(it.prefix), int64_t(it.rows)).contiguous();
    alone.push_back(rows.clone());
    together.push_back(rows.clone());
    rows_of_items.push_back(rows);
  }
  // The same inputs as consecutive rows of one tensor (as the cloud layers
  // decode uploads): computed where they are, to the same bits.
  auto stacked_rows = at::cat(rows_of_items, 0);
  std::vector<at::Tensor> stacked;
  int64_t row = 0;
  for (auto& it : items) {
    stacked.push_back(stacked_rows.narrow(0, row, int64_t(it.rows)));
    row += int64_t(it.rows);
  }
  const auto* stacked_data = stacked_rows.data_ptr<float>();
  std::vector<transformer::sequence_step> steps, stacked_steps;
  for (size_t i = 0; i < items.size(); ++i) {
    m.forward_layers(alone[i], int64_t(items[i].prefix), split, L, alone_caches[i]);
    steps.push_back({&together[i], int64_t(items[i].prefix), &together_caches[i]});
    stacked_steps.push_back({&stacked[i], int64_t(items[i].prefix), &stacked_caches[i]});
  }
  m.forward_sequences(steps, split, L);
  m.forward_sequences(stacked_steps, split, L);
  CHECK(stacked_rows.data_ptr<float>() == stacked_data);
  float worst = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto n = int64_t(items[i].prefix + items[i].rows);
    CHECK(together_caches[i].length() == n);
    CHECK(stacked_caches[i].length() == n);
    CHECK(at::equal(stacked[i], together[i]));
    worst = std::max(worst, max_abs_diff(alone[i], together[i]));
    for (int il = split; il < L; ++il) {
      worst = std::max(worst, max_abs_diff(alone_caches[i].keys(il).narrow(0, 0, n),
                                           together_caches[i].keys(il).narrow(0, 0, n)));
      worst = std::max(worst, max_abs_diff(alone_caches[i].values(il).narrow(0, 0, n),
                                           together_caches[i].values(il).narrow(0, 0, n)));
      CHECK(at::equal(stacked_caches[i].keys(il).narrow(0, 0, n),
                      together_caches[i].keys(il).narrow(0, 0, n)));
      CHECK(at::equal(stacked_caches[i].values(il).narrow(0, 0, n),
                      together_caches[i].values(il).narrow(0, 0, n)));
    }
  }
  return worst;
}

} // namespace

TEST_CASE("one step over several sequences equals stepping each sequence alone") {
  c10::InferenceMode guard;
  const auto& m = *load_stories("gguf").model;
  const int L = m.config().n_layer, split = 2;
  auto seq = reference_sequence();
  // Decode steps only (the cloud's steady state: plain loops), then decode
  // steps mixed with catch-ups of several positions (libtorch products).
  std::vector<kv_cache> decode_caches;
  CHECK(step_alone_vs_together(m, split, {{5, 1}, {12, 1}, {20, 1}, {1, 1}, {33, 1}},
                               decode_caches) <= 1e-5f);
  std::vector<kv_cache> together_caches;
  CHECK(step_alone_vs_together(m, split, {{5, 1}, {12, 1}, {3, 6}, {0, 4}, {20, 1}},
                               together_caches) <= 1e-5f);

  // Every step is checked before any is computed.
  auto before = together_caches[0].length();
  auto gap = m.embed({seq[40]});
  auto x0 = m.embed({seq[7]});
  std::vector<transformer::sequence_step> bad{{&x0, before, &together_caches[0]},
                                              {&gap, 40, &together_caches[1]}};
  CHECK(error_of([&] { m.forward_sequences(bad, split, L); }).find("would leave a gap") != std::string::npos);
  CHECK(together_caches[0].length() == before);
  std::vector<transformer::sequence_step> shared{{&x0, before, &together_caches[0]},
                                                 {&gap, before, &together_caches[0]}};
  CHECK(error_of([&] { m.forward_sequences(shared, split, L); }).find("share one cache") != std::string::npos);
}

TEST_CASE("generations stepped together, joining and leaving, each get generate()'s tokens alone") {
  auto s = load_stories("gguf");
  auto seq = reference_sequence();
  auto prompt = [&](size_t from, size_t n) {
    return std::vector<int32_t>(seq.begin() + long(from), seq.begin() + long(from + n));
  };
  struct job {
    std::vector<int32_t> prompt;
    int max_tokens;
    int joins_at;  // step at which it is added
  };
  const std::vector<job> jobs = {{prompt(0, 6), 30, 0},   {prompt(3, 1), 12, 0},
                                 {prompt(10, 9), 25, 2},  {prompt(20, 4), 1, 2},
                                 {prompt(0, 6), 18, 5},   {prompt(30, 12), 40, 9}};
  generation_batch batch(s.model);
  std::map<uint64_t, size_t> job_of;
  std::map<size_t, std::vector<int32_t>> got;
  std::vector<generation_batch::finished> done;
  size_t most_together = 0;
  for (int stepped = 0; stepped < 200 && got.size() < jobs.size(); ++stepped) {
    for (size_t j = 0; j < jobs.size(); ++j)
      if (jobs[j].joins_at == stepped)
        job_of[batch.add(jobs[j].prompt, jobs[j].max_tokens, 2)] = j;
    most_together = std::max(most_together, batch.size());
    auto work = batch.step(done);
    CHECK(work.tokens > 0);
    for (auto& f : done)
      got[job_of.at(f.id)] = std::move(f.tokens);
    done.clear();
  }
  CHECK(most_together >= 4);
  REQUIRE(got.size() == jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) {
    CAPTURE(j);
    generation_options opts;
    opts.max_tokens = jobs[j].max_tokens;
    opts.eos = 2;
    CHECK(got[j] == generate(*s.model, jobs[j].prompt, opts).tokens);
  }
  CHECK(error_of([&] { batch.add({}, 4, 2); }).find("no tokens") != std::string::npos);
}

TEST_CASE("the CPU decode kernels and the libtorch path generate the same tokens") {
  auto s = load_stories("bin");
  transformer slow(s.files.config, s.files.weights, c10::Device(c10::kCPU));
  slow.set_fast_decode(false);
  generation_options opts;
  opts.max_tokens = 60;
  auto a = generate(*s.model, once_upon_a_time, opts);
  auto b = generate(slow, once_upon_a_time, opts);
  CHECK(a.tokens == b.tokens);
}

TEST_CASE("forward rejects gaps, foreign layers and a full cache with clear errors") {
  c10::InferenceMode guard;
  const auto& m = *load_stories("gguf").model;
  auto cache = m.make_cache(0, 2, 8);
  auto x = m.embed({1, 403});
  CHECK(error_of([&] { m.forward_layers(x, 3, 0, 2, cache); })
          .find("layer 0 has 0 positions cached, so position 3 would leave a gap") != std::string::npos);
  CHECK(error_of([&] { m.forward_layers(x, 0, 0, 3, cache); }).find("not all held by the cache") != std::string::npos);
  CHECK(error_of([&] { m.forward_layers(x, 7, 0, 2, cache); }).find("exceed the cache capacity of 8") != std::string::npos);
  auto wrong = at::zeros({1, 10});
  CHECK(error_of([&] { m.forward_layers(wrong, 0, 0, 2, cache); }).find("[T, 64]") != std::string::npos);
  CHECK(error_of([&] { m.embed({512}); }).find("token id 512 outside the vocabulary") != std::string::npos);
}

TEST_CASE("untrained exit heads are the logit lens, and trained heads save and load exactly") {
  c10::InferenceMode guard;
  const auto& m = *load_stories("gguf").model;
  auto cache = m.make_cache(0, 5);
  auto x = m.embed(once_upon_a_time);
  m.forward_layers(x, 0, 0, 2, cache);
  auto lens = exit_heads::untrained(m, {2, 3});
  CHECK(max_abs_diff(lens.logits(0, x), m.logits(x)) == 0.0f);

  // A head with its own classifier and a residual adapter.
  auto heads = exit_heads::untrained(m, {2, 3});
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  for (size_t i = 0; i < heads.size(); ++i) {
    heads[i].norm = at::rand({64}, gen) + 0.5;
    heads[i].output = at::randn({512, 64}, gen) * 0.1;
    heads[i].own_output = true;
    heads[i].adapter_a = at::randn({16, 64}, gen) * 0.1;
    heads[i].adapter_c = at::randn({16}, gen) * 0.1;
    heads[i].adapter_b = at::randn({64, 16}, gen) * 0.1;
  }
  temp_dir tmp;
  heads.save(tmp.file("heads.gguf"));
  auto back = exit_heads::load(tmp.file("heads.gguf"), m);
  CHECK(back.layers() == std::vector<int>{2, 3});
  for (size_t i = 0; i < 2; ++i)
    CHECK(max_abs_diff(back.logits(i, x), heads.logits(i, x)) == 0.0f);
  auto only3 = exit_heads::load(tmp.file("heads.gguf"), m, {3});
  CHECK(max_abs_diff(only3.logits(0, x), heads.logits(1, x)) == 0.0f);
  CHECK(error_of([&] { exit_heads::load(tmp.file("heads.gguf"), m, {1}); })
          .find("no head for the exit after layer 1") != std::string::npos);
  CHECK(error_of([&] { exit_heads::untrained(m, {5}); }).find("outside 1..4") != std::string::npos);
  CHECK(error_of([&] { exit_heads::untrained(m, {3, 2}); }).find("strictly ascending") != std::string::npos);
}

TEST_CASE("the exit trace follows the threshold and never changes the generated tokens") {
  const auto& m = *load_stories("gguf").model;
  auto heads = exit_heads::untrained(m, {2, 3, 4});
  generation_options opts;
  opts.max_tokens = 40;
  opts.exits = &heads;

  opts.threshold = 1.5f;  // nothing is ever that confident
  auto none = generate(m, once_upon_a_time, opts);
  CHECK(none.tokens == greedy_40);
  REQUIRE(none.exit_trace.size() == 40);
  for (size_t i = 0; i < 40; ++i) {
    const auto& s = none.exit_trace[i];
    CHECK(s.exit_layer == -1);
    CHECK(s.agrees == (s.tokens[2] == greedy_40[i]));  // the deepest exit decides
  }

  opts.threshold = 0.0f;
  opts.min_exit_layer = 3;
  auto all = generate(m, once_upon_a_time, opts);
  CHECK(all.tokens == greedy_40);
  for (size_t i = 0; i < 40; ++i) {
    const auto& s = all.exit_trace[i];
    CHECK(s.exit_layer == 3);
    CHECK(s.agrees == (s.tokens[1] == greedy_40[i]));
    for (float c : s.confidence)
      CHECK((c > 0.0f && c <= 1.0f));
  }

  // At layer 4 the logit lens agrees with the final layer about half the time
  // (docs/design.md §8); it must not be all or nothing.
  opts.threshold = 0.0f;
  opts.min_exit_layer = 4;
  auto deep = generate(m, once_upon_a_time, opts);
  int agree = 0;
  for (auto& s : deep.exit_trace)
    agree += s.agrees;
  CHECK(agree > 5);
  CHECK(agree < 40);
}
