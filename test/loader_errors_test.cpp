#include "test/support.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>

#include "model/gguf.hpp"
#include "model/gguf_writer.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

/// Re-writes stories260K.gguf through gguf_writer, letting `edit` change a
/// tensor's ggml shape (name, ne) -> ne.
void rewrite_stories(const std::string& out,
                     std::function<std::vector<int64_t>(const std::string&, std::vector<int64_t>)> edit) {
  gguf_file f(stories_gguf());
  gguf_writer w;
  w.set_string("general.architecture", "llama");
  for (auto key : {"llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                   "llama.attention.head_count", "llama.attention.head_count_kv",
                   "llama.block_count", "tokenizer.ggml.bos_token_id",
                   "tokenizer.ggml.eos_token_id"})
    w.set_uint32(key, uint32_t(f.get_uint(key)));
  w.set_float32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  copy_stories_vocabulary(w);
  for (const auto& t : f.tensors()) {
    std::vector<float> data(size_t(t.n_elements()));
    f.dequantize(t, data.data());
    w.add_tensor(t.name, edit(t.name, t.ne), data.data(), t.name == "output.weight");
  }
  w.write(out);
}

/// A small GGUF: three f32 tensors and an 8-piece vocabulary whose BOS and
/// EOS are `bos` and `eos`.
std::vector<char> small_gguf(const temp_dir& tmp, uint32_t bos = 1, uint32_t eos = 2) {
  gguf_writer w;
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "</s>", "a", "b", "c", "d", "e"});
  w.set_uint32("tokenizer.ggml.bos_token_id", bos);
  w.set_uint32("tokenizer.ggml.eos_token_id", eos);
  std::vector<float> data(64, 0.5f);
  w.add_tensor("tensor.alpha", {8, 8}, data.data());  // 256 bytes at data offset 0
  w.add_tensor("tensor.gamma", {32}, data.data());    // 128 bytes at 256
  w.add_tensor("tensor.beta", {8, 8}, data.data());   // 256 bytes at 384
  auto path = tmp.file("small.gguf");
  w.write(path);
  return read_all(path);
}

/// Where the ggml type (u32) of tensor `name` is in a GGUF's bytes; its
/// data offset (u64) follows.
size_t type_field_of(const std::vector<char>& bytes, const std::string& name) {
  auto at = std::search(bytes.begin(), bytes.end(), name.begin(), name.end());
  REQUIRE(at != bytes.end());
  size_t pos = size_t(at - bytes.begin()) + name.size();
  uint32_t n_dims = 0;
  std::memcpy(&n_dims, bytes.data() + pos, 4);
  return pos + 4 + 8 * size_t(n_dims);
}

template <class T>
void patch(std::vector<char>& bytes, size_t at, T value) {
  std::memcpy(bytes.data() + at, &value, sizeof value);
}

/// The error of reading `bytes` as a GGUF file written to `tmp`/`name`.
std::string gguf_error(const temp_dir& tmp, const std::string& name, const std::vector<char>& bytes) {
  auto path = tmp.file(name);
  write_all(path, bytes, bytes.size());
  return error_of([&] {
    gguf_file f(path);
    tokenizer::from_gguf(f);
  });
}

} // namespace

