#include "test/support.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include "model/half.hpp"
#include "model/loader.hpp"
#include "model/quant.hpp"
#include "model/quantize.hpp"
#include "model/random_weights.hpp"
#include "model/transformer.hpp"

using namespace ceco;
using wtype = quant::ggml_type;

namespace {

const std::vector<wtype> quantizable = {wtype::f32,  wtype::f16,  wtype::bf16, wtype::q8_0,
                                        wtype::q4_0, wtype::q4_1, wtype::q5_0, wtype::q5_1,
                                        wtype::q2_k, wtype::q3_k, wtype::q4_k, wtype::q5_k,
                                        wtype::q6_k};

/// Rows with what quantizers get wrong: blocks of one sign, a zero block,
/// outliers, scales from 1e-3 to 10.
std::vector<float> awkward_rows(int64_t rows, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = std::pow(10.0f, float(r % 5) - 3.0f);
    for (int64_t i = 0; i < cols; ++i)
      x[size_t(r * cols + i)] = scale * normal(rng);
    float* row = x.data() + r * cols;
    for (int i = 0; i < 32; ++i) {
      row[i] = std::fabs(row[i]);        // a positive block
      row[32 + i] = -std::fabs(row[32 + i]);  // a negative one
      row[64 + i] = 0;                   // a zero block
    }
    row[100] = 20 * scale;  // an outlier
  }
  return x;
}

/// Q2_K and Q3_K: the step of the scale (and offset) that clip nothing in
/// the sub-block of 16 holding element i, as model/quantize.cpp bounds it:
///  - Q2_K: (range_s + dmin) / 3 + d, range_s = max - min(0, min) of the
///    sub-block, dmin = 1/15 of the super-block's largest -min(0, min), d =
///    1/15 of its largest (range_s + dmin) / 3; every element within half
///    of it;
///  - Q3_K: max|x_s| / 4 + d, d = 1/31 of the super-block's largest
///    max|x_s| / 4; every element within it.
/// The quantizer keeps the scale of least squared error among a few that
/// include this one: the sub-block's RMS error is within the same bound.
float low_bit_step(wtype t, const float* row, int64_t i) {
  auto up = [](float v) { return v * (1.0f + 1.0f / 1024) + 6e-8f; };
  const int64_t b256 = i / 256 * 256, s16 = i / 16 * 16;
  auto range_of = [&](int64_t start, float& lo, float& hi, float& amax) {
    lo = 0;
    hi = row[start];
    amax = 0;
    for (int k = 0; k < 16; ++k) {
      lo = std::min(lo, row[start + k]);
      hi = std::max(hi, row[start + k]);
      amax = std::max(amax, std::fabs(row[start + k]));
    }
  };
  float lo, hi, amax;
  if (t == wtype::q2_k) {
    float max_neg = 0, max_span = 0;
    for (int s = 0; s < 16; ++s) {
      range_of(b256 + 16 * s, lo, hi, amax);
      max_neg = std::max(max_neg, -lo);
      max_span = std::max(max_span, hi - lo);
    }
    const float dmin = up(max_neg / 15);
    const float d = up((max_span + dmin) / 3 / 15);
    range_of(s16, lo, hi, amax);
    return ((hi - lo + dmin) / 3 + d) * (1 + 1e-6f);
  }
  float max_amax = 0;
  for (int s = 0; s < 16; ++s) {
    range_of(b256 + 16 * s, lo, hi, amax);
    max_amax = std::max(max_amax, amax);
  }
  range_of(s16, lo, hi, amax);
  return (amax / 4 + up(max_amax / 4 / 31)) * (1 + 1e-6f);
}

/// The RMS error Q2_K (half a step) and Q3_K (one step) keep each sub-block
/// within.
float low_bit_rms_bound(wtype t, const float* row, int64_t i) {
  return t == wtype::q2_k ? low_bit_step(t, row, i) / 2 : low_bit_step(t, row, i);
}

