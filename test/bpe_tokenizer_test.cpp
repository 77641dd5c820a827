// Byte-level BPE and the pre-tokenizer splits, checked against the reference
// implementation's tokenizer test vectors (../shared/models/vocab/), plus
// round trips and special-token parsing.

#include "test/support.hpp"

#include <fstream>
#include <iterator>
#include <sstream>
#include <unordered_map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "model/gguf.hpp"
#include "model/gguf_writer.hpp"
#include "model/pretokenizer.hpp"
#include "model/tokenizer.hpp"
#include "model/unicode.hpp"

using namespace ceco;
using namespace ceco::test;

namespace {

std::string vocab_file(const std::string& name) {
  return shared_dir() + "/models/vocab/ggml-vocab-" + name + ".gguf";
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in, "cannot open " << path);
  return {std::istreambuf_iterator<char>(in), {}};
}

struct vector_case {
  std::string text;
  std::vector<int32_t> ids;
};

/// The .inp cases (each ends with "\n__ggml_vocab_test__\n") with the .out
/// lines (space-separated ids) in the same order.
std::vector<vector_case> read_vectors(const std::string& name) {
  auto inp = read_file(vocab_file(name) + ".inp");
  auto out = read_file(vocab_file(name) + ".out");
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<vector_case> cases;
  size_t pos = 0;
  while (pos < inp.size()) {
    auto at = inp.find(sep, pos);
    REQUIRE_MESSAGE(at != std::string::npos, name << ".inp: the last case lacks its separator");
    cases.push_back({inp.substr(pos, at - pos), {}});
    pos = at + sep.size();
  }
  std::istringstream lines(out);
  std::string line;
  size_t i = 0;
  while (std::getline(lines, line)) {
    REQUIRE_MESSAGE(i < cases.size(), name << ".out has more lines than .inp has cases");
    std::istringstream ids(line);
    for (int32_t id; ids >> id;)
      cases[i].ids.push_back(id);
    ++i;
  }
  REQUIRE_MESSAGE(i == cases.size(), name << ".out has " << i << " lines for " << cases.size()
                                          << " cases");
  return cases;
}

/// Encodes every case without BOS/EOS and without special parsing, as the
/// vectors were made; returns the number that match exactly.
int check_vectors(const std::string& name, size_t expected_cases) {
  gguf_file f(vocab_file(name));
  auto vocab = tokenizer::from_gguf(f);
  auto cases = read_vectors(name);
  CHECK(cases.size() == expected_cases);
  int passed = 0;
  for (const auto& c : cases) {
    auto ids = vocab.encode(c.text, false, false);
    CHECK_MESSAGE(ids == c.ids, name << ": " << fmt::format("{:?}", c.text) << " gives ["
                                     << fmt::format("{}", fmt::join(ids, " ")) << "], expected ["
                                     << fmt::format("{}", fmt::join(c.ids, " ")) << "]");
    passed += ids == c.ids;
  }
  MESSAGE(name << ": " << passed << "/" << cases.size() << " cases match the reference");
  return passed;
}

std::vector<std::string> words(pre_split split, std::string_view text) {
  auto v = pre_tokenize(split, text);
  return {v.begin(), v.end()};
}

using strings = std::vector<std::string>;

} // namespace

TEST_CASE("the reference's gpt-2 vectors all match") {
  CHECK(check_vectors("gpt-2", 46) == 46);
}

TEST_CASE("the reference's deepseek-llm vectors all match") {
  CHECK(check_vectors("deepseek-llm", 46) == 46);
}

TEST_CASE("the reference's llama-spm vectors all match") {
  CHECK(check_vectors("llama-spm", 46) == 46);
}

