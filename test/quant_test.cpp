#include "test/support.hpp"

#include <array>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <random>

#include "model/config.hpp"
#include "model/gguf.hpp"
#include "model/quant.hpp"
#include "model/weight_matrix.hpp"
#include "test/quant_random.hpp"

using namespace ceco;
using namespace ceco::test;
using wtype = quant::ggml_type;

namespace {

/// Every kernel level this CPU runs, lowest first.
std::vector<quant::kernel_level> supported_levels() {
  std::vector<quant::kernel_level> out;
  for (auto l : {quant::kernel_level::portable, quant::kernel_level::avx2,
                 quant::kernel_level::avx512, quant::kernel_level::neon,
                 quant::kernel_level::dotprod})
    if (quant::kernel_level_supported(l))
      out.push_back(l);
  return out;
}

std::vector<float> dequantized(wtype t, const std::vector<uint8_t>& bytes, int64_t rows,
                               int64_t cols) {
  std::vector<float> out(size_t(rows * cols));
  const size_t row_bytes = quant::tensor_bytes(t, cols, cols, "test");
  for (int64_t r = 0; r < rows; ++r)
    quant::dequantize_row(t, bytes.data() + size_t(r) * row_bytes, out.data() + r * cols, cols);
  return out;
}

/// x[n, cols] as the integer matmat quantizes it (model/quant_gemm.hpp):
/// per 32 values d = max|x| / 127, q = round-to-even(x * 127 / max|x|).
std::vector<float> gemm_activations(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  for (size_t b = 0; b < x.size(); b += 32) {
    float amax = 0;
    for (size_t i = b; i < b + 32; ++i)
      amax = std::max(amax, std::fabs(x[i]));
    const float id = amax > 0 ? 127.0f / amax : 0.0f;
    for (size_t i = b; i < b + 32; ++i)
      out[i] = amax / 127.0f * std::nearbyint(x[i] * id);
  }
  return out;
}

uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

} // namespace

TEST_CASE("quantized matvec equals dequantize-then-multiply for every type, thread count and kernel set") {
  std::mt19937 rng(14);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (wtype t : weight_types) {
    for (int64_t rows : {1, 37, 131}) {
      const int64_t cols = 512;
      CAPTURE(quant::type_name(t));
      CAPTURE(rows);
      auto bytes = random_weights(t, rows, cols, rng);
      auto w = quant::matrix::view(t, bytes.data(), rows, cols, "w");
      auto w_f32 = dequantized(t, bytes, rows, cols);
      std::vector<float> x(cols);
      for (auto& v : x)
        v = normal(rng);

      // What the kernel multiplies: x as its 8-bit blocks stand for it.
      std::vector<uint8_t> act(quant::activation_bytes(t, cols));
      quant::quantize_activation(t, x.data(), act.data(), cols);
      std::vector<float> x_q(cols);
      quant::dequantize_activation(t, act.data(), x_q.data(), cols);
      for (int64_t i = 0; i < cols; ++i)  // 8-bit blocks with f16 scales: |x - x_q| <= max|x| / 200
        REQUIRE(std::fabs(x[i] - x_q[i]) <= 5.0f / 200.0f);

      for (quant::kernel_level level : supported_levels()) {
      quant::set_kernel_level(level);
      const std::string level_name = quant::kernel_level_name(level);
      CAPTURE(level_name);
      std::vector<float> first;
      for (int threads : {1, 2, 3}) {
        CAPTURE(threads);
        std::vector<float> y(rows, NAN);
        quant::matvec(w, x.data(), y.data(), act.data(), threads);
        for (int64_t r = 0; r < rows; ++r) {
          double exact = 0, magnitude = 0, exact_x = 0, act_error = 0;
          for (int64_t i = 0; i < cols; ++i) {
            const double wi = w_f32[r * cols + i];
            exact += wi * x_q[i];
            magnitude += std::fabs(wi * x_q[i]);
            exact_x += wi * x[i];
            act_error += std::fabs(wi) * std::fabs(x[i] - x_q[i]);
          }
          // Only float rounding separates the kernel from the plain product.
          CHECK(std::fabs(y[r] - exact) <= 1e-5 * magnitude + 1e-6);
          // And the activation's quantization error bounds it from W · x.
          CHECK(std::fabs(y[r] - exact_x) <= act_error + 2e-6 * magnitude + 1e-6);
          CHECK(quant::dot_row(t, w.row(r), act.data(), cols) == y[r]);
        }
        if (first.empty())
          first = y;
        else
          CHECK(y == first);  // rows never depend on the split
      }
      }
      quant::set_kernel_level(quant::best_kernel_level());
    }
  }
}

