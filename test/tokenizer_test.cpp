#include "test/support.hpp"

#include "model/gguf.hpp"
#include "model/tokenizer.hpp"

using namespace ceco;
using namespace ceco::test;

TEST_CASE("both stories260K vocabularies encode the reference prompt and decode it back") {
  gguf_file f(stories_gguf());
  for (const auto& vocab : {tokenizer::from_gguf(f), tokenizer::from_llama2c(stories_tok(), 512)}) {
    CHECK(vocab.vocab_size() == 512);
    CHECK(vocab.bos() == 1);
    CHECK(vocab.eos() == 2);
    auto ids = vocab.encode("Once upon a time");
    CHECK(ids == once_upon_a_time);
    CHECK(vocab.decode({ids.begin() + 1, ids.end()}, ids[0]) == "Once upon a time");
    CHECK(vocab.encode("") == std::vector<int32_t>{1});
    CHECK(vocab.encode("Once", false).front() != 1);
  }
}

TEST_CASE("characters without a piece fall back to bytes and round-trip") {
  auto vocab = tokenizer::from_llama2c(stories_tok(), 512);
  std::string text = "Zoë 🙂 naïve";
  auto ids = vocab.encode(text);
  int bytes = 0;
  for (auto id : ids)
    bytes += vocab.kind(id) == token_kind::byte;
  CHECK(bytes >= 4);  // the emoji alone is four byte tokens
  CHECK(vocab.decode({ids.begin() + 1, ids.end()}, ids[0]) == text);
}

TEST_CASE("merges follow scores, and control tokens decode to nothing") {
  // pieces: <unk> <s> </s> " " "a" "b" "ab" " ab" ; " ab" scores best.
  auto vocab = tokenizer::from_pieces({"<unk>", "<s>", "</s>", " ", "a", "b", "ab", " ab"},
                                      {0, 0, 0, -5, -4, -4, -2, -1},
                                      {token_kind::unknown, token_kind::control,
                                       token_kind::control, token_kind::normal,
                                       token_kind::normal, token_kind::normal,
                                       token_kind::normal, token_kind::normal},
                                      1, 2);
  CHECK(vocab.encode("ab") == std::vector<int32_t>{1, 7});
  CHECK(vocab.encode("abab") == std::vector<int32_t>{1, 7, 6});
  CHECK(vocab.decode_piece(1, 7) == "ab");  // dummy-prefix space dropped after BOS
  CHECK(vocab.decode_piece(6, 7) == " ab");
  CHECK(vocab.decode_piece(7, 2).empty());
  CHECK(vocab.encode("<s>") != std::vector<int32_t>{1, 1});  // text never becomes BOS
}
