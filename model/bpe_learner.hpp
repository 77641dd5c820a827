#pragma once

// Learning a vocabulary for a model trained from scratch.

#include <cstdint>
#include <string>
#include <vector>

#include "model/tokenizer.hpp"

namespace ceco {

/// SentencePiece-style BPE learned from `text`: <unk>, <s>, </s>, the 256
/// byte pieces, every character seen at least `min_char_count` times, then
/// merges (scored by their order) up to `vocab_size` pieces.
tokenizer train_bpe(const std::string& text, int vocab_size, int min_char_count = 2);

/// Token stream for training: every non-empty line as BOS, its tokens, and
/// the newline piece.
std::vector<int32_t> encode_corpus(const tokenizer& vocab, const std::string& text);

} // namespace ceco