TEST_CASE("each kernel level this CPU runs gives the AVX2 kernels' floats bit for bit, at any block count") {
  // The AVX-512 kernels compute the AVX2 ones' integers and meet them with
  // the scales in the same float operations (model/quant_avx512.cpp).
  if (!quant::kernel_level_supported(quant::kernel_level::avx2)) {
    MESSAGE("this CPU has no AVX2: nothing to compare");
    return;
  }
  std::mt19937 rng(16);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (wtype t : weight_types) {
    const int64_t block = quant::find_info(t)->block_size;
    if (block == 1)
      continue;
    // one block, an odd number of them, many
    for (int64_t cols : {block, 7 * block, (block == 32 ? 96 : 12) * block}) {
      CAPTURE(quant::type_name(t));
      CAPTURE(cols);
      const int64_t rows = 9;
      auto bytes = random_weights(t, rows, cols, rng);
      auto w = quant::matrix::view(t, bytes.data(), rows, cols, "w");
      std::vector<float> x(static_cast<size_t>(cols));
      for (auto& v : x)
        v = normal(rng);
      std::vector<uint8_t> act(quant::activation_bytes(t, cols));
      quant::quantize_activation(t, x.data(), act.data(), cols);
      std::vector<float> avx2(static_cast<size_t>(rows));
      quant::set_kernel_level(quant::kernel_level::avx2);
      for (int64_t r = 0; r < rows; ++r)
        avx2[size_t(r)] = quant::dot_row(t, w.row(r), act.data(), cols);
      for (quant::kernel_level level : supported_levels()) {
        if (level <= quant::kernel_level::avx2)
          continue;
        const std::string level_name = quant::kernel_level_name(level);
        CAPTURE(level_name);
        quant::set_kernel_level(level);
        for (int64_t r = 0; r < rows; ++r)
          CHECK(quant::dot_row(t, w.row(r), act.data(), cols) == avx2[size_t(r)]);
      }
    }
  }
  quant::set_kernel_level(quant::best_kernel_level());
}

TEST_CASE("four-row kernels give each row's single-row floats bit for bit, and matvec uses them at any row count") {
  std::mt19937 rng(25);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (quant::kernel_level level : supported_levels()) {
    const std::string level_name = quant::kernel_level_name(level);
    CAPTURE(level_name);
    quant::set_kernel_level(level);
    for (wtype t : weight_types) {
      const int64_t block = quant::find_info(t)->block_size;
      CAPTURE(quant::type_name(t));
      if (block == 1)
        continue;
      for (int64_t cols : {block, 7 * block, (block == 32 ? 96 : 12) * block}) {
        CAPTURE(cols);
        const int64_t rows = 11;
        auto bytes = random_weights(t, rows, cols, rng);
        auto w = quant::matrix::view(t, bytes.data(), rows, cols, "w");
        std::vector<float> x(static_cast<size_t>(cols));
        for (auto& v : x)
          v = normal(rng);
        std::vector<uint8_t> act(quant::activation_bytes(t, cols));
        quant::quantize_activation(t, x.data(), act.data(), cols);
        std::vector<float> single(static_cast<size_t>(rows));
        for (int64_t r = 0; r < rows; ++r)
          single[size_t(r)] = quant::dot_row(t, w.row(r), act.data(), cols);
        // rows in order, apart, repeated, backwards
        for (std::array<int64_t, 4> pick : {std::array<int64_t, 4>{0, 1, 2, 3},
                                            std::array<int64_t, 4>{10, 3, 7, 5},
                                            std::array<int64_t, 4>{4, 4, 9, 4},
                                            std::array<int64_t, 4>{8, 6, 2, 0}}) {
          const void* four[4] = {w.row(pick[0]), w.row(pick[1]), w.row(pick[2]), w.row(pick[3])};
          float out[4] = {NAN, NAN, NAN, NAN};
          quant::dot_rows4(t, four, act.data(), cols, out);
          for (int k = 0; k < 4; ++k)
            CHECK(float_to_bits(out[k]) == float_to_bits(single[size_t(pick[k])]));
        }
        // matvec and matvec_batch: groups of 4 and the rows left, every row
        // as the single-row kernel gives it
        for (int64_t n_rows : {int64_t(1), int64_t(4), int64_t(5), int64_t(7), int64_t(11)}) {
          CAPTURE(n_rows);
          auto part = quant::matrix::view(t, bytes.data(), n_rows, cols, "w");
          for (int threads : {1, 2}) {
            std::vector<float> y(static_cast<size_t>(n_rows), NAN);
            std::vector<uint8_t> scratch(act.size());
            quant::matvec(part, x.data(), y.data(), scratch.data(), threads);
            for (int64_t r = 0; r < n_rows; ++r)
              CHECK(float_to_bits(y[size_t(r)]) == float_to_bits(single[size_t(r)]));
            std::vector<float> xs(x);
            xs.insert(xs.end(), x.begin(), x.end());
            std::vector<float> ys(static_cast<size_t>(2 * n_rows), NAN);
            std::vector<uint8_t> scratch2(2 * act.size());
            quant::matvec_batch(part, xs.data(), ys.data(), 2, scratch2.data(), threads);
            for (int64_t r = 0; r < n_rows; ++r) {
              CHECK(float_to_bits(ys[size_t(r)]) == float_to_bits(single[size_t(r)]));
              CHECK(float_to_bits(ys[size_t(n_rows + r)]) == float_to_bits(single[size_t(r)]));
            }
          }
        }
      }
    }
  }
  if (quant::kernel_level_supported(quant::kernel_level::avx2)) {
    quant::set_kernel_level(quant::kernel_level::avx2);
    for (wtype t : {wtype::q4_k, wtype::q5_k, wtype::q6_k, wtype::q8_0, wtype::q4_0})
      CHECK(quant::has_dot4(t));
  }
  quant::set_kernel_level(quant::kernel_level::portable);
  CHECK_FALSE(quant::has_dot4(wtype::q4_k));
  quant::set_kernel_level(quant::best_kernel_level());
}