/// The largest error quantize_row may make at element i of a row, from the
/// statistics of the blocks around it: the bounds model/quantize.cpp states.
/// Scales are f16, rounded outward: at most a relative 2^-10 plus 2^-24
/// (the subnormal spacing) above the value they stand for.
float error_bound(wtype t, const float* row, int64_t i) {
  auto up = [](float v) { return v * (1.0f + 1.0f / 1024) + 6e-8f; };
  auto stats = [&](int64_t start, int n, float& lo, float& hi, float& amax) {
    lo = hi = row[start];
    amax = 0;
    for (int k = 0; k < n; ++k) {
      lo = std::min(lo, row[start + k]);
      hi = std::max(hi, row[start + k]);
      amax = std::max(amax, std::fabs(row[start + k]));
    }
  };
  const int64_t b32 = i / 32 * 32, b256 = i / 256 * 256;
  float lo, hi, amax;
  switch (t) {
    case wtype::f32: return 0;
    case wtype::f16: return std::fabs(row[i]) / 2048 + 3e-8f;
    case wtype::bf16: return std::fabs(row[i]) / 256;
    case wtype::q8_0: stats(b32, 32, lo, hi, amax); return up(amax / 127) / 2;
    case wtype::q4_0: stats(b32, 32, lo, hi, amax); return up(amax / 8);
    case wtype::q5_0: stats(b32, 32, lo, hi, amax); return up(amax / 16);
    case wtype::q4_1:
    case wtype::q5_1: {
      const float levels = t == wtype::q4_1 ? 15 : 31;
      stats(b32, 32, lo, hi, amax);
      return up((hi - lo + up(std::fabs(lo)) - std::fabs(lo)) / levels) / 2;
    }
    case wtype::q4_k:
    case wtype::q5_k: {
      // Sub-block j of 32: half a step of d sc_j <= (range_j + dmin) /
      // levels + d, where dmin and d are 1/63 of the super-block's largest
      // offset and step.
      const float levels = t == wtype::q4_k ? 15 : 31;
      float span = 0, max_neg = 0;
      for (int j = 0; j < 8; ++j) {
        stats(b256 + 32 * j, 32, lo, hi, amax);
        lo = std::min(lo, 0.0f);
        span = std::max(span, hi - lo);
        max_neg = std::max(max_neg, -lo);
      }
      const float dmin = up(max_neg / 63);
      const float d = up((span + dmin) / levels / 63);
      stats(b32, 32, lo, hi, amax);
      lo = std::min(lo, 0.0f);
      return 0.5f * ((hi - lo + dmin) / levels + d) * (1 + 1e-6f);
    }
    case wtype::q2_k:
    case wtype::q3_k:
      // An RMS bound over 16 elements bounds each by 4 times it.
      return 4 * low_bit_rms_bound(t, row, i);
    case wtype::q6_k: {
      float block_amax;
      stats(b256, 256, lo, hi, block_amax);
      stats(i / 16 * 16, 16, lo, hi, amax);
      return (amax / 32 + up(block_amax / 32 / 127)) * (1 + 1e-6f);
    }
    default: return 0;
  }
}

std::vector<float> dequantize_rows(wtype t, const std::vector<uint8_t>& q, int64_t rows, int64_t cols) {
  const size_t row_bytes = quant::tensor_bytes(t, cols, cols, "test");
  std::vector<float> out(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    quant::dequantize_row(t, q.data() + size_t(r) * row_bytes, out.data() + r * cols, cols);
  return out;
}

std::vector<uint8_t> quantize_rows(wtype t, const std::vector<float>& x, int64_t rows, int64_t cols) {
  const size_t row_bytes = quant::tensor_bytes(t, cols, cols, "test");
  std::vector<uint8_t> q(row_bytes * size_t(rows));
  for (int64_t r = 0; r < rows; ++r)
    quant::quantize_row(t, x.data() + r * cols, q.data() + size_t(r) * row_bytes, cols);
  return q;
}

} // namespace

TEST_CASE("quantize_row round-trips through dequantize_row within each type's step") {
  std::mt19937 rng(41);
  const int64_t cols = 768;
  for (wtype t : quantizable) {
    CAPTURE(quant::type_name(t));
    REQUIRE(quant::can_quantize(t));
    for (int64_t rows : {1, 5, 7}) {
      auto x = awkward_rows(rows, cols, rng);
      auto back = dequantize_rows(t, quantize_rows(t, x, rows, cols), rows, cols);
      double err2 = 0, bound2 = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < cols; ++i) {
          const float* row = x.data() + r * cols;
          const float err = std::fabs(back[size_t(r * cols + i)] - row[i]);
          const float bound = error_bound(t, row, i);
          if (err > bound) {
            CAPTURE(r);
            CAPTURE(i);
            CAPTURE(row[i]);
            CHECK(err <= bound);
          }
          err2 += double(err) * err;
          bound2 += double(bound) * bound;
        }
      // Round to nearest: typical errors are well inside the worst case.
      if (t != wtype::f32)
        CHECK(std::sqrt(err2) < 0.7 * std::sqrt(bound2));
    }
  }
  // Zeros stay zeros, in every type.
  std::vector<float> zeros(256, 0.0f), back(256, 1.0f);
  for (wtype t : quantizable) {
    std::vector<uint8_t> q(quant::tensor_bytes(t, 256, 256, "zeros"));
    quant::quantize_row(t, zeros.data(), q.data(), 256);
    quant::dequantize_row(t, q.data(), back.data(), 256);
    CHECK(std::all_of(back.begin(), back.end(), [](float v) { return v == 0.0f; }));
  }
}

