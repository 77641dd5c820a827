// The quantized kernels on aarch64, built alone (test/aarch64/CMakeLists.txt)
// and run under qemu-aarch64 (run.sh): every kernel level the (emulated)
// CPU runs against the portable kernels and the exact product, for every
// weight type, with quant_test's tolerances.

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "model/config.hpp"
#include "model/half.hpp"
#include "model/kv_f16.hpp"
#include "model/quant.hpp"
#include "model/quant_gemm.hpp"
#include "model/quant_kernels.hpp"
#include "model/quant_neon.hpp"
#include "test/quant_random.hpp"

using namespace ceco;
using ceco::test::random_weights;
using ceco::test::weight_types;
using wtype = quant::ggml_type;
using quant::kernel_level;

namespace {

std::vector<kernel_level> supported_levels() {
  std::vector<kernel_level> out;
  for (auto l : {kernel_level::portable, kernel_level::avx2, kernel_level::avx512,
                 kernel_level::neon, kernel_level::dotprod})
    if (quant::kernel_level_supported(l))
      out.push_back(l);
  return out;
}

} // namespace

TEST_CASE("aarch64: the NEON levels are there, and dotprod only where the CPU has SDOT") {
  CHECK(quant::kernel_level_supported(kernel_level::portable));
  CHECK(quant::kernel_level_supported(kernel_level::neon));
  CHECK_FALSE(quant::kernel_level_supported(kernel_level::avx2));
  CHECK_FALSE(quant::kernel_level_supported(kernel_level::avx512));
  CHECK(quant::kernel_level_supported(kernel_level::dotprod) == quant::neon::has_dotprod());
  CHECK(quant::best_kernel_level() ==
        (quant::neon::has_dotprod() ? kernel_level::dotprod : kernel_level::neon));
  if (!quant::neon::has_dotprod())
    CHECK_THROWS_AS(quant::set_kernel_level(kernel_level::dotprod), model_error);
  CHECK_THROWS_AS(quant::set_kernel_level(kernel_level::avx2), model_error);
  // Every weight type has a NEON kernel; every integer one an SDOT kernel.
  for (wtype t : weight_types) {
    CAPTURE(quant::type_name(t));
    const bool has_neon = quant::neon::dot(t) != nullptr;
    CHECK(has_neon);
    const bool is_float = t == wtype::f32 || t == wtype::f16 || t == wtype::bf16;
    const bool has_sdot = quant::neon::dot_dotprod(t) != nullptr;
    CHECK(has_sdot == !is_float);
  }
  MESSAGE("this CPU: best level " << std::string(quant::kernel_level_name(quant::best_kernel_level())));
}

TEST_CASE("aarch64: every kernel level within quant_test's bounds of the plain product") {
  // quant_test's first case, its shapes and bounds, one row at a time.
  std::mt19937 rng(14);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (wtype t : weight_types) {
    for (int64_t rows : {1, 37, 131}) {
      const int64_t cols = 512;
      CAPTURE(quant::type_name(t));
      CAPTURE(rows);
      const auto bytes = random_weights(t, rows, cols, rng);
      const auto w = quant::matrix::view(t, bytes.data(), rows, cols, "w");
      std::vector<float> x(static_cast<size_t>(cols));
      for (auto& v : x)
        v = normal(rng);
      std::vector<uint8_t> act(quant::activation_bytes(t, cols));
      quant::quantize_activation(t, x.data(), act.data(), cols);
      std::vector<float> x_q(static_cast<size_t>(cols)), w_row(static_cast<size_t>(cols));
      quant::dequantize_activation(t, act.data(), x_q.data(), cols);
      for (int64_t r = 0; r < rows; ++r) {
        quant::dequantize_row(t, w.row(r), w_row.data(), cols);
        double exact = 0, magnitude = 0, exact_x = 0, act_error = 0;
        for (size_t i = 0; i < size_t(cols); ++i) {
          exact += double(w_row[i]) * x_q[i];
          magnitude += std::fabs(double(w_row[i]) * x_q[i]);
          exact_x += double(w_row[i]) * x[i];
          act_error += std::fabs(w_row[i]) * std::fabs(x[i] - x_q[i]);
        }
        for (kernel_level level : supported_levels()) {
          const std::string level_name = quant::kernel_level_name(level);
          CAPTURE(level_name);
          quant::set_kernel_level(level);
          const float y = quant::dot_row(t, w.row(r), act.data(), cols);
          CHECK(std::fabs(y - exact) <= 1e-5 * magnitude + 1e-6);
          CHECK(std::fabs(y - exact_x) <= act_error + 2e-6 * magnitude + 1e-6);
        }
      }
    }
  }
  quant::set_kernel_level(quant::best_kernel_level());
}