TEST_CASE("kernel levels: names, the best is supported, portable always") {
  using quant::kernel_level;
  CHECK(std::string(quant::kernel_level_name(kernel_level::portable)) == "portable");
  CHECK(std::string(quant::kernel_level_name(kernel_level::avx2)) == "avx2");
  CHECK(std::string(quant::kernel_level_name(kernel_level::avx512)) == "avx512");
  CHECK(std::string(quant::kernel_level_name(kernel_level::neon)) == "neon");
  CHECK(std::string(quant::kernel_level_name(kernel_level::dotprod)) == "dotprod");
  CHECK(quant::kernel_level_supported(kernel_level::portable));
  CHECK(quant::kernel_level_supported(quant::best_kernel_level()));
  if (quant::kernel_level_supported(kernel_level::avx512))
    CHECK(quant::kernel_level_supported(kernel_level::avx2));
  if (quant::kernel_level_supported(kernel_level::dotprod))
    CHECK(quant::kernel_level_supported(kernel_level::neon));
  for (kernel_level l : {kernel_level::avx2, kernel_level::avx512, kernel_level::neon,
                         kernel_level::dotprod})
    if (!quant::kernel_level_supported(l))
      CHECK_THROWS_AS(quant::set_kernel_level(l), model_error);
  MESSAGE("kernel levels this CPU runs: best " << quant::kernel_level_name(quant::best_kernel_level()));
}

