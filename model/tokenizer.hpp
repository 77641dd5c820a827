#pragma once

// The vocabulary of a model, of one of two types:
//  - SentencePiece-style BPE with merge scores and byte fallback, as used by
//    LLaMA 2 and llama2.c (GGUF `tokenizer.ggml.model = llama`). Encoding: a
//    dummy-prefix space, one piece per UTF-8 character (bytes <0xNN> where a
//    character has no piece), then repeatedly merge the adjacent pair whose
//    concatenation is the best-scoring piece. Pieces are stored with real
//    spaces ("▁" in GGUF files is translated on load).
//  - Byte-level BPE with ranked merges (`gpt2`: Llama 3, Qwen2, SmolLM,
//    DeepSeek, ...), see bpe_vocab.hpp; pieces are stored as in the file.
// from_gguf picks the type from `tokenizer.ggml.model`; from_tokenizer_json
// from a tokenizer.json's pre-tokenizer and normalizer.
//
// Before either, special tokens are cut out of the text: user-defined tokens
// always, control and unknown tokens when `parse_special` is set, longest
// text first. `add_special` adds BOS and EOS as `tokenizer.ggml.add_bos_token`
// / `add_eos_token` say (defaults: BOS for SentencePiece, neither for BPE).
// Decoding gives the exact bytes: no clean-up of spaces before punctuation,
// which the reference applies to some BPE vocabularies, so that
// decode(encode(x)) == x.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ceco {

class gguf_file;
class bpe_vocab;

enum class token_kind : uint8_t { normal, unknown, control, byte, unused, user_defined };
enum class vocab_type : uint8_t { sentencepiece, byte_level_bpe };

class tokenizer {
public:
  tokenizer() = default;

  /// From a llama2.c `tokenizer.bin` (e.g. tok512.bin): int32 max length,
  /// then per id: float32 score, int32 length, bytes.
  static tokenizer from_llama2c(const std::string& path, int vocab_size);
  /// From a GGUF file's `tokenizer.ggml.*` metadata.
  static tokenizer from_gguf(const gguf_file& file);
  /// From a Hugging Face `tokenizer.json` (model/tokenizer_json.cpp): ids
  /// below `vocab_size` that it lacks become unused pieces; `bos`/`eos` as
  /// config.json names them (< 0: from the post-processor's template).
  static tokenizer from_tokenizer_json(const std::string& path, int vocab_size = 0,
                                       int bos = -1, int eos = -1);
  /// From explicit pieces (used by tests and by the trainer).
  static tokenizer from_pieces(std::vector<std::string> pieces,
                               std::vector<float> scores,
                               std::vector<token_kind> kinds, int bos, int eos);

  /// `add_special`: BOS/EOS as the vocabulary's flags say; `parse_special`:
  /// control-token text such as "<|endoftext|>" in `text` becomes its token.
  std::vector<int32_t> encode(std::string_view text, bool add_special = true,
                              bool parse_special = false) const;
  /// The text of `token` when it follows `prev`: strips the SentencePiece
  /// dummy-prefix space after BOS, turns byte tokens and byte-level pieces
  /// into raw bytes, control tokens into "".
  std::string decode_piece(int32_t prev, int32_t token) const;
  /// Concatenated decode_piece over `tokens`, each following its predecessor.
  std::string decode(const std::vector<int32_t>& tokens, int32_t prev = -1) const;

  /// What `token` stands for, special tokens included ("<|endoftext|>"):
  /// raw bytes, which need not be whole UTF-8 characters.
  std::string token_text(int32_t token) const;

  vocab_type type() const { return type_; }
  /// The pre-tokenizer split of a byte-level vocabulary ("" for SentencePiece).
  const std::string& pre_name() const { return pre_name_; }
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  /// The GGUF's `tokenizer.chat_template` (a Jinja template), "" when it has none.
  const std::string& chat_template() const { return chat_template_; }
  int vocab_size() const { return int(pieces_.size()); }
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  const std::string& piece(int32_t id) const { return pieces_.at(size_t(id)); }
  float score(int32_t id) const { return scores_.at(size_t(id)); }
  token_kind kind(int32_t id) const { return kinds_.at(size_t(id)); }

private:
  void index();
  int32_t lookup(std::string_view piece) const;
  void encode_sentencepiece(std::string_view text, bool dummy_prefix,
                            std::vector<int32_t>& tokens) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<token_kind> kinds_;
  std::unordered_map<std::string, int32_t> ids_;  // normal pieces only
  int32_t byte_ids_[256];                          // -1 when absent
  int32_t bos_ = 1;
  int32_t eos_ = 2;
  vocab_type type_ = vocab_type::sentencepiece;
  bool add_bos_ = true;
  bool add_eos_ = false;
  bool add_space_prefix_ = true;                 // SentencePiece's dummy prefix
  std::string pre_name_;
  std::string chat_template_;
  std::vector<int32_t> special_ids_;             // longest text first
  std::shared_ptr<const bpe_vocab> bpe_;         // byte-level BPE only
};

} // namespace ceco