TEST_CASE("quantize_row refuses rows that are not whole blocks and types it cannot write") {
  std::vector<float> x(300, 1.0f);
  std::vector<uint8_t> out(1024);
  CHECK_THROWS_WITH_AS(quant::quantize_row(wtype::q4_k, x.data(), out.data(), 288),
                       doctest::Contains("288 elements is not a whole number of Q4_K blocks of 256"),
                       model_error);
  CHECK_THROWS_WITH_AS(quant::quantize_row(wtype::q8_k, x.data(), out.data(), 256),
                       doctest::Contains("cannot quantize to ggml type Q8_K"), model_error);
}

TEST_CASE("quantized weights multiply as their dequantized values and stay near the f32 product") {
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 37, cols = 512;
  std::vector<float> w(size_t(rows * cols)), x(cols);
  for (auto& v : w)
    v = 0.02f * normal(rng);
  for (auto& v : x)
    v = normal(rng);
  for (wtype t : quantizable) {
    CAPTURE(quant::type_name(t));
    auto q = quantize_rows(t, w, rows, cols);
    auto m = quant::matrix::view(t, q.data(), rows, cols, "w");
    auto w_back = dequantize_rows(t, q, rows, cols);
    std::vector<uint8_t> act(quant::activation_bytes(t, cols));
    quant::quantize_activation(t, x.data(), act.data(), cols);
    std::vector<float> x_q(cols);
    quant::dequantize_activation(t, act.data(), x_q.data(), cols);
    for (int threads : {1, 2}) {
      std::vector<float> y(rows, NAN);
      quant::matvec(m, x.data(), y.data(), act.data(), threads);
      for (int64_t r = 0; r < rows; ++r) {
        double plain = 0, magnitude = 0, exact = 0, bound = 0;
        for (int64_t i = 0; i < cols; ++i) {
          const double wi = w_back[size_t(r * cols + i)];
          plain += wi * x_q[i];
          magnitude += std::fabs(wi * x_q[i]);
          exact += double(w[size_t(r * cols + i)]) * x[i];
          // The weight's quantization error and the activation's.
          bound += error_bound(t, w.data() + r * cols, i) * std::fabs(x[i]) +
                   std::fabs(wi) * std::fabs(x[i] - x_q[i]);
        }
        // Q4_1 and Q5_1 take each activation block's sum rounded to f16 (as
        // the reference's Q8_1 blocks): a relative 2^-11 of m * sum(x).
        double offset_rounding = 0;
        if (t == wtype::q4_1 || t == wtype::q5_1) {
          const size_t block_bytes = t == wtype::q4_1 ? 20 : 24;
          const uint8_t* row = q.data() + size_t(r) * size_t(cols / 32) * block_bytes;
          for (int64_t b = 0; b < cols / 32; ++b) {
            uint16_t m_bits;
            std::memcpy(&m_bits, row + size_t(b) * block_bytes + 2, 2);
            double sum = 0;
            for (int i = 0; i < 32; ++i)
              sum += x_q[size_t(b * 32 + i)];
            offset_rounding += std::fabs(half_to_float(m_bits) * sum) / 2048;
          }
        }
        CHECK(std::fabs(y[r] - plain) <= 1e-5 * magnitude + offset_rounding + 1e-6);
        CHECK(std::fabs(y[r] - exact) <= bound + 1e-5 * magnitude + offset_rounding + 1e-6);
      }
    }
  }
}

TEST_CASE("file types name their matrices' types as llama-quantize's Q4_K_M rule") {
  auto q4_k_m = quant::parse_file_type("Q4_K_M", "--type");
  CHECK(q4_k_m.base == wtype::q4_k);
  CHECK_THROWS_WITH_AS(quant::parse_file_type("Q3_K_XL", "--type"),
                       doctest::Contains("--type: unknown weight type 'Q3_K_XL', expected one of F32, F16"),
                       model_error);
  using role = quant::matrix_role;
  // 16 layers: the first two, the last two and every third between get Q6_K.
  std::vector<int> more;
  for (int il = 0; il < 16; ++il)
    if (quant::matrix_type(q4_k_m, role::attn_v, il, 16, 2048) == wtype::q6_k)
      more.push_back(il);
  CHECK(more == std::vector<int>{0, 1, 4, 7, 10, 13, 14, 15});
  CHECK(quant::matrix_type(q4_k_m, role::ffn_down, 4, 16, 8192) == wtype::q6_k);
  CHECK(quant::matrix_type(q4_k_m, role::ffn_down, 5, 16, 8192) == wtype::q4_k);
  CHECK(quant::matrix_type(q4_k_m, role::attn_q, 0, 16, 2048) == wtype::q4_k);
  // Rows K-quants cannot hold, and rows no block type can.
  CHECK(quant::matrix_type(q4_k_m, role::attn_q, 0, 16, 576) == wtype::q5_0);
  CHECK(quant::matrix_type(q4_k_m, role::output, 0, 16, 576) == wtype::q8_0);
  auto q5_k_m = quant::parse_file_type("Q5_K_M", "--type");
  CHECK(quant::matrix_type(q5_k_m, role::ffn_up, 3, 16, 576) == wtype::q5_1);
  CHECK(quant::matrix_type(quant::parse_file_type("Q8_0", "t"), role::ffn_down, 0, 5, 172) ==
        wtype::f16);
  // The output: Q6_K under any block type but Q8_0, as the reference's files.
  CHECK(quant::matrix_type(quant::parse_file_type("Q4_0", "t"), role::output, 0, 5, 512) ==
        wtype::q6_k);
  CHECK(quant::matrix_type(quant::parse_file_type("Q4_0", "t"), role::attn_v, 0, 5, 512) ==
        wtype::q4_0);
  CHECK(quant::matrix_type(quant::parse_file_type("Q8_0", "t"), role::output, 0, 5, 512) ==
        wtype::q8_0);
  CHECK(quant::matrix_type(quant::parse_file_type("F16", "t"), role::output, 0, 5, 512) ==
        wtype::f16);
}