TEST_CASE("aarch64: every kernel level gives the portable kernels' floats, at any block count") {
  std::mt19937 rng(17);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const auto levels = supported_levels();
  for (wtype t : weight_types) {
    const int64_t block = quant::find_info(t)->block_size;
    // one block, an odd number of them, many (for the float types, lengths
    // that leave a tail past the 8-wide steps)
    for (int64_t cols : {block == 1 ? int64_t(13) : block, 7 * block,
                         (block == 1 ? 517 : block == 32 ? 96 : 12) * block}) {
      CAPTURE(quant::type_name(t));
      CAPTURE(cols);
      const int64_t rows = 9;
      const auto bytes = random_weights(t, rows, cols, rng);
      const auto w = quant::matrix::view(t, bytes.data(), rows, cols, "w");
      std::vector<float> x(static_cast<size_t>(cols));
      for (auto& v : x)
        v = normal(rng);
      std::vector<uint8_t> act(quant::activation_bytes(t, cols));
      quant::quantize_activation(t, x.data(), act.data(), cols);
      std::vector<float> x_q(static_cast<size_t>(cols)), w_row(static_cast<size_t>(cols));
      quant::dequantize_activation(t, act.data(), x_q.data(), cols);
      for (int64_t r = 0; r < rows; ++r) {
        CAPTURE(r);
        quant::dequantize_row(t, w.row(r), w_row.data(), cols);
        double magnitude = 0;
        for (size_t i = 0; i < size_t(cols); ++i)
          magnitude += std::fabs(double(w_row[i]) * x_q[i]);
        quant::set_kernel_level(kernel_level::portable);
        const float portable = quant::dot_row(t, w.row(r), act.data(), cols);
        for (kernel_level level : levels) {
          const std::string level_name = quant::kernel_level_name(level);
          CAPTURE(level_name);
          quant::set_kernel_level(level);
          const float y = quant::dot_row(t, w.row(r), act.data(), cols);
          // float rounding alone apart: quant_test's bound
          CHECK(std::fabs(y - portable) <= 1e-5 * magnitude + 1e-6);
          // the blocks of 32 take the portable float operations in order
          if (block == 32)
            CHECK(y == portable);
        }
      }
    }
  }
  quant::set_kernel_level(quant::best_kernel_level());
}

TEST_CASE("aarch64: f16 KV rows and their attention passes at every level equal the portable code") {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Head sizes with and without a tail past 8 lanes; grouped query heads.
  struct shape {
    int64_t n_pos, n_head, n_head_kv, head_dim;
  };
  for (const auto& sh : {shape{1, 4, 4, 8}, shape{37, 8, 2, 64}, shape{19, 6, 3, 20}, shape{5, 2, 2, 3}}) {
    CAPTURE(sh.head_dim);
    const int64_t n_kv = sh.n_pos * sh.n_head_kv * sh.head_dim, d = sh.n_head * sh.head_dim;
    std::vector<float> q(static_cast<size_t>(d)), k(static_cast<size_t>(n_kv)), v(static_cast<size_t>(n_kv));
    for (auto* x : {&q, &k, &v})
      for (auto& e : *x)
        e = normal(rng);
    k[0] = 70000.0f;  // past f16's largest: infinity
    k[1] = 1e-6f;     // an f16 subnormal
    std::vector<float> scores(static_cast<size_t>(sh.n_head * sh.n_pos)), weight_of(static_cast<size_t>(sh.n_head));
    for (auto& e : scores)
      e = std::exp(normal(rng));
    for (auto& e : weight_of)
      e = 1.0f / float(sh.n_pos);
    std::vector<uint16_t> k16(k.size()), v16(v.size());
    std::vector<float> ref_scores(scores.size()), ref_out(static_cast<size_t>(d));
    for (auto level : supported_levels()) {
      CAPTURE(quant::kernel_level_name(level));
      quant::set_kernel_level(level);
      kernels::store_f16(k16.data(), k.data(), n_kv);
      kernels::store_f16(v16.data(), v.data(), n_kv);
      int mismatched = 0;
      for (int64_t i = 0; i < n_kv; ++i)
        mismatched += (k16[size_t(i)] != float_to_half(k[size_t(i)])) +
                      (v16[size_t(i)] != float_to_half(v[size_t(i)]));
      CHECK(mismatched == 0);
      std::vector<float> back(k.size());
      kernels::load_f16(back.data(), v16.data(), n_kv);
      for (int64_t i = 0; i < n_kv; ++i)
        mismatched += back[size_t(i)] != half_to_float(v16[size_t(i)]);
      CHECK(mismatched == 0);
      k16[0] = float_to_half(3.0f);  // finite keys for the scores
      std::vector<float> s(scores.size()), out(static_cast<size_t>(d));
      kernels::f16_scores(0, sh.n_head, q.data(), k16.data(), sh.n_pos, sh.n_head, sh.n_head_kv,
                          sh.head_dim, 0.125f, s.data());
      kernels::f16_weighted_values(0, sh.n_head, out.data(), v16.data(), scores.data(),
                                   weight_of.data(), sh.n_pos, sh.n_head, sh.n_head_kv,
                                   sh.head_dim);
      if (level == kernel_level::portable) {
        ref_scores = s;
        ref_out = out;
        continue;
      }
      float worst = 0;
      for (size_t i = 0; i < s.size(); ++i)
        worst = std::max(worst, std::fabs(s[i] - ref_scores[i]));
      for (size_t i = 0; i < out.size(); ++i)
        worst = std::max(worst, std::fabs(out[i] - ref_out[i]));
      CHECK(worst <= 1e-4f);  // only the order of the sums differs
    }
  }
  quant::set_kernel_level(quant::best_kernel_level());
}