TEST_CASE("quantized batches: matvec_batch equals matvec per input, matmat equals dequantize-then-multiply") {
  std::mt19937 rng(15);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (wtype t : weight_types) {
    CAPTURE(quant::type_name(t));
    const int64_t rows = 77, cols = 768, n = 5;
    auto bytes = random_weights(t, rows, cols, rng);
    auto w = quant::matrix::view(t, bytes.data(), rows, cols, "w");
    auto w_f32 = dequantized(t, bytes, rows, cols);
    std::vector<float> x(size_t(n * cols));
    for (auto& v : x)
      v = normal(rng);
    // Several decode steps at once: exactly matvec on each input.
    std::vector<uint8_t> acts(size_t(n) * quant::activation_bytes(t, cols)), act(acts.size());
    std::vector<float> y_batch(size_t(n * rows)), y_one(static_cast<size_t>(rows));
    quant::matvec_batch(w, x.data(), y_batch.data(), n, acts.data(), 2);
    for (int64_t j = 0; j < n; ++j) {
      quant::matvec(w, x.data() + j * cols, y_one.data(), act.data(), 1);
      CHECK(std::equal(y_one.begin(), y_one.end(), y_batch.begin() + j * rows));
    }

    // Many inputs: matmat, integer products of 8-bit activations where the
    // kernel level has them, else BLAS on the f32 activations.
    const std::vector<float> x_used = quant::matmat_is_integer(t) ? gemm_activations(x) : x;
    std::vector<float> scratch(quant::matmat_scratch_floats(w));
    for (int threads : {1, 2}) {
      std::vector<float> y(size_t(n * rows), NAN);
      quant::matmat(w, x.data(), y.data(), n, scratch.data(), threads);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t r = 0; r < rows; ++r) {
          double exact = 0, magnitude = 0;
          for (int64_t i = 0; i < cols; ++i) {
            exact += double(w_f32[r * cols + i]) * x_used[j * cols + i];
            magnitude += std::fabs(double(w_f32[r * cols + i]) * x_used[j * cols + i]);
          }
          CHECK(std::fabs(y[j * rows + r] - exact) <= 1e-5 * magnitude + 1e-6);
        }
    }
  }
}

TEST_CASE("integer matmat: every row and input the weights times the 8-bit activations, at each kernel level") {
  std::mt19937 rng(151);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // 77 rows: four full groups of 16 and a part; 13 inputs: 8 + 4 + 1.
  const int64_t rows = 77, cols = 512, n = 13;
  std::vector<float> x(size_t(n * cols));
  for (auto& v : x)
    v = normal(rng) * (1.0f + float(&v - x.data()) / float(cols));  // rows of different scales
  x[5] = 0;
  std::fill(x.begin() + 64, x.begin() + 96, 0.0f);  // a block of zeros
  const auto x_q = gemm_activations(x);
  for (size_t b = 0; b < x.size(); b += 32) {  // half a step of max|x| / 127 per block
    float amax = 0;
    for (size_t i = b; i < b + 32; ++i)
      amax = std::max(amax, std::fabs(x[i]));
    for (size_t i = b; i < b + 32; ++i)
      REQUIRE(std::fabs(x[i] - x_q[i]) <= amax / 254.0f * 1.0001f);
  }
  int integer_types = 0;
  for (quant::kernel_level level : supported_levels()) {
    quant::set_kernel_level(level);
    const std::string level_name = quant::kernel_level_name(level);
    CAPTURE(level_name);
    for (wtype t : weight_types) {
      if (!quant::matmat_is_integer(t))
        continue;
      ++integer_types;
      CAPTURE(quant::type_name(t));
      auto bytes = random_weights(t, rows, cols, rng);
      auto w = quant::matrix::view(t, bytes.data(), rows, cols, "w");
      auto w_f32 = dequantized(t, bytes, rows, cols);
      std::vector<float> first;
      for (int threads : {1, 2, 3}) {
        CAPTURE(threads);
        std::vector<float> y(size_t(n * rows), NAN), scratch(quant::matmat_scratch_floats(w));
        quant::matmat(w, x.data(), y.data(), n, scratch.data(), threads);
        for (int64_t j = 0; j < n; ++j)
          for (int64_t r = 0; r < rows; ++r) {
            double exact = 0, magnitude = 0;
            for (int64_t i = 0; i < cols; ++i) {
              exact += double(w_f32[r * cols + i]) * x_q[j * cols + i];
              magnitude += std::fabs(double(w_f32[r * cols + i]) * x_q[j * cols + i]);
            }
            // Only float rounding separates the kernel from the plain product.
            CHECK(std::fabs(y[j * rows + r] - exact) <= 1e-5 * magnitude + 1e-6);
          }
        if (first.empty())
          first = y;
        else
          CHECK(y == first);  // rows never depend on the split
      }
    }
  }
  quant::set_kernel_level(quant::best_kernel_level());
  MESSAGE("integer matmat kernels checked: " << integer_types << " (type, level) pairs");
}