TEST_CASE("random weights in Q4_K_M: per-matrix types, sizes, and the f32 model's values quantized") {
  c10::InferenceMode guard;
  model_config c;
  c.n_embd = 576;  // SmolLM2's width: K-quants fall back
  c.n_ff = 512;
  c.n_layer = 8;
  c.n_head = 9;
  c.n_head_kv = 3;
  c.vocab_size = 40;
  c.max_seq = 16;
  random_weights_options opts;
  opts.type = quant::parse_file_type("Q4_K_M", "--type");
  opts.tied_output = true;
  int layers_reported = 0;
  opts.on_layer = [&](int done, int n) {
    CHECK(n == 8);
    layers_reported = done;
  };
  auto w = random_weights(c, 7, opts);
  CHECK(layers_reported == 8);
  CHECK(w.output.same_as(w.tok_embd));
  CHECK(w.tok_embd.type() == wtype::q8_0);  // Q6_K for the output, cols 576
  for (int il = 0; il < 8; ++il) {
    CAPTURE(il);
    const auto& l = w.layers[size_t(il)];
    const bool more = il == 0 || il == 3 || il == 6 || il == 7;  // n/8 = 1, 7n/8 = 7
    CHECK(l.wq.type() == wtype::q5_0);
    CHECK(l.wk.type() == wtype::q5_0);
    CHECK(l.wv.type() == (more ? wtype::q8_0 : wtype::q5_0));
    CHECK(l.wo.type() == wtype::q5_0);
    CHECK(l.w1.type() == wtype::q5_0);
    CHECK(l.w2.type() == (more ? wtype::q6_k : wtype::q4_k));  // rows of n_ff = 512
    CHECK(l.w3.type() == wtype::q5_0);
    for (const auto* m : l.matrices())
      CHECK(m->n_bytes() == quant::tensor_bytes(m->type(), m->numel(), m->cols(), "m"));
    CHECK(l.attn_norm.eq(1).all().item<bool>());
  }

  // Untied, rows of 256: the base type, the output in Q6_K.
  c.n_embd = 256;
  c.n_head = 4;
  c.n_head_kv = 2;
  opts.tied_output = false;
  auto u = random_weights(c, 7, opts);
  CHECK_FALSE(u.output.same_as(u.tok_embd));
  CHECK(u.tok_embd.type() == wtype::q4_k);
  CHECK(u.output.type() == wtype::q6_k);
  CHECK(u.layers[1].wv.type() == wtype::q4_k);
  CHECK(u.layers[3].wv.type() == wtype::q6_k);

  // The same seed in F32 is the same model: each quantized row is that
  // row quantized.
  auto f = random_weights(c, 7, {});
  CHECK(f.tok_embd.is_tensor());
  for (auto pick : {+[](const model_weights& m) { return &m.output; },
                    +[](const model_weights& m) { return &m.layers[3].w2; },
                    +[](const model_weights& m) { return &m.layers[5].wk; }}) {
    const weight_matrix& q = *pick(u);
    const at::Tensor& t = pick(f)->tensor("test");
    const auto& blocks = q.blocks();
    std::vector<uint8_t> row(blocks.row_bytes);
    for (int64_t r = 0; r < q.rows(); r += 7) {
      quant::quantize_row(q.type(), t[r].data_ptr<float>(), row.data(), q.cols());
      CHECK(std::equal(row.begin(), row.end(), blocks.row(r)));
    }
  }
  // About normal with std 0.02.
  const auto& t = f.layers[0].w1.tensor("test");
  CHECK(std::fabs(t.std().item<float>() - 0.02f) < 0.001f);
  CHECK(std::fabs(t.mean().item<float>()) < 0.001f);
}

