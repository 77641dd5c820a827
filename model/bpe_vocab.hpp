#pragma once

// Byte-level BPE (GGUF `tokenizer.ggml.model = gpt2`): GPT-2, Llama 3,
// Qwen2, SmolLM, DeepSeek, StarCoder, Falcon vocabularies. A text fragment
// is cut into words by the pre-tokenizer split, each word's bytes are
// written in GPT-2's byte alphabet (one printable code point per byte), and
// adjacent symbols are merged by rank (`tokenizer.ggml.merges`, lowest rank
// first, leftmost first on ties) until no listed pair is left. Special
// tokens are the caller's business (see tokenizer).

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "model/pretokenizer.hpp"

namespace ceco {

class bpe_vocab {
public:
  /// `tokens` in the byte alphabet, as stored in GGUF; `merges` as "left
  /// right" lines in rank order. Throws model_error naming `source` for a
  /// malformed merge.
  bpe_vocab(const std::vector<std::string>& tokens, const std::vector<std::string>& merges,
            pre_split split, bool ignore_merges, const std::string& source);

  /// Appends the ids of a plain-text fragment (no special tokens in it).
  void encode(std::string_view text, std::vector<int32_t>& out) const;

  /// The bytes a piece in the byte alphabet stands for (code points outside
  /// the alphabet are kept as UTF-8).
  static std::string piece_bytes(std::string_view piece);

  pre_split split() const { return split_; }

private:
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  int32_t lookup(std::string_view text) const;

  std::unordered_map<std::string, int32_t> ids_;    // every token's text
  std::unordered_map<std::string, int32_t> ranks_;  // "left right" -> rank
  pre_split split_;
  bool ignore_merges_;
};

} // namespace ceco