TEST_CASE("block layouts decode known values") {
  // Q4_0: d = 0.5; element 0 is the low nibble of qs[0], element 16 its high nibble.
  std::vector<uint8_t> q4_0(18, 0x88);
  uint16_t half = float_to_half(0.5f);
  std::memcpy(q4_0.data(), &half, 2);
  q4_0[2] = 0x3A;  // low 10 -> +1.0, high 3 -> -2.5
  std::vector<float> out(32);
  quant::dequantize_row(wtype::q4_0, q4_0.data(), out.data(), 32);
  CHECK(out[0] == 1.0f);
  CHECK(out[16] == -2.5f);
  CHECK(out[1] == 0.0f);

  // Q5_1: x = d * q + m with the fifth bit of element i in bit i of qh.
  std::vector<uint8_t> q5_1(24, 0);
  half = float_to_half(0.25f);
  std::memcpy(q5_1.data(), &half, 2);
  half = float_to_half(-1.0f);
  std::memcpy(q5_1.data() + 2, &half, 2);
  const uint32_t qh = (1u << 3) | (1u << 19);
  std::memcpy(q5_1.data() + 4, &qh, 4);
  q5_1[8 + 3] = 0x21;  // element 3: 1 | 16 = 17; element 19: 2 | 16 = 18
  quant::dequantize_row(wtype::q5_1, q5_1.data(), out.data(), 32);
  CHECK(out[3] == 0.25f * 17 - 1.0f);
  CHECK(out[19] == 0.25f * 18 - 1.0f);
  CHECK(out[0] == -1.0f);

  // Q3_K: all low bits 1, high bits set except element 0's; scales all 32+1.
  std::vector<uint8_t> q3_k(110, 0);
  std::memset(q3_k.data(), 0xFF, 32);
  q3_k[0] = 0xFE;  // element 0 (n = 0, j = 0): its high bit is clear -> subtract 4
  std::memset(q3_k.data() + 32, 0x55, 64);
  // 6-bit scale 33: low nibbles 1 (bytes 0-7), high 2 bits 2 (bytes 8-11).
  std::memset(q3_k.data() + 96, 0x11, 8);
  std::memset(q3_k.data() + 104, 0xAA, 4);
  half = float_to_half(0.5f);
  std::memcpy(q3_k.data() + 108, &half, 2);
  std::vector<float> out256(256);
  quant::dequantize_row(wtype::q3_k, q3_k.data(), out256.data(), 256);
  CHECK(out256[0] == 0.5f * 1 * (1 - 4));
  CHECK(out256[1] == 0.5f * 1 * 1);
  CHECK(out256[255] == 0.5f * 1 * 1);

  // Q2_K: element 128 + 32 + 5 is bits 2..3 of qs[32 + 5]; scale and min nibbles of byte 10.
  std::vector<uint8_t> q2_k(84, 0);
  q2_k[10] = 0x23;           // scale 3, min 2 for elements 160..175
  q2_k[16 + 32 + 5] = 0x08;  // element 165: (0x08 >> 2) & 3 = 2
  half = float_to_half(0.5f);
  std::memcpy(q2_k.data() + 80, &half, 2);
  half = float_to_half(0.25f);
  std::memcpy(q2_k.data() + 82, &half, 2);
  quant::dequantize_row(wtype::q2_k, q2_k.data(), out256.data(), 256);
  CHECK(out256[165] == 0.5f * 3 * 2 - 0.25f * 2);
  CHECK(out256[164] == -0.25f * 2);
}

TEST_CASE("a row length that is not a multiple of the block size is refused by name") {
  auto message = error_of([] {
    quant::tensor_bytes(wtype::q4_k, 300 * 4, 300, "m.gguf: tensor 'blk.0.ffn_up.weight'");
  });
  CHECK(message.find("tensor 'blk.0.ffn_up.weight'") != std::string::npos);
  CHECK(message.find("Q4_K") != std::string::npos);
  CHECK(message.find("300") != std::string::npos);
  CHECK(message.find("256") != std::string::npos);
  message = error_of([] { quant::matrix::view(wtype::q8_0, nullptr, 4, 48, "tensor 'wq'"); });
  CHECK(message.find("tensor 'wq'") != std::string::npos);
  CHECK(message.find("32") != std::string::npos);
  message = error_of([] { quant::tensor_bytes(wtype(42), 256, 256, "tensor 'x'"); });
  CHECK(message.find("ggml type 42") != std::string::npos);
  CHECK(message.find("Q4_K=12") != std::string::npos);
  CHECK(quant::tensor_bytes(wtype::q6_k, 512 * 3, 512, "t") == 3 * 2 * 210);
  CHECK(quant::tensor_bytes(wtype::q5_0, 64, 32, "t") == 2 * 22);
}