TEST_CASE("a small shape in every --type runs through the transformer to finite logits near F32's") {
  c10::InferenceMode guard;
  auto shape = shape_preset("15M");
  shape.config.n_layer = 2;
  shape.config.vocab_size = 512;
  CHECK_THROWS_WITH_AS(shape_preset("7B"),
                       doctest::Contains("--shape: unknown shape '7B', expected one of 260K, 15M"),
                       model_error);
  auto run = [&](const std::string& type) {
    random_weights_options opts;
    opts.type = quant::parse_file_type(type, "--type");
    transformer model(shape.config, random_weights(shape.config, 3, opts), c10::Device("cpu"));
    auto cache = model.make_cache(0, 2);
    auto x = model.embed({1, 17, 300, 5});
    model.forward_layers(x, 0, 0, 2, cache);
    return model.logits(x);
  };
  auto f32 = run("F32");
  const float spread = (f32.max() - f32.min()).item<float>();
  REQUIRE(spread > 0);
  // Same model, quantized: logits move by a part of their spread that
  // grows as the bits shrink (measured: F16 3e-4, Q8_0 7e-3, Q6_K 0.012,
  // Q5_K_M 0.041, Q5_1 0.046, Q4_K_M 0.064, Q4_0 0.12).
  const std::vector<std::pair<std::string, float>> types = {
    {"F16", 0.002f},    {"Q8_0", 0.03f},    {"Q6_K", 0.05f}, {"Q5_K_M", 0.15f},
    {"Q5_1", 0.15f}, {"Q4_K_M", 0.2f}, {"Q4_0", 0.3f}};
  for (const auto& [type, part] : types) {
    CAPTURE(type);
    auto logits = run(type);
    REQUIRE(logits.isfinite().all().item<bool>());
    CHECK((logits - f32).abs().max().item<float>() < part * spread);
  }
}