TEST_CASE("the GGUF's vocabulary type, flags and pre-tokenizer are read") {
  gguf_file gpt2(vocab_file("gpt-2"));
  auto g = tokenizer::from_gguf(gpt2);
  CHECK(g.type() == vocab_type::byte_level_bpe);
  CHECK(g.pre_name() == "gpt-2");
  CHECK(g.vocab_size() == 50257);
  CHECK(g.bos() == 50256);
  CHECK_FALSE(g.add_bos());
  CHECK(g.encode("Hello world") == std::vector<int32_t>{15496, 995});

  gguf_file ds(vocab_file("deepseek-llm"));
  auto d = tokenizer::from_gguf(ds);
  CHECK(d.pre_name() == "deepseek-llm");
  CHECK(d.add_bos());
  CHECK_FALSE(d.add_eos());
  auto ids = d.encode("Hello");
  REQUIRE(ids.size() >= 2);
  CHECK(ids.front() == 100000);  // BOS added as add_bos_token says
  CHECK(d.encode("Hello", false) == std::vector<int32_t>(ids.begin() + 1, ids.end()));

  gguf_file spm(vocab_file("llama-spm"));
  CHECK(tokenizer::from_gguf(spm).type() == vocab_type::sentencepiece);
}

TEST_CASE("byte-level BPE decodes what it encodes, byte for byte") {
  const strings texts = {
    "Hello world",
    " leading and trailing spaces  ",
    "tabs\tand\nnew\r\nlines\n\n\n",
    "Zoë's café — naïve façade, «quotes» and ½ of 1234567 apples",
    "Привет, мир! Γειά σου Κόσμε. שלום עולם. مرحبا بالعالم",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 🙂🦙👩‍👩‍👧 and flags 🇫🇷",
    "code: for (int i = 0; i < n; ++i) { x += a[i] * 3.14e-2; } // done",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE",
    "mixed\u00a0spaces\u2003and\u3000ideographic",
    "",
  };
  for (auto name : {"gpt-2", "deepseek-llm"}) {
    gguf_file f(vocab_file(name));
    auto vocab = tokenizer::from_gguf(f);
    for (const auto& t : texts) {
      auto ids = vocab.encode(t, false);
      CHECK_MESSAGE(vocab.decode(ids) == t, name << ": " << fmt::format("{:?}", t));
    }
  }
  // Bytes that are not UTF-8 survive too, where the vocabulary has plain
  // byte pieces for them (DeepSeek's "ÿ" and "þ" are user-defined tokens,
  // which decode to their text, as in the reference).
  gguf_file f(vocab_file("gpt-2"));
  auto vocab = tokenizer::from_gguf(f);
  std::string invalid = "invalid \xff\xfe bytes and a cut \xe2\x82 sequence\xc3";
  CHECK(vocab.decode(vocab.encode(invalid, false)) == invalid);
}

TEST_CASE("special-token text becomes its token only when parsing is on") {
  gguf_file f(vocab_file("gpt-2"));
  auto vocab = tokenizer::from_gguf(f);
  const std::string text = "Hi<|endoftext|>there";
  auto parsed = vocab.encode(text, false, true);
  auto plain = vocab.encode(text, false, false);
  CHECK(std::count(parsed.begin(), parsed.end(), 50256) == 1);
  CHECK(std::count(plain.begin(), plain.end(), 50256) == 0);
  CHECK(parsed == std::vector<int32_t>{vocab.encode("Hi", false)[0], 50256,
                                       vocab.encode("there", false)[0]});
  CHECK(vocab.token_text(50256) == "<|endoftext|>");
  CHECK(vocab.decode(parsed).empty() == false);
  CHECK(vocab.decode(parsed) == "Hithere");  // control tokens decode to nothing

  // SentencePiece: the text after a special token gets the dummy prefix.
  gguf_file s(vocab_file("llama-spm"));
  auto spm = tokenizer::from_gguf(s);
  auto ids = spm.encode("a</s>b", true, true);
  REQUIRE(ids.size() == 4);
  CHECK(ids[0] == 1);
  CHECK(ids[2] == 2);
  CHECK(ids[1] == spm.encode("a", false)[0]);
  CHECK(ids[3] == spm.encode("b", false)[0]);
  auto plain_spm = spm.encode("a</s>b", true, false);
  CHECK(std::count(plain_spm.begin(), plain_spm.end(), 2) == 0);
  CHECK(spm.decode(plain_spm, -1) == "a</s>b");  // the dummy prefix goes after BOS
}