TEST_CASE("GGUF tensor data that is unaligned, overlapping or sized by another type is refused by name") {
  temp_dir tmp;
  const auto good = small_gguf(tmp);
  CHECK(gguf_error(tmp, "good.gguf", good) == "");

  auto unaligned = good;
  patch(unaligned, type_field_of(unaligned, "tensor.gamma") + 4, uint64_t(260));
  auto msg = gguf_error(tmp, "unaligned.gguf", unaligned);
  CHECK(contains(msg, "unaligned.gguf"));
  CHECK(contains(msg, "tensor 'tensor.gamma' starts at data offset 260, not a multiple of "
                      "general.alignment = 32"));

  auto overlapping = good;
  patch(overlapping, type_field_of(overlapping, "tensor.beta") + 4, uint64_t(128));
  msg = gguf_error(tmp, "overlap.gguf", overlapping);
  CHECK(contains(msg, "overlap.gguf: tensors overlap: 'tensor.alpha' (F32 [8, 8], 256 bytes from "
                      "data offset 0) runs into tensor 'tensor.beta' (F32 [8, 8], 256 bytes from "
                      "data offset 128)"));

  // F16 where the data was written as F32: half the bytes, a gap behind it.
  auto narrower = good;
  patch(narrower, type_field_of(narrower, "tensor.alpha"), uint32_t(ggml_type::f16));
  msg = gguf_error(tmp, "narrower.gguf", narrower);
  CHECK(contains(msg, "narrower.gguf: tensor 'tensor.alpha' (F16 [8, 8], 128 bytes from data "
                      "offset 0) ends 128 bytes before tensor 'tensor.gamma' starts at data "
                      "offset 256: its type disagrees with the data it holds"));

  // Q8_0 takes 34 bytes for 32 elements, written as 128 bytes of F32.
  auto quantized = good;
  patch(quantized, type_field_of(quantized, "tensor.gamma"), uint32_t(ggml_type::q8_0));
  msg = gguf_error(tmp, "quantized.gguf", quantized);
  CHECK(contains(msg, "quantized.gguf: tensor 'tensor.gamma' (Q8_0 [32], 34 bytes from data "
                      "offset 256) ends 94 bytes before tensor 'tensor.beta' starts at data "
                      "offset 384"));
}

TEST_CASE("BOS and EOS ids outside the vocabulary name the file and the key") {
  temp_dir tmp;
  auto msg = gguf_error(tmp, "bos.gguf", small_gguf(tmp, 8, 2));
  CHECK(contains(msg, "bos.gguf: tokenizer.ggml.bos_token_id is 8, outside the vocabulary of 8 "
                      "tokens (expected 0..7)"));
  msg = gguf_error(tmp, "eos.gguf", small_gguf(tmp, 1, 0xFFFFFFFF));
  CHECK(contains(msg, "eos.gguf: tokenizer.ggml.eos_token_id is 4294967295, outside the vocabulary"));
  CHECK(gguf_error(tmp, "fine.gguf", small_gguf(tmp, 1, 7)) == "");
}

TEST_CASE("a GGUF rewritten with F16 output loads and predicts like the original") {
  temp_dir tmp;
  auto path = tmp.file("copy.gguf");
  rewrite_stories(path, [](auto&, auto ne) { return ne; });
  auto m = load_model(path);
  transformer model(m.config, m.weights, c10::Device(c10::kCPU));
  c10::InferenceMode guard;
  auto x = model.embed(once_upon_a_time);
  auto cache = model.make_cache(0, 5);
  model.forward_layers(x, 0, 0, 5, cache);
  auto logits = model.logits(x)[-1];
  CHECK(logits.argmax().item<int64_t>() == 432);
  CHECK(std::abs(logits[432].item<float>() - 17.7994f) < 0.05f);  // F16 classifier
}

TEST_CASE("a context length past the bound is refused before anything is sized for it") {
  // The file's llama.context_length, raised in place (key, u32 type, u32 value).
  auto bytes = read_all(stories_gguf());
  const std::string key = "llama.context_length";
  auto at = std::search(bytes.begin(), bytes.end(), key.begin(), key.end());
  REQUIRE(at != bytes.end());
  const size_t value = size_t(at - bytes.begin()) + key.size() + 4;
  const uint32_t huge = 0x7FFFFFFF;
  std::memcpy(bytes.data() + value, &huge, 4);
  temp_dir tmp;
  auto path = tmp.file("long-context.gguf");
  write_all(path, bytes, bytes.size());
  auto msg = error_of([&] { load_model(path); });
  CHECK(msg.find("model context length is 2147483647, expected 1..1048576") != std::string::npos);
  CHECK(msg.find("long-context.gguf") != std::string::npos);
}

TEST_CASE("a tensor whose shape disagrees with the header names the tensor and both shapes") {
  temp_dir tmp;
  auto path = tmp.file("bad-shape.gguf");
  rewrite_stories(path, [](const std::string& name, std::vector<int64_t> ne) {
    if (name == "blk.0.attn_k.weight")
      return std::vector<int64_t>{32, 64};
    return ne;
  });
  auto msg = error_of([&] { load_model(path); });
  CHECK(contains(msg, path));
  CHECK(contains(msg, "tensor 'blk.0.attn_k.weight' has shape [32, 64], expected [64, 32]"));
}