TEST_CASE("aarch64: the integer matrix product at dotprod is the weights times the 8-bit activations") {
  std::mt19937 rng(152);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // 37 rows: two groups of 16 and a part; 5 inputs: 2 + 2 + 1.
  const int64_t rows = 37, cols = 512, n = 5, chunks = cols / 32;
  std::vector<float> x(size_t(n * cols));
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = normal(rng) * float(1 + i / size_t(cols));  // inputs of different scales
  std::fill(x.begin() + 64, x.begin() + 96, 0.0f);    // a block of zeros
  quant::set_kernel_level(kernel_level::neon);
  for (wtype t : weight_types)
    CHECK(quant::active_gemm(t) == nullptr);  // plain NEON: dequantized tiles and BLAS
  if (!quant::neon::has_dotprod()) {
    MESSAGE("no SDOT on this CPU: matmat multiplies dequantized tiles");
    quant::set_kernel_level(quant::best_kernel_level());
    return;
  }
  quant::set_kernel_level(kernel_level::dotprod);
  std::vector<uint8_t> buffer(quant::gemm::group_scratch_bytes(cols));
  uint8_t* scratch = buffer.data() + (64 - reinterpret_cast<uintptr_t>(buffer.data()) % 64) % 64;
  for (wtype t : weight_types) {
    CAPTURE(quant::type_name(t));
    const quant::gemm::kernels* kernels = quant::active_gemm(t);
    const bool is_float = t == wtype::f32 || t == wtype::f16 || t == wtype::bf16;
    CHECK((kernels != nullptr) == !is_float);
    if (!kernels)
      continue;
    std::vector<quant::gemm::act_block> act(size_t(n * chunks));
    for (int64_t j = 0; j < n; ++j)
      kernels->quantize(x.data() + j * cols, act.data() + j * chunks, cols);
    std::vector<float> x_q(x.size());
    for (size_t b = 0; b < act.size(); ++b) {
      float amax = 0;
      int32_t sum = 0;
      for (int i = 0; i < 32; ++i) {
        amax = std::max(amax, std::fabs(x[32 * b + size_t(i)]));
        sum += act[b].q[i];
      }
      REQUIRE(act[b].neg128_sum32 == -128 * sum);
      REQUIRE(act[b].sum32 == float(sum));
      for (int i = 0; i < 32; ++i) {
        x_q[32 * b + size_t(i)] = act[b].d * float(act[b].q[i]);
        REQUIRE(std::fabs(x[32 * b + size_t(i)] - x_q[32 * b + size_t(i)]) <= amax / 254.0f * 1.0001f);
      }
    }
    auto bytes = random_weights(t, rows, cols, rng);
    auto w = quant::matrix::view(t, bytes.data(), rows, cols, "w");
    std::vector<float> y(size_t(n * rows), NAN), y_split(y.size(), NAN);
    kernels->rows(w, 0, rows, act.data(), n, y.data(), scratch);
    kernels->rows(w, 0, 16, act.data(), n, y_split.data(), scratch);
    kernels->rows(w, 16, rows, act.data(), n, y_split.data(), scratch);
    CHECK(y == y_split);  // rows never depend on the split
    std::vector<float> w_row(cols);
    for (int64_t r = 0; r < rows; ++r) {
      quant::dequantize_row(t, w.row(r), w_row.data(), cols);
      for (int64_t j = 0; j < n; ++j) {
        double exact = 0, magnitude = 0;
        for (int64_t i = 0; i < cols; ++i) {
          exact += double(w_row[size_t(i)]) * x_q[size_t(j * cols + i)];
          magnitude += std::fabs(double(w_row[size_t(i)]) * x_q[size_t(j * cols + i)]);
        }
        // Only float rounding separates the kernel from the plain product.
        CHECK(std::fabs(y[size_t(j * rows + r)] - exact) <= 1e-5 * magnitude + 1e-6);
      }
    }
  }
  quant::set_kernel_level(quant::best_kernel_level());
}