TEST_CASE("user-defined tokens are cut out even without special parsing") {
  // DeepSeek's vocabulary lists "ø" as a user-defined token.
  gguf_file f(vocab_file("deepseek-llm"));
  auto vocab = tokenizer::from_gguf(f);
  auto ids = vocab.encode("søster", false, false);
  CHECK(std::count(ids.begin(), ids.end(), 100002) == 1);
  CHECK(vocab.decode(ids) == "søster");
}

TEST_CASE("pre-tokenizer splits follow their patterns") {
  CHECK(words(pre_split::gpt2, "Hello world's  end 123!!") ==
        strings{"Hello", " world", "'s", " ", " end", " 123", "!!"});
  CHECK(words(pre_split::gpt2, "a\n\n b") == strings{"a", "\n\n", " b"});
  // Llama 3: up to three digits, a non-letter prefix joins a word, newlines
  // end a whitespace run, contractions in any case.
  CHECK(words(pre_split::llama3, "x 1234567 (abc) I'M\n\n  y") ==
        strings{"x", " ", "123", "456", "7", " (", "abc", ")", " I", "'M", "\n\n", " ", " y"});
  CHECK(words(pre_split::qwen2, "v2.0 123") == strings{"v", "2", ".", "0", " ", "1", "2", "3"});
  CHECK(words(pre_split::starcoder, "abc 12 x") == strings{"abc", " ", "1", "2", " x"});
  CHECK(words(pre_split::falcon, "a=12345, b") ==
        strings{"a", "=", "123", "45", ",", " b"});
  CHECK(words(pre_split::deepseek_coder, "def f(x):\n  return 42") ==
        strings{"def", " f", "(", "x", "):", "\n", " ", " return", " ", "4", "2"});
  CHECK(words(pre_split::deepseek_llm, "Hello, 世界 123  ") ==
        strings{"Hello", ",", " ", "世界", " ", "123", "  "});
  // The words always concatenate back to the text.
  std::string text = "Ünïcödé  \t text\r\n with 42 numbers, «punctuation»… and \xff bytes ";
  for (auto split : {pre_split::gpt2, pre_split::llama3, pre_split::qwen2, pre_split::starcoder,
                     pre_split::falcon, pre_split::deepseek_llm, pre_split::deepseek_coder}) {
    std::string joined;
    for (auto w : pre_tokenize(split, text))
      joined += w;
    CHECK(joined == text);
  }
}

TEST_CASE("unknown pre-tokenizers and vocabulary types are refused by name") {
  auto msg = error_of([] { pre_split_from_name("tekken", "m.gguf"); });
  CHECK(msg.find("m.gguf: tokenizer.ggml.pre is 'tekken'") != std::string::npos);
  CHECK(msg.find("llama-bpe") != std::string::npos);
  CHECK(pre_split_from_name("", "m.gguf") == pre_split::gpt2);
  CHECK(pre_split_from_name("smollm", "m.gguf") == pre_split::starcoder);
  CHECK(pre_split_from_name("qwen2", "m.gguf") == pre_split::qwen2);
  CHECK(pre_split_from_name("mpt", "m.gguf") == pre_split::gpt2);

  temp_dir dir;
  gguf_writer w;
  w.set_string("tokenizer.ggml.model", "bert");
  w.set_string_array("tokenizer.ggml.tokens", {"a", "b"});
  w.write(dir.file("bert.gguf"));
  gguf_file f(dir.file("bert.gguf"));
  msg = error_of([&] { tokenizer::from_gguf(f); });
  CHECK(msg.find("tokenizer.ggml.model is 'bert'") != std::string::npos);

  gguf_writer g;
  g.set_string("tokenizer.ggml.model", "gpt2");
  g.set_string_array("tokenizer.ggml.tokens", {"a", "b", "ab"});
  g.set_uint32("tokenizer.ggml.eos_token_id", 0);
  g.write(dir.file("nomerges.gguf"));
  gguf_file nm(dir.file("nomerges.gguf"));
  CHECK(error_of([&] { tokenizer::from_gguf(nm); }).find("tokenizer.ggml.merges") !=
        std::string::npos);
}