TEST_CASE("on tiny256 the quantizer is about as close to the f32 weights as the reference's, and the _M mixes assign its types") {
  using role = quant::matrix_role;
  const std::string dir = test::shared_dir() + "/models/tiny256/";
  const auto f32 = load_model(dir + "tiny256-f32.gguf");
  const int n_layer = f32.config.n_layer;
  auto rms_error = [](const at::Tensor& a, const at::Tensor& b) {
    return (a - b).pow(2).mean().sqrt().item<double>();
  };
  // Round to nearest as the reference for the 32-element types (measured:
  // within 0.07% of its error); its K-quants search their scales, ours do
  // not (measured: Q4_K 1.12x, Q5_K 1.09x, Q6_K 1.08x its error).
  for (const std::string file : {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K_M", "Q5_K_M", "Q6_K"}) {
    CAPTURE(file);
    const auto ref = load_model(dir + "tiny256-" + file + ".gguf");
    const auto ft = quant::parse_file_type(file, "test");
    auto compare = [&](const weight_matrix& theirs, const weight_matrix& original, role r, int il) {
      const auto t = theirs.type();
      CAPTURE(quant::type_name(t));
      CAPTURE(il);
      CHECK(quant::matrix_type(ft, r, il, n_layer, theirs.cols()) == t);
      const at::Tensor& w = original.tensor("test");
      std::vector<uint8_t> bytes(quant::tensor_bytes(t, w.numel(), w.size(1), "test"));
      const size_t row_bytes = bytes.size() / size_t(w.size(0));
      for (int64_t row = 0; row < w.size(0); ++row)
        quant::quantize_row(t, w[row].data_ptr<float>(), bytes.data() + size_t(row) * row_bytes,
                            w.size(1));
      weight_matrix ours(quant::matrix::view(t, bytes.data(), w.size(0), w.size(1), "ours"), nullptr);
      const double mine = rms_error(ours.to_tensor(), w), reference = rms_error(theirs.to_tensor(), w);
      CHECK(mine <= (t == wtype::q4_k || t == wtype::q5_k || t == wtype::q6_k ? 1.15 : 1.002) *
                       reference);
    };
    compare(ref.weights.tok_embd, f32.weights.tok_embd, role::token_embd, 0);
    compare(ref.weights.output, f32.weights.output, role::output, 0);
    for (int il = 0; il < n_layer; ++il) {
      const auto& a = ref.weights.layers[size_t(il)];
      const auto& b = f32.weights.layers[size_t(il)];
      compare(a.wq, b.wq, role::attn_q, il);
      compare(a.wv, b.wv, role::attn_v, il);
      compare(a.w2, b.w2, role::ffn_down, il);
      compare(a.w3, b.w3, role::ffn_up, il);
    }
  }
}

TEST_CASE("Q2_K and Q3_K keep each sub-block's RMS error within its unclipped step, and rank with Q4_K as their bits") {
  std::mt19937 rng(43);
  const int64_t cols = 1024;
  for (wtype t : {wtype::q2_k, wtype::q3_k}) {
    CAPTURE(quant::type_name(t));
    // The search may clip an extreme, but never does worse over a
    // sub-block than the scale that clips nothing.
    for (int64_t rows : {3, 9}) {
      auto x = awkward_rows(rows, cols, rng);
      auto back = dequantize_rows(t, quantize_rows(t, x, rows, cols), rows, cols);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t s = 0; s < cols; s += 16) {
          const float* row = x.data() + r * cols;
          double err2 = 0;
          for (int64_t i = s; i < s + 16; ++i)
            err2 += std::pow(double(back[size_t(r * cols + i)]) - row[i], 2);
          const double rms = std::sqrt(err2 / 16), bound = low_bit_rms_bound(t, row, s);
          if (rms > bound) {
            CAPTURE(r);
            CAPTURE(s);
            CHECK(rms <= bound);
          }
        }
    }
  }
  // Gaussian rows: the RMS error relative to the rows' RMS. A uniform
  // quantizer of step h errs by h / sqrt(12) in RMS; the step that spans 16
  // normal values (their extremes about +-1.8 sigma) is about 3.6 sigma /
  // 3 for Q2_K's 4 levels and 2.1 sigma / 4 for Q3_K's symmetric 8, and 32
  // values span about 4 sigma over Q4_K's 15 steps: about 0.35, 0.15 and
  // 0.08 before the scales are rounded to 4 and 6 bits and before the
  // search. Measured: Q2_K 0.263, Q3_K 0.144, Q4_K 0.080.
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 64;
  std::vector<float> x(size_t(rows * cols));
  for (auto& v : x)
    v = 0.02f * normal(rng);
  auto relative_rms = [&](wtype t) {
    auto back = dequantize_rows(t, quantize_rows(t, x, rows, cols), rows, cols);
    double err2 = 0, x2 = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      err2 += std::pow(double(back[i]) - x[i], 2);
      x2 += double(x[i]) * x[i];
    }
    return std::sqrt(err2 / x2);
  };
  const double q2 = relative_rms(wtype::q2_k), q3 = relative_rms(wtype::q3_k),
               q4 = relative_rms(wtype::q4_k);
  MESSAGE("relative RMS error on Gaussian rows: Q2_K " << q2 << ", Q3_K " << q3 << ", Q4_K " << q4);
  CHECK(q2 < 0.30);
  CHECK(q3 < 0.16);
  CHECK(q4 < q3);
  CHECK(q3 < q2);
}

TEST_CASE("on tiny256 Q3_K and Q2_K err as much more than the reference's Q4_K as their bits say") {
  // The reference has no Q2_K or Q3_K file of tiny256: every matrix its
  // Q4_K_M file holds in Q4_K is quantized here to Q3_K and Q2_K and its
  // RMS error set against the reference's Q4_K error of it. At 3.44 and
  // 2.63 bits against 4.5, each bit fewer about doubles the error: about
  // 2x and 4x (measured: 2.02x and 3.69x over these 25 matrices).
  const std::string dir = test::shared_dir() + "/models/tiny256/";
  const auto f32 = load_model(dir + "tiny256-f32.gguf");
  const auto ref = load_model(dir + "tiny256-Q4_K_M.gguf");
  double ref2 = 0, q3_2 = 0, q2_2 = 0;
  int matrices = 0;
  auto add = [&](const weight_matrix& theirs, const weight_matrix& original) {
    if (theirs.type() != wtype::q4_k)
      return;
    ++matrices;
    const at::Tensor& w = original.tensor("test");
    const int64_t rows = w.size(0), cols = w.size(1);
    std::vector<float> x(w.data_ptr<float>(), w.data_ptr<float>() + w.numel());
    const auto reference = theirs.to_tensor();
    ref2 += (reference - w).pow(2).sum().item<double>();
    for (wtype t : {wtype::q3_k, wtype::q2_k}) {
      auto back = dequantize_rows(t, quantize_rows(t, x, rows, cols), rows, cols);
      double e2 = 0;
      for (size_t i = 0; i < x.size(); ++i)
        e2 += std::pow(double(back[i]) - x[i], 2);
      (t == wtype::q3_k ? q3_2 : q2_2) += e2;
    }
  };
  add(ref.weights.tok_embd, f32.weights.tok_embd);
  for (size_t il = 0; il < ref.weights.layers.size(); ++il) {
    const auto& a = ref.weights.layers[il];
    const auto& b = f32.weights.layers[il];
    const auto ma = a.matrices(), mb = b.matrices();
    for (size_t k = 0; k < ma.size(); ++k)
      add(*ma[k], *mb[k]);
  }
  REQUIRE(matrices > 20);
  const double q3_ratio = std::sqrt(q3_2 / ref2), q2_ratio = std::sqrt(q2_2 / ref2);
  MESSAGE("RMS error against the reference's Q4_K over " << matrices << " matrices: Q3_K "
                                                          << q3_ratio << "x, Q2_K " << q2_ratio << "x");
  CHECK(q3_ratio > 1.2);
  CHECK(q3_ratio < 2.3);
  CHECK(q2_ratio > q3_ratio);
  CHECK(q2_ratio < 4.2);
}