namespace {

/// The tensor directory of a GGUF file, for reading types the loader does
/// not take yet: name -> (type, ne, bytes from the start of the file).
struct gguf_index {
  struct entry {
    wtype type;
    std::vector<int64_t> ne;
    size_t offset;
  };
  std::vector<uint8_t> bytes;
  std::map<std::string, entry> tensors;

  explicit gguf_index(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
    size_t pos = 4;
    auto take = [&](auto& v) {
      REQUIRE(pos + sizeof(v) <= bytes.size());
      std::memcpy(&v, bytes.data() + pos, sizeof(v));
      pos += sizeof(v);
    };
    auto skip_string = [&] {
      uint64_t n;
      take(n);
      pos += n;
    };
    auto read_string = [&] {
      uint64_t n;
      take(n);
      std::string s(reinterpret_cast<const char*>(bytes.data() + pos), n);
      pos += n;
      return s;
    };
    const size_t scalar_size[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    uint32_t version;
    uint64_t n_tensors, n_kv;
    take(version);
    take(n_tensors);
    take(n_kv);
    uint64_t alignment = 32;
    for (uint64_t k = 0; k < n_kv; ++k) {
      const std::string key = read_string();
      uint32_t type;
      take(type);
      if (type == 8) {
        skip_string();
      } else if (type == 9) {
        uint32_t elem;
        uint64_t n;
        take(elem);
        take(n);
        for (uint64_t i = 0; i < n; ++i)
          if (elem == 8)
            skip_string();
          else
            pos += scalar_size[elem];
      } else {
        if (key == "general.alignment") {
          uint32_t a;
          take(a);
          alignment = a;
        } else {
          pos += scalar_size[type];
        }
      }
    }
    for (uint64_t i = 0; i < n_tensors; ++i) {
      const std::string name = read_string();
      uint32_t n_dims, type;
      take(n_dims);
      std::vector<int64_t> ne(n_dims);
      for (auto& d : ne)
        take(d);
      uint64_t offset;
      take(type);
      take(offset);
      tensors[name] = {wtype(type), ne, offset};
    }
    const size_t data_start = (pos + alignment - 1) / alignment * alignment;
    for (auto& [name, t] : tensors)
      t.offset += data_start;
  }

  std::vector<float> dequantize(const std::string& name) const {
    const auto& t = tensors.at(name);
    int64_t n = 1;
    for (auto d : t.ne)
      n *= d;
    const size_t size = quant::tensor_bytes(t.type, n, t.ne[0], "tensor '" + name + "'");
    REQUIRE(t.offset + size <= bytes.size());
    std::vector<float> out(static_cast<size_t>(n));
    const size_t row_bytes = size / size_t(n / t.ne[0]);
    for (int64_t r = 0; r < n / t.ne[0]; ++r)
      quant::dequantize_row(t.type, bytes.data() + t.offset + size_t(r) * row_bytes,
                            out.data() + r * t.ne[0], t.ne[0]);
    return out;
  }
};

} // namespace

TEST_CASE("the tiny256 quantized files dequantize close to the f32 weights") {
  const std::string dir = shared_dir() + "/models/tiny256/";
  const gguf_index f32(dir + "tiny256-f32.gguf");
  // Largest RMS error of a tensor relative to its RMS, per weight type. A
  // b-bit uniform quantizer over a block's range r has RMS error
  // r / (2^b - 1) / sqrt(12); for normal weights r is about 4.5 standard
  // deviations in blocks of 32, giving 8.4% at 4 bits, 4.2% at 5, 2.1% at 6
  // and 0.5% at 8. K-quants fit their ranges better; these bounds leave
  // room for that and for 6-bit scales.
  const std::map<wtype, double> bound = {
    {wtype::q8_0, 0.006}, {wtype::q6_k, 0.025}, {wtype::q5_0, 0.05},
    {wtype::q5_k, 0.05},  {wtype::q4_0, 0.10},  {wtype::q4_1, 0.10},
    {wtype::q4_k, 0.10}};
  std::map<wtype, double> worst;
  for (auto file : {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K_M", "Q5_K_M", "Q6_K"}) {
    CAPTURE(file);
    const gguf_index q(dir + "tiny256-" + file + ".gguf");
    CHECK(q.tensors.size() == f32.tensors.size());
    for (const auto& [name, t] : q.tensors) {
      CAPTURE(name);
      REQUIRE(f32.tensors.count(name));
      CHECK(t.ne == f32.tensors.at(name).ne);
      const auto want = f32.dequantize(name), got = q.dequantize(name);
      double err = 0, ref = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        err += (got[i] - want[i]) * double(got[i] - want[i]);
        ref += double(want[i]) * want[i];
      }
      const double rel = std::sqrt(err / ref);
      if (t.type == wtype::f32) {
        CHECK(rel == 0.0);
        continue;
      }
      REQUIRE(bound.count(t.type));
      CAPTURE(quant::type_name(t.type));
      CHECK(rel <= bound.at(t.type));
      worst[t.type] = std::max(worst[t.type], rel);
    }
  }
  for (const auto& [type, rel] : worst)
    MESSAGE(quant::type_name(type) << ": worst relative RMS error " << rel);
  CHECK(worst.size() == 7);
}

TEST_CASE("a weight matrix of blocks projects, multiplies and looks up rows like its fp32 copy") {
  c10::InferenceMode guard;
  std::mt19937 rng(16);
  const int64_t rows = 45, cols = 256;
  auto bytes = random_weights(wtype::q4_k, rows, cols, rng);
  weight_matrix w(quant::matrix::view(wtype::q4_k, bytes.data(), rows, cols, "w"), nullptr);
  weight_matrix f(w.to_tensor());
  CHECK(w.rows() == rows);
  CHECK(w.cols() == cols);
  CHECK(w.n_bytes() == size_t(rows) * 144);
  CHECK(f.n_bytes() == size_t(rows * cols) * 4);
  CHECK(w.type() == wtype::q4_k);
  CHECK(error_of([&] { w.tensor("training"); }).find("training needs fp32 weights, but they are held as Q4_K") !=
        std::string::npos);

  // Many rows: BLAS over dequantized tiles, the fp32 product, or integer
  // products of 8-bit activations, each within its quantization error.
  auto many = at::randn({weight_matrix::integer_rows_max + 5, cols});
  if (quant::matmat_is_integer(wtype::q4_k)) {
    auto x_q = at::from_blob(gemm_activations(std::vector<float>(many.data_ptr<float>(),
                                                                 many.data_ptr<float>() + many.numel()))
                               .data(),
                             many.sizes())
                 .clone();
    // Float rounding only, against the size of the terms summed.
    auto error = (w.project(many) - f.project(x_q)).abs();
    auto bound = at::matmul(x_q.abs(), f.tensor("test").abs().t()) * 1e-5 + 1e-6;
    CHECK_MESSAGE((error <= bound).all().item<bool>(),
                  "worst error " << error.max().item<float>() << ", bound there "
                                 << bound.flatten()[error.argmax()].item<float>());
  } else {
    CHECK(at::allclose(w.project(many), f.project(many), 1e-4, 1e-4));
  }

  // Few rows: the decode path's 8-bit products, each input's row exactly as
  // a single matvec computes it, and close to the fp32 product.
  auto x = at::randn({3, cols});
  auto want = f.project(x), got = w.project(x);
  std::vector<float> rows_out(size_t(3 * rows)), one(static_cast<size_t>(rows));
  w.matvec_rows(x.data_ptr<float>(), rows_out.data(), 3);
  CHECK(std::equal(rows_out.begin(), rows_out.end(), got.data_ptr<float>()));
  for (int64_t j = 0; j < 3; ++j) {
    w.matvec(x.data_ptr<float>() + j * cols, one.data());
    CHECK(std::equal(one.begin(), one.end(), rows_out.begin() + j * rows));
    // Each 8-bit activation is off by at most max|x| / 200.
    const float x_step = x[j].abs().max().item<float>() / 200.0f;
    for (int64_t r = 0; r < rows; ++r) {
      const float bound = f.tensor("test")[r].abs().sum().item<float>() * x_step;
      CHECK(std::fabs(one[size_t(r)] - want[j][r].item<float>()) <= bound * 1.001f + 1e-4f);
    }
  }
  std::vector<float> row(cols);
  w.row_into(7, row.data());
  for (int64_t i = 0; i < cols; ++i)
    CHECK(row[size_t(i)] == f.tensor("test")[7][i].item<float>());
}