TEST_CASE("merges apply by rank, leftmost first") {
  temp_dir dir;
  gguf_writer g;
  g.set_string("tokenizer.ggml.model", "gpt2");
  g.set_string("tokenizer.ggml.pre", "gpt-2");
  // "aaa": rank 0 "a a" merges the leftmost pair first -> "aa" "a".
  g.set_string_array("tokenizer.ggml.tokens", {"<eos>", "a", "b", "aa", "ab", "aab"});
  g.set_int32_array("tokenizer.ggml.token_type", {3, 1, 1, 1, 1, 1});
  g.set_string_array("tokenizer.ggml.merges", {"a a", "a b", "aa b"});
  g.set_uint32("tokenizer.ggml.eos_token_id", 0);
  g.write(dir.file("tiny.gguf"));
  gguf_file f(dir.file("tiny.gguf"));
  auto vocab = tokenizer::from_gguf(f);
  CHECK(vocab.encode("aaa", false) == std::vector<int32_t>{3, 1});
  CHECK(vocab.encode("aab", false) == std::vector<int32_t>{5});   // "aa"+"b" after "a a"
  CHECK(vocab.encode("ab", false) == std::vector<int32_t>{4});
  CHECK(vocab.encode("aaab", false) == std::vector<int32_t>{3, 4});
  CHECK(vocab.decode(vocab.encode("abba", false)) == "abba");
}

TEST_CASE("code point classes and the byte alphabet") {
  using unicode::classify;
  using unicode::cpt_class;
  CHECK(classify('a') == cpt_class::letter);
  CHECK(classify(0x4E2D) == cpt_class::letter);    // 中
  CHECK(classify(0x0660) == cpt_class::number);    // Arabic-Indic zero
  CHECK(classify(0x00BD) == cpt_class::number);    // ½
  CHECK(classify(0x3001) == cpt_class::punctuation);
  CHECK(classify('$') == cpt_class::other);
  CHECK(classify(0x1F642) == cpt_class::other);    // 🙂
  CHECK(classify(0x3000) == cpt_class::whitespace);
  CHECK(classify(0x0085) == cpt_class::whitespace);
  CHECK(classify(0x0301) == cpt_class::other);     // combining acute accent
  for (int b = 0; b < 256; ++b) {
    auto cps = unicode::decode_utf8(unicode::byte_to_piece(uint8_t(b)));
    REQUIRE(cps.cpts.size() == 1);
    CHECK(unicode::piece_cpt_to_byte(cps.cpts[0]) == b);
  }
  CHECK(unicode::byte_to_piece(' ') == "\xc4\xa0");  // "Ġ"
}

TEST_CASE("ceco tokenize prints ids or pieces from a vocabulary-only GGUF") {
  auto ids = run_ceco("tokenize --model " + vocab_file("gpt-2") + " --text 'Hello world'");
  CHECK(ids.status == 0);
  CHECK(ids.out == "15496 995\n");
  auto pieces =
    run_ceco("tokenize --model " + vocab_file("gpt-2") + " --text 'Hello world' --pieces");
  CHECK(pieces.status == 0);
  CHECK(pieces.out == "\"Hello\" \" world\"\n");

  // Special text and BOS: on by default, off with --no-special.
  auto special = run_ceco("tokenize --model " + vocab_file("deepseek-llm") +
                          " --text 'Hi<｜end▁of▁sentence｜>'");
  CHECK(special.status == 0);
  CHECK(special.out.rfind("100000 ", 0) == 0);
  CHECK(special.out.find(" 100001\n") != std::string::npos);
  auto plain = run_ceco("tokenize --model " + vocab_file("deepseek-llm") +
                        " --text 'Hi<｜end▁of▁sentence｜>' --no-special");
  CHECK(plain.status == 0);
  CHECK(plain.out.find("100000") == std::string::npos);
  CHECK(plain.out.find("100001") == std::string::npos);

  temp_dir dir;
  {
    std::ofstream out(dir.file("prompt.txt"), std::ios::binary);
    out << "Hello world";
  }
  auto file = run_ceco("tokenize --model " + vocab_file("gpt-2") + " --file " +
                       dir.file("prompt.txt"));
  CHECK(file.out == "15496 995\n");
  // SentencePiece, with its BOS.
  auto spm = run_ceco("tokenize --model " + vocab_file("llama-spm") + " --text 'Hello world'");
  CHECK(spm.out == "1 15043 3186\n");
  // A llama2.c .bin: its tokenizer beside it, no weights read.
  auto bin = run_ceco("tokenize --model " + stories_bin() + " --text 'Once upon a time'");
  CHECK(bin.out == "1 403 407 261 378\n");
}