TEST_CASE("a truncated GGUF is reported, never crashes") {
  temp_dir tmp;
  auto bytes = read_all(stories_gguf());
  for (size_t n : {size_t(0), size_t(3), size_t(20), size_t(5000), size_t(14200), size_t(600000),
                   bytes.size() - 1}) {
    CAPTURE(n);
    auto path = tmp.file("cut-" + std::to_string(n) + ".gguf");
    write_all(path, bytes, n);
    auto msg = error_of([&] { load_model(path); });
    CHECK(contains(msg, path));
    CHECK(contains(msg, "truncated"));
  }
  auto path = tmp.file("cut.gguf");
  write_all(path, bytes, 600000);
  CHECK(contains(error_of([&] { load_model(path); }),
                 "tensor 'blk.1.ffn_up.weight' (44032 bytes at offset 595808) ends at byte 639840, but the file has 600000 bytes"));
}

TEST_CASE("a wrong magic number is reported with the expected and actual values") {
  temp_dir tmp;
  auto bytes = read_all(stories_gguf());
  bytes[3] = 'X';
  auto path = tmp.file("magic.gguf");
  write_all(path, bytes, bytes.size());
  auto msg = error_of([&] { load_model(path); });
  CHECK(contains(msg, path));
  CHECK(contains(msg, "expected magic 0x46554747 (\"GGUF\"), found 0x58554747"));
}

TEST_CASE("corrupt GGUF counts are refused before any allocation") {
  temp_dir tmp;
  auto bytes = read_all(stories_gguf());
  for (int i = 16; i < 24; ++i)
    bytes[size_t(i)] = char(0xff);  // metadata count 2^64 - 1
  auto path = tmp.file("counts.gguf");
  write_all(path, bytes, bytes.size());
  CHECK(contains(error_of([&] { load_model(path); }), "corrupt GGUF header"));
}

TEST_CASE("a truncated llama2.c checkpoint names the sizes it expected and found") {
  temp_dir tmp;
  auto bytes = read_all(stories_bin());
  for (size_t n : {size_t(0), size_t(27), size_t(500000), bytes.size() - 4}) {
    CAPTURE(n);
    auto path = tmp.file("cut-" + std::to_string(n) + ".bin");
    write_all(path, bytes, n);
    auto msg = error_of([&] { load_model(path, stories_tok()); });
    CHECK(contains(msg, path));
    CHECK(contains(msg, "truncated"));
  }
  auto path = tmp.file("cut.bin");
  write_all(path, bytes, 500000);
  CHECK(contains(error_of([&] { load_model(path, stories_tok()); }),
                 "needs 1056540 bytes, the file has 500000"));
}

TEST_CASE("a llama2.c header of nonsense is refused as such") {
  temp_dir tmp;
  std::vector<char> junk(4096, 'a');
  auto path = tmp.file("junk.bin");
  write_all(path, junk, junk.size());
  auto msg = error_of([&] { load_model(path, stories_tok()); });
  CHECK(contains(msg, "not a llama2.c legacy checkpoint?"));
}

TEST_CASE("a truncated llama2.c tokenizer and missing files are reported") {
  temp_dir tmp;
  auto bytes = read_all(stories_tok());
  auto path = tmp.file("tok.bin");
  write_all(path, bytes, 3000);
  auto msg = error_of([&] { tokenizer::from_llama2c(path, 512); });
  CHECK(contains(msg, path));
  CHECK(contains(msg, "truncated or corrupt llama2.c tokenizer"));
  CHECK(contains(error_of([&] { load_model(tmp.file("none.gguf")); }), "no such file"));
  CHECK(contains(error_of([&] { load_model(stories_bin(), tmp.file("none.bin")); }),
                 "cannot open tokenizer"));
}

TEST_CASE("a model folder resolves to its GGUF") {
  auto m = load_model(stories_dir());
  CHECK(m.format == "gguf");
  CHECK(m.config.vocab_size == 512);
}