TEST_CASE("the 2- and 3-bit mixes assign types as llama-quantize: names are case-blind and carry llama.cpp's file type") {
  using role = quant::matrix_role;
  auto ft = [](const char* name) { return quant::parse_file_type(name, "TYPE"); };
  CHECK(ft("q4_k_m").name == "Q4_K_M");
  CHECK(ft("q4_k_m").llama_ftype == 15);
  const std::vector<std::pair<const char*, uint32_t>> numbers = {
    {"F32", 0},     {"F16", 1},     {"Q4_0", 2},    {"Q4_1", 3},    {"Q8_0", 7},
    {"Q5_0", 8},    {"Q5_1", 9},    {"Q2_K", 10},   {"Q3_K_S", 11}, {"Q3_K_M", 12},
    {"Q3_K_L", 13}, {"Q4_K_S", 14}, {"Q5_K_S", 16}, {"Q5_K_M", 17}, {"Q6_K", 18},
    {"BF16", 32}};
  for (const auto& [name, number] : numbers) {
    CAPTURE(name);
    CHECK(ft(name).llama_ftype == number);
  }
  const int n = 32;  // n/8 = 4, n/16 = 2
  auto type_of = [&](const char* name, role r, int il, int gqa = 1) {
    return quant::matrix_type(ft(name), r, il, n, 4096, gqa);
  };
  // Q2_K: attn_v in Q4_K with 4 or more query heads per KV head.
  CHECK(type_of("Q2_K", role::attn_q, 5) == wtype::q2_k);
  CHECK(type_of("Q2_K", role::ffn_up, 5) == wtype::q2_k);
  CHECK(type_of("Q2_K", role::token_embd, 0) == wtype::q2_k);
  CHECK(type_of("Q2_K", role::output, 0) == wtype::q6_k);
  CHECK(type_of("Q2_K", role::attn_v, 5, 1) == wtype::q3_k);
  CHECK(type_of("Q2_K", role::attn_v, 5, 4) == wtype::q4_k);
  CHECK(type_of("Q2_K", role::ffn_down, 5) == wtype::q3_k);
  CHECK(type_of("Q2_K", role::attn_output, 5) == wtype::q3_k);
  // Q3_K_S: Q3_K but the output.
  for (auto r : {role::attn_v, role::ffn_down, role::attn_output, role::ffn_gate})
    CHECK(type_of("Q3_K_S", r, 0) == wtype::q3_k);
  // Q3_K_M.
  CHECK(type_of("Q3_K_M", role::attn_v, 1) == wtype::q5_k);
  CHECK(type_of("Q3_K_M", role::attn_v, 2) == wtype::q4_k);
  CHECK(type_of("Q3_K_M", role::ffn_down, 1) == wtype::q5_k);
  CHECK(type_of("Q3_K_M", role::ffn_down, 2) == wtype::q4_k);
  CHECK(type_of("Q3_K_M", role::attn_output, 9) == wtype::q4_k);
  CHECK(type_of("Q3_K_M", role::attn_k, 0) == wtype::q3_k);
  CHECK(type_of("Q3_K_M", role::output, 0) == wtype::q6_k);
  // Q3_K_L.
  for (auto r : {role::attn_v, role::ffn_down, role::attn_output})
    CHECK(type_of("Q3_K_L", r, 17) == wtype::q5_k);
  CHECK(type_of("Q3_K_L", role::ffn_up, 17) == wtype::q3_k);
  // Q4_K_S: attn_v in layers 0-3 and ffn_down in the first n/8 in Q5_K.
  CHECK(type_of("Q4_K_S", role::attn_v, 3) == wtype::q5_k);
  CHECK(type_of("Q4_K_S", role::attn_v, 4) == wtype::q4_k);
  CHECK(type_of("Q4_K_S", role::ffn_down, 3) == wtype::q5_k);
  CHECK(type_of("Q4_K_S", role::ffn_down, 4) == wtype::q4_k);
  CHECK(type_of("Q5_K_S", role::ffn_down, 0) == wtype::q5_k);
  // Rows of 576: Q2_K and Q3_K fall back to Q4_0 (Q4_K: Q5_0, as before).
  CHECK(quant::matrix_type(ft("Q2_K"), role::attn_q, 0, n, 576) == wtype::q4_0);
  CHECK(quant::matrix_type(ft("Q3_K_L"), role::ffn_up, 0, n, 576) == wtype::q4_0);
  CHECK(quant::matrix_type(ft("Q3_K_L"), role::ffn_down, 0, n, 576) == wtype::q5_1);
  CHECK(quant::matrix_type(ft("Q3_K_M"), role::attn_v, 5, n, 576) == wtype::q5_0);
  // Other matrices take the base type.
  CHECK(quant::matrix_type(ft("Q3_K_M"), role::other, 0, n, 512) == wtype::q3_k);
}

