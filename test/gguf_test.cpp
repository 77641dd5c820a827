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

TEST_CASE("gguf_writer copies encoded metadata, aligns per general.alignment and never leaves a partial file") {
  temp_dir tmp;
  const auto source = tmp.file("source.gguf");
  {
    gguf_writer w;
    w.set_string_array("test.words", {"x", "yz"});
    w.set_uint32("general.alignment", 64);
    std::vector<float> m = {1, 2, 3};
    w.add_tensor("a", {3}, m.data());
    // Blocks of any type, written when the file is.
    w.add_tensor("q", {32, 2}, ggml_type::q8_0, [](uint8_t* out, size_t n) {
      CHECK(n == 2 * 34);
      for (size_t i = 0; i < n; ++i)
        out[i] = uint8_t(i % 7);
    });
    w.write(source);
  }
  gguf_file f(source);
  CHECK(f.get_uint("general.alignment") == 64);
  CHECK(f.get("q").offset % 64 == 0);
  CHECK(f.get("q").offset > 0);
  CHECK(f.get("q").type == ggml_type::q8_0);
  for (size_t i = 0; i < 68; ++i)
    CHECK(f.get("q").data[i] == uint8_t(i % 7));
  // Copied entry by entry, the metadata is the same bytes.
  gguf_writer copy;
  for (const auto& kv : f.encoded_metadata())
    copy.set_encoded(kv.key, kv.type, kv.value, kv.n_bytes);
  const auto copied = tmp.file("copy.gguf");
  copy.write(copied);
  gguf_file g(copied);
  REQUIRE(g.encoded_metadata().size() == 2);
  CHECK(g.get_string_array("test.words") == std::vector<std::string>{"x", "yz"});
  for (size_t i = 0; i < 2; ++i) {
    const auto &a = f.encoded_metadata()[i], &b = g.encoded_metadata()[i];
    CHECK(a.key == b.key);
    CHECK(a.type == b.type);
    CHECK(std::equal(a.value, a.value + a.n_bytes, b.value, b.value + b.n_bytes));
  }

  // A fill that fails leaves the old file as it was and no temporary file.
  const auto before = read_all(copied);
  gguf_writer failing;
  failing.set_uint32("test.n", 1);
  failing.add_tensor("q", {32}, ggml_type::q8_0, [](uint8_t*, size_t) {
    throw model_error("quantizing 'q' failed");
  });
  CHECK(error_of([&] { failing.write(copied); }) == "quantizing 'q' failed");
  CHECK(read_all(copied) == before);
  CHECK(error_of([&] { failing.write(tmp.file("new.gguf")); }) == "quantizing 'q' failed");
  CHECK_FALSE(std::filesystem::exists(tmp.file("new.gguf")));
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(tmp.path)) {
    CAPTURE(e.path().string());
    CHECK(e.path().extension() == ".gguf");
    ++files;
  }
  CHECK(files == 2);
  // A folder that does not exist is named.
  CHECK(error_of([&] { copy.write("/nonexistent-folder/x.gguf"); })
          .find("/nonexistent-folder/x.gguf: cannot open for writing: No such file") == 0);
}
