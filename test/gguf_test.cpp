#include "test/support.hpp"

#include <cmath>
#include <fstream>

#include "model/gguf.hpp"
#include "model/gguf_writer.hpp"

using namespace ceco;
using namespace ceco::test;

TEST_CASE("half precision converts every half exactly and rounds to nearest even") {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    float f = half_to_float(uint16_t(h));
    if (std::isnan(f))
      continue;
    CHECK(float_to_half(f) == h);
  }
  CHECK(half_to_float(float_to_half(1.0f)) == 1.0f);
  CHECK(half_to_float(float_to_half(65504.0f)) == 65504.0f);
  CHECK(std::isinf(half_to_float(float_to_half(1e6f))));
  // 1 + 2^-11 lies halfway between 1 and the next half; ties go to even (1).
  CHECK(half_to_float(float_to_half(1.0f + std::ldexp(1.0f, -11))) == 1.0f);
}

TEST_CASE("a GGUF written by gguf_writer reads back identically") {
  temp_dir tmp;
  gguf_writer w;
  w.set_uint32("test.count", 7);
  w.set_float32("test.eps", 0.25f);
  w.set_string("test.name", "ceco");
  w.set_string_array("test.words", {"a", "bc", ""});
  w.set_float32_array("test.scores", {1.5f, -2.0f});
  w.set_int32_array("test.layers", {2, 3});
  std::vector<float> m = {1, 2, 3, 4, 5, 6};
  w.add_tensor("m32", {3, 2}, m.data());
  w.add_tensor("m16", {3, 2}, m.data(), true);
  auto path = tmp.file("t.gguf");
  w.write(path);

  gguf_file f(path);
  CHECK(f.version() == 3);
  CHECK(f.get_uint("test.count") == 7);
  CHECK(f.get_float_or("test.eps", 0) == doctest::Approx(0.25));
  CHECK(f.get_string("test.name") == "ceco");
  CHECK(f.get_string_array("test.words") == std::vector<std::string>{"a", "bc", ""});
  CHECK(f.get_float_array("test.scores") == std::vector<double>{1.5, -2.0});
  CHECK(f.get_int_array("test.layers") == std::vector<int64_t>{2, 3});
  for (auto name : {"m32", "m16"}) {
    const auto& t = f.get(name);
    CHECK(t.ne == std::vector<int64_t>{3, 2});
    std::vector<float> out(6);
    f.dequantize(t, out.data());
    CHECK(out == m);
  }
  CHECK(error_of([&] { f.get_string("test.count"); }).find("should be a string") != std::string::npos);
  CHECK(error_of([&] { f.get_uint("test.missing"); }).find("'test.missing' is missing") != std::string::npos);
}

TEST_CASE("the stories260K GGUF parses with its metadata and 48 tensors") {
  gguf_file f(stories_gguf());
  CHECK(f.version() == 3);
  CHECK(f.tensors().size() == 48);
  CHECK(f.get_uint("llama.block_count") == 5);
  CHECK(f.get_string_array("tokenizer.ggml.tokens").size() == 512);
  CHECK(f.get("blk.0.attn_k.weight").ne == std::vector<int64_t>{64, 32});
}