TEST_CASE("ceco tokenize explains bad input") {
  auto missing = run_ceco("tokenize --model " + vocab_file("gpt-2") + " --file /nonexistent/p.txt");
  CHECK(missing.status == 1);
  CHECK(missing.out.find("/nonexistent/p.txt") != std::string::npos);
  auto no_text = run_ceco("tokenize --model " + vocab_file("gpt-2"));
  CHECK(no_text.status == 1);
  CHECK(no_text.out.find("--text") != std::string::npos);
  auto no_model = run_ceco("tokenize --model /nonexistent/m.gguf --text hi");
  CHECK(no_model.status == 1);
  CHECK(no_model.out.find("/nonexistent/m.gguf: no such file") != std::string::npos);
  auto help = run_ceco("tokenize --help");
  CHECK(help.status == 0);
  for (auto flag : {"--model", "--text", "--file", "--pieces", "--no-special"})
    CHECK_MESSAGE(help.out.find(flag) != std::string::npos, flag);
}

TEST_CASE("llama-bpe keeps a word that is a token whole, other splits merge it") {
  temp_dir dir;
  auto write = [&](const std::string& pre) {
    gguf_writer g;
    g.set_string("tokenizer.ggml.model", "gpt2");
    g.set_string("tokenizer.ggml.pre", pre);
    g.set_string_array("tokenizer.ggml.tokens", {"<eos>", "a", "b", "c", "ab", "abc"});
    g.set_int32_array("tokenizer.ggml.token_type", {3, 1, 1, 1, 1, 1});
    g.set_string_array("tokenizer.ggml.merges", {"a b"});  // no merge makes "abc"
    g.set_uint32("tokenizer.ggml.eos_token_id", 0);
    auto path = dir.file(pre + ".gguf");
    g.write(path);
    return path;
  };
  gguf_file llama3(write("llama-bpe")), gpt2(write("gpt-2"));
  CHECK(tokenizer::from_gguf(llama3).encode("abc", false) == std::vector<int32_t>{5});
  CHECK(tokenizer::from_gguf(gpt2).encode("abc", false) == std::vector<int32_t>{4, 3});
}

