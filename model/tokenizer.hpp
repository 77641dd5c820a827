#pragma once

// SentencePiece-style BPE with merge scores and byte fallback, as used by
// LLaMA and llama2.c. Encoding: optional BOS, a dummy-prefix space, one
// piece per UTF-8 character (bytes <0xNN> where a character has no piece),
// then repeatedly merge the adjacent pair whose concatenation is the
// best-scoring piece. Pieces are stored with real spaces ("▁" in GGUF files
// is translated on load).

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ceco {

class gguf_file;

enum class token_kind : uint8_t { normal, unknown, control, byte, unused };

class tokenizer {
public:
  tokenizer() = default;

  /// From a llama2.c `tokenizer.bin` (e.g. tok512.bin): int32 max length,
  /// then per id: float32 score, int32 length, bytes.
  static tokenizer from_llama2c(const std::string& path, int vocab_size);
  /// From a GGUF file's `tokenizer.ggml.*` metadata.
  static tokenizer from_gguf(const gguf_file& file);
  /// From explicit pieces (used by tests and by the trainer).
  static tokenizer from_pieces(std::vector<std::string> pieces,
                               std::vector<float> scores,
                               std::vector<token_kind> kinds, int bos, int eos);

  std::vector<int32_t> encode(std::string_view text, bool add_bos = true) const;
  /// The text of `token` when it follows `prev`: strips the dummy-prefix
  /// space after BOS, turns byte tokens into raw bytes, control tokens into "".
  std::string decode_piece(int32_t prev, int32_t token) const;
  /// Concatenated decode_piece over `tokens`, each following its predecessor.
  std::string decode(const std::vector<int32_t>& tokens, int32_t prev = -1) const;

  int vocab_size() const { return int(pieces_.size()); }
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  const std::string& piece(int32_t id) const { return pieces_.at(size_t(id)); }
  float score(int32_t id) const { return scores_.at(size_t(id)); }
  token_kind kind(int32_t id) const { return kinds_.at(size_t(id)); }

private:
  void index();
  int32_t lookup(std::string_view piece) const;

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<token_kind> kinds_;
  std::unordered_map<std::string, int32_t> ids_;  // normal pieces only
  int32_t byte_ids_[256];                          // -1 when absent
  int32_t bos_ = 1;
  int32_t eos_ = 2;
};

} // namespace ceco