TEST_CASE("a random model saved as GGUF loads back with its types, a vocabulary and the same logits") {
  c10::InferenceMode guard;
  test::temp_dir tmp;
  auto logits_of = [](const model_config& cfg, model_weights w) {
    transformer model(cfg, std::move(w), c10::Device("cpu"));
    auto cache = model.make_cache(0, cfg.n_layer);
    auto x = model.embed({1, 17, 300, 5, 511});
    model.forward_layers(x, 0, 0, cfg.n_layer, cache);
    return model.logits(x);
  };
  auto shape = shape_preset("260K");
  // 260K's rows of 64 take the K-quants' fallbacks; a copy with rows of 256
  // and a tied output takes the K-quants themselves.
  auto wide = shape;
  wide.config.n_embd = 256;
  wide.config.n_ff = 512;
  wide.config.n_layer = 2;
  wide.tied_output = true;
  for (const auto& [label, s] : {std::pair{"260K", shape}, std::pair{"wide", wide}}) {
    for (const std::string type : {"F32", "Q8_0", "Q4_K_M", "Q6_K"}) {
      CAPTURE(label);
      CAPTURE(type);
      random_weights_options opts;
      opts.type = quant::parse_file_type(type, "--type");
      opts.tied_output = s.tied_output;
      int layers_reported = 0;
      opts.on_layer = [&](int done, int n) {
        CHECK(done == layers_reported + 1);
        CHECK(n == s.config.n_layer);
        layers_reported = done;
      };
      const auto path = tmp.file(std::string(label) + "-" + type + ".gguf");
      write_random_gguf(path, "test", s.config, 5, opts);
      CHECK(layers_reported == s.config.n_layer);
      opts.on_layer = nullptr;
      auto memory = random_weights(s.config, 5, opts);

      gguf_file f(path);
      CHECK(f.get_string("general.architecture") == "llama");
      CHECK(f.get_uint("general.file_type") == opts.type.llama_ftype);
      CHECK(bool(f.find("output.weight")) == !s.tied_output);
      CHECK(f.get("blk.0.attn_norm.weight").type == wtype::f32);
      CHECK(f.get("blk.0.attn_v.weight").type == memory.layers[0].wv.type());
      CHECK(f.get("token_embd.weight").type == memory.tok_embd.type());

      auto loaded = load_model(path);
      CHECK(loaded.config.n_embd == s.config.n_embd);
      CHECK(loaded.config.n_head_kv == s.config.n_head_kv);
      CHECK(loaded.config.max_seq == s.config.max_seq);
      CHECK(loaded.config.rope_theta == s.config.rope_theta);
      CHECK(loaded.weights.output.same_as(loaded.weights.tok_embd) == s.tied_output);
      // The vocabulary: specials, byte pieces, and text that round-trips.
      CHECK(loaded.vocab.vocab_size() == s.config.vocab_size);
      CHECK(loaded.vocab.piece(1) == "<s>");
      CHECK(loaded.vocab.piece(3 + 0x41) == "<0x41>");
      const std::string text = "a bc def, {xyz}!";
      CHECK(loaded.vocab.decode(loaded.vocab.encode(text)) == text);

      auto want = logits_of(s.config, std::move(memory));
      auto got = logits_of(loaded.config, std::move(loaded.weights));
      CHECK(at::equal(want, got));
    }
  }
  // Errors name the file.
  random_weights_options opts;
  CHECK(test::error_of([&] {
          write_random_gguf(tmp.file("missing/x.gguf"), "test", shape.config, 5, opts);
        }).find(tmp.file("missing/x.gguf")) == 0);
  auto small = shape.config;
  small.vocab_size = 100;
  CHECK(test::error_of([&] { write_random_gguf(tmp.file("small.gguf"), "test", small, 5, opts); })
          .find(tmp.file("small.gguf") + ": a vocabulary of 100 tokens") == 0);
  CHECK(!std::filesystem::exists(tmp.file("small.gguf")));
}