TEST_CASE("a llama model with a byte-level vocabulary loads, and generate runs on it") {
  // stories260K's weights under a 512-token gpt2 vocabulary: the 256 bytes
  // of GPT-2's alphabet, then 256 merges of frequent pairs.
  gguf_file f(stories_gguf());
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b)
    tokens.push_back(unicode::byte_to_piece(uint8_t(b)));
  std::vector<std::string> merges;
  const std::string space = unicode::byte_to_piece(' ');
  for (char c = 'a'; c <= 'z' && tokens.size() < 511; ++c) {
    merges.push_back(space + " " + std::string(1, c));
    tokens.push_back(space + std::string(1, c));
  }
  for (char c1 = 'a'; c1 <= 'z' && tokens.size() < 511; ++c1)
    for (char c2 = 'a'; c2 <= 'z' && tokens.size() < 511; ++c2) {
      merges.push_back(std::string(1, c1) + " " + std::string(1, c2));
      tokens.push_back(std::string(1, c1) + std::string(1, c2));
    }
  tokens.push_back("<|endoftext|>");
  std::vector<int32_t> types(tokens.size(), 1);
  types.back() = 3;
  REQUIRE(tokens.size() == 512);

  gguf_writer w;
  w.set_string("general.architecture", "llama");
  for (auto key : {"llama.context_length", "llama.embedding_length", "llama.feed_forward_length",
                   "llama.attention.head_count", "llama.attention.head_count_kv",
                   "llama.block_count"})
    w.set_uint32(key, uint32_t(f.get_uint(key)));
  w.set_float32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "qwen2");
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_int32_array("tokenizer.ggml.token_type", types);
  w.set_string_array("tokenizer.ggml.merges", merges);
  w.set_uint32("tokenizer.ggml.eos_token_id", 511);
  for (const auto& t : f.tensors()) {
    std::vector<float> data(size_t(t.n_elements()));
    f.dequantize(t, data.data());
    w.add_tensor(t.name, t.ne, data.data());
  }
  temp_dir dir;
  auto path = dir.file("bpe.gguf");
  w.write(path);

  auto m = load_model(path);
  CHECK(m.vocab.type() == vocab_type::byte_level_bpe);
  CHECK(m.vocab.bos() == 511);
  CHECK(m.vocab.decode(m.vocab.encode("Once upon a time")) == "Once upon a time");
  auto r = run_ceco("generate --model " + path + " --prompt 'Once upon a time' --max-tokens 8");
  CHECK_MESSAGE(r.status == 0, r.out);
  CHECK(r.out.rfind("Once upon a time", 0) == 0);
  auto ids = run_ceco("tokenize --model " + path + " --text 'Once upon' --pieces");
  // Merges exist for " a".." z" and for letter pairs up to "iu": "ce", not "nc".
  CHECK(ids.out == "\"O\" \"n\" \"ce\" \" u\" \"p\" \"o\" \"n\"\n");
}

namespace {

/// SentencePiece merging the slow, obvious way: rescan every adjacent pair
/// for the best-scoring merge (leftmost on ties) until none is left.
std::vector<int32_t> spm_by_rescanning(const tokenizer& v, std::string_view text) {
  std::unordered_map<std::string, int32_t> ids;
  int32_t bytes[256];
  std::fill(std::begin(bytes), std::end(bytes), 0);
  for (int32_t i = 0; i < v.vocab_size(); ++i) {
    if (v.kind(i) == token_kind::normal)
      ids.emplace(v.piece(i), i);
    else if (v.kind(i) == token_kind::byte)
      bytes[std::stoi(v.piece(i).substr(3, 2), nullptr, 16)] = i;
  }
  std::vector<int32_t> t{ids.at(" ")};
  auto cps = unicode::decode_utf8(text);
  for (size_t i = 0; i < cps.cpts.size(); ++i) {
    auto ch = std::string(text.substr(cps.offsets[i], cps.offsets[i + 1] - cps.offsets[i]));
    if (auto it = ids.find(ch); it != ids.end())
      t.push_back(it->second);
    else
      for (unsigned char b : ch)
        t.push_back(bytes[b]);
  }
  for (;;) {
    int best = -1;
    int32_t best_id = -1;
    for (size_t i = 0; i + 1 < t.size(); ++i) {
      auto it = ids.find(v.piece(t[i]) + v.piece(t[i + 1]));
      if (it != ids.end() && (best_id < 0 || v.score(it->second) > v.score(best_id))) {
        best = int(i);
        best_id = it->second;
      }
    }
    if (best < 0)
      return t;
    t[size_t(best)] = best_id;
    t.erase(t.begin() + best + 1);
  }
}

} // namespace

TEST_CASE("SentencePiece merging by queue equals merging by rescanning") {
  gguf_file f(vocab_file("llama-spm"));
  auto vocab = tokenizer::from_gguf(f);
  auto text = read_file(shared_dir() + "/data/tinyshakespeare/input.txt").substr(0, 3000);
  text += " Zoë 🙂 naïve 日本語 aaaaaaaa    spaces\t\ttabs";
  CHECK(vocab.encode(text, false) == spm_by_rescanning(vocab, text));
}
